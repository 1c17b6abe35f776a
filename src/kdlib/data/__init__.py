"""QA items: the shared schema (`schema`), the registry of datasets (`registry`) with one reader module
per dataset family (`commonsenseqa`, `openbookqa`, `babi`, `cotempqa`, `strategyqa`, `gsm8k`, `msmarco`)
over shared row readers (`records`), and the offline generated stories (`generated`, `msmarco_sample`).

This module picks a run's items: `load_split` and `load_train_eval`.
"""

from __future__ import annotations

import random
from typing import Any

from kdlib.data import registry
from kdlib.data.schema import QAItem


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming an option that dataset `name` does not take (datasets read from files or the
    hub also take `source`: auto, local or hub)."""
    if registry.dataset(name).generate is None:
        registry.check_source(options.get("source", "auto"))
        options = {key: value for key, value in options.items() if key != "source"}
    registry.check_options(name, options)


def load_split(
    name: str, split: str, n: int, *, seed: int, data_dir: str | None, options: dict[str, Any]
) -> list[QAItem]:
    """`n` items of one split: the first n made from the seed for a dataset that is generated from it, or
    a sample of a dataset read from the data directory (see `kdlib.paths.resolve_data_dir`) or, when
    online, from the HF hub, seeded by (seed, dataset, split); see `kdlib.data.registry`.
    """
    entry = registry.dataset(name)
    try:
        check_options(name, options)
    except ValueError as error:
        raise ValueError(f"dataset.options: {error}") from None
    if entry.generate is not None:
        return entry.generate(n, seed, split, registry.check_options(name, options))
    items = registry.load_items(name, split, data_dir=data_dir, **options)
    if len(items) < n:
        raise ValueError(
            f"dataset {name!r} split {split!r} has {len(items)} items, fewer than the {n} asked for"
        )
    return seeded_sample(items, name, split, n, seed=seed)


def seeded_sample(items: list[QAItem], name: str, split: str, n: int, *, seed: int) -> list[QAItem]:
    """The `n` items load_split keeps of a split's `items` read from files or the hub: a sample seeded by
    (seed, dataset, split)."""
    return random.Random(f"{seed}/{name}/{split}").sample(items, n)


def load_train_eval(
    name: str,
    train_split: str,
    eval_split: str,
    n_train: int,
    n_eval: int,
    *,
    seed: int,
    data_dir: str | None,
    options: dict[str, Any],
) -> tuple[list[QAItem], list[QAItem]]:
    """(training items, evaluation items), never sharing an item.

    With two splits, a seeded sample of each. With one split for both (CoTempQA has only "test"),
    one seeded sample of n_train + n_eval items, cut into disjoint training and evaluation parts.
    """
    kwargs = {"seed": seed, "data_dir": data_dir, "options": options}
    if train_split != eval_split:
        return load_split(name, train_split, n_train, **kwargs), load_split(
            name, eval_split, n_eval, **kwargs
        )
    items = load_split(name, train_split, n_train + n_eval, **kwargs)
    return items[:n_train], items[n_train:]
