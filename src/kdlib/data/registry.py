"""The registry of datasets: each one's splits, options, files and readers, and `load_items`, which reads one.

`load_items(name, split)` reads `<data_dir>/<folder>/...` in the layout of /work/shared/data (each folder's
README gives its source). With source="auto" (the default) it falls back to the hub only when those local
files are missing; source="hub" always uses the hub and needs the network or a warm HF cache. Local rows
and hub rows go through the same per-dataset converter; hub rows are first reshaped by a small adapter.

Every item read from a file or the hub has metadata `source_file` (path relative to the data dir, or
"hub:<dataset>...") and `source_line` (1-based line in that file, or 1-based row on the hub). A malformed
row raises ValueError naming the file, the line and the offending key.

The offline `generated` stories are registered too: they need no data directory, take any split name and
are made from the run's seed (`Dataset.generate`), so kdlib.data.load_split keeps their first n items
instead of sampling them.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from kdlib.data import babi, commonsenseqa, cotempqa, gsm8k, msmarco, openbookqa, strategyqa
from kdlib.data.babi import BABI_TASKS
from kdlib.data.cotempqa import COTEMPQA_SUBSETS
from kdlib.data.generated import QUESTION_TYPES, generate_items
from kdlib.data.msmarco import MSMARCO_ANSWERABILITY, MSMARCO_CLASSES, MSMARCO_QUERY_TYPES
from kdlib.data.openbook import RELATIONS
from kdlib.data.records import Options, choice_option, count_option, flag_option, subset_option
from kdlib.data.schema import QAItem, keep_context
from kdlib.paths import DATA_DIR_ENV, resolve_data_dir

logger = logging.getLogger(__name__)

SOURCES = ("auto", "local", "hub")


@dataclass(frozen=True)
class Dataset:
    """How one dataset is read. `folder` is its folder under the data directory, "" for one made offline
    (no data directory needed); `splits` None takes any split name. `options` maps each loader option to
    its check, which turns a given value (None if not given) into the value the readers use.

    A dataset read from files has `files` (the paths one split needs), `local` and, where the hub has it,
    `hub`. One made from the run's seed has `generate(n, seed, split, options)` instead: its first n items,
    which kdlib.data.load_split keeps in order rather than sampling them.

    `classes` holds the full class sets its items' question_type comes from (one per way of classifying;
    empty where kdlib knows none), which a class perturbation draws a wrong class from."""

    folder: str
    splits: tuple[str, ...] | None
    files: Callable[[Path, str, Options], list[Path]] = lambda root, split, options: []
    local: Callable[[Path | None, str, Options], Iterator[QAItem]] | None = None
    hub: Callable[[str, Options, Path | None], Iterator[QAItem]] | None = None
    no_hub_reason: str = ""
    refused_splits: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    generate: Callable[[int, int, str, Options], list[QAItem]] | None = None
    classes: tuple[tuple[str, ...], ...] = ()


def _typed_option(option: str, hint: Any, default: Any, value: Any) -> Any:
    """`value` if it is strictly of type `hint` (a bool is not an int, "4" is not a number), `default` if
    None."""
    if value is None:
        return default
    try:
        TypeAdapter(hint, config=ConfigDict(strict=True)).validate_python(value)
    except ValidationError:
        raise ValueError(f"option {option!r} of generated must be {hint}, got {value!r}") from None
    return value


def _generated_options() -> dict[str, Callable[[Any], Any]]:
    """generate_items' keyword parameters other than n, seed and split, checked against their annotations."""
    hints = typing.get_type_hints(generate_items)
    return {
        option: partial(_typed_option, option, hints[option], parameter.default)
        for option, parameter in inspect.signature(generate_items).parameters.items()
        if option not in ("n", "seed", "split")
    }


def _generate(n: int, seed: int, split: str, options: Options) -> list[QAItem]:
    return generate_items(n, seed=seed, split=split, **options)


_MSMARCO_CLASS_SETS = (MSMARCO_QUERY_TYPES, MSMARCO_ANSWERABILITY)
_MSMARCO_OPTIONS = {"classify": lambda value: choice_option("classify", value, MSMARCO_CLASSES)}


def _max_context(value: Any) -> int:
    """babi's and cotempqa's option: at most this many context statements, keeping the supporting facts
    (kdlib.data.schema.keep_context); 0, the default, keeps them all."""
    return count_option("max_context", value, default=0)


_DATASETS: dict[str, Dataset] = {
    "generated": Dataset(
        folder="",
        splits=None,
        no_hub_reason="generated items are made offline from the run's seed",
        options=_generated_options(),
        generate=_generate,
        classes=(QUESTION_TYPES,),
    ),
    "commonsenseqa": Dataset(
        folder="commonsenseqa",
        splits=("train", "dev"),
        files=commonsenseqa.files,
        local=commonsenseqa.local,
        hub=commonsenseqa.hub,
        refused_splits={
            "test": "the CommonsenseQA test file (test_rand_split_no_answers.jsonl) has no answers; "
            "use 'dev', the usual evaluation split"
        },
    ),
    "openbookqa": Dataset(
        folder="openbookqa",
        splits=("train", "dev", "test"),
        files=openbookqa.files,
        local=openbookqa.local,
        hub=openbookqa.hub,
        options={
            "with_facts": lambda value: flag_option("with_facts", value, default=True),
            "distractors": lambda value: count_option("distractors", value, default=4),
        },
        classes=(RELATIONS,),
    ),
    "babi": Dataset(
        folder="babi",
        splits=("train", "test"),
        files=babi.files,
        local=babi.local,
        no_hub_reason="bAbI is on the hub only as facebook/babi_qa, a loading-script dataset that "
        "datasets>=4 cannot run; put tasks_1-20_v1-2/en under <data_dir>/babi/ instead",
        options={
            "tasks": lambda value: subset_option("tasks", value, tuple(BABI_TASKS)) or tuple(BABI_TASKS),
            "max_context": _max_context,
        },
        classes=(tuple(BABI_TASKS.values()),),
    ),
    "cotempqa": Dataset(
        folder="cotempqa",
        splits=("test",),
        files=cotempqa.files,
        local=cotempqa.local,
        hub=cotempqa.hub,
        options={
            "subsets": lambda value: subset_option("subsets", value, COTEMPQA_SUBSETS),
            "max_context": _max_context,
        },
        classes=(COTEMPQA_SUBSETS,),
    ),
    "strategyqa": Dataset(
        folder="strategyqa",
        splits=("train", "dev"),
        files=strategyqa.files,
        local=strategyqa.local,
        hub=strategyqa.hub,
    ),
    "gsm8k": Dataset(
        folder="gsm8k",
        splits=("train", "test"),
        files=gsm8k.files,
        local=gsm8k.local,
        hub=gsm8k.hub,
    ),
    "msmarco": Dataset(
        folder="msmarco",
        splits=("train", "dev"),
        files=msmarco.files,
        local=msmarco.local,
        hub=msmarco.hub,
        refused_splits={"test": "the MS MARCO v2.1 test split has no answers; use 'dev'"},
        options=_MSMARCO_OPTIONS,
        classes=_MSMARCO_CLASS_SETS,
    ),
    "msmarco-sample": Dataset(
        folder="",
        splits=("train", "dev"),
        local=msmarco.sample_local,
        no_hub_reason="msmarco-sample is generated offline; use dataset 'msmarco' for the hub",
        options={
            **_MSMARCO_OPTIONS,
            "rows": lambda value: count_option("rows", value, default=200),
            "seed": lambda value: count_option("seed", value, default=0),
        },
        classes=_MSMARCO_CLASS_SETS,
    ),
}

DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)


def dataset(name: str) -> Dataset:
    """The registry entry of dataset `name`."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def check_split(name: str, split: str) -> None:
    """Raise ValueError unless `split` is a split of dataset `name` with answers."""
    entry = dataset(name)
    if split in entry.refused_splits:
        raise ValueError(f"split {split!r} of {name} is not supported: {entry.refused_splits[split]}")
    if entry.splits is not None and split not in entry.splits:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(entry.splits)}")


def check_options(name: str, options: Mapping[str, Any]) -> Options:
    """Every loader option of dataset `name`, checked: the given ones, and defaults for the rest."""
    entry = dataset(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        valid = ", ".join(entry.options) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {name}; valid options: {valid}")
    return {option: check(options.get(option)) for option, check in entry.options.items()}


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")


def load_items(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    limit: int | None = None,
    **options: Any,
) -> list[QAItem]:
    """The items of one dataset split, in file order, keeping the first `limit` if given.

    Splits: commonsenseqa train/dev ("test" has no answers and is refused); openbookqa train/dev/test;
    babi train/test; cotempqa test; strategyqa train/dev; gsm8k train/test; msmarco and msmarco-sample
    train/dev. Options: openbookqa with_facts (default True) and distractors (open-book facts added
    by BM25, default 4); babi tasks (default 1..20); cotempqa subsets (default: those
    present); babi and cotempqa max_context (at most this many context statements, keeping the
    supporting facts: keep_context);
    msmarco classify (query_type or answerability); msmarco-sample also rows (200) and seed (0).
    source: "local" reads `resolve_data_dir(data_dir)`, "hub" the Hugging Face hub, "auto" local files
    when present and the hub otherwise. Generated items come from the run's seed: see
    kdlib.data.load_split.
    """
    entry = dataset(name)
    if entry.local is None:
        raise ValueError(f"{name} items are made from the run's seed, not read: use kdlib.data.load_split")
    check_split(name, split)
    chosen = check_options(name, options)
    check_source(source)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    try:
        root: Path | None = resolve_data_dir(data_dir)
        problem = None
    except FileNotFoundError as error:
        root, problem = None, str(error)
    if source == "hub":
        if entry.hub is None:
            raise ValueError(f"source='hub' is not available for {name}: {entry.no_hub_reason}")
        items = entry.hub(split, chosen, root)
    else:
        if not entry.folder:  # made offline: no files
            problem = None
        elif root is not None:
            missing = [path for path in entry.files(root, split, chosen) if not path.is_file()]
            problem = f"{name} file {missing[0]} does not exist" if missing else None
        if problem is None:
            items = entry.local(root, split, chosen)
        elif source == "auto" and entry.hub is not None:
            logger.warning("%s; loading %s %s from the Hugging Face hub instead", problem, name, split)
            items = entry.hub(split, chosen, root)
        else:
            raise FileNotFoundError(
                f"{problem}; pass data_dir=... or set ${DATA_DIR_ENV} to the data folder that holds "
                f"{entry.folder}/"
            )
    if chosen.get("max_context"):
        items = (keep_context(item, chosen["max_context"]) for item in items)
    return list(itertools.islice(items, limit))
