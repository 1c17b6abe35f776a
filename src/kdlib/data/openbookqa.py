"""OpenBookQA: <data_dir>/openbookqa/OpenBookQA-V1-Sep2018/Data/ (Main/<split>.jsonl, with facts
Additional/<split>_complete.jsonl, the book Main/openbook.txt), or allenai/openbookqa on the hub. The
book's facts and their relations: kdlib.data.openbook.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kdlib.data.openbook import OpenBook, fact_relation
from kdlib.data.records import (
    Options,
    Record,
    choices_and_answer,
    choices_from_columns,
    hub_records,
    jsonl_records,
)
from kdlib.data.schema import (
    ANNOTATION,
    BM25,
    CLASS_SOURCE,
    FACTS_SOURCE,
    QUESTION_TYPE,
    RULE,
    SUPPORTING_FACTS,
    QAItem,
)

_DIR = Path("openbookqa", "OpenBookQA-V1-Sep2018", "Data")
_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _item(record: Record, split: str, with_facts: bool, book: OpenBook | None, distractors: int) -> QAItem:
    """Context: the supporting fact (gold `fact1` with facts, else BM25's silver pick from the book) and
    `distractors` BM25-ranked book facts; none at all without facts and distractors. The class is the
    relation the supporting fact states (see kdlib.data.openbook). humanScore/clarity go to metadata."""
    choices, labels, answer = choices_and_answer(record)
    question = record.field("question.stem", str)
    item_id = f"obqa-{record.field('id', str)}"
    metadata: dict[str, Any] = {"choice_labels": labels, "answer_label": record.field("answerKey", str)}
    gold_fact = record.field("fact1", str) if with_facts else None
    if with_facts:
        metadata |= {"humanScore": record.number("humanScore"), "clarity": record.number("clarity")}
    context: list[str] = []
    if book is not None:
        try:
            context, position = book.context(item_id, question, choices, answer, gold_fact, distractors)
        except ValueError as error:
            raise record.error(str(error)) from None
    elif gold_fact is not None:
        context, position = [gold_fact], 0
    if context:
        metadata |= {
            QUESTION_TYPE: fact_relation(context[position]),
            SUPPORTING_FACTS: [position],
            CLASS_SOURCE: RULE,
            FACTS_SOURCE: ANNOTATION if with_facts else BM25,
        }
    return QAItem(
        id=item_id,
        dataset="openbookqa",
        split=split,
        question=question,
        answer=answer,
        context=context,
        choices=choices,
        metadata={**metadata, **record.provenance},
    )


def _from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    facts = {key: row[key] for key in ("fact1", "humanScore", "clarity") if key in row}
    question = {"stem": row["question_stem"], "choices": choices_from_columns(row["choices"])}
    return {"id": row["id"], "answerKey": row["answerKey"], "question": question, **facts}


def _book_file(root: Path) -> Path:
    return root / _DIR / "Main" / "openbook.txt"


def files(root: Path, split: str, options: Options) -> list[Path]:
    rows = (
        root / _DIR / "Additional" / f"{split}_complete.jsonl"
        if options["with_facts"]
        else root / _DIR / "Main" / f"{split}.jsonl"
    )
    return [rows, _book_file(root)] if options["distractors"] else [rows]


def _book(options: Options, root: Path | None) -> OpenBook | None:
    """The open book when distractors are asked for; the hub has no book, so it is read locally."""
    if not options["distractors"]:
        return None
    if root is None or not _book_file(root).is_file():
        raise FileNotFoundError(
            f"openbookqa distractors need the open book {_DIR}/Main/openbook.txt under the data "
            "directory; set it up or pass distractors: 0"
        )
    return OpenBook.read(_book_file(root))


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """Main/<split>.jsonl, or with facts Additional/<split>_complete.jsonl: the same rows in the same order
    (same ids, stems, choices and answer keys) plus fact1, humanScore, clarity and turkIdAnonymized.
    Distractors come from Main/openbook.txt."""
    book = _book(options, root)
    for record in jsonl_records(files(root, split, options)[0], root):
        yield _item(record, split, options["with_facts"], book, options["distractors"])


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """allenai/openbookqa, config "additional" with facts else "main"; dev -> validation. Distractors
    still need the local open book."""
    book = _book(options, root)
    config = "additional" if options["with_facts"] else "main"
    records = hub_records("allenai/openbookqa", _HUB_SPLITS[split], config=config, adapt=_from_hub)
    for record in records:
        yield _item(record, split, options["with_facts"], book, options["distractors"])
