"""Checkable traces: a classification step and a retrieval step per item, their text forms, and a verifier.

A trace is `Steps(question_type, fact_ids)`. The gold steps come from each item's metadata, written by
the dataset's decomposer at load time:

* babi: class = task name (annotation); facts = the supporting-fact line ids (annotation).
* cotempqa: class = temporal relation, the subset (annotation); facts = the anchor event's fact and the
  co-temporal facts naming an answer (rule, kdlib.data.temporal; "heuristic" where it does not apply).
* openbookqa: class = relation the core fact states (rule, kdlib.data.openbook); facts = fact1 among
  BM25-ranked open-book distractors (annotation; BM25's silver pick without fact1).
* msmarco, msmarco-sample: class = query type or answerability (annotation); facts = the is_selected
  passages (annotation; BM25's silver pick for an answered query with none selected).
* generated: class = question type, facts = the generator's supporting facts (annotation).

`format_trace` writes steps as text (tagged or plain), `parse_output` reads any text (a teacher's or
a student's) back into its steps and answer, and `score_trace` compares them with gold. Gold facts are
only the facts that support the answer, never every context fact.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pandas as pd

from kdlib.data import registry
from kdlib.data.schema import QAItem

TRACE_FORMATS = ("tagged", "plain")
PERTURBATIONS = ("class", "retrieval", "both", "shuffled")
CORRECT = "correct"
# The steps a verifier must find wrong in each variant: the label of what was perturbed.
EXPECTED_ERRORS: dict[str, frozenset[str]] = {
    CORRECT: frozenset(),
    "class": frozenset({"class"}),
    "retrieval": frozenset({"retrieval"}),
    "both": frozenset({"class", "retrieval"}),
    "shuffled": frozenset({"order"}),
}

RETRIEVAL_SCORES = ("retrieval_precision", "retrieval_recall", "retrieval_exact", "retrieval_ordered")

_CLASS_PREFIX = "The question type is:"
_FACTS_PREFIX = "I need to use the following facts:"
_NO_FACTS = "none."


@dataclass(frozen=True)
class Steps:
    """The two checkable steps: the item's class and the context facts (indices, in the order quoted)."""

    question_type: str
    fact_ids: tuple[int, ...]


@dataclass(frozen=True)
class ParsedOutput:
    """What could be read from a model output; None marks a part that was absent or unreadable."""

    question_type: str | None
    facts_text: str | None
    answer: str | None
    raw: str = field(repr=False, default="")


def has_gold_steps(item: QAItem) -> bool:
    """Whether the item's metadata holds a gold class and supporting facts (open-book datasets)."""
    return item.question_type is not None and item.supporting_facts is not None


def gold_steps(item: QAItem) -> Steps:
    """The rule decomposition: the gold class and supporting facts (in context order) from metadata."""
    if not has_gold_steps(item):
        raise ValueError(
            f"item {item.id}: no gold question_type/supporting_facts in metadata to decompose; dataset "
            f"{item.dataset!r} has no checkable steps (use an open-book dataset: babi, cotempqa, "
            "openbookqa, msmarco, msmarco-sample, generated)"
        )
    bad = [i for i in item.supporting_facts if not 0 <= i < len(item.context)]
    if bad:
        raise ValueError(
            f"item {item.id}: supporting fact ids {bad} are outside its {len(item.context)} facts"
        )
    return Steps(item.question_type, tuple(sorted(set(item.supporting_facts))))


def _as_sentence(fact: str) -> str:
    fact = fact.strip()
    return fact if fact[-1:] in ".!?" else fact + "."


def format_rationale(text: str, fmt: str) -> str:
    """Free-text reasoning in a target: inside <think> tags (tagged) or as it is (plain)."""
    if fmt == "tagged":
        return f"<think>{text}</think>"
    if fmt == "plain":
        return text
    raise ValueError(f"unknown trace format {fmt!r}; choose from {TRACE_FORMATS}")


def format_trace(steps: Steps, item: QAItem, fmt: str) -> str:
    """The reasoning part of a target: class sentence, then the needed facts quoted in the given order."""
    facts = " ".join(_as_sentence(item.context[i]) for i in steps.fact_ids) if steps.fact_ids else _NO_FACTS
    separator = " " if fmt == "tagged" else "\n"
    return format_rationale(f"{_CLASS_PREFIX} {steps.question_type}.{separator}{_FACTS_PREFIX} {facts}", fmt)


def format_answer(answer: str, fmt: str) -> str:
    if fmt == "tagged":
        return f"<answer>{answer}</answer>"
    if fmt == "plain":
        return f"Answer: {answer}"
    raise ValueError(f"unknown trace format {fmt!r}; choose from {TRACE_FORMATS}")


def join_target(fmt: str, *parts: str) -> str:
    """Target parts (reasoning, answer, in either order) as one text: adjacent tags, or one per line."""
    return ("" if fmt == "tagged" else "\n").join(parts)


def format_target(steps: Steps | None, item: QAItem, answer: str, fmt: str) -> str:
    """Trace then answer; with steps=None the answer alone (the no-trace condition)."""
    answer_text = format_answer(answer, fmt)
    if steps is None:
        return answer_text
    return join_target(fmt, format_trace(steps, item, fmt), answer_text)


ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.+?)\s*$", re.M)
_CLASS = re.compile(re.escape(_CLASS_PREFIX) + r"\s*([A-Za-z0-9_\- ]+?)\s*(?:\.|\n|$)", re.I)
_FACTS = re.compile(re.escape(_FACTS_PREFIX) + r"\s*(.*?)\s*(?:</think>|\nAnswer:|<answer>|$)", re.S | re.I)


def parse_output(text: str) -> ParsedOutput:
    """Read class, facts and answer from a tagged or plain trace (either form, or a bare answer)."""
    answer_match = ANSWER_TAG.search(text) or ANSWER_LINE.search(text)
    class_match = _CLASS.search(text)
    facts_match = _FACTS.search(text)
    answer = answer_match.group(1).strip() if answer_match else None
    return ParsedOutput(
        question_type=class_match.group(1).strip() if class_match else None,
        facts_text=facts_match.group(1) if facts_match else None,
        answer=answer or None,
        raw=text,
    )


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: how facts, classes and answers are compared."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@dataclass(frozen=True)
class QuotedFacts:
    """The facts a trace quotes: context facts (normalised, in quoted order, repeats kept) and the count
    of other statements (stretches of text that are no context fact)."""

    context_facts: tuple[str, ...]
    other_statements: int


def quoted_facts(facts_text: str, context: list[str]) -> QuotedFacts:
    """Match a trace's facts step against the item's context, longest context fact first.

    Quoting is judged on normalised text, so punctuation and case do not matter; each stretch of other
    text between quoted facts (a paraphrase, an invented fact) counts as one other statement.
    """
    if normalise(facts_text) in ("", "none"):
        return QuotedFacts((), 0)
    padded = f" {normalise(facts_text)} "
    found: list[tuple[int, str]] = []
    for fact in sorted({normalise(f) for f in context} - {""}, key=len, reverse=True):
        needle, mask = f" {fact} ", " " + "#" * len(fact) + " "  # same length: positions stay valid
        position = padded.find(needle)
        while position >= 0:
            found.append((position, fact))
            padded = padded[:position] + mask + padded[position + len(needle) :]
            position = padded.find(needle, position + len(needle) - 1)
    leftover = [piece for piece in re.split(r"#+", padded) if len(re.findall(r"[a-z0-9]+", piece)) >= 2]
    return QuotedFacts(tuple(fact for _, fact in sorted(found)), len(leftover))


def score_trace(parsed: ParsedOutput, item: QAItem, gold: Steps) -> dict[str, float | bool]:
    """Per-step scores against gold: class_correct, retrieval precision/recall/exact/ordered, trace_correct.

    Gold facts are the supporting facts only, never the whole context. Precision and recall compare
    sets of facts; precision counts every quoted statement, including ones that are no context fact.
    retrieval_ordered: the quoted gold facts, in order and with repeats, are the gold sequence (story
    order matters: "Mary got the apple. Mary left the apple. Mary got the apple." counts one apple). A
    missing step scores as wrong. With no gold facts and none quoted, precision and recall are 1.
    trace_correct needs the class, the exact fact set and the order.
    """
    class_correct = parsed.question_type is not None and normalise(parsed.question_type) == normalise(
        gold.question_type
    )
    gold_sequence = [normalise(item.context[i]) for i in gold.fact_ids]
    gold_set = set(gold_sequence)
    if parsed.facts_text is None:
        precision = recall = 0.0
        exact = ordered = False
    else:
        quoted = quoted_facts(parsed.facts_text, item.context)
        quoted_set = set(quoted.context_facts)
        hits = len(quoted_set & gold_set)
        n_quoted = len(quoted_set) + quoted.other_statements
        precision = hits / n_quoted if n_quoted else float(not gold_set)
        recall = hits / len(gold_set) if gold_set else float(not n_quoted)
        exact = quoted_set == gold_set and quoted.other_statements == 0
        ordered = [fact for fact in quoted.context_facts if fact in gold_set] == gold_sequence
    return {
        "trace_parsed": parsed.question_type is not None and parsed.facts_text is not None,
        "class_correct": class_correct,
        "retrieval_precision": precision,
        "retrieval_recall": recall,
        "retrieval_exact": exact,
        "retrieval_ordered": ordered,
        "trace_correct": class_correct and exact and ordered,
    }


def step_errors(scores: dict[str, float | bool]) -> frozenset[str]:
    """Which steps a scored trace gets wrong: a subset of {"class", "retrieval", "order"}."""
    errors = set()
    if not scores["class_correct"]:
        errors.add("class")
    if not scores["retrieval_exact"]:
        errors.add("retrieval")
    elif not scores["retrieval_ordered"]:
        errors.add("order")
    return frozenset(errors)


def perturb(
    steps: Steps, item: QAItem, kind: str, classes: tuple[str, ...], rng: random.Random
) -> Steps | None:
    """An incorrect version of `steps`: a wrong class, non-supporting facts, both, or shuffled facts.

    Wrong facts are drawn from the item's non-supporting context facts (by text, so a repeat of a
    supporting sentence is never drawn), as many as gold has (at least one). Shuffled keeps the
    supporting facts but quotes them in another order (as text: swapping two copies of one sentence
    does not count). Returns None where the kind cannot apply: no non-supporting fact to draw from, or
    fewer than two distinct supporting facts to shuffle.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")
    question_type, fact_ids = steps.question_type, steps.fact_ids
    if kind in ("class", "both"):
        others = [c for c in classes if c != steps.question_type]
        if not others:
            raise ValueError(f"item {item.id}: cannot perturb the class, only {classes} are known")
        question_type = rng.choice(others)
    if kind in ("retrieval", "both"):
        gold_texts = {normalise(item.context[i]) for i in steps.fact_ids}
        distractors = [i for i, fact in enumerate(item.context) if normalise(fact) not in gold_texts]
        if not distractors:
            return None
        fact_ids = tuple(sorted(rng.sample(distractors, min(len(distractors), max(1, len(steps.fact_ids))))))
    if kind == "shuffled":
        texts = [normalise(item.context[i]) for i in steps.fact_ids]
        if len(set(texts)) < 2:
            return None
        shuffled = list(steps.fact_ids)
        while [normalise(item.context[i]) for i in shuffled] == texts:
            rng.shuffle(shuffled)
        fact_ids = tuple(shuffled)
    return Steps(question_type, fact_ids)


def class_inventory(dataset: str, observed: set[str]) -> tuple[str, ...]:
    """The classes a class perturbation may draw from: the dataset's full class set where kdlib knows
    one that holds every observed class (so a 1-task bAbI sample can still get a wrong class), else the
    classes observed. The class sets are the registry's (kdlib.data.registry.Dataset.classes)."""
    inventories = registry.dataset(dataset).classes if dataset in registry.DATASET_NAMES else ()
    for inventory in inventories:
        if observed <= set(inventory):
            return tuple(inventory)
    return tuple(sorted(observed))


DECOMPOSED_COLUMNS = [
    "item_id",
    "dataset",
    "split",
    "variant",
    "question_type",
    "fact_ids",
    "trace",
    "trace_format",
    "class_source",
    "facts_source",
    "n_context",
    "n_facts",
    "trace_words",
]


def decompose(items: list[QAItem], fmt: str, perturbations: list[str], seed: int) -> pd.DataFrame:
    """One row per item and variant (correct, then each perturbation that applies) with its steps.

    Columns: item_id, dataset, split, variant, question_type, fact_ids (in quoted order), trace,
    trace_format, class_source, facts_source, n_context, n_facts, trace_words.
    """
    golds = [gold_steps(item) for item in items]
    observed: dict[str, set[str]] = {}
    for item, gold in zip(items, golds, strict=True):
        observed.setdefault(item.dataset, set()).add(gold.question_type)
    classes = {dataset: class_inventory(dataset, seen) for dataset, seen in observed.items()}
    rows = []
    for item, gold in zip(items, golds, strict=True):
        rng = random.Random(f"{seed}/{item.id}")
        variants = [(CORRECT, gold)] + [
            (kind, perturb(gold, item, kind, classes[item.dataset], rng)) for kind in perturbations
        ]
        for variant, steps in variants:
            if steps is None:
                continue
            trace = format_trace(steps, item, fmt)
            rows.append(
                {
                    "item_id": item.id,
                    "dataset": item.dataset,
                    "split": item.split,
                    "variant": variant,
                    "question_type": steps.question_type,
                    "fact_ids": list(steps.fact_ids),
                    "trace": trace,
                    "trace_format": fmt,
                    "class_source": item.gold_sources["class"],
                    "facts_source": item.gold_sources["facts"],
                    "n_context": len(item.context),
                    "n_facts": len(steps.fact_ids),
                    "trace_words": len(trace.split()),
                }
            )
    return pd.DataFrame(rows, columns=DECOMPOSED_COLUMNS)


def steps_from_row(row) -> Steps:
    return Steps(str(row.question_type), tuple(int(i) for i in row.fact_ids))


def steps_by_item(decomposed: pd.DataFrame) -> dict[str, dict[str, Steps]]:
    """{item_id: {variant: Steps}} from the decomposed table."""
    table: dict[str, dict[str, Steps]] = {}
    for row in decomposed.itertuples(index=False):
        table.setdefault(row.item_id, {})[row.variant] = steps_from_row(row)
    return table


VERIFIER_COLUMNS = [
    "item_id",
    "dataset",
    "variant",
    "trace_parsed",
    "class_correct",
    "retrieval_precision",
    "retrieval_recall",
    "retrieval_exact",
    "retrieval_ordered",
    "trace_correct",
    "errors",
    "detected",
]


def verify_decomposition(items: list[QAItem], decomposed: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """Run the verifier on every decomposed trace, written out in `fmt` with the gold answer appended.

    One row per trace: its scores, `errors` (the steps the verifier finds wrong) and `detected`: whether
    those are exactly the steps its variant perturbed (none for a correct trace).
    """
    by_id = {item.id: item for item in items}
    rows = []
    for row in decomposed.itertuples(index=False):
        item = by_id[row.item_id]
        parsed = parse_output(format_target(steps_from_row(row), item, item.answer, fmt))
        scores = score_trace(parsed, item, gold_steps(item))
        errors = step_errors(scores)
        rows.append(
            {
                "item_id": row.item_id,
                "dataset": item.dataset,
                "variant": row.variant,
                **scores,
                "errors": "+".join(sorted(errors)) or "none",
                "detected": errors == EXPECTED_ERRORS[row.variant],
            }
        )
    return pd.DataFrame(rows, columns=VERIFIER_COLUMNS)


def summarise_verification(check: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and variant: traces checked, the share whose verdict names exactly the perturbed
    steps (`detected`), the share judged correct, and the step scores."""
    return check.groupby(["dataset", "variant"], sort=False).agg(
        traces=("detected", "size"),
        detected=("detected", "mean"),
        judged_correct=("trace_correct", "mean"),
        class_correct=("class_correct", "mean"),
        retrieval_precision=("retrieval_precision", "mean"),
        retrieval_recall=("retrieval_recall", "mean"),
        retrieval_exact=("retrieval_exact", "mean"),
        retrieval_ordered=("retrieval_ordered", "mean"),
    )


def trace_statistics(decomposed: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, over correct traces: items, classes, context size, gold facts, the share of items whose
    gold is the whole context, trace length, and how the gold steps were found."""
    correct = decomposed[decomposed["variant"] == CORRECT]
    stats = correct.groupby("dataset", sort=False).agg(
        items=("item_id", "size"),
        classes=("question_type", "nunique"),
        context_facts=("n_context", "mean"),
        gold_facts=("n_facts", "mean"),
        trace_words=("trace_words", "mean"),
    )
    stats["gold_is_whole_context"] = (
        (correct["n_facts"] == correct["n_context"]).groupby(correct["dataset"], sort=False).mean()
    )
    for step in ("class_source", "facts_source"):
        stats[step] = correct.groupby("dataset", sort=False)[step].agg(
            lambda sources: ", ".join(f"{k} {v}" for k, v in sources.value_counts(dropna=False).items())
        )
    return stats


def perturbation_coverage(decomposed: pd.DataFrame, perturbations: list[str]) -> pd.DataFrame:
    """Per dataset: for each perturbation, the share of items it applies to (it cannot shuffle a single
    fact, or draw a distractor from a context that is all gold)."""
    per_item = decomposed.groupby(["dataset", "variant"]).size().unstack(fill_value=0)
    applied = per_item.reindex(columns=perturbations, fill_value=0)
    return applied.div(per_item.reindex(columns=[CORRECT], fill_value=0)[CORRECT], axis=0)


def example_traces(decomposed: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, every variant of one item: the first item to which every perturbation applies, else
    the first with the most variants. Columns as in `decompose`."""
    picked = []
    for _, rows in decomposed.groupby("dataset", sort=False):
        variants_per_item = rows.groupby("item_id", sort=False)["variant"].nunique()
        picked.append(rows[rows["item_id"] == variants_per_item.idxmax()])
    return pd.concat(picked, ignore_index=True) if picked else decomposed


def check_rationales(items: list[QAItem], traces: pd.DataFrame) -> pd.DataFrame:
    """The retrieval step of free-text rationales (the teacher's, or imported ones), scored like a trace.

    A rationale has no class sentence, so only its facts are checked: the whole text is read as the
    facts step. Returns one row per rationale of an item with gold steps: item_id, source, recipe and
    the retrieval scores.
    """
    by_id = {item.id: item for item in items if item.supporting_facts is not None and item.question_type}
    rows = []
    for row in traces.itertuples(index=False):
        item = by_id.get(row.item_id)
        if item is None:
            continue
        parsed = ParsedOutput(question_type=None, facts_text=str(row.rationale), answer=None)
        scores = score_trace(parsed, item, gold_steps(item))
        rows.append(
            {
                "item_id": row.item_id,
                "source": row.source,
                "recipe": row.recipe,
                **{key: scores[key] for key in RETRIEVAL_SCORES},
            }
        )
    return pd.DataFrame(rows, columns=["item_id", "source", "recipe", *RETRIEVAL_SCORES])


def answer_opening(fmt: str) -> str:
    """The text a target puts before the answer ("<answer>" or "Answer: ")."""
    marker = "\x00"
    return format_answer(marker, fmt).split(marker)[0]
