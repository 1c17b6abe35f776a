"""Notebook 03's stage: the training grid (students x conditions x seeds), one resumable cell at a time.

Each cell folder `sft/<student>/<condition>/seed<k>/` ends with the trained weights (`adapter/` for
LoRA/QLoRA, `model/` for full fine-tuning, safetensors), `train_log.csv` and `meta.json`. A cell whose
meta.json records the same params (including a digest of its training texts) is finished and skipped;
a cell interrupted mid-run resumes from `checkpoint/`, which is removed once the cell is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from kdlib import io
from kdlib.cells import weights_folder
from kdlib.config import CommonParams, ConditionSpec, SftParams
from kdlib.data.schema import QAItem
from kdlib.models import (
    count_parameters,
    import_peft,
    is_seq2seq,
    load_model,
    load_tokenizer,
    native_bf16,
    peft_checkpointing_probe_quiet,
    resolve_device,
)
from kdlib.paths import resolve_repo_path
from kdlib.traces.decomposition import Steps
from kdlib.training.attribution import attribute_run
from kdlib.training.conditions import (
    TRANSFORMS,
    Filler,
    ItemTraces,
    TextExample,
    TransformSettings,
    condition_examples,
    pick_counterfactuals,
    pick_rationales,
    read_key_words,
    student_filler,
)
from kdlib.training.loop import Checkpoint, TrainSettings, encode_example, train

# bitsandbytes (imported by peft) warns on every import that an optional CPU kernel package is absent.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Cell:
    student: str
    condition: ConditionSpec
    seed: int

    @property
    def label(self) -> str:
        return f"{self.student}/{self.condition.name}/seed{self.seed}"


def grid_cells(sft: SftParams) -> list[Cell]:
    return [
        Cell(student, spec, seed)
        for student in sft.students
        for spec in sft.condition_specs()
        for seed in sft.seeds
    ]


@dataclass(frozen=True)
class TraceSources:
    """What the transforms read, from notebooks 01 (rationales), 02 (decomposed steps) and 04 (key words)."""

    traces: pd.DataFrame
    steps: dict[str, dict[str, Steps]]
    key_words: dict[str, tuple[str, ...]] | None = None


def cell_text_examples(
    spec: ConditionSpec,
    items: list[QAItem],
    sources: TraceSources,
    sft: SftParams,
    fmt: str,
    seed: int,
    filler: Filler | None = None,
) -> tuple[list[TextExample], list[str]]:
    """The training texts of one condition, from its first `spec.train_items` items (all when null), and
    the items it skipped (no trace of the kind it needs); `filler` is the student's
    (conditions.student_filler), for a transform that needs one."""
    needs = TRANSFORMS[spec.transform].needs
    items = items[: spec.train_items]
    rationales = (
        pick_rationales(sources.traces, spec.rationale_recipe, spec.rationale_source)
        if "rationale" in needs
        else {}
    )
    counterfactuals = (
        pick_counterfactuals(sources.traces, sft.counterfactual_recipe, spec.rationale_source)
        if "counterfactuals" in needs
        else {}
    )
    ids = [item.id for item in items]
    if "rationale" in needs and not any(i in rationales for i in ids):
        available = sorted(set(zip(sources.traces["source"], sources.traces["recipe"], strict=True)))
        raise ValueError(
            f"condition {spec.name!r}: no rationale of recipe {spec.rationale_recipe!r}"
            f"{f' from source {spec.rationale_source!r}' if spec.rationale_source else ''} for any training "
            f"item; traces.parquet has (source, recipe) {available}"
        )
    if "counterfactuals" in needs and not any(i in counterfactuals for i in ids):
        raise ValueError(
            f"condition {spec.name!r}: no rationale for a wrong choice (recipe "
            f"{sft.counterfactual_recipe!r}) for any training item; add the counterfactual recipe or the "
            "hendriks counterfactual import in 01"
        )
    if "key_words" in needs and not any(i in (sources.key_words or {}) for i in ids):
        raise ValueError(f"condition {spec.name!r}: the attributions file has no training item")
    traces = {
        i: ItemTraces(
            rationale=rationales.get(i),
            steps=sources.steps.get(i, {}),
            counterfactuals=counterfactuals.get(i, ()),
            key_words=(sources.key_words or {}).get(i),
        )
        for i in ids
    }
    settings = TransformSettings(
        fmt=fmt,
        seed=seed,
        incorrect_perturbation=sft.incorrect_perturbation,
        alpha=sft.multitask_alpha,
        beta=sft.multitask_beta,
        counterfactuals_per_item=sft.counterfactuals_per_item,
        random_vocabulary=tuple(sorted({w for r in rationales.values() for w in r.split()})),
        filler=filler,
    )
    return condition_examples(spec.transform, items, traces, settings)


def texts_digest(examples: list[TextExample]) -> str:
    return hashlib.sha256(json.dumps([asdict(e) for e in examples]).encode()).hexdigest()


def add_lora(model, lora, seed: int):
    peft = import_peft()
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=peft.TaskType.SEQ_2_SEQ_LM if is_seq2seq(model) else peft.TaskType.CAUSAL_LM,
    )
    with peft_checkpointing_probe_quiet():
        return peft.get_peft_model(model, config)


def prepare_student(student: str, sft: SftParams, *, device: torch.device, seed: int, bf16: bool):
    """(model, tokenizer) ready to train: every weight trainable (full), or a LoRA adapter on the fp32
    base (lora) or on an NF4-quantised base (qlora)."""
    if sft.finetune == "qlora":
        compute = torch.bfloat16 if bf16 else torch.float32
        model, tokenizer = load_model(
            student,
            device=device,
            dtype=compute,
            seed=seed,
            quantize_4bit=True,
            trust_remote_code=sft.trust_remote_code,
        )
        model = import_peft().prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model, tokenizer = load_model(
            student, device=device, seed=seed, trust_remote_code=sft.trust_remote_code
        )
    if sft.finetune == "full":
        model.requires_grad_(True)
        return model, tokenizer
    return add_lora(model, sft.lora, seed), tokenizer


def save_trained(model, tokenizer, folder: Path) -> None:
    """Weights (safetensors: the adapter, or the whole model) and the tokenizer, swapped in atomically."""
    with io.atomic_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


TRAINING_KEYS = (
    "finetune",
    "epochs",
    "batch_size",
    "grad_accum",
    "learning_rate",
    "max_length",
    "bf16",
    "compile",
)


def cell_params(cell: Cell, sft: SftParams, fmt: str, digest: str) -> dict:
    """What a finished cell must match to be skipped: the cell, training settings and its texts' digest."""
    training = {k: getattr(sft, k) for k in TRAINING_KEYS}
    if sft.finetune != "full":
        training["lora"] = sft.lora.model_dump()
    condition = cell.condition.model_dump()
    if condition["train_items"] is None:  # cells trained before the option existed stay finished
        del condition["train_items"]
    params = {
        "student": cell.student,
        "condition": condition,
        "seed": cell.seed,
        "trace_format": fmt,
        "training": training,
        "texts_sha256": digest,
    }
    return {**params, "trust_remote_code": True} if sft.trust_remote_code else params


@dataclass(frozen=True)
class CellJob:
    """Everything one cell's training needs, as JSON: what `kdlib train-cell` reads in each process of a
    data-parallel launch."""

    cell_dir: str
    student: str
    condition: dict
    seed: int
    texts: list[dict]
    items: int
    skipped_items: int
    params: dict
    sft: dict
    device: str

    @property
    def cell(self) -> Cell:
        return Cell(self.student, ConditionSpec(**self.condition), self.seed)

    def checkpoint(self) -> Checkpoint:
        fingerprint = hashlib.sha256(json.dumps(self.params).encode()).hexdigest()
        return Checkpoint(Path(self.cell_dir) / "checkpoint", fingerprint)

    @classmethod
    def read(cls, path: str | Path) -> CellJob:
        return cls(**io.read_json(path))


def train_settings(sft: SftParams, *, seed: int, bf16: bool) -> TrainSettings:
    """The training loop's settings of a cell trained under `sft` with `seed`; bf16: autocast (if native)."""
    return TrainSettings(
        epochs=sft.epochs,
        batch_size=sft.batch_size,
        grad_accum=sft.grad_accum,
        learning_rate=sft.learning_rate,
        bf16=bf16,
        seed=seed,
        compile=sft.compile,
        checkpoint_every=sft.checkpoint_every,
    )


def fit_cell(job: CellJob, accelerator=None) -> None:
    """Train one cell and write its weights, train_log.csv and meta.json (with the summary row).

    With an `accelerate.Accelerator` of several processes, every process trains its share of each step
    and the main process writes.
    """
    sft, cell, cell_dir = SftParams(**job.sft), job.cell, Path(job.cell_dir)
    device = accelerator.device if accelerator else resolve_device(job.device)
    bf16 = sft.bf16 and native_bf16(device)
    with accelerator.main_process_first() if accelerator else nullcontext():  # one GGUF conversion
        model, tokenizer = prepare_student(cell.student, sft, device=device, seed=cell.seed, bf16=bf16)
    examples = [encode_example(model, tokenizer, TextExample(**t), sft.max_length) for t in job.texts]
    checkpoint = job.checkpoint()
    log = train(
        model,
        examples,
        train_settings(sft, seed=cell.seed, bf16=bf16),
        pad_token_id=tokenizer.pad_token_id,
        checkpoint=checkpoint,
        desc=f"train {cell.label}",
        accelerator=accelerator,
    )
    if accelerator and not accelerator.is_main_process:
        return
    weights = weights_folder(sft.finetune)
    save_trained(model, tokenizer, cell_dir / weights)
    io.write_csv(cell_dir / "train_log.csv", log)
    last = log.iloc[-1]
    summary = {
        "student": cell.student,
        "condition": cell.condition.name,
        "transform": cell.condition.transform,
        "seed": cell.seed,
        "cell": str(cell_dir.relative_to(cell_dir.parents[2])),
        "finetune": sft.finetune,
        "examples": len(examples),
        "items": job.items,
        "skipped_items": job.skipped_items,
        "target_tokens_per_example": sum(e.n_target_tokens for e in examples) / len(examples),
        "tokens_per_example": sum(e.length for e in examples) / len(examples),
        "padding_share": 1 - float(last["tokens"]) / float(last["padded_tokens"]),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "steps": len(log),
        "final_loss": float(last["loss"]),
        "seconds": float(last["seconds"]),
        "tokens_per_second": float(last["tokens"]) / float(last["seconds"]),
        "bf16": bf16,
        "processes": accelerator.num_processes if accelerator else 1,
    }
    io.write_meta(cell_dir, params=job.params, artifacts=[weights, "train_log.csv"], summary=summary)
    checkpoint.remove()


def launch_cell(job: CellJob, num_processes: int) -> None:
    """Run `kdlib train-cell` in `num_processes` processes through `accelerate launch` (DDP: NCCL on
    GPUs, gloo on CPU), streaming their output; an error names the cell and ends with the output's tail."""
    job_path = Path(job.cell_dir) / "job.json"
    io.write_json(job_path, asdict(job))
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    if resolve_device(job.device).type == "cpu":
        env["ACCELERATE_USE_CPU"] = "yes"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads),
        "-m", "kdlib", "train-cell", str(job_path),
    ]  # fmt: skip
    tail: list[str] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = [*tail[-40:], line]
    if proc.returncode != 0:
        raise RuntimeError(
            f"data-parallel training of {job.cell.label} failed (exit {proc.returncode}); "
            f"its checkpoint is kept. Output tail:\n{''.join(tail)}"
        )
    job_path.unlink()


def cell_job(
    cell_dir: Path,
    cell: Cell,
    items: list[QAItem],
    sources: TraceSources,
    *,
    sft: SftParams,
    common: CommonParams,
    fmt: str,
) -> CellJob:
    """What training one cell takes: its texts, settings and the params a finished cell must match."""
    filler = None
    if TRANSFORMS[cell.condition.transform].needs_filler:
        filler = student_filler(load_tokenizer(cell.student, trust_remote_code=sft.trust_remote_code))
    texts, skipped = cell_text_examples(cell.condition, items, sources, sft, fmt, cell.seed, filler)
    return CellJob(
        cell_dir=str(cell_dir),
        student=cell.student,
        condition=cell.condition.model_dump(),
        seed=cell.seed,
        texts=[asdict(t) for t in texts],
        items=len(items[: cell.condition.train_items]) - len(skipped),
        skipped_items=len(skipped),
        params=cell_params(cell, sft, fmt, texts_digest(texts)),
        sft=sft.model_dump(),
        device=common.device,
    )


def train_cell(job: CellJob, num_processes: int = 1) -> dict:
    """Train one cell (or skip it when finished), in `num_processes` processes; its summary row."""
    meta_path = Path(job.cell_dir) / "meta.json"
    if meta_path.exists() and io.read_json(meta_path)["params"] == job.params:
        return {**io.read_json(meta_path)["summary"], "status": "finished earlier"}
    resumed = job.checkpoint().progress() is not None
    if num_processes > 1:
        launch_cell(job, num_processes)
    else:
        fit_cell(job)
    return {**io.read_json(meta_path)["summary"], "status": "resumed" if resumed else "trained"}


def needs_key_words(cell: Cell) -> bool:
    return "key_words" in TRANSFORMS[cell.condition.transform].needs


def key_words_for(
    run, trained: pd.DataFrame, items: list[QAItem], sources: TraceSources, *, sft: SftParams, common
) -> dict[str, tuple[str, ...]]:
    """The key-token words: from sft.key_tokens.attributions, else attributed under a `trained` cell."""
    path = sft.key_tokens.attributions and resolve_repo_path(sft.key_tokens.attributions)
    if path is None:
        device = resolve_device(common.device)
        attribute_run(
            run, trained, items, sources.traces, device=device, seed=common.seed, params=sft.key_tokens
        )
        path = run.attributions
    return read_key_words(path, top_k=sft.key_tokens.top_k, fraction=sft.key_tokens.fraction)


def train_grid(
    run, items: list[QAItem], sources: TraceSources, *, sft: SftParams, common: CommonParams, fmt: str
) -> pd.DataFrame:
    """Train (or skip) every cell of the grid; one summary row per cell, in grid order. `run` is a
    RunLayout. Key-token cells come last, once their words are known (key_words_for)."""
    cells = grid_cells(sft)

    def fit(cell: Cell, cell_sources: TraceSources) -> dict:
        cell_dir = run.sft_cell(cell.student, cell.condition.name, cell.seed)
        job = cell_job(cell_dir, cell, items, cell_sources, sft=sft, common=common, fmt=fmt)
        return train_cell(job, sft.num_processes)

    rows = {n: fit(cell, sources) for n, cell in enumerate(cells) if not needs_key_words(cell)}
    later = [n for n, cell in enumerate(cells) if needs_key_words(cell)]
    if later:
        trained = pd.DataFrame(rows.values())
        key_words = key_words_for(run, trained, items, sources, sft=sft, common=common)
        with_words = TraceSources(sources.traces, sources.steps, key_words)
        rows.update({n: fit(cells[n], with_words) for n in later})
    return pd.DataFrame([rows[n] for n in range(len(cells))])


def training_logs(run, summary: pd.DataFrame) -> pd.DataFrame:
    """Every cell's train_log.csv, stacked, with its student, condition and seed."""
    return pd.concat(
        [
            pd.read_csv(run.trained_cell(row.cell) / "train_log.csv").assign(
                student=row.student, condition=row.condition, seed=row.seed
            )
            for row in summary.itertuples()
        ],
        ignore_index=True,
    )
