"""CoTempQA's retrieval step by rule, from the facts' time spans.

Every CoTempQA fact reads "<subject> <relation> <object> in <date>." or "... from <date> to <date>.",
with dates at year, month or day precision. The question anchors on one event ("While X was working
for Y, ..."); its supporting facts are that anchor fact and the facts naming a gold answer whose time
span meets the anchor's. Facts naming an answer at another time are distractors, not support.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTH = "|".join(MONTHS)
_DATE = rf"(?:(?:{_MONTH}) \d{{1,2}}, \d{{3,4}}|(?:{_MONTH}), \d{{3,4}}|\d{{3,4}})"
RELATIONS = (
    "holds the position of",
    "works for",
    "worked for",
    "attended",
    "is a member of the",
    "is a member of",
    "plays for",
    "played for",
    "is owned by",
    "is the chair of",
)
_FACT = re.compile(
    rf"^(?P<subject>.+?) (?:{'|'.join(map(re.escape, RELATIONS))}) (?P<object>.+?) "
    rf"(?:in (?P<at>{_DATE})|from (?P<start>{_DATE}) to (?P<end>{_DATE}))\.$"
)
_DATE_PARTS = re.compile(rf"(?:(?P<month>{_MONTH})(?: (?P<day>\d{{1,2}}))?, )?(?P<year>\d{{3,4}})")
_QUESTION_WORD = re.compile(r", (?:which|who|what|where|when|how)\b")


@dataclass(frozen=True)
class TemporalFact:
    subject: str
    object: str
    start: dt.date
    end: dt.date

    def meets(self, other: TemporalFact) -> bool:
        """Whether the two time spans share at least one day."""
        return self.start <= other.end and other.start <= self.end


def date_span(text: str) -> tuple[dt.date, dt.date]:
    """First and last day of a date at its precision: "2019", "March, 2019" or "March 11, 2019"."""
    match = _DATE_PARTS.fullmatch(text)
    if match is None:
        raise ValueError(f"not a CoTempQA date: {text!r}")
    year = int(match["year"])
    if match["month"] is None:
        return dt.date(year, 1, 1), dt.date(year, 12, 31)
    month = MONTHS.index(match["month"]) + 1
    if match["day"] is None:
        return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])
    day = dt.date(year, month, int(match["day"]))
    return day, day


def parse_fact(fact: str) -> TemporalFact | None:
    """The fact's subject, object and time span; None if it does not follow the CoTempQA pattern."""
    match = _FACT.match(fact)
    if match is None:
        return None
    if match["at"]:
        start, end = date_span(match["at"])
    else:
        start, end = date_span(match["start"])[0], date_span(match["end"])[1]
    return TemporalFact(match["subject"], match["object"], start, end)


def supporting_facts(question: str, facts: list[str], answers: list[str]) -> list[int] | None:
    """Indices of the supporting facts in context order; None where the rule does not apply (no anchor
    fact found in the question, or a gold answer without a fact meeting the anchor's time span)."""
    anchor_clause = _QUESTION_WORD.split(question, maxsplit=1)[0]
    parsed = [parse_fact(fact) for fact in facts]
    answer_set = set(answers)

    def names_answer(p: TemporalFact) -> bool:
        return p.subject in answer_set or p.object in answer_set

    anchors = [
        i
        for i, p in enumerate(parsed)
        if p and p.subject in anchor_clause and p.object in anchor_clause and not names_answer(p)
    ]
    answer_facts = [
        i
        for i, p in enumerate(parsed)
        if p and i not in anchors and names_answer(p) and any(p.meets(parsed[a]) for a in anchors)
    ]
    covered = {name for i in answer_facts for name in (parsed[i].subject, parsed[i].object)} & answer_set
    if anchors and covered == answer_set:
        used_anchors = [a for a in anchors if any(parsed[a].meets(parsed[i]) for i in answer_facts)]
        return sorted(used_anchors + answer_facts)
    return None
