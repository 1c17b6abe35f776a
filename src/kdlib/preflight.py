"""Checks of a validated params file against this machine, the data and the models' configs, run by
`kdlib run` before notebook 01 writes anything and by `kdlib validate`.

The schema (kdlib.config) checks what the params file says on its own; these checks need more: the
devices present, environment variables, files under the data directory, the number of items a split
holds, and each student's module names (read from its config on the meta device, no weights loaded).
Each failure raises ParamsError naming the file and the dotted key, as a schema error does.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import torch

from kdlib.analysis.reference import ReferenceFileError, load_reference
from kdlib.config import NOTEBOOKS, ExperimentParams, ParamsError, TeacherParams
from kdlib.data import load_split, seeded_sample
from kdlib.data.registry import dataset, load_items
from kdlib.models import model_config, model_tokenizer, module_names
from kdlib.paths import resolve_repo_path
from kdlib.teacher.importers import PALM_DATASETS, hendriks_folder, palm_cot_inputs
from kdlib.teacher.rationales import RULE_SOURCE
from kdlib.teacher.recipes import LLM_SOURCE, load_exemplars
from kdlib.traces.decomposition import has_gold_steps
from kdlib.training.conditions import ATTRIBUTION_COLUMNS, TRANSFORMS, TransformSettings, condition_examples
from kdlib.training.loop import encode_example

OFFLINE_ENV = "HF_HUB_OFFLINE"


class Problem(Exception):
    """One failed check: the dotted key it concerns and what is wrong."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def preflight(params: ExperimentParams, source: str, notebooks: Sequence[str] = NOTEBOOKS) -> None:
    """Run the checks of the notebooks about to run (a check belongs to the first notebook that would
    fail on it); the first failure raises ParamsError '<source>: key '<key>': <message>'."""
    runs = set(notebooks).__contains__
    try:
        _condition_names(params)
        _device(params)
        if runs("01_teacher_traces"):
            _teacher(params)
            _imports(params)
            _exemplars(params)
        train_items = _dataset(params) if runs("01_teacher_traces") or runs("03_sft") else None
        if runs("03_sft"):
            _attributions(params)
            _conditions(params, train_items)
            _students(params, train_items)
        if runs("04_evaluation"):
            _judge(params)
        if runs("05_correlation"):
            _reference_results(params)
    except Problem as problem:
        first, *more = str(problem).splitlines()  # one line, as every params error
        extra = f" (and {len(more)} more problem{'s' if len(more) > 1 else ''})" if more else ""
        raise ParamsError(f"{source}: key '{problem.key}': {first}{extra}") from None


def _condition_names(params: ExperimentParams) -> None:
    """Every condition names a transform of kdlib.training.conditions (the schema, below the stages,
    cannot know them)."""

    unknown = [c for c in params.sft.conditions if isinstance(c, str) and c not in TRANSFORMS]
    if unknown:
        raise Problem("sft.conditions", f"unknown condition(s) {unknown}; choose from {sorted(TRANSFORMS)}")
    for n, spec in enumerate(params.sft.conditions):
        if not isinstance(spec, str) and spec.transform not in TRANSFORMS:
            raise Problem(
                f"sft.conditions.{n}.spec.transform",
                f"unknown transform {spec.transform!r}; choose from {sorted(TRANSFORMS)}",
            )


def _device(params: ExperimentParams) -> None:
    if params.common.device != "cuda":
        return

    if not torch.cuda.is_available():
        raise Problem("common.device", "'cuda' asked for, but torch finds no CUDA device on this machine")
    if params.sft.num_processes > torch.cuda.device_count():
        raise Problem(
            "sft.num_processes",
            f"{params.sft.num_processes} processes asked for on {torch.cuda.device_count()} CUDA device(s)",
        )


def _reference_results(params: ExperimentParams) -> None:
    if params.correlation.reference_results is None:
        return

    try:
        load_reference(resolve_repo_path(params.correlation.reference_results))
    except ReferenceFileError as error:
        raise Problem("correlation.reference_results", str(error)) from None


def _teacher(params: ExperimentParams) -> None:
    generation = params.teacher_traces.generation
    if generation.recipes and generation.n_items:
        _backend("teacher_traces.teacher", params.teacher_traces.teacher)


def _judge(params: ExperimentParams) -> None:
    if params.evaluation.explanations.enabled:
        _backend("evaluation.explanations.judge", params.evaluation.explanations.judge)


def _backend(key: str, backend: TeacherParams) -> None:
    """A teacher or judge backend this machine can start: its key variable set, vLLM installed, a
    transformers model whose config can be read."""
    if backend.api_key_env is not None and not os.environ.get(backend.api_key_env):
        raise Problem(
            f"{key}.api_key_env",
            f"the environment variable ${backend.api_key_env} is not set or empty on this machine",
        )
    if backend.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise Problem(f"{key}.backend", "'vllm' asked for, but the vllm package is not installed")
    if backend.backend == "transformers":
        _model_config(f"{key}.model", backend.model, backend.trust_remote_code)


def _imports(params: ExperimentParams) -> None:

    data_dir = params.common.data_dir
    for n, spec in enumerate(params.teacher_traces.imports):
        key = f"teacher_traces.imports.{n}"
        try:
            if spec.source == "palm_cot":
                splits = PALM_DATASETS[spec.dataset][2]
                if spec.split not in splits:
                    raise Problem(f"{key}.split", f"palm_cot {spec.dataset} has the splits {list(splits)}")
                path = palm_cot_inputs(spec.dataset, spec.split, data_dir)
                if not path.is_file():
                    raise Problem(key, f"{path} does not exist (see distilling_step_by_step/README.md)")
            else:
                folder = hendriks_folder(spec.teacher, spec.split, data_dir)
                if not any(folder.glob("shard_*")):
                    raise Problem(key, f"{folder} holds no shard_*/ folders (see hendriks_llm_distillation)")
        except OSError as error:  # the data directory itself
            raise Problem("common.data_dir", str(error)) from None


def _exemplars(params: ExperimentParams) -> None:
    generation = params.teacher_traces.generation
    if generation.exemplars_file is None or not (generation.recipes and generation.n_items):
        return

    try:
        exemplars = load_exemplars(resolve_repo_path(generation.exemplars_file))
    except ValueError as error:
        raise Problem("teacher_traces.generation.exemplars_file", str(error)) from None
    if len(exemplars) < generation.n_shots:
        raise Problem(
            "teacher_traces.generation.n_shots",
            f"{generation.n_shots} shots asked for, but {generation.exemplars_file} holds {len(exemplars)}",
        )


def _attributions(params: ExperimentParams) -> None:
    path = params.sft.key_tokens.attributions
    if path is None or not _uses(params, "key_words"):
        return

    key = "sft.key_tokens.attributions"
    try:
        columns = pq.read_schema(resolve_repo_path(path)).names
    except Exception as error:  # pyarrow raises several kinds for a file that is not parquet
        raise Problem(key, f"{path} is not a readable parquet file ({error})") from None
    missing = [c for c in ATTRIBUTION_COLUMNS if c not in columns]
    if missing:
        raise Problem(
            key, f"{path} lacks the columns {missing} (an attributions file has {ATTRIBUTION_COLUMNS})"
        )


def _uses(params: ExperimentParams, need: str) -> bool:
    """Whether any condition of the grid needs `need` (rationale, steps, counterfactuals, key_words)."""

    return any(need in TRANSFORMS[spec.transform].needs for spec in params.sft.condition_specs())


def _dataset(params: ExperimentParams) -> list | None:
    """The training items the run will sample, where they can be known here (None: only the hub has
    them); checks that each split holds the items asked for."""

    data, common = params.teacher_traces.dataset, params.common
    if dataset(data.name).generate is not None:  # made from the run's seed: nothing to read
        return load_split(
            data.name, data.train_split, data.n_train, seed=common.seed, data_dir=None, options=data.options
        )
    options = dict(data.options)
    source = options.pop("source", "auto")
    if source == "hub":
        return None
    splits = {}
    for split in dict.fromkeys([data.train_split, data.eval_split]):
        try:
            splits[split] = load_items(data.name, split, data_dir=common.data_dir, source="local", **options)
        except NotADirectoryError as error:
            raise Problem("common.data_dir", str(error)) from None
        except FileNotFoundError as error:
            if source == "auto" and os.environ.get(OFFLINE_ENV) != "1":
                return None  # the run will read the hub
            raise Problem("common.data_dir", str(error)) from None
        except ValueError as error:  # a malformed data file: the message names it and the line
            raise Problem("teacher_traces.dataset.name", str(error)) from None
    subset = f" with options {data.options}" if data.options else ""
    if data.train_split == data.eval_split:
        held = len(splits[data.train_split])
        if data.n_train + data.n_eval > held:
            raise Problem(
                "teacher_traces.dataset.n_train",
                f"n_train {data.n_train} + n_eval {data.n_eval} items asked for, but {data.name} split "
                f"{data.train_split!r}{subset} holds {held} (both come from it)",
            )
        both = seeded_sample(
            splits[data.train_split],
            data.name,
            data.train_split,
            data.n_train + data.n_eval,
            seed=common.seed,
        )
        return both[: data.n_train]
    for split, field in ((data.train_split, "n_train"), (data.eval_split, "n_eval")):
        if getattr(data, field) > len(splits[split]):
            raise Problem(
                f"teacher_traces.dataset.{field}",
                f"{getattr(data, field)} items asked for, but {data.name} split {split!r}{subset} holds "
                f"{len(splits[split])}",
            )
    return seeded_sample(
        splits[data.train_split], data.name, data.train_split, data.n_train, seed=common.seed
    )


def _producible_rationales(params: ExperimentParams, train_items: list | None) -> set[tuple[str, str]]:
    """(source, recipe) pairs notebook 01 can write for these params."""

    cfg = params.teacher_traces
    pairs = set()
    has_facts = train_items is None or any(item.supporting_facts is not None for item in train_items)
    if cfg.rule_traces and has_facts:
        pairs.add((RULE_SOURCE, "rule"))
    if cfg.generation.n_items:
        pairs |= {(LLM_SOURCE, recipe) for recipe in cfg.generation.recipes}
    for spec in cfg.imports:
        kinds = ["cot_label_last"] if spec.source == "palm_cot" else spec.kinds
        pairs |= {(spec.source, kind) for kind in kinds}
    return pairs


def _conditions(params: ExperimentParams, train_items: list | None) -> None:

    sft = params.sft
    producible = _producible_rationales(params, train_items)
    for n, spec in enumerate(sft.condition_specs()):
        available = len(train_items) if train_items is not None else params.teacher_traces.dataset.n_train
        if spec.train_items is not None and spec.train_items > available:
            raise Problem(
                f"sft.conditions.{n}.train_items",
                f"condition {spec.name!r} asks for {spec.train_items} training items; the run has "
                f"{available} (teacher_traces.dataset.n_train)",
            )
        needs = TRANSFORMS[spec.transform].needs
        wanted = {"rationale": spec.rationale_recipe, "counterfactuals": sft.counterfactual_recipe}
        for recipe in (recipe for need, recipe in wanted.items() if need in needs):
            sources = {source for source, written in producible if written == recipe}
            if spec.rationale_source in sources or (spec.rationale_source is None and sources):
                continue
            origin = f" from source {spec.rationale_source!r}" if spec.rationale_source else ""
            raise Problem(
                f"sft.conditions.{n}",
                f"condition {spec.name!r} trains on rationales of recipe {recipe!r}{origin}, which notebook "
                f"01 will not write: it writes (source, recipe) {sorted(producible) or 'none'}",
            )
        if "steps" in needs and train_items is not None and not any(map(has_gold_steps, train_items)):
            raise Problem(
                f"sft.conditions.{n}",
                f"condition {spec.name!r} trains on checkable traces, but no training item of "
                f"{params.teacher_traces.dataset.name} has gold steps (class + supporting facts)",
            )


def _model_config(key: str, name: str, trust_remote_code: bool) -> Any:

    try:
        return model_config(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise Problem(key, f"cannot read the config of model {name!r}: {error}") from None


def _students(params: ExperimentParams, train_items: list | None) -> None:
    sft = params.sft
    attributed = _uses(params, "key_words") and sft.key_tokens.attributions is None
    adapted = sft.finetune != "full" and sft.lora.target_modules != "all-linear"
    configs = [
        _model_config(f"sft.students.{n}", s, sft.trust_remote_code) for n, s in enumerate(sft.students)
    ]
    known = [config for config in configs if config is not None]  # None: a hub id, told at run time
    if attributed and len(known) == len(configs) and all(c.is_encoder_decoder for c in known):
        raise Problem(
            "sft.students",
            f"every student of {sft.students} is an encoder-decoder; the key-token condition's integrated "
            "gradients run on the first causal student's cell (or set sft.key_tokens.attributions)",
        )
    for student, config in zip(sft.students, configs, strict=True):
        if config is not None and train_items is not None:
            _fits_max_length(params, student, config, train_items)
        if config is not None and adapted:
            names = module_names(config, trust_remote_code=sft.trust_remote_code)
            missing = [t for t in sft.lora.target_modules if not any(_matches(name, t) for name in names)]
            if missing:
                leaves = sorted(
                    {name.rsplit(".", 1)[-1] for name in names if not name.rsplit(".", 1)[-1].isdigit()}
                )
                raise Problem(
                    "sft.lora.target_modules",
                    f"{student} has no module named {missing}; its module names are {leaves}",
                )


def _fits_max_length(params: ExperimentParams, student: str, config, train_items: list) -> None:
    """Every training item's shortest example (its prompt and the answer alone, as no_trace trains)
    within sft.max_length under the student's tokenizer: an item over it stops notebook 03 whatever
    the condition."""

    tokenizer = model_tokenizer(student, trust_remote_code=params.sft.trust_remote_code)
    if tokenizer is None:
        return
    settings = TransformSettings(fmt=params.decomposition.trace_format, seed=params.common.seed)
    examples, _ = condition_examples("no_trace", train_items, {}, settings)
    shape = SimpleNamespace(config=config)  # encode_example reads only model.config (causal or seq2seq)
    for example in examples:
        try:
            encode_example(shape, tokenizer, example, params.sft.max_length)
        except ValueError as error:
            raise Problem(
                "sft.max_length",
                f"{student}: {error} with the answer alone; conditions with traces are longer",
            ) from None


def _matches(module: str, target: str) -> bool:
    """PEFT's rule for a target_modules entry: the module's dotted name is it or ends with '.' + it."""
    return module == target or module.endswith("." + target)
