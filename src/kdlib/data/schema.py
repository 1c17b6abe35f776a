"""The one example schema every loader produces: an open-book or multiple-choice QA item."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

# Metadata keys with a fixed meaning across datasets (all optional):
#   question_type     str        the class that the decomposition's classification step must recover
#   supporting_facts  list[int]  indices into `context` of the facts that support the answer (gold only)
#   class_source      str        how question_type was found: one of GOLD_SOURCES
#   facts_source      str        how supporting_facts were found: one of GOLD_SOURCES
#   source_file       str        file the row came from; source_line int, its 1-based line
QUESTION_TYPE = "question_type"
SUPPORTING_FACTS = "supporting_facts"
CLASS_SOURCE = "class_source"
FACTS_SOURCE = "facts_source"
# annotation: given by the dataset; rule: derived by a documented rule from annotated fields; bm25: a
# lexical retriever's top hit (silver); heuristic: a fallback where the rule does not apply.
ANNOTATION, RULE, BM25, HEURISTIC = "annotation", "rule", "bm25", "heuristic"
GOLD_SOURCES = (ANNOTATION, RULE, BM25, HEURISTIC)


@dataclass(frozen=True)
class QAItem:
    """A question with optional context facts, optional answer choices and one gold answer.

    For multiple-choice items `answer` is the text of the gold choice and `choices` lists all
    choice texts in order; `answer_index` gives the gold position. Open-answer items leave
    `choices` empty unless the answer set is closed (e.g. yes/no), in which case it lists it.
    """

    id: str
    dataset: str
    split: str
    question: str
    answer: str
    context: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError(f"QAItem in dataset {self.dataset!r} has an empty id")
        if self.choices and self.answer not in self.choices:
            raise ValueError(
                f"QAItem {self.id!r}: answer {self.answer!r} is not among choices {self.choices}"
            )

    @property
    def answer_index(self) -> int | None:
        return self.choices.index(self.answer) if self.choices else None

    @property
    def question_type(self) -> str | None:
        return self.metadata.get(QUESTION_TYPE)

    @property
    def supporting_facts(self) -> list[int] | None:
        facts = self.metadata.get(SUPPORTING_FACTS)
        return None if facts is None else list(facts)

    @property
    def gold_sources(self) -> dict[str, str | None]:
        """{"class": ..., "facts": ...}: how each gold step was found (see GOLD_SOURCES)."""
        return {"class": self.metadata.get(CLASS_SOURCE), "facts": self.metadata.get(FACTS_SOURCE)}


ITEM_COLUMNS = [f for f in QAItem.__dataclass_fields__]
CONTEXT_KEPT = "context_kept"  # metadata: "kept/total" statements after keep_context


def keep_context(item: QAItem, max_statements: int) -> QAItem:
    """`item` with at most `max_statements` context statements (0: all): every supporting fact, then the
    statements nearest the end of the context (in bAbI, the latest events), in their order; the
    supporting-fact positions follow. Supporting facts alone over the limit are all kept."""
    context = item.context
    if not max_statements or len(context) <= max_statements:
        return item
    support = set(item.metadata.get(SUPPORTING_FACTS, []))
    others = [i for i in range(len(context)) if i not in support]
    room = max(max_statements - len(support), 0)
    kept = sorted(support | set(others[len(others) - room :] if room else []))
    position = {old: new for new, old in enumerate(kept)}
    metadata = {
        **item.metadata,
        SUPPORTING_FACTS: [position[i] for i in item.metadata.get(SUPPORTING_FACTS, [])],
        CONTEXT_KEPT: f"{len(kept)}/{len(context)}",
    }
    return replace(item, context=[context[i] for i in kept], metadata=metadata)


def items_to_frame(items: Iterable[QAItem]) -> pd.DataFrame:
    """One row per item; `metadata` is stored as a JSON string so that parquet keeps any shape.

    A derived `question_type` column is added for reading; `frame_to_items` ignores it.
    """
    rows = []
    for item in items:
        row = asdict(item)
        row["metadata"] = json.dumps(row["metadata"], sort_keys=True)
        row["question_type"] = item.question_type
        rows.append(row)
    return pd.DataFrame(rows, columns=[*ITEM_COLUMNS, "question_type"])


def frame_to_items(frame: pd.DataFrame, role: str | None = None) -> list[QAItem]:
    """Inverse of `items_to_frame`; with `role` ("train" or "eval"), only the rows of that role."""
    missing = set(ITEM_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"items table lacks columns {sorted(missing)}")
    if role is not None:
        frame = frame[frame["role"] == role]
    return [
        QAItem(
            id=str(r.id),
            dataset=str(r.dataset),
            split=str(r.split),
            question=str(r.question),
            answer=str(r.answer),
            context=[str(c) for c in r.context],
            choices=[str(c) for c in r.choices],
            metadata=json.loads(r.metadata),
        )
        for r in frame.itertuples(index=False)
    ]


def items_digest(items: Iterable[QAItem]) -> str:
    """sha256 of the items' fields, in order: what a cached per-item result was computed on."""
    fields = [asdict(item) for item in items]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
