import math

import numpy as np
import pandas as pd
import pytest

from kdlib.analysis import contingency, phi_coefficient
from kdlib.evaluation import wilson_interval


def test_phi_matches_pearson_correlation_of_the_binary_variables():
    rng = np.random.default_rng(0)
    trace = rng.random(200) < 0.5
    answer = np.where(rng.random(200) < 0.7, trace, ~trace)
    table = [
        [int((trace & answer).sum()), int((trace & ~answer).sum())],
        [int((~trace & answer).sum()), int((~trace & ~answer).sum())],
    ]
    assert phi_coefficient(table) == pytest.approx(np.corrcoef(trace, answer)[0, 1])


def test_phi_extremes_and_undefined():
    assert phi_coefficient([[5, 0], [0, 5]]) == pytest.approx(1.0)
    assert phi_coefficient([[0, 5], [5, 0]]) == pytest.approx(-1.0)
    assert math.isnan(phi_coefficient([[0, 0], [3, 4]]))


def test_contingency_counts_and_conditionals():
    predictions = pd.DataFrame(
        {
            "student": ["s"] * 6,
            "condition": ["c"] * 6,
            "seed": [0] * 6,
            "trace_correct": [True, True, True, False, False, False],
            "answer_correct": [True, True, False, True, False, False],
        }
    )
    (row,) = contingency(predictions, "both_steps").to_dict(orient="records")
    assert (row["trace_right_answer_right"], row["trace_right_answer_wrong"]) == (2, 1)
    assert (row["trace_wrong_answer_right"], row["trace_wrong_answer_wrong"]) == (1, 2)
    assert row["p_answer_given_trace_right"] == pytest.approx(2 / 3)
    assert row["p_answer_given_trace_wrong"] == pytest.approx(1 / 3)
    assert row["phi"] == pytest.approx(1 / 3)
    assert (row["student"], row["condition"], row["seed"]) == ("s", "c", 0)
    assert contingency(predictions.iloc[:0], "both_steps").columns.tolist() == list(row)


def test_wilson_interval_contains_the_estimate():
    low, high = wilson_interval(7, 10)
    assert 0 < low < 0.7 < high < 1
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
