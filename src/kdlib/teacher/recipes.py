"""Versioned prompt recipes: how the teacher is asked for a rationale, and how its answer is read back.

| recipe            | asks for                                                   | label in the row      |
|-------------------|------------------------------------------------------------|-----------------------|
| cot_label_last    | few-shot CoT ending "So the answer is X."                  | parsed from the text  |
| label_first       | "The answer is X because ..."                              | parsed from the text  |
| rationalize       | an explanation of the gold answer (given in the prompt)    | the gold answer       |
| critique_revision | rationalize, then (critique request, revision request)*    | the gold answer       |
| counterfactual    | an explanation of each wrong choice, one row per choice    | that wrong choice     |

A recipe's text is versioned: change a template and bump its version, so rows keep saying which prompt
made them (`prompt_id` "name/vN"). The cache keys on the full prompt text in any case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdlib.data.schema import QAItem
from kdlib.io import read_yaml
from kdlib.teacher.backends import Backend, Decoding, Message, Request
from kdlib.teacher.cache import GenerationCache, generate_cached
from kdlib.teacher.rationales import (
    LETTERS,
    label_first,
    label_last,
    rule_rationale,
    split_label_first,
    split_label_last,
    strip_restated_label,
    trace_row,
    traces_frame,
)

LLM_SOURCE = "llm"


@dataclass(frozen=True)
class Exemplar:
    """A worked example shown to the teacher: a question, its answer and a reasoning without the label."""

    question: str
    answer: str
    rationale: str
    choices: tuple[str, ...] = ()
    context: tuple[str, ...] = ()


@dataclass(frozen=True)
class CritiqueRevision:
    """One critique request and the revision request that follows it."""

    critique: str
    revision: str


DEFAULT_CRITIQUE_REVISION = (
    CritiqueRevision(
        "Point out the specific ways in which your explanation is inaccurate, vague or incomplete, "
        "and what it would need to show why this answer is right.",
        "Rewrite your explanation so that it fixes every problem in the critique. Keep it short, "
        "accurate and specific, and say briefly why the other choices are worse.",
    ),
)


def question_block(
    question: str, choices: tuple[str, ...] | list[str], context: tuple[str, ...] | list[str]
) -> str:
    parts = []
    if context:
        parts.append("Facts: " + " ".join(context))
    parts.append(f"Question: {question}")
    if choices:
        parts.append("Choices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)))
    return "\n".join(parts)


def item_block(item: QAItem) -> str:
    return question_block(item.question, item.choices or [], item.context or [])


def exemplar_block(ex: Exemplar) -> str:
    return question_block(ex.question, ex.choices, ex.context)


def exemplars_from_items(items: list[QAItem]) -> list[Exemplar]:
    """Exemplars written by rule from gold supporting facts; an item without them is an error."""
    missing = [item.id for item in items if item.supporting_facts is None]
    if missing:
        raise ValueError(
            f"items {missing} have no gold supporting facts to write exemplar rationales from: "
            "set generation.n_shots to 0 or give generation.exemplars_file"
        )
    return [
        Exemplar(
            question=item.question,
            answer=item.answer,
            rationale=rule_rationale(item),
            choices=tuple(item.choices or ()),
            context=tuple(item.context or ()),
        )
        for item in items
    ]


def load_exemplars(path: str | Path) -> list[Exemplar]:
    """Exemplars from a YAML list of {question, answer, rationale, choices?, context?} mappings."""
    entries = read_yaml(path, "exemplars file")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty YAML list of exemplars")
    exemplars = []
    allowed = {"question", "answer", "rationale", "choices", "context"}
    for n, entry in enumerate(entries, start=1):
        where = f"{path}: exemplar {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = sorted(set(entry) - allowed)
        missing = sorted({"question", "answer", "rationale"} - set(entry))
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
        exemplars.append(
            Exemplar(
                question=str(entry["question"]),
                answer=str(entry["answer"]),
                rationale=str(entry["rationale"]),
                choices=tuple(entry.get("choices") or ()),
                context=tuple(entry.get("context") or ()),
            )
        )
    return exemplars


# --- templates ----------------------------------------------------------------------------------------

COT_SYSTEM = (
    "Answer the question. Reason step by step from what you know and the facts given, "
    "then end with 'So the answer is <answer>.'"
)
LABEL_FIRST_SYSTEM = (
    "Answer the question. Start with 'The answer is <answer> because' and then give the reasons."
)
RATIONALIZE_SYSTEM = (
    "You are given a question and its answer. Explain in one or two sentences why that answer is the "
    "right one. Do not repeat the question."
)


def _few_shot(system: str, shots: list[tuple[str, str]], ask: str) -> list[Message]:
    messages = [{"role": "system", "content": system}]
    for user, assistant in shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return [*messages, {"role": "user", "content": ask}]


def cot_label_last_messages(item: QAItem, exemplars: list[Exemplar]) -> list[Message]:
    shots = [(exemplar_block(ex), label_last(ex.rationale, ex.answer)) for ex in exemplars]
    return _few_shot(COT_SYSTEM, shots, item_block(item))


def label_first_messages(item: QAItem, exemplars: list[Exemplar]) -> list[Message]:
    shots = [(exemplar_block(ex), label_first(ex.rationale, ex.answer)) for ex in exemplars]
    return _few_shot(LABEL_FIRST_SYSTEM, shots, item_block(item))


def rationalize_messages(item: QAItem, exemplars: list[Exemplar], answer: str) -> list[Message]:
    """Ask for an explanation of `answer`: the gold answer, or a wrong choice for counterfactuals."""
    shots = [(f"{exemplar_block(ex)}\nAnswer: {ex.answer}", ex.rationale) for ex in exemplars]
    return _few_shot(RATIONALIZE_SYSTEM, shots, f"{item_block(item)}\nAnswer: {answer}")


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    conditioned: bool  # the label is given to the teacher, not predicted by it
    summary: str

    @property
    def prompt_id(self) -> str:
        return f"{self.name}/v{self.version}"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("cot_label_last", 1, False, "few-shot CoT, label last"),
        Recipe("label_first", 1, False, "label first, then 'because' and the reasons"),
        Recipe("rationalize", 1, True, "explain the gold answer, which the prompt gives"),
        Recipe("critique_revision", 1, True, "rationalize, then critique and revise it, per request pair"),
        Recipe("counterfactual", 1, True, "explain each wrong choice as if it were right"),
    )
}


@dataclass(frozen=True)
class _Job:
    item: QAItem
    target: str | None  # the label the teacher is asked to explain (None: it predicts one)
    messages: list[Message]
    sample: int


def recipe_jobs(recipe: str, items: list[QAItem], exemplars: list[Exemplar], samples: int) -> list[_Job]:
    build: dict[str, Callable[[QAItem], list[tuple[str | None, list[Message]]]]] = {
        "cot_label_last": lambda it: [(None, cot_label_last_messages(it, exemplars))],
        "label_first": lambda it: [(None, label_first_messages(it, exemplars))],
        "rationalize": lambda it: [(it.answer, rationalize_messages(it, exemplars, it.answer))],
        "critique_revision": lambda it: [(it.answer, rationalize_messages(it, exemplars, it.answer))],
        "counterfactual": lambda it: [
            (choice, rationalize_messages(it, exemplars, choice)) for choice in _wrong_choices(it)
        ],
    }
    return [
        _Job(item, target, messages, sample)
        for item in items
        for target, messages in build[recipe](item)
        for sample in range(samples)
    ]


def _wrong_choices(item: QAItem) -> list[str]:
    if not item.choices:
        raise ValueError(f"item {item.id}: the counterfactual recipe needs multiple-choice items")
    return [c for c in item.choices if c != item.answer]


def generate_rationales(
    recipe_name: str,
    items: list[QAItem],
    exemplars: list[Exemplar],
    backend: Backend,
    cache: GenerationCache,
    decoding: Decoding,
    *,
    samples: int = 1,
    critique_revision: tuple[CritiqueRevision, ...] = DEFAULT_CRITIQUE_REVISION,
    model_name: str,
) -> pd.DataFrame:
    """Rationale rows (see rationales.TRACE_COLUMNS) for `items` under one recipe, `samples` per prompt."""
    recipe = RECIPES[recipe_name]
    jobs = recipe_jobs(recipe_name, items, exemplars, samples)
    texts = generate_cached(backend, cache, [Request.of(j.messages, j.sample) for j in jobs], decoding)
    critiques: list[str | None] = [None] * len(jobs)
    if recipe_name == "critique_revision":
        for pair in critique_revision:
            asked = [
                [*j.messages, {"role": "assistant", "content": t}, {"role": "user", "content": pair.critique}]
                for j, t in zip(jobs, texts, strict=True)
            ]
            critiques = generate_cached(
                backend, cache, [Request.of(m, j.sample) for m, j in zip(asked, jobs, strict=True)], decoding
            )
            revise = [
                [*m, {"role": "assistant", "content": c}, {"role": "user", "content": pair.revision}]
                for m, c in zip(asked, critiques, strict=True)
            ]
            texts = generate_cached(
                backend, cache, [Request.of(m, j.sample) for m, j in zip(revise, jobs, strict=True)], decoding
            )
    rows = []
    for job, text, critique in zip(jobs, texts, critiques, strict=True):
        if recipe.conditioned:
            rationale, label = strip_restated_label(text, job.target), job.target
        elif recipe_name == "label_first":
            rationale, label = split_label_first(text, job.item)
        else:
            rationale, label = split_label_last(text, job.item)
        rows.append(
            trace_row(
                job.item,
                source=LLM_SOURCE,
                model=model_name,
                prompt_id=recipe.prompt_id,
                recipe=recipe_name,
                rationale=rationale,
                completion=text,
                parsed_label=label,
                label_source="conditioned" if recipe.conditioned else "parsed",
                target_label=job.target,
                sample=job.sample,
                critique=critique,
            )
        )
    return traces_frame(rows)
