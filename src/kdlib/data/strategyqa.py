"""StrategyQA: <data_dir>/strategyqa/{train,dev}.json (the authors' split of the official train set), or
ChilleD/StrategyQA on the hub.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kdlib.data.records import Options, Record, hub_records, json_array_records
from kdlib.data.schema import ANNOTATION, FACTS_SOURCE, SUPPORTING_FACTS, QAItem

_HUB_SPLITS = {"train": "train", "dev": "test"}


def _item(record: Record, split: str) -> QAItem:
    """Answer "yes"/"no"; context is the human-written facts, all of which are the gold support."""
    facts = record.strings("facts")
    return QAItem(
        id=f"strategyqa-{record.field('qid', str)}",
        dataset="strategyqa",
        split=split,
        question=record.field("question", str),
        answer="yes" if record.field("answer", bool) else "no",
        context=facts,
        choices=["yes", "no"],
        metadata={
            SUPPORTING_FACTS: list(range(len(facts))),
            FACTS_SOURCE: ANNOTATION,
            "decomposition": record.strings("decomposition"),
            **record.provenance,
        },
    )


def _from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    """Wraps facts stored as one string into a one-element list; decomposition is [] where absent."""
    facts = row.get("facts")
    return {
        **row,
        "facts": [facts] if isinstance(facts, str) else facts,
        "decomposition": row.get("decomposition", []),
    }


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "strategyqa" / f"{split}.json"]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """strategyqa/{train,dev}.json: the authors' 90/10 split (2,061/229) of the official train set."""
    for record in json_array_records(files(root, split, options)[0], root):
        yield _item(record, split)


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """ChilleD/StrategyQA, whose train/test is a different random split of the official train questions
    than the local one; its test is served as "dev". Do not mix hub and local StrategyQA splits."""
    records = hub_records("ChilleD/StrategyQA", _HUB_SPLITS[split], adapt=_from_hub)
    for record in records:
        yield _item(record, split)
