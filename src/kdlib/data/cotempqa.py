"""CoTempQA: <data_dir>/cotempqa/<subset>.json (JSON Lines), subsets equal, overlap, mix and during, or
Warrieryes/CotempQA on the hub. Its supporting facts by time-span rule: kdlib.data.temporal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kdlib.data.records import Options, Record, hub_records, jsonl_records
from kdlib.data.schema import (
    ANNOTATION,
    CLASS_SOURCE,
    FACTS_SOURCE,
    HEURISTIC,
    QUESTION_TYPE,
    RULE,
    SUPPORTING_FACTS,
    QAItem,
)
from kdlib.data.temporal import supporting_facts as temporal_supporting_facts

COTEMPQA_SUBSETS = ("equal", "overlap", "mix", "during")
_NAME_CONTINUES_BEFORE = re.compile(r"(?<!\w)[A-Z][\w'.&-]*(?:,| of| of the)? $")
_NAME_CONTINUES_AFTER = re.compile(r" (?:\(|of\b|[A-Z0-9])")


def _names(fact: str, answer: str) -> bool:
    """Whether `fact` mentions `answer` as a whole name, not inside a longer one ("Maersk" in "Maersk Line",
    "Amsterdam" in "University of Amsterdam", "Holy Roman Emperor" in "Frederick III, Holy Roman Emperor")."""
    for match in re.finditer(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", fact):
        if not (
            _NAME_CONTINUES_BEFORE.search(fact, 0, match.start())
            or _NAME_CONTINUES_AFTER.match(fact, match.end())
        ):
            return True
    return False


def _item(record: Record, subset: str) -> QAItem:
    """The class is the subset (the temporal relation). The supporting facts are found by the time-span
    rule of kdlib.data.temporal: the anchor event's fact and the co-temporal facts naming an answer.
    Where it does not apply, they are the facts that name an answer (see `_names`; facts_source
    "heuristic"), which can miss the anchor fact and include a distractor naming the answer."""
    facts = record.strings("facts")
    answers = record.strings("answer")
    if not answers:
        raise record.error("key 'answer' is an empty list")
    question = record.field("question", str)
    support = temporal_supporting_facts(question, facts, answers)
    facts_source = RULE
    if support is None:
        support = [i for i, fact in enumerate(facts) if any(_names(fact, a) for a in answers)]
        facts_source = HEURISTIC
    return QAItem(
        id=f"cotempqa-{subset}-{record.field('index', int)}",
        dataset="cotempqa",
        split="test",
        question=question,
        answer=", ".join(answers),
        context=facts,
        metadata={
            QUESTION_TYPE: subset,
            SUPPORTING_FACTS: support,
            CLASS_SOURCE: ANNOTATION,
            FACTS_SOURCE: facts_source,
            "answers": answers,
            "triple_element": record.field("triple_element", str),
            **record.provenance,
        },
    )


def _file(root: Path, subset: str) -> Path:
    return root / "cotempqa" / f"{subset}.json"


def _subsets(root: Path, options: Options) -> tuple[str, ...]:
    """The chosen subsets, or by default every subset whose file is present (all of them if none is)."""
    if options["subsets"] is not None:
        return options["subsets"]
    present = tuple(s for s in COTEMPQA_SUBSETS if _file(root, s).is_file())
    return present or COTEMPQA_SUBSETS


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [_file(root, subset) for subset in _subsets(root, options)]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """cotempqa/<subset>.json (JSON Lines despite the name); the only split is "test"."""
    for subset in _subsets(root, options):
        for record in jsonl_records(_file(root, subset), root):
            yield _item(record, subset)


def hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """Warrieryes/CotempQA/<subset>.json; all four subsets by default."""
    for subset in options["subsets"] or COTEMPQA_SUBSETS:
        for record in hub_records("Warrieryes/CotempQA", split, data_file=f"{subset}.json"):
            yield _item(record, subset)
