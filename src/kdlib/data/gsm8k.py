"""GSM8K: <data_dir>/gsm8k/{train,test}.jsonl, or openai/gsm8k (config main) on the hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kdlib.data.records import Options, Record, hub_records, jsonl_records
from kdlib.data.schema import QAItem


def _item(record: Record, split: str, position: int) -> QAItem:
    """Answer: the number after the final "####" with thousands commas removed; metadata["solution"]: all."""
    solution = record.field("answer", str)
    _, marker, final = solution.rpartition("####")
    if not marker or not final.strip():
        raise record.error("key 'answer' has no final '#### <number>' line")
    return QAItem(
        id=f"gsm8k-{split}-{position}",
        dataset="gsm8k",
        split=split,
        question=record.field("question", str),
        answer=final.strip().replace(",", ""),
        metadata={"solution": solution, **record.provenance},
    )


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "gsm8k" / f"{split}.jsonl"]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """gsm8k/{train,test}.jsonl; ids count rows from 0."""
    for position, record in enumerate(jsonl_records(files(root, split, options)[0], root)):
        yield _item(record, split, position)


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """openai/gsm8k, config "main"."""
    for position, record in enumerate(hub_records("openai/gsm8k", split, config="main")):
        yield _item(record, split, position)
