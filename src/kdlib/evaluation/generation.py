"""Held-out evaluation: generate trace + answer per item (greedy, and optionally sampled), read the answer
robustly, check answer and trace against gold; and label-first choice scoring (kdlib.evaluation.scoring)
per cell."""

from __future__ import annotations

import math
import re
from functools import partial

import pandas as pd

from kdlib import io
from kdlib.cells import CELL_KEYS, load_trained, trained_digest
from kdlib.data.schema import QAItem, items_digest
from kdlib.evaluation.explanations import explain_cell, gives_explanations
from kdlib.evaluation.scoring import score_choices
from kdlib.models import generate_texts, student_prompt
from kdlib.stats import wilson_interval
from kdlib.traces.decomposition import gold_steps, normalise, parse_output, score_trace
from kdlib.training.conditions import CHECKABLE_TRACE_TRANSFORMS, evaluation_prompt

NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"^\(?([A-Z])\)(?:\s+(.*))?$|^([A-Z])[.:]?(?:\s+(.*))?$", re.S)
_ANSWER_IS = re.compile(r"answer is:?\s*(.+?)\s*(?:[.\n]|$)", re.I)


def as_number(text: str) -> float | None:
    """The number `text` states: digits (commas allowed), or a number word up to twenty; else None."""
    norm = normalise(text)
    if norm in NUMBER_WORDS:
        return float(NUMBER_WORDS.index(norm))
    match = _NUMBER.fullmatch(text.strip().rstrip(".").replace(" ", ""))
    return float(match.group().replace(",", "")) if match else None


def read_answer(answer_text: str | None, item: QAItem) -> str | None:
    """The answer `answer_text` gives, in gold's terms, or None when it cannot be read.

    With choices: a choice's text, its letter ("B", "(B)", "B. text"), a number equal to a numeric
    choice ("2" for "two"), or text containing exactly one choice as whole words. Without: for a numeric
    gold answer the last number in the text; otherwise the text itself (compared normalised).
    """
    if answer_text is None or not normalise(answer_text):
        return None
    text = answer_text.strip()
    if item.choices:
        by_text = {normalise(c): c for c in item.choices}
        if normalise(text) in by_text:
            return by_text[normalise(text)]
        letter = _LETTER.match(text)
        if letter:
            index = ord(letter.group(1) or letter.group(3)) - ord("A")
            rest = letter.group(2) or letter.group(4)
            if index < len(item.choices) and (not rest or normalise(rest) == normalise(item.choices[index])):
                return item.choices[index]
            if rest:  # a letter with other text: contradictory or unreadable
                return None
        number = as_number(text)
        numeric = [c for c in item.choices if number is not None and as_number(c) == number]
        if len(numeric) == 1:
            return numeric[0]
        padded = f" {normalise(text)} "
        named = [c for c in item.choices if f" {normalise(c)} " in padded]
        return named[0] if len(named) == 1 else None
    if as_number(item.answer) is not None:
        numbers = _NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    return text


def answer_text(output: str) -> str | None:
    """The answer part of an output: the answer tag or line, else an "the answer is X" sentence."""
    parsed = parse_output(output).answer
    if parsed is not None:
        return parsed
    match = _ANSWER_IS.search(output)
    return match.group(1) if match else None


def answers_match(answer: str, gold: str) -> bool:
    number, gold_number = as_number(answer), as_number(gold)
    if number is not None and gold_number is not None:
        return number == gold_number
    return normalise(answer) == normalise(gold)


# Datasets whose gold is a set of answers (metadata "answers"): an answer is right when it names all of
# them and nothing else, in any order: the exact match of the CoTempQA scorer, which Bhambri et al. use.
ANSWER_SET_DATASETS = frozenset({"cotempqa"})
_LIST_WORDS = frozenset({"and"})


def names_answer_set(answer: str, golds: list[str]) -> bool:
    """Whether `answer` names every gold (normalised, whole words, any order, repeats allowed) and
    nothing else but commas and "and". Stricter than the CoTempQA scorer, which drops words that name
    none of the context's entities."""
    rest = f" {normalise(answer)} "
    for gold in sorted({normalise(g) for g in golds}, key=len, reverse=True):  # "titular bishop" first
        if f" {gold} " not in rest:
            return False
        while f" {gold} " in rest:
            rest = rest.replace(f" {gold} ", " ")
    return set(rest.split()) <= _LIST_WORDS


def answer_is_correct(answer: str | None, item: QAItem) -> bool:
    """Whether a read answer (read_answer; None when unreadable) is right for `item`."""
    if answer is None:
        return False
    if item.dataset in ANSWER_SET_DATASETS:
        return names_answer_set(answer, item.metadata["answers"])
    return answers_match(answer, item.answer)


def evaluate_outputs(cell: dict, items: list[QAItem], outputs: list[str]) -> pd.DataFrame:
    """One row per item: the cell (student, condition, transform, seed), the output, its answer as
    written and as read (read_answer), the answer's score, and for items with gold steps the trace's.

    An output whose answer cannot be read has answer_parsed=False; it counts as not correct and is
    reported separately through the parse rate, never silently as a wrong label.
    """
    rows = []
    for item, output in zip(items, outputs, strict=True):
        written = answer_text(output)
        answer = read_answer(written, item)
        row = {
            **{key: cell[key] for key in (*CELL_KEYS, "transform")},
            "item_id": item.id,
            "question_type": item.question_type,
            "output": output,
            "parsed_answer": written,
            "read_answer": answer,
            "answer_parsed": answer is not None,
            "answer_correct": answer_is_correct(answer, item),
        }
        if item.question_type is not None and item.supporting_facts is not None:  # checkable steps
            row.update(score_trace(parse_output(output), item, gold_steps(item)))
        rows.append(row)
    return pd.DataFrame(rows)


def generate_answers(
    model,
    tokenizer,
    transform: str,
    items: list[QAItem],
    *,
    max_new_tokens: int,
    batch_size: int,
    desc: str,
    **decoding,
) -> list[str]:
    """Outputs of a student trained under `transform`, asked the way it was trained to answer; greedy
    unless `decoding` sets a temperature (see models.iter_generate)."""
    prompts = [student_prompt(model, tokenizer, evaluation_prompt(transform, item)) for item in items]
    return generate_texts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc, **decoding
    )


def _cell_frames(frame: pd.DataFrame | None, keys: tuple) -> pd.DataFrame | None:
    if frame is None or frame.empty:
        return None
    mask = (frame[list(CELL_KEYS)] == pd.Series(dict(zip(CELL_KEYS, keys[:3], strict=True)))).all(axis=1)
    return frame[mask] if mask.any() else None


def _rate_with_interval(name: str, hits: pd.Series | None) -> dict[str, float]:
    if hits is None:
        return {name: math.nan, f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan}
    low, high = wilson_interval(int(hits.sum()), len(hits))
    return {name: hits.mean(), f"{name}_ci_low": low, f"{name}_ci_high": high}


METRIC_COLUMNS = [  # the headline columns of metrics.csv
    *CELL_KEYS,
    "n",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "answer_parse_rate",
    "trace_accuracy",
    "label_first_acc",
    "label_first_acc_ci_low",
    "label_first_acc_ci_high",
]


def summarise(
    predictions: pd.DataFrame, samples: pd.DataFrame | None = None, choice_scores: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per cell: greedy answer accuracy with its 95% Wilson CI and parse rate, trace scores
    (checkable-trace cells), sampled accuracy and parse rate, and label-first acc / acc_norm with CIs."""
    rows = []
    for keys, group in predictions.groupby([*CELL_KEYS, "transform"], sort=False):
        has_trace = keys[-1] in CHECKABLE_TRACE_TRANSFORMS
        cell_samples, cell_scores = _cell_frames(samples, keys), _cell_frames(choice_scores, keys)
        rows.append(
            {
                **dict(zip((*CELL_KEYS, "transform"), keys, strict=True)),
                "n": len(group),
                **_rate_with_interval("accuracy", group["answer_correct"]),
                "answer_parse_rate": group["answer_parsed"].mean(),
                "trace_parse_rate": group["trace_parsed"].mean() if has_trace else math.nan,
                "trace_accuracy": group["trace_correct"].mean() if has_trace else math.nan,
                "class_accuracy": group["class_correct"].mean() if has_trace else math.nan,
                "retrieval_recall": group["retrieval_recall"].mean() if has_trace else math.nan,
                "retrieval_precision": group["retrieval_precision"].mean() if has_trace else math.nan,
                "sample_accuracy": cell_samples["answer_correct"].mean()
                if cell_samples is not None
                else math.nan,
                "sample_parse_rate": cell_samples["answer_parsed"].mean()
                if cell_samples is not None
                else math.nan,
                **_rate_with_interval("label_first_acc", None if cell_scores is None else cell_scores["acc"]),
                **_rate_with_interval(
                    "label_first_acc_norm", None if cell_scores is None else cell_scores["acc_norm"]
                ),
            }
        )
    return pd.DataFrame(rows)


def evaluate_cell(cell_dir, cell: dict, items: list[QAItem], *, device, seed: int, params) -> dict:
    """One trained cell (a row of sft/summary.csv) on `items` under EvaluationParams `params`:
    {"predictions": greedy rows, "samples": sampled rows (sample k uses seed + k), "choice_scores":
    label-first rows of the items with choices, "explanations": kdlib.evaluation.explanations.explain_cell
    rows}
    (None where a frame does not apply)."""
    model, tokenizer = load_trained(cell_dir, device=device, seed=seed)
    label = "/".join(str(cell[k]) for k in CELL_KEYS)
    generation = params.generation
    settings = {"max_new_tokens": params.max_new_tokens, "batch_size": params.batch_size}
    transform = cell["transform"]
    fmt = io.read_json(cell_dir / "meta.json")["params"]["trace_format"]
    outputs = generate_answers(model, tokenizer, transform, items, desc=f"{label} greedy", **settings)
    frames = {
        "predictions": evaluate_outputs(cell, items, outputs),
        "samples": [],
        "choice_scores": None,
        "explanations": None,
    }
    if params.explanations.enabled and gives_explanations(transform):
        frames["explanations"] = explain_cell(
            model,
            tokenizer,
            cell,
            fmt,
            items[: params.explanations.n_items],
            frames["predictions"],
            desc=f"{label} explain",
            **settings,
        )
    sampling = {"temperature": generation.temperature, "top_p": generation.top_p}
    for k in range(generation.samples):
        desc = f"{label} sample {k}"
        outputs = generate_answers(
            model, tokenizer, transform, items, desc=desc, seed=seed + k, **settings, **sampling
        )
        frames["samples"].append(evaluate_outputs(cell, items, outputs).assign(sample=k))
    frames["samples"] = pd.concat(frames["samples"], ignore_index=True) if frames["samples"] else None
    with_choices = [item for item in items if item.choices]
    if params.label_first and with_choices:
        desc = f"{label} choices"
        scores = score_choices(
            model, tokenizer, transform, fmt, with_choices, batch_size=params.batch_size, desc=desc
        )
        frames["choice_scores"] = scores.assign(**{key: cell[key] for key in (*CELL_KEYS, "transform")})
    return frames


FRAME_NAMES = ("predictions", "samples", "choice_scores", "explanations")


def evaluation_key(cell_dir, items: list[QAItem], *, seed: int, params) -> dict:
    """What one cell's evaluation frames depend on: the trained cell, the items, the seed and the
    EvaluationParams that evaluate_cell reads (not the lens or the judge)."""
    return {
        "trained_cell": trained_digest(cell_dir),
        "items": items_digest(items),
        "seed": seed,
        "evaluation": params.model_dump(
            include={"max_new_tokens", "batch_size", "label_first", "generation"}
        ),
        "explanations": params.explanations.model_dump(include={"enabled", "n_items"}),
    }


def rescored(cell: dict, items: list[QAItem], frames: dict) -> dict:
    """`frames` with the greedy and sampled rows scored again from their stored outputs, so that a
    reused cell is scored by today's rules: the store saves generation, and scoring is cheap."""
    predictions = evaluate_outputs(cell, items, frames["predictions"]["output"].tolist())
    samples = frames["samples"]
    if samples is not None:
        samples = pd.concat(
            [
                evaluate_outputs(cell, items, group["output"].tolist()).assign(sample=k)
                for k, group in samples.groupby("sample", sort=True)
            ],
            ignore_index=True,
        )
    return {**frames, "predictions": predictions, "samples": samples}


def evaluate_cells(run, cells: pd.DataFrame, items: list[QAItem], *, device, seed: int, params) -> dict:
    """evaluate_cell for every row of sft/summary.csv of `run` (a RunLayout), frames stacked, plus
    "cells": one row per cell with its status. Each cell's frames are kept under
    run.evaluated_cell(cell, "outputs") and reused while evaluation_key is unchanged."""
    per_cell, statuses = [], []
    for cell in cells.to_dict(orient="records"):
        cell_dir = run.trained_cell(cell["cell"])
        frames, reused = io.stored_frames(
            run.evaluated_cell(cell["cell"], "outputs"),
            evaluation_key(cell_dir, items, seed=seed, params=params),
            partial(evaluate_cell, cell_dir, cell, items, device=device, seed=seed, params=params),
        )
        if reused:
            frames = rescored(cell, items, frames)
        per_cell.append(frames)
        statuses.append({"cell": cell["cell"], "status": "evaluated earlier" if reused else "evaluated"})
    stacked = {
        name: pd.concat([c[name] for c in per_cell if c[name] is not None], ignore_index=True)
        if any(c[name] is not None for c in per_cell)
        else pd.DataFrame()
        for name in FRAME_NAMES
    }
    return {**stacked, "cells": pd.DataFrame(statuses, columns=["cell", "status"])}
