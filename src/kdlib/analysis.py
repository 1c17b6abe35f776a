"""Trace correctness against answer correctness: 2x2 tables, the phi coefficient and conditional rates."""

from __future__ import annotations

import math

import pandas as pd

CELL_KEYS = ("student", "condition", "seed")  # what names one cell of the training grid
TRACE_CRITERIA = {
    "both_steps": "trace_correct",
    "classification": "class_correct",
    "retrieval": "retrieval_exact",
}


def phi_coefficient(table: list[list[int]]) -> float:
    """phi of a 2x2 table [[a, b], [c, d]] (rows: trace right/wrong, columns: answer right/wrong).

    NaN when a row or column is empty, where phi is undefined.
    """
    (a, b), (c, d) = table
    denominator = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return (a * d - b * c) / denominator if denominator else math.nan


CONTINGENCY_COLUMNS = [
    *CELL_KEYS,
    "criterion",
    "trace_right_answer_right",
    "trace_right_answer_wrong",
    "trace_wrong_answer_right",
    "trace_wrong_answer_wrong",
    "phi",
    "p_answer_given_trace_right",
    "p_answer_given_trace_wrong",
]


def contingency(predictions: pd.DataFrame, criterion: str) -> pd.DataFrame:
    """Per cell (student, condition, seed): the 2x2 counts, phi, and P(answer right | trace right / wrong)."""
    trace_column = TRACE_CRITERIA[criterion]
    rows = []
    for (student, condition, seed), group in predictions.groupby(list(CELL_KEYS), sort=False):
        trace = group[trace_column].astype(bool)
        answer = group["answer_correct"].astype(bool)
        a, b = int((trace & answer).sum()), int((trace & ~answer).sum())
        c, d = int((~trace & answer).sum()), int((~trace & ~answer).sum())
        rows.append(
            {
                "student": student,
                "condition": condition,
                "seed": seed,
                "criterion": criterion,
                "trace_right_answer_right": a,
                "trace_right_answer_wrong": b,
                "trace_wrong_answer_right": c,
                "trace_wrong_answer_wrong": d,
                "phi": phi_coefficient([[a, b], [c, d]]),
                "p_answer_given_trace_right": a / (a + b) if a + b else math.nan,
                "p_answer_given_trace_wrong": c / (c + d) if c + d else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=CONTINGENCY_COLUMNS)
