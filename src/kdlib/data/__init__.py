"""QA items: the shared schema, loaders for real datasets, and the offline generated tasks."""

from __future__ import annotations

import random
from typing import Any

from kdlib.data.schema import QAItem


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming an option that dataset `name` does not take (real datasets also take
    `source`: auto, local or hub)."""
    if name == "generated":
        import inspect

        from kdlib.data.generated import generate_items

        valid = [p for p in inspect.signature(generate_items).parameters if p not in ("n", "seed", "split")]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            valid_names = ", ".join(valid)
            raise ValueError(f"unknown option {unknown[0]!r} for generated; valid options: {valid_names}")
        _check_option_types(generate_items, options)
        return
    from kdlib.data import loaders

    loaders.check_source(options.get("source", "auto"))
    loaders.check_options(name, {key: value for key, value in options.items() if key != "source"})


def _check_option_types(function, options: dict[str, Any]) -> None:
    """Each option strictly of the type `function` annotates it with (a bool is not an int)."""
    import typing

    from pydantic import ConfigDict, TypeAdapter, ValidationError

    hints = typing.get_type_hints(function)
    for option, value in options.items():
        try:
            TypeAdapter(hints[option], config=ConfigDict(strict=True)).validate_python(value)
        except ValidationError:
            raise ValueError(
                f"option {option!r} of generated must be {hints[option]}, got {value!r}"
            ) from None


def _all_items(name: str, split: str, n: int, *, seed: int, data_dir: str | None, options: dict[str, Any]):
    if name == "generated":
        from kdlib.data.generated import generate_items

        try:
            check_options(name, options)
        except ValueError as error:
            raise ValueError(f"dataset.options: {error}") from None
        return generate_items(n, seed=seed, split=split, **options)
    from kdlib.data.loaders import load_items

    return load_items(name, split, data_dir=data_dir, **options)


def load_split(
    name: str, split: str, n: int, *, seed: int, data_dir: str | None, options: dict[str, Any]
) -> list[QAItem]:
    """`n` items of one split: generated from the seed, or a seeded sample of a real dataset.

    Real datasets load from the data directory (see `kdlib.paths.resolve_data_dir`) or, when online,
    from the HF hub; see `kdlib.data.loaders`.
    """
    items = _all_items(name, split, n, seed=seed, data_dir=data_dir, options=options)
    if len(items) < n:
        raise ValueError(
            f"dataset {name!r} split {split!r} has {len(items)} items, fewer than the {n} asked for"
        )
    return seeded_sample(items, name, split, n, seed=seed)


def seeded_sample(items: list[QAItem], name: str, split: str, n: int, *, seed: int) -> list[QAItem]:
    """The `n` items load_split keeps of a split's `items`: the first n generated ones, or a sample of a
    real dataset seeded by (seed, dataset, split)."""
    if name == "generated":
        return items[:n]
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
