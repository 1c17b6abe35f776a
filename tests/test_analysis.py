import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdlib.analysis.tables import (
    cell_summary,
    checkable_traces,
    cochran_q,
    contingency,
    describe_contingency,
    flag_runs,
    group_tests,
    item_outcomes,
    paired_comparisons,
    phi_coefficient,
    point_biserial,
    seed_summary,
    with_graded_scores,
    with_joint_share,
)
from kdlib.stats import bootstrap_interval, difference_range, t_interval, value_range, wilson_interval
from tests.helpers import accuracy_outcomes


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


def _cell_predictions(trace, answer, *, condition="c", seed=0, cls=None, exact=None):
    n = len(trace)
    return pd.DataFrame(
        {
            "student": ["s"] * n,
            "condition": [condition] * n,
            "seed": [seed] * n,
            "transform": ["correct_trace"] * n,
            "item_id": [f"i{k}" for k in range(n)],
            "trace_correct": trace,
            "class_correct": trace if cls is None else cls,
            "retrieval_exact": trace if exact is None else exact,
            "answer_correct": answer,
        }
    )


def test_contingency_counts_conditionals_and_tests():
    predictions = _cell_predictions(
        [True, True, True, False, False, False], [True, True, False, True, False, False]
    )
    rows = contingency(predictions, n_resamples=200).set_index("criterion")
    assert list(rows.index) == ["both_steps", "classification", "retrieval"]
    row = rows.loc["both_steps"]
    assert (row["trace_right_answer_right"], row["trace_right_answer_wrong"]) == (2, 1)
    assert (row["trace_wrong_answer_right"], row["trace_wrong_answer_wrong"]) == (1, 2)
    assert row["p_answer_given_trace_right"] == pytest.approx(2 / 3)
    assert row["p_answer_given_trace_wrong"] == pytest.approx(1 / 3)
    assert row["p_difference"] == pytest.approx(1 / 3)
    assert row["phi"] == pytest.approx(1 / 3)
    assert row["fisher_p"] == pytest.approx(stats.fisher_exact([[2, 1], [1, 2]])[1])
    assert row["p_answer_given_trace_right_ci_low"] < 2 / 3 < row["p_answer_given_trace_right_ci_high"]
    assert (row["student"], row["condition"], row["seed"]) == ("s", "c", 0)
    assert contingency(predictions.iloc[:0]).columns.tolist() == contingency(predictions).columns.tolist()


def test_joint_share_divides_by_every_item_and_the_conditional_by_right_traces():
    # 10 items: 4 right traces, 3 of them with a right answer; 2 right answers after the 6 wrong traces
    trace = [True] * 4 + [False] * 6
    answer = [True, True, True, False, True, True, False, False, False, False]
    row = contingency(_cell_predictions(trace, answer), ("both_steps",), n_resamples=50).iloc[0]
    assert row["p_trace_right_and_answer_right"] == pytest.approx(3 / 10)
    assert row["p_answer_given_trace_right"] == pytest.approx(3 / 4)
    assert row["p_answer_given_trace_wrong"] == pytest.approx(2 / 6)
    low, high = wilson_interval(3, 10)
    assert (row["p_trace_right_and_answer_right_ci_low"], row["p_trace_right_and_answer_right_ci_high"]) == (
        pytest.approx(low),
        pytest.approx(high),
    )
    assert "both right on 30% of all items" in describe_contingency(pd.DataFrame([row]))[0]


def test_with_joint_share_fills_a_contingency_file_written_before_the_column(tmp_path):
    rng = np.random.default_rng(4)
    trace, answer = rng.random(50) < 0.5, rng.random(50) < 0.6
    table = contingency(_cell_predictions(trace, answer), n_resamples=50)
    joint = [c for c in table.columns if c.startswith("p_trace_right_and_answer_right")]
    table.drop(columns=joint).to_csv(tmp_path / "contingency.csv", index=False)
    filled = with_joint_share(pd.read_csv(tmp_path / "contingency.csv"))
    pd.testing.assert_frame_equal(filled[joint], table[joint], check_dtype=False)
    assert filled.loc[0, "p_trace_right_and_answer_right"] == (trace & answer).sum() / 50


def test_contingency_reads_each_criterion_from_its_own_step():
    trace = [True, False, False, False]
    cls = [True, True, True, False]
    exact = [True, False, True, True]
    predictions = _cell_predictions(trace, [True, True, False, False], cls=cls, exact=exact)
    rows = contingency(predictions, n_resamples=50).set_index("criterion")
    assert rows.loc["both_steps", "trace_accuracy"] == 0.25
    assert rows.loc["classification", "trace_accuracy"] == 0.75
    assert rows.loc["retrieval", "trace_accuracy"] == 0.75


def test_chi_square_is_pearsons_uncorrected_test():
    rng = np.random.default_rng(1)
    trace = rng.random(80) < 0.4
    answer = np.where(rng.random(80) < 0.65, trace, ~trace)
    row = contingency(_cell_predictions(trace, answer), ("both_steps",), n_resamples=50).iloc[0]
    table = [
        [row["trace_right_answer_right"], row["trace_right_answer_wrong"]],
        [row["trace_wrong_answer_right"], row["trace_wrong_answer_wrong"]],
    ]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert row["chi2"] == pytest.approx(chi2)
    assert row["chi2_p"] == pytest.approx(p)


def test_contingency_when_no_trace_is_right():
    row = contingency(_cell_predictions([False] * 4, [True, False, True, False]), n_resamples=50).iloc[0]
    assert math.isnan(row["phi"]) and math.isnan(row["chi2_p"]) and math.isnan(row["phi_ci_low"])
    assert math.isnan(row["p_answer_given_trace_right"]) and row["p_answer_given_trace_wrong"] == 0.5
    assert row["fisher_p"] == 1.0


def test_phi_bootstrap_interval_covers_a_strong_association_and_is_seeded():
    rng = np.random.default_rng(2)
    trace = rng.random(300) < 0.5
    answer = np.where(rng.random(300) < 0.9, trace, ~trace)
    predictions = _cell_predictions(trace, answer)
    first = contingency(predictions, ("both_steps",), n_resamples=500, seed=3).iloc[0]
    again = contingency(predictions, ("both_steps",), n_resamples=500, seed=3).iloc[0]
    assert first["phi_ci_low"] < first["phi"] < first["phi_ci_high"]
    assert first["phi_ci_low"] > 0.6 and first["phi_ci_high"] < 0.95
    assert (first["phi_ci_low"], first["phi_ci_high"]) == (again["phi_ci_low"], again["phi_ci_high"])


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(4).normal(size=150)
    ours = bootstrap_interval(lambda x: x.mean(-1), values, n_resamples=4000, confidence=0.9, seed=0)
    theirs = stats.bootstrap(
        (values,), np.mean, n_resamples=4000, confidence_level=0.9, method="percentile", random_state=0
    ).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03)
    assert (
        bootstrap_interval(lambda x: x.mean(-1), values[:0], n_resamples=10, confidence=0.9, seed=0)[0] != 0
    )


def test_t_interval_by_hand():
    low, high = t_interval([0.6, 0.7, 0.8])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (low, high) == pytest.approx((0.7 - half, 0.7 + half))
    assert all(math.isnan(v) for v in t_interval([0.5]))
    assert t_interval([0.6, 0.7, 0.8], bounds=(0.0, 0.75)) == pytest.approx((0.7 - half, 0.75))


def test_value_ranges():
    assert value_range("accuracy") == (0, 1) and value_range("trace_accuracy") == (0, 1)
    assert value_range("phi") == (-1, 1) and value_range("judge_plausibility") == (1, 5)
    assert difference_range(value_range("human_completeness")) == (-4, 4)


def test_wilson_interval_contains_the_estimate():
    low, high = wilson_interval(7, 10)
    assert 0 < low < 0.7 < high < 1
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_graded_scores_and_point_biserial_equal_pearson_r():
    rng = np.random.default_rng(5)
    n = 60
    answer = rng.random(n) < 0.5
    recall = np.clip(answer * 0.4 + rng.random(n) * 0.6, 0, 1)
    predictions = _cell_predictions(rng.random(n) < 0.5, answer).assign(
        retrieval_recall=recall, retrieval_precision=np.where(np.arange(n) % 2, recall, 0.0)
    )
    graded = with_graded_scores(predictions)
    odd = graded.iloc[1]
    assert odd["retrieval_f1"] == pytest.approx(odd["retrieval_recall"])
    assert graded.iloc[0]["retrieval_f1"] == 0.0
    f1 = np.where(np.arange(n) % 2, recall, 0.0)  # precision is recall on odd rows, 0 on even ones
    assert graded["step_score"].to_numpy() == pytest.approx((predictions["class_correct"] + f1) / 2)
    rows = point_biserial(predictions).set_index("score")
    assert rows.loc["retrieval_recall", "r"] == pytest.approx(np.corrcoef(answer, recall)[0, 1])
    assert rows.loc["retrieval_recall", "r"] > 0.3 and rows.loc["retrieval_recall", "p"] < 0.05
    assert (
        rows.loc["retrieval_recall", "mean_score_answer_right"]
        > rows.loc["retrieval_recall", "mean_score_answer_wrong"]
    )
    constant = point_biserial(predictions.assign(retrieval_recall=0.5)).set_index("score")
    assert math.isnan(constant.loc["retrieval_recall", "r"])


def test_mcnemar_exact_p_by_hand():
    # 10 items right only under a, 2 only under b, 3 right under both, 5 under neither
    a = [1] * 10 + [0] * 2 + [1] * 3 + [0] * 5
    b = [0] * 10 + [1] * 2 + [1] * 3 + [0] * 5
    outcomes = accuracy_outcomes({"a": a, "b": b})
    (row,) = paired_comparisons(outcomes, n_resamples=200).to_dict(orient="records")
    assert (row["a_right_b_wrong"], row["a_wrong_b_right"]) == (10, 2)
    assert row["mcnemar_exact"]
    assert row["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 P(X <= 2), X ~ Bin(12, 1/2)
    assert row["difference"] == pytest.approx(8 / 20)
    assert row["difference_ci_low"] > 0 and row["p_holm"] == row["mcnemar_p"]


def test_paired_comparisons_pair_items_by_id_and_adjust_within_a_family():
    outcomes = accuracy_outcomes({"x": [1, 1, 0, 0], "y": [1, 0, 0, 0], "z": [0, 0, 0, 1]})
    # y's items in reverse order: pairing must follow item_id, not row order
    outcomes = pd.concat(
        [outcomes[outcomes["condition"] != "y"], outcomes[outcomes["condition"] == "y"][::-1]]
    )
    table = paired_comparisons(outcomes, n_resamples=100)
    assert len(table) == 3
    xy = table[(table["condition_a"] == "x") & (table["condition_b"] == "y")].iloc[0]
    assert (xy["a_right_b_wrong"], xy["a_wrong_b_right"]) == (1, 0)
    assert (table["p_holm"] >= table["mcnemar_p"]).all()
    against = paired_comparisons(outcomes, baseline="z", n_resamples=100)
    assert set(zip(against["condition_a"], against["condition_b"], strict=True)) == {("x", "z"), ("y", "z")}


def test_paired_comparisons_on_graded_metrics_skip_mcnemar():
    outcomes = accuracy_outcomes({"a": [4, 5, 3], "b": [2, 2, 3]}).assign(metric="judge_plausibility")
    row = paired_comparisons(outcomes, n_resamples=100).iloc[0]
    assert row["difference"] == pytest.approx(5 / 3) and math.isnan(row["mcnemar_p"])


def test_cochran_q_agrees_with_the_formula():
    rng = np.random.default_rng(6)
    x = (rng.random((40, 3)) < [0.3, 0.5, 0.8]).astype(int)
    outcomes = accuracy_outcomes({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    (row,) = cochran_q(outcomes).to_dict(orient="records")
    k, column, row_totals = 3, x.sum(0), x.sum(1)
    q = (k - 1) * (k * (column**2).sum() - column.sum() ** 2) / (k * row_totals.sum() - (row_totals**2).sum())
    assert row["q"] == pytest.approx(q)
    assert row["p"] == pytest.approx(stats.chi2.sf(q, k - 1))
    assert cochran_q(accuracy_outcomes({"a": [1, 0], "b": [0, 1]})).empty  # two conditions: McNemar's job


def test_cell_and_seed_summaries():
    seeds = [accuracy_outcomes({"a": [1, 1, 0, 0]}, seed=0), accuracy_outcomes({"a": [1, 1, 1, 0]}, seed=1)]
    outcomes = pd.concat(seeds, ignore_index=True)
    cells = cell_summary(outcomes, n_resamples=200)
    assert cells["value"].tolist() == [0.5, 0.75]
    assert (cells["ci_low"] <= cells["value"]).all() and (cells["value"] <= cells["ci_high"]).all()
    (row,) = seed_summary(cells).to_dict(orient="records")
    assert row["n_seeds"] == 2 and row["seeds"] == "0 1" and row["mean"] == 0.625
    unclipped = t_interval([0.5, 0.75])
    assert (
        unclipped[0] < 0 and unclipped[1] > 1
    )  # two seeds: a wide t interval, clipped to what a rate can be
    assert (row["ci_low"], row["ci_high"]) == (0.0, 1.0)


def test_item_outcomes_stack_accuracy_label_first_and_judge_ratings():
    predictions = _cell_predictions([True, False], [True, False])
    choice_scores = predictions[["student", "condition", "seed", "transform", "item_id"]].assign(
        acc=[False, True]
    )
    explanations = choice_scores.drop(columns="acc").assign(explanation_id=["e0", "e1"])
    ratings = pd.DataFrame(
        {
            "explanation_id": ["e0", "e0", "e1", "e0"],
            "rater": ["judge:m", "judge:m", "judge:m", "alice"],
            "dimension": ["plausibility", "completeness", "plausibility", "plausibility"],
            "rating": [4.0, 2.0, np.nan, 1.0],
        }
    )
    outcomes = item_outcomes(predictions, choice_scores, ratings, explanations)
    by_metric = outcomes.groupby("metric")["value"].apply(list).to_dict()
    assert by_metric == {
        "accuracy": [1.0, 0.0],
        "label_first_acc": [0.0, 1.0],
        "judge_plausibility": [4.0],  # the unreadable judge rating is left out
        "judge_completeness": [2.0],
        "human_plausibility": [1.0],
    }


def test_group_tests_match_scipy_and_statsmodels():
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "student": "s",
            "condition": np.repeat(["a", "b", "c"], 5),
            "value": np.concatenate([rng.normal(m, 0.02, 5) for m in (0.5, 0.52, 0.7)]),
        }
    )
    omnibus, posthoc = group_tests(frame, family=["student"], group="condition", value="value")
    (row,) = omnibus.to_dict(orient="records")
    groups = [frame.loc[frame["condition"] == c, "value"] for c in "abc"]
    assert row["anova_p"] == pytest.approx(stats.f_oneway(*groups).pvalue)
    assert row["kruskal_h"] == pytest.approx(stats.kruskal(*groups).statistic)
    assert row["anova_p"] < 0.001 and row["sizes"] == "5 5 5"
    reference = pairwise_tukeyhsd(frame["value"], frame["condition"])
    assert sorted(posthoc["tukey_p"]) == pytest.approx(sorted(reference.pvalues), abs=1e-3)
    ac = posthoc[(posthoc["group_a"] == "a") & (posthoc["group_b"] == "c")].iloc[0]
    assert ac["tukey_p"] < 0.001 and ac["difference"] < 0
    assert (posthoc["mannwhitney_p_holm"] >= posthoc["mannwhitney_p"]).all()


def test_group_tests_say_why_a_family_is_not_tested():
    one_seed = pd.DataFrame({"student": "s", "condition": ["a", "b"], "value": [0.5, 0.6]})
    omnibus, posthoc = group_tests(one_seed, family=["student"], group="condition", value="value")
    assert "2+ observations" in omnibus.iloc[0]["note"] and math.isnan(omnibus.iloc[0]["anova_p"])
    assert posthoc.empty
    flat = pd.DataFrame({"student": "s", "condition": ["a", "a", "b", "b"], "value": 0.5})
    assert (
        "equal" in group_tests(flat, family=["student"], group="condition", value="value")[0].iloc[0]["note"]
    )


def _run_predictions(condition, seed, read, gold, parsed=None):
    n = len(read)
    return pd.DataFrame(
        {
            "student": "s",
            "condition": condition,
            "seed": seed,
            "item_id": [f"i{k}" for k in range(n)],
            "read_answer": read,
            "answer_parsed": [r is not None for r in read] if parsed is None else parsed,
            "answer_correct": [r == g for r, g in zip(read, gold, strict=True)],
        }
    )


def test_flag_runs_catches_collapsed_unparseable_outlier_and_failed_runs():
    gold = ["x", "y", "z", "x", "y", "z", "x", "y", "z", "x"]
    gold_series = pd.Series(gold, index=[f"i{k}" for k in range(10)])
    good = [*gold[:8], "x", "y"]
    predictions = pd.concat(
        [
            _run_predictions("ok", 0, good, gold),
            _run_predictions("ok", 1, good, gold),
            _run_predictions("ok", 2, ["x"] * 10, gold),  # collapsed and far below the other seeds
            _run_predictions("mute", 0, [None] * 7 + ["x", "y", "z"], gold),
        ],
        ignore_index=True,
    )
    summary = pd.DataFrame(
        {
            "student": "s",
            "condition": ["ok", "ok", "ok", "mute"],
            "seed": [0, 1, 2, 0],
            "final_loss": [0.1, 0.2, 0.3, np.nan],
        }
    )
    flags = flag_runs(predictions, gold_series, summary).set_index(["condition", "seed"])["flags"]
    assert flags[("ok", 0)] == "" and flags[("ok", 1)] == ""
    assert flags[("ok", 2)] == "constant_answer,seed_outlier"
    assert flags[("mute", 0)] == "unparseable,training_failed"
    same_gold = pd.Series("x", index=gold_series.index)  # a constant answer where gold is constant is fine
    assert (
        flag_runs(predictions, same_gold).set_index(["condition", "seed"])["flags"][("ok", 2)]
        == "seed_outlier"
    )


def test_an_unknown_baseline_is_an_error_naming_the_conditions():
    with pytest.raises(
        ValueError, match=r"baseline_condition 'zz' is not a condition of this run: \['a', 'b'\]"
    ):
        paired_comparisons(accuracy_outcomes({"a": [1], "b": [0]}), baseline="zz", n_resamples=10)


def test_checkable_traces_keep_scored_rows_of_checkable_transforms():
    rows = pd.DataFrame(
        {
            "student": "s",
            "condition": ["correct_trace", "correct_trace", "mt"],
            "seed": 0,
            "transform": ["correct_trace", "correct_trace", "multitask"],
            "trace_correct": [True, None, None],
            "answer_correct": [True, False, True],
        }
    )
    assert checkable_traces(rows, ("correct_trace",)).index.tolist() == [0]
    unscored = checkable_traces(rows.drop(columns="trace_correct"), ("correct_trace",))
    assert unscored.empty and point_biserial(unscored).empty
    assert contingency(unscored).empty
