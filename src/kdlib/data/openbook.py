"""OpenBookQA's two steps: the relation its open-book fact states, and the fact among book distractors.

Classification: OpenBookQA has no question-type annotation, so the class is the relation that the
item's core fact states ("cause-effect", "part-whole", "use", ...), read by ordered rules: the first
pattern that matches names the class, "other" if none does.

Retrieval: the context is the gold fact plus the `k` open-book facts that BM25 ranks highest for the
question and its choices (hard distractors), in an order fixed by the item id. Without the gold fact
(the Main files), the book fact that BM25 ranks first for the question and gold answer is the silver
supporting fact.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from kdlib.data.retrieval import BM25Index
from kdlib.io import read_utf8_lines

RELATION_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        (
            "cause-effect",
            r"^(if|when|as) .+(,| then )|\b(causes?|caused|leads? to|results? in|prevents?|helps?|affects?"
            r"|(has|have) an? (positive|negative|large|small)? ?(impact|effect) on)\b",
        ),
        ("comparison", r"\b(more|less|greater|smaller|larger|faster|slower|higher|lower)\b .*\bthan\b"),
        (
            "definition",
            r"\b(is|are) when\b|\bmeans?\b|\b(is|are) defined as\b|\b(is|are) a measure of\b|\brefers? to\b"
            r"|\b(is|are) the (amount|process|study|ability|act) of\b",
        ),
        ("example", r"\b(an? )?examples? of\b"),
        (
            "part-whole",
            r"\b(is|are) (a )?part of\b|\bcontains?\b|\b(is|are) made (of|up of)\b|\bconsists? of\b"
            r"|\b(is|are) composed of\b|\bincludes?\b",
        ),
        ("use", r"\bused (for|to|in|by|as)\b|\buses?\b"),
        ("source", r"\bsource of\b|\bproduces?\b|\bcomes? from\b|\bprovides?\b"),
        ("location", r"\b(lives?|located|found|occurs?|grows?|exists?) (in|on|at|near)\b|\bhabitat\b"),
        ("requirement", r"\b(requires?|needs?|depends? on|must)\b"),
        (
            "process",
            r"\b(converts?|transforms?|changes?|turns?|becomes?|absorbs?|reflects?|transfers?|conducts?"
            r"|moves?|travels?|forms?|formed)\b",
        ),
        ("capability", r"\bcan\b|\b(is|are) able to\b"),
        (
            "is-a",
            r"\b(is|are) (a|an|the)?\s?(kind|type|form|sort|member) of\b|\b(is|are) an? \b|\b(is|are) \w+s\b",
        ),
        ("property", r"\b(has|have)\b|\b(is|are)\b"),
    )
)
RELATIONS = (*(name for name, _ in RELATION_RULES), "other")


def fact_relation(fact: str) -> str:
    """The relation class of an open-book fact, e.g. "pushing an object requires force" -> requirement."""
    for name, pattern in RELATION_RULES:
        if pattern.search(fact):
            return name
    return "other"


def _normalised(fact: str) -> str:
    return re.sub(r"\W+", " ", fact).strip().lower()


class OpenBook:
    """The open book's facts with a BM25 index over them."""

    def __init__(self, facts: list[str]):
        self.index = BM25Index(facts)
        self._positions: dict[str, list[int]] = {}
        for position, fact in enumerate(facts):
            self._positions.setdefault(_normalised(fact), []).append(position)

    @classmethod
    def read(cls, path: Path) -> OpenBook:
        """openbook.txt: one quoted fact per line; quotes stripped, blank lines skipped."""
        lines = [line.strip().strip('"').strip() for line in read_utf8_lines(path)]
        return cls([line for line in lines if line])

    def context(
        self, item_id: str, question: str, choices: list[str], answer: str, gold_fact: str | None, k: int
    ) -> tuple[list[str], int]:
        """(context facts, position of the supporting fact): the gold (or silver) fact and k distractors.

        Distractors are the book facts BM25 ranks highest for the question and all its choices, never
        the supporting fact itself. The supporting fact's position is drawn from a generator seeded by
        the item id, so the step cannot be solved by position.
        """
        if gold_fact is None:
            silver = self.index.top(f"{question} {answer}", 1)
            if not silver:
                raise ValueError(
                    f"item {item_id}: no open-book fact shares a word with its question and answer"
                )
            gold_fact = self.index.corpus[silver[0]]
        same = self._positions.get(_normalised(gold_fact), [])
        query = " ".join([question, *choices])
        distractors = [self.index.corpus[i] for i in self.index.top(query, k, exclude=same)]
        position = random.Random(f"openbook/{item_id}").randint(0, len(distractors))
        return distractors[:position] + [gold_fact] + distractors[position:], position
