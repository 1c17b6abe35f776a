"""Held-out evaluation: generate trace + answer per item, parse them, and check both against gold."""

from __future__ import annotations

import math

import pandas as pd

from kdlib.analysis import CELL_KEYS
from kdlib.conditions import CHECKABLE_TRACE_TRANSFORMS, evaluation_prompt
from kdlib.data.schema import QAItem
from kdlib.decomposition import gold_steps, normalise, parse_output, score_trace
from kdlib.models import generate_texts, student_prompt
from kdlib.sft import load_trained


def evaluate_outputs(cell: dict, items: list[QAItem], outputs: list[str]) -> pd.DataFrame:
    """One row per item: the cell (student, condition, transform, seed), the output, its parsed answer
    and trace, and their scores.

    An output with no readable answer has answer_parsed=False; it counts as not correct and is
    reported separately through the parse rate, never silently as a wrong label.
    """
    rows = []
    for item, output in zip(items, outputs, strict=True):
        parsed = parse_output(output)
        row = {
            **{key: cell[key] for key in (*CELL_KEYS, "transform")},
            "item_id": item.id,
            "question_type": item.question_type,
            "output": output,
            "parsed_answer": parsed.answer,
            "answer_parsed": parsed.answer is not None,
            "answer_correct": parsed.answer is not None
            and normalise(parsed.answer) == normalise(item.answer),
        }
        row.update(score_trace(parsed, item, gold_steps(item)))
        rows.append(row)
    return pd.DataFrame(rows)


def generate_answers(
    model, tokenizer, transform: str, items: list[QAItem], *, max_new_tokens: int, batch_size: int, desc: str
):
    """Greedy outputs of a student trained under `transform`, asked the way it was trained to answer."""
    prompts = [student_prompt(model, tokenizer, evaluation_prompt(transform, item)) for item in items]
    return generate_texts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaNs for n=0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summarise(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per cell: n, answer accuracy with its 95% CI, parse rate, and trace scores (checkable-trace cells)."""
    rows = []
    for keys, group in predictions.groupby([*CELL_KEYS, "transform"], sort=False):
        n, correct = len(group), int(group["answer_correct"].sum())
        low, high = wilson_interval(correct, n)
        has_trace = keys[-1] in CHECKABLE_TRACE_TRANSFORMS
        rows.append(
            {
                **dict(zip((*CELL_KEYS, "transform"), keys, strict=True)),
                "n": n,
                "accuracy": correct / n,
                "accuracy_ci_low": low,
                "accuracy_ci_high": high,
                "answer_parse_rate": group["answer_parsed"].mean(),
                "trace_parse_rate": group["trace_parsed"].mean() if has_trace else math.nan,
                "trace_accuracy": group["trace_correct"].mean() if has_trace else math.nan,
                "class_accuracy": group["class_correct"].mean() if has_trace else math.nan,
                "retrieval_recall": group["retrieval_recall"].mean() if has_trace else math.nan,
                "retrieval_precision": group["retrieval_precision"].mean() if has_trace else math.nan,
            }
        )
    return pd.DataFrame(rows)


def evaluate_cells(
    run,
    cells: pd.DataFrame,
    items: list[QAItem],
    *,
    device,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
) -> pd.DataFrame:
    """Predictions of every trained cell (rows of sft/summary.csv) of `run` (a RunLayout) on `items`."""
    frames = []
    for cell in cells.to_dict(orient="records"):
        model, tokenizer = load_trained(run.root / "sft" / cell["cell"], device=device, seed=seed)
        label = "/".join(str(cell[k]) for k in CELL_KEYS)
        outputs = generate_answers(
            model,
            tokenizer,
            cell["transform"],
            items,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            desc=label,
        )
        frames.append(evaluate_outputs(cell, items, outputs))
    return pd.concat(frames, ignore_index=True)
