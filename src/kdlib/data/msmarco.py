"""MS MARCO v2.1: <data_dir>/msmarco/{train,dev}.jsonl in the hub's row shape, or microsoft/ms_marco on the
hub; and msmarco-sample, its rows generated offline by kdlib.data.msmarco_sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kdlib.data.msmarco_sample import NO_ANSWER, sample_rows
from kdlib.data.records import Options, Record, hub_records, jsonl_records
from kdlib.data.retrieval import BM25Index
from kdlib.data.schema import (
    ANNOTATION,
    BM25,
    CLASS_SOURCE,
    FACTS_SOURCE,
    QUESTION_TYPE,
    SUPPORTING_FACTS,
    QAItem,
)

MSMARCO_CLASSES = ("query_type", "answerability")
MSMARCO_QUERY_TYPES = ("description", "numeric", "entity", "location", "person")
MSMARCO_ANSWERABILITY = ("answerable", "unanswerable")
_HUB_SPLITS = {"train": "train", "dev": "validation"}


def _item(record: Record, split: str, dataset: str, classify: str) -> QAItem:
    """Context: the query's passages. Supporting facts: the passages marked is_selected; for an answered
    query with none marked, the passage BM25 ranks first for the query and answer (silver). Unanswerable
    queries ("No Answer Present.") have none. The class is the query type (description, numeric,
    entity, location, person) or, with classify "answerability", answerable/unanswerable."""
    texts = record.strings("passages.passage_text")
    selected = record.field("passages.is_selected", list)
    if len(selected) != len(texts) or not all(flag in (0, 1) for flag in selected):
        raise record.error("key 'passages.is_selected' must hold one 0/1 flag per passage")
    if not texts:
        raise record.error("key 'passages.passage_text' is an empty list")
    answers = record.strings("answers")
    answerable = bool(answers) and answers[0] != NO_ANSWER
    support = [i for i, flag in enumerate(selected) if flag]
    facts_source = ANNOTATION
    if answerable and not support:
        support = BM25Index(texts).top(f"{record.field('query', str)} {answers[0]}", 1)
        facts_source = BM25
    if not answerable:
        support = []
    query_type = record.field("query_type", str).lower()
    return QAItem(
        id=f"{dataset}-{record.field('query_id', int)}",
        dataset=dataset,
        split=split,
        question=record.field("query", str),
        answer=answers[0] if answerable else NO_ANSWER,
        context=texts,
        metadata={
            QUESTION_TYPE: query_type
            if classify == "query_type"
            else ("answerable" if answerable else "unanswerable"),
            SUPPORTING_FACTS: support,
            CLASS_SOURCE: ANNOTATION,
            FACTS_SOURCE: facts_source,
            "query_type": query_type,
            "answers": answers,
            "well_formed_answers": record.strings("wellFormedAnswers"),
            "urls": record.strings("passages.url"),
            **record.provenance,
        },
    )


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "msmarco" / f"{split}.jsonl"]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """msmarco/<split>.jsonl: rows in the hub's shape (e.g. written by `Dataset.to_json`)."""
    for record in jsonl_records(files(root, split, options)[0], root):
        yield _item(record, split, "msmarco", options["classify"])


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """microsoft/ms_marco, config v2.1; dev -> validation (the test split has no answers)."""
    for record in hub_records("microsoft/ms_marco", _HUB_SPLITS[split], config="v2.1"):
        yield _item(record, split, "msmarco", options["classify"])


def sample_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """Generated rows (kdlib.data.msmarco_sample), converted exactly like hub rows."""
    source = "generated:msmarco-sample"
    for row_number, row in enumerate(sample_rows(options["rows"], seed=options["seed"], split=split), 1):
        record = Record(row, f"{source}:{split}", row_number, f"{source}:{split} row {row_number}")
        yield _item(record, split, "msmarco-sample", options["classify"])
