"""CommonsenseQA (random split): <data_dir>/commonsenseqa/{train,dev}_rand_split.jsonl, or tau/commonsense_qa
on the hub. The test file has no answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kdlib.data.records import (
    Options,
    Record,
    choices_and_answer,
    choices_from_columns,
    hub_records,
    jsonl_records,
)
from kdlib.data.schema import QAItem

_FILES = {"train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"}
_HUB_SPLITS = {"train": "train", "dev": "validation"}


def _item(record: Record, split: str) -> QAItem:
    choices, labels, answer = choices_and_answer(record)
    return QAItem(
        id=f"csqa-{record.field('id', str)}",
        dataset="commonsenseqa",
        split=split,
        question=record.field("question.stem", str),
        answer=answer,
        choices=choices,
        metadata={
            "choice_labels": labels,
            "answer_label": record.field("answerKey", str),
            "question_concept": record.field("question.question_concept", str),
            **record.provenance,
        },
    )


def _from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    question = {"stem": row["question"], "question_concept": row["question_concept"]}
    return {
        "id": row["id"],
        "answerKey": row["answerKey"],
        "question": {**question, "choices": choices_from_columns(row["choices"])},
    }


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "commonsenseqa" / _FILES[split]]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """CommonsenseQA random split: train -> train_rand_split.jsonl, dev -> dev_rand_split.jsonl."""
    for record in jsonl_records(files(root, split, options)[0], root):
        yield _item(record, split)


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """tau/commonsense_qa: train -> train, dev -> validation."""
    for record in hub_records("tau/commonsense_qa", _HUB_SPLITS[split], adapt=_from_hub):
        yield _item(record, split)
