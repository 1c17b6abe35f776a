"""Rationale rows: their schema, rule-written rationales, label parsing, the label-leak check and filters.

Every rationale, generated or imported, is one row of TRACE_COLUMNS:

* `rationale` is the reasoning without the label statement; `completion` is the teacher's text as returned;
* `parsed_label` is the label the rationale argues for: parsed from the text for free CoT
  (`label_source` "parsed"), or the label the teacher was asked to explain for rationalisations and
  counterfactuals (`label_source` "conditioned");
* `target_label` is that conditioning label (None for free CoT); `gold_label` the dataset's answer;
* `critique` is the last critique a critique_revision rationale was revised after (None elsewhere);
* `leak_spans` are [start, end) character spans of `rationale` that state the label (its text or its
  choice letter), so conditions that must not see the label can drop the row or mask the spans;
* `unparseable` says why a teacher output cannot be used (empty, too long, not valid UTF-8, no answer,
  no reasoning), else None. Such rows are kept in the table, so that they are counted, and dropped by
  the filters.
"""

from __future__ import annotations

import re
import string

import pandas as pd

from kdlib.data.schema import QAItem

TRACE_COLUMNS = [
    "item_id",
    "split",
    "source",
    "model",
    "prompt_id",
    "recipe",
    "sample",
    "rationale",
    "completion",
    "parsed_label",
    "label_source",
    "target_label",
    "gold_label",
    "label_correct",
    "leaks_label",
    "leak_spans",
    "critique",
    "unparseable",
]
RULE_SOURCE = "rule"
MAX_COMPLETION_CHARS = 16_000  # about 4k tokens: longer teacher outputs are runaway generations
LETTERS = string.ascii_lowercase

_YES_NO = re.compile(r"Is (.+) in the (.+)\?")


def rule_rationale(item: QAItem) -> str:
    """Reasoning written by rule from the gold supporting facts (no label statement)."""
    facts = [item.context[i] for i in item.supporting_facts or []]
    qtype = item.question_type
    if qtype == "counting" and not facts:
        return "No fact says that they picked anything up."
    if qtype == "yes_no" and facts:
        person, asked = _YES_NO.match(item.question).groups()
        place = facts[0].rstrip(".").split()[-1]
        where = f"the {place}" if place == asked else f"the {place}, not the {asked}"
        return f"{facts[0]} So {person} is in {where}."
    return " ".join(facts) if facts else "No context fact is needed."


def label_last(rationale: str, label: str) -> str:
    return f"{rationale} So the answer is {label}."


def label_first(rationale: str, label: str) -> str:
    body = rationale[:1].lower() + rationale[1:]
    return f"The answer is {label} because {body}"


def rule_traces(items: list[QAItem]) -> pd.DataFrame:
    rows = []
    for item in items:
        body = rule_rationale(item)
        rows.append(
            trace_row(
                item,
                source=RULE_SOURCE,
                model="rule",
                prompt_id="rule/v1",
                recipe="rule",
                rationale=body,
                completion=label_last(body, item.answer),
                parsed_label=item.answer,
                label_source="parsed",
            )
        )
    return traces_frame(rows)


def traces_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TRACE_COLUMNS)


def trace_row(
    item: QAItem,
    *,
    source: str,
    model: str,
    prompt_id: str,
    recipe: str,
    rationale: str,
    completion: str,
    parsed_label: str | None,
    label_source: str,
    target_label: str | None = None,
    sample: int = 0,
    critique: str | None = None,
) -> dict:
    problem = unparseable_reason(completion, rationale, parsed_label, label_source)
    if problem and problem.startswith("too long"):
        rationale, completion, parsed_label = "", completion[:MAX_COMPLETION_CHARS], None
    spans = leak_spans(rationale, parsed_label, item.choices) if parsed_label else []
    return {
        "item_id": item.id,
        "split": item.split,
        "source": source,
        "model": model,
        "prompt_id": prompt_id,
        "recipe": recipe,
        "sample": sample,
        "rationale": rationale,
        "completion": completion,
        "parsed_label": parsed_label,
        "label_source": label_source,
        "target_label": target_label,
        "gold_label": item.answer,
        "label_correct": parsed_label is not None and labels_match(parsed_label, item.answer),
        "leaks_label": bool(spans),
        "leak_spans": [list(span) for span in spans],
        "critique": critique,
        "unparseable": problem,
    }


def unparseable_reason(
    completion: str, rationale: str, parsed_label: str | None, label_source: str
) -> str | None:
    """Why a teacher output is unusable, or None: empty, too long, not valid UTF-8 (replacement
    characters), no answer found (for free reasoning, whose label is parsed from the text), or an
    answer with no reasoning beside it."""
    if not completion.strip():
        return "empty"
    if len(completion) > MAX_COMPLETION_CHARS:
        return f"too long ({len(completion)} characters > {MAX_COMPLETION_CHARS})"
    if "\ufffd" in completion:
        return "not valid UTF-8"
    if label_source == "parsed" and parsed_label is None:
        return "no answer"
    if not rationale.strip():
        return "no reasoning"
    return None


def labels_match(a: str, b: str) -> bool:
    return _norm(a) == _norm(b)


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip(".'\"").split())


# --- label parsing ------------------------------------------------------------------------------------

_ANSWER_IS = re.compile(r"(?:the\s+)?answer\s+is\s*:?\s*", re.I)
_CHOICE_LETTER = re.compile(r"^\(?([a-z])\)(?:\s+|$)|^([a-z])$", re.I)


def match_choice(label: str, choices: list[str]) -> str | None:
    """A free-text label as one of `choices`: by its text, or by its letter "(c)" / "(c) text" / "c"."""
    label = label.strip().strip("'\"").strip()
    by_text = {_norm(c): c for c in choices}
    if _norm(label) in by_text:
        return by_text[_norm(label)]
    letter = _CHOICE_LETTER.match(label)
    if letter:
        rest = _norm(label[letter.end() :])
        if rest in by_text:
            return by_text[rest]
        index = LETTERS.index((letter.group(1) or letter.group(2)).lower())
        # "(c) skyscraper" for choice (c) "skyscrapers": the letter decides when the text is its stem
        if index < len(choices) and (not rest or rest.rstrip("s") == _norm(choices[index]).rstrip("s")):
            return choices[index]
    return None


def _clean_label(raw: str, item: QAItem) -> str | None:
    if item.choices:
        return match_choice(raw, item.choices)
    return raw.strip().strip("'\"").strip() or None


def split_label_last(text: str, item: QAItem) -> tuple[str, str | None]:
    """(reasoning, label) for "... So the answer is X." texts; the label is None when none parses."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return text.strip(), None
    last = matches[-1]
    raw = re.split(r"\.(?:\s|$)|\n", text[last.end() :], maxsplit=1)[0]
    body = re.sub(r"\b(?:so|therefore|thus|hence)[,:]?\s*$", "", text[: last.start()].rstrip(), flags=re.I)
    return body.strip(), _clean_label(raw, item)


def split_label_first(text: str, item: QAItem) -> tuple[str, str | None]:
    """(reasoning, label) for "The answer is X because ..." texts."""
    first = _ANSWER_IS.search(text)
    if not first or first.start() > 40:
        return text.strip(), None
    rest = text[first.end() :]
    because = re.search(r"\s*(?:,\s*)?\bbecause\b\s*|\.(?:\s+|$)", rest, re.I)
    if not because:
        return "", _clean_label(rest, item)
    body = rest[because.end() :].strip()
    return body[:1].upper() + body[1:], _clean_label(rest[: because.start()], item)


def strip_restated_label(text: str, label: str) -> str:
    """Rationalisations often restate "The answer is X." first; drop that sentence."""
    match = re.match(r"\s*(?:the\s+)?(?:correct\s+)?answer\s+is\s*:?\s*([^.\n]*)[.\n]\s*", text, re.I)
    if match and (labels_match(match.group(1), label) or label.lower() in match.group(1).lower()):
        return text[match.end() :].strip()
    return text.strip()


# --- label leaks --------------------------------------------------------------------------------------


def leak_spans(rationale: str, label: str, choices: list[str] | None = None) -> list[tuple[int, int]]:
    """[start, end) spans of `rationale` that state `label`: its text (plurals too), or its choice letter
    written as "(c)", "option c", "choice c" or "answer c"."""
    patterns = []
    if label.strip():
        words = r"\s+".join(re.escape(w) for w in label.split())
        patterns.append(rf"(?<!\w){words}(?:s|es)?(?!\w)")
    if choices and label in choices:
        letter = LETTERS[choices.index(label)]
        patterns.append(rf"\({letter}\)|\b(?:option|choice|answer)\s+\(?{letter}\b\)?")
    spans = [m.span() for p in patterns for m in re.finditer(p, rationale, re.I)]
    return sorted(set(spans))


# --- filters and summaries ----------------------------------------------------------------------------


def filter_traces(
    traces: pd.DataFrame,
    *,
    drop_unparseable: bool,
    keep_label_correct: bool,
    drop_duplicates: bool,
    drop_leaking: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows, per-source/recipe counts of rows in and of rows each filter dropped).

    Duplicates are rationales equal after lower-casing and whitespace folding, per item, source and
    recipe (so several samples that came out identical count once)."""
    groups = ["source", "recipe"]
    report = traces.groupby(groups).size().rename("rows_in").to_frame()
    kept = traces
    steps = [
        ("dropped_unparseable", drop_unparseable, lambda t: t[t["unparseable"].isna()]),
        ("dropped_label_wrong", keep_label_correct, lambda t: t[t["label_correct"]]),
        (
            "dropped_duplicate",
            drop_duplicates,
            lambda t: t[~t.assign(_norm=t["rationale"].map(_norm)).duplicated(["item_id", *groups, "_norm"])],
        ),
        ("dropped_leaking", drop_leaking, lambda t: t[~t["leaks_label"]]),
    ]
    for name, active, keep in steps:
        after = keep(kept) if active else kept
        before_counts = kept.groupby(groups).size()
        after_counts = after.groupby(groups).size().reindex(before_counts.index, fill_value=0)
        report[name] = (before_counts - after_counts).reindex(report.index, fill_value=0)
        kept = after
    report["rows_kept"] = kept.groupby(groups).size().reindex(report.index, fill_value=0)
    return kept.reset_index(drop=True), report.reset_index()


def unparseable_counts(traces: pd.DataFrame) -> pd.Series:
    """Rows recorded as unparseable, per source, recipe and reason."""
    unparseable = traces.dropna(subset=["unparseable"])
    return unparseable.groupby(["source", "recipe", "unparseable"]).size().rename("rows")


def summarise_traces(traces: pd.DataFrame) -> pd.DataFrame:
    """Per source and recipe: rows, items, label parse rate, agreement with gold, leak rate, mean words."""
    return (
        traces.groupby(["source", "recipe"])
        .agg(
            rationales=("item_id", "size"),
            items=("item_id", "nunique"),
            parse_rate=("parsed_label", lambda s: s.notna().mean()),
            agreement_with_gold=("label_correct", "mean"),
            leak_rate=("leaks_label", "mean"),
            mean_words=("rationale", lambda s: s.str.split().str.len().mean()),
        )
        .reset_index()
    )
