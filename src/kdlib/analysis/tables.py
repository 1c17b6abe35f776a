"""05_correlation's statistics.

Within a cell (student, condition, seed): trace correctness against answer correctness (2x2 tables, phi
with chi-square and Fisher exact p, the joint share of items with trace and answer both right beside the
conditional answer rates, point-biserial r for graded trace scores).
Across cells: item-level outcomes compared between conditions on the same items (McNemar, Cochran's Q,
paired bootstrap), seed-level means with t intervals, one-way ANOVA and Kruskal-Wallis with post-hoc
tests, and flags for runs that collapsed. Intervals are percentile bootstraps over items unless named t.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar

from kdlib.cells import CELL_KEYS
from kdlib.config import CorrelationParams
from kdlib.stage_writer import StageWriter
from kdlib.stats import bootstrap_interval, holm, pool_seeds, value_range, wilson_interval

TRACE_CRITERIA = {
    "both_steps": "trace_correct",
    "classification": "class_correct",
    "retrieval": "retrieval_exact",
}
GRADED_TRACE_SCORES = ("retrieval_recall", "retrieval_precision", "retrieval_f1", "step_score")
OUTCOME_METRICS = {
    "accuracy": "greedy generated answer correct (0/1)",
    "label_first_acc": "label-first choice scoring correct (0/1)",
    "judge_<dimension>": "mean LLM-judge rating of the item's explanation (1-5)",
    "human_<dimension>": "mean human rating of the item's explanation (1-5)",
}


def phi_coefficient(table: list[list[int]]) -> float:
    """phi of a 2x2 table [[a, b], [c, d]] (rows: trace right/wrong, columns: answer right/wrong).

    NaN when a row or column is empty, where phi is undefined.
    """
    (a, b), (c, d) = table
    denominator = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return (a * d - b * c) / denominator if denominator else math.nan


def _phi_rows(trace: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """phi of each row of paired boolean samples [B, n] -> [B] (NaN where undefined)."""
    a = (trace & answer).sum(-1).astype(float)
    b = (trace & ~answer).sum(-1).astype(float)
    c = (~trace & answer).sum(-1).astype(float)
    d = (~trace & ~answer).sum(-1).astype(float)
    denominator = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * d - b * c) / denominator, np.nan)


def _mean_rows(values: np.ndarray) -> np.ndarray:
    return values.mean(-1)


def _rate(name: str, hits: int, n: int) -> dict[str, float]:
    low, high = wilson_interval(hits, n)
    return {name: hits / n if n else math.nan, f"{name}_ci_low": low, f"{name}_ci_high": high}


def _cell(keys: tuple) -> dict:
    return dict(zip(CELL_KEYS, keys, strict=True))


# ---- within a cell: trace against answer -------------------------------------------------------------

JOINT_SHARE = "p_trace_right_and_answer_right"  # a joint share of all items, not a conditional rate

CONTINGENCY_COLUMNS = [
    *CELL_KEYS,
    "criterion",
    "n",
    "trace_right_answer_right",
    "trace_right_answer_wrong",
    "trace_wrong_answer_right",
    "trace_wrong_answer_wrong",
    "trace_accuracy",
    "trace_accuracy_ci_low",
    "trace_accuracy_ci_high",
    "answer_accuracy",
    "phi",
    "phi_ci_low",
    "phi_ci_high",
    "chi2",
    "chi2_p",
    "fisher_odds_ratio",
    "fisher_p",
    JOINT_SHARE,
    f"{JOINT_SHARE}_ci_low",
    f"{JOINT_SHARE}_ci_high",
    "p_answer_given_trace_right",
    "p_answer_given_trace_right_ci_low",
    "p_answer_given_trace_right_ci_high",
    "p_answer_given_trace_wrong",
    "p_answer_given_trace_wrong_ci_low",
    "p_answer_given_trace_wrong_ci_high",
    "p_difference",
]

CONTINGENCY_HEADLINE = [  # the columns a reader looks at first
    "condition",
    "seed",
    "criterion",
    "n",
    "trace_accuracy",
    "answer_accuracy",
    JOINT_SHARE,
    "p_answer_given_trace_right",
    "p_answer_given_trace_wrong",
    "phi",
    "phi_ci_low",
    "phi_ci_high",
    "chi2_p",
    "fisher_p",
]


def checkable_traces(predictions: pd.DataFrame, transforms) -> pd.DataFrame:
    """The rows of `predictions` whose trace can be checked: a transform in `transforms`
    (conditions.CHECKABLE_TRACE_TRANSFORMS) on an item with gold steps (trace_correct set). Items without
    gold steps (CommonsenseQA) leave no row."""
    if "trace_correct" not in predictions:
        return predictions.iloc[:0]
    return predictions[predictions["transform"].isin(transforms) & predictions["trace_correct"].notna()]


def contingency(
    predictions: pd.DataFrame,
    criteria: tuple[str, ...] = tuple(TRACE_CRITERIA),
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per cell and trace criterion (TRACE_CRITERIA): the 2x2 counts, phi with a bootstrap interval,
    Pearson chi-square (1 df, uncorrected, so chi2 = n phi^2) and Fisher exact p (two-sided), and
    with Wilson intervals the trace accuracy, P(answer right | trace right / wrong) and the joint share
    P(trace right and answer right) (with_joint_share). Undefined statistics are NaN."""
    rows = []
    for keys, group in predictions.groupby(list(CELL_KEYS), sort=False):
        answer = group["answer_correct"].to_numpy(dtype=bool)
        for criterion in criteria:
            trace = group[TRACE_CRITERIA[criterion]].to_numpy(dtype=bool)
            a, b = int((trace & answer).sum()), int((trace & ~answer).sum())
            c, d = int((~trace & answer).sum()), int((~trace & ~answer).sum())
            n = a + b + c + d
            phi = phi_coefficient([[a, b], [c, d]])
            chi2 = n * phi * phi
            odds_ratio, fisher_p = stats.fisher_exact([[a, b], [c, d]])
            rows.append(
                {
                    **_cell(keys),
                    "criterion": criterion,
                    "n": n,
                    "trace_right_answer_right": a,
                    "trace_right_answer_wrong": b,
                    "trace_wrong_answer_right": c,
                    "trace_wrong_answer_wrong": d,
                    **_rate("trace_accuracy", a + b, n),
                    "answer_accuracy": (a + c) / n if n else math.nan,
                    "phi": phi,
                    **dict(
                        zip(
                            ("phi_ci_low", "phi_ci_high"),
                            bootstrap_interval(
                                _phi_rows,
                                trace,
                                answer,
                                n_resamples=n_resamples,
                                confidence=confidence,
                                seed=seed,
                            ),
                            strict=True,
                        )
                    ),
                    "chi2": chi2,
                    "chi2_p": float(stats.chi2.sf(chi2, 1)) if not math.isnan(chi2) else math.nan,
                    "fisher_odds_ratio": float(odds_ratio),
                    "fisher_p": float(fisher_p),
                    **_rate("p_answer_given_trace_right", a, a + b),
                    **_rate("p_answer_given_trace_wrong", c, c + d),
                }
            )
            rows[-1]["p_difference"] = (
                rows[-1]["p_answer_given_trace_right"] - rows[-1]["p_answer_given_trace_wrong"]
            )
    counted = [c for c in CONTINGENCY_COLUMNS if not c.startswith(JOINT_SHARE)]
    return with_joint_share(pd.DataFrame(rows, columns=counted))[CONTINGENCY_COLUMNS]


def with_joint_share(table: pd.DataFrame) -> pd.DataFrame:
    """Contingency rows with P(trace right and answer right) from their counts: the share of all n items
    whose trace and answer are both right (trace_right_answer_right / n), with a Wilson interval. Unlike
    P(answer right | trace right) its denominator is every item, right trace or not. Also fills the
    column in a contingency.csv written before it existed."""
    shares = pd.DataFrame(
        [
            _rate(JOINT_SHARE, int(a), int(n))
            for a, n in zip(table["trace_right_answer_right"], table["n"], strict=True)
        ],
        index=table.index,
        columns=[JOINT_SHARE, f"{JOINT_SHARE}_ci_low", f"{JOINT_SHARE}_ci_high"],
    )
    return table.assign(**shares)


def with_graded_scores(predictions: pd.DataFrame) -> pd.DataFrame:
    """Adds retrieval_f1 (harmonic mean of retrieval precision and recall; 0 when both are 0) and
    step_score (mean of class_correct and retrieval_f1): graded trace scores in [0, 1]."""
    precision, recall = predictions["retrieval_precision"], predictions["retrieval_recall"]
    f1 = (2 * precision * recall / (precision + recall)).where(precision + recall > 0, 0.0)
    return predictions.assign(
        retrieval_f1=f1, step_score=(predictions["class_correct"].astype(float) + f1) / 2
    )


POINT_BISERIAL_COLUMNS = [
    *CELL_KEYS,
    "score",
    "n",
    "mean_score_answer_right",
    "mean_score_answer_wrong",
    "r",
    "p",
]


def point_biserial(predictions: pd.DataFrame, scores: tuple[str, ...] = GRADED_TRACE_SCORES) -> pd.DataFrame:
    """Per cell and graded trace score: the point-biserial r between answer correctness and the score,
    with its two-sided p (SciPy); NaN where either variable is constant."""
    if predictions.empty:
        return pd.DataFrame(columns=POINT_BISERIAL_COLUMNS)
    graded = with_graded_scores(predictions)
    rows = []
    for keys, group in graded.groupby(list(CELL_KEYS), sort=False):
        answer = group["answer_correct"].to_numpy(dtype=bool)
        for score in scores:
            values = group[score].to_numpy(dtype=float)
            defined = answer.any() and (~answer).any() and np.ptp(values) > 0
            r, p = stats.pointbiserialr(answer, values) if defined else (math.nan, math.nan)
            rows.append(
                {
                    **_cell(keys),
                    "score": score,
                    "n": len(values),
                    "mean_score_answer_right": values[answer].mean() if answer.any() else math.nan,
                    "mean_score_answer_wrong": values[~answer].mean() if (~answer).any() else math.nan,
                    "r": float(r),
                    "p": float(p),
                }
            )
    return pd.DataFrame(rows, columns=POINT_BISERIAL_COLUMNS)


# ---- across cells: outcomes per item ---------------------------------------------------------------

OUTCOME_COLUMNS = [*CELL_KEYS, "transform", "metric", "item_id", "value"]


def item_outcomes(
    predictions: pd.DataFrame,
    choice_scores: pd.DataFrame | None = None,
    ratings: pd.DataFrame | None = None,
    explanations: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per cell, metric (OUTCOME_METRICS) and item: `value` is 0/1 correctness, or for
    judge_<dimension> / human_<dimension> the item's mean rating by the LLM judge / by human raters
    (`ratings`: judge and human rating rows; unreadable ratings left out)."""
    keys = [*CELL_KEYS, "transform", "item_id"]
    frames = [predictions[keys].assign(metric="accuracy", value=predictions["answer_correct"].astype(float))]
    if choice_scores is not None and not choice_scores.empty:
        frames.append(
            choice_scores[keys].assign(metric="label_first_acc", value=choice_scores["acc"].astype(float))
        )
    if ratings is not None and not ratings.empty and explanations is not None:
        rated = ratings.dropna(subset=["rating"]).merge(
            explanations[[*keys, "explanation_id"]], on="explanation_id"
        )
        rated = rated.assign(kind=np.where(rated["rater"].str.startswith("judge:"), "judge_", "human_"))
        means = rated.groupby([*keys, "kind", "dimension"], sort=False)["rating"].mean().reset_index()
        frames.append(means[keys].assign(metric=means["kind"] + means["dimension"], value=means["rating"]))
    return pd.concat(frames, ignore_index=True)[OUTCOME_COLUMNS]


CELL_SUMMARY_COLUMNS = [*CELL_KEYS, "transform", "metric", "n", "value", "ci_low", "ci_high"]


def cell_summary(
    outcomes: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per cell and metric: the mean outcome over items with a bootstrap interval."""
    rows = []
    for keys, group in outcomes.groupby([*CELL_KEYS, "transform", "metric"], sort=False):
        values = group["value"].to_numpy(dtype=float)
        low, high = bootstrap_interval(
            _mean_rows, values, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        rows.append(
            {
                **dict(zip([*CELL_KEYS, "transform", "metric"], keys, strict=True)),
                "n": len(values),
                "value": values.mean(),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=CELL_SUMMARY_COLUMNS)


SEED_SUMMARY_COLUMNS = [
    "student",
    "condition",
    "metric",
    "n_seeds",
    "seeds",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "interval",
]


def seed_summary(cells: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per student, condition and metric: the mean over seeds of the per-seed value (`cells` from
    cell_summary), its standard deviation, and its interval (pool_seeds)."""
    rows = []
    for (student, condition, metric), group in cells.groupby(["student", "condition", "metric"], sort=False):
        mean, low, high, basis = pool_seeds(
            group["value"], group["ci_low"], group["ci_high"], confidence, value_range(metric)
        )
        rows.append(
            {
                "student": student,
                "condition": condition,
                "metric": metric,
                "n_seeds": len(group),
                "seeds": " ".join(str(s) for s in group["seed"]),
                "mean": mean,
                "sd": group["value"].std(ddof=1) if len(group) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "interval": basis,
            }
        )
    return pd.DataFrame(rows, columns=SEED_SUMMARY_COLUMNS)


def _paired(frame: pd.DataFrame, condition_a: str, condition_b: str) -> pd.DataFrame:
    """Outcomes of two conditions on the items both have: columns a, b indexed by item_id."""
    wide = frame.pivot_table(index="item_id", columns="condition", values="value", aggfunc="first")
    return wide[[condition_a, condition_b]].dropna().set_axis(["a", "b"], axis=1)


def _condition_pairs(conditions: list[str], baseline: str | None) -> list[tuple[str, str]]:
    if baseline is not None and baseline in conditions:
        return [(c, baseline) for c in conditions if c != baseline]
    return list(itertools.combinations(conditions, 2))


PAIRED_COLUMNS = [
    "student",
    "seed",
    "metric",
    "condition_a",
    "condition_b",
    "n_items",
    "value_a",
    "value_b",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "a_right_b_wrong",
    "a_wrong_b_right",
    "mcnemar_statistic",
    "mcnemar_p",
    "mcnemar_exact",
    "p_holm",
]

PAIRED_HEADLINE = [  # the columns a reader looks at first
    c for c in PAIRED_COLUMNS if c not in ("value_a", "value_b", "mcnemar_statistic", "mcnemar_exact")
]


def _mean_difference_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b).mean(-1)


def paired_comparisons(
    outcomes: pd.DataFrame,
    *,
    baseline: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    exact_below: int = 25,
) -> pd.DataFrame:
    """Per student, seed and metric, every pair of conditions (or each against `baseline`) on the items
    both were scored on: mean difference a - b with a paired bootstrap interval; for 0/1 metrics McNemar's
    test (exact binomial when fewer than `exact_below` discordant items, else chi-square with continuity
    correction; statsmodels). p_holm adjusts the McNemar p-values within each student, seed and metric."""

    known = list(dict.fromkeys(outcomes["condition"]))
    if baseline is not None and baseline not in known:
        raise ValueError(f"baseline_condition {baseline!r} is not a condition of this run: {known}")
    rows = []
    for (student, seed_, metric), group in outcomes.groupby(["student", "seed", "metric"], sort=False):
        conditions = list(dict.fromkeys(group["condition"]))
        family = []
        for condition_a, condition_b in _condition_pairs(conditions, baseline):
            pair = _paired(group, condition_a, condition_b)
            a, b = pair["a"].to_numpy(), pair["b"].to_numpy()
            row = {
                "student": student,
                "seed": seed_,
                "metric": metric,
                "condition_a": condition_a,
                "condition_b": condition_b,
                "n_items": len(pair),
                "value_a": a.mean() if len(a) else math.nan,
                "value_b": b.mean() if len(b) else math.nan,
                "difference": (a - b).mean() if len(a) else math.nan,
                **dict(
                    zip(
                        ("difference_ci_low", "difference_ci_high"),
                        bootstrap_interval(
                            _mean_difference_rows,
                            a,
                            b,
                            n_resamples=n_resamples,
                            confidence=confidence,
                            seed=seed,
                        ),
                        strict=True,
                    )
                ),
                "a_right_b_wrong": math.nan,
                "a_wrong_b_right": math.nan,
                "mcnemar_statistic": math.nan,
                "mcnemar_p": math.nan,
                "mcnemar_exact": None,
            }
            if len(a) and set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
                only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
                exact = only_a + only_b < exact_below
                both = int(((a == 1) & (b == 1)).sum())
                result = mcnemar([[both, only_a], [only_b, len(a) - both - only_a - only_b]], exact=exact)
                row.update(
                    a_right_b_wrong=only_a,
                    a_wrong_b_right=only_b,
                    mcnemar_statistic=float(result.statistic),
                    mcnemar_p=float(result.pvalue) if only_a + only_b else 1.0,
                    mcnemar_exact=exact,
                )
            family.append(row)
        frame = pd.DataFrame(family)
        if len(frame):
            frame["p_holm"] = holm(frame["mcnemar_p"]).to_numpy()
            rows.extend(frame.to_dict(orient="records"))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


COCHRAN_COLUMNS = ["student", "seed", "metric", "n_conditions", "n_items", "q", "p"]


def cochran_q(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per student, seed and 0/1 metric with three or more conditions: Cochran's Q test (statsmodels)
    that all conditions have the same accuracy, on the items every condition was scored on."""

    rows = []
    for (student, seed_, metric), group in outcomes.groupby(["student", "seed", "metric"], sort=False):
        wide = group.pivot_table(
            index="item_id", columns="condition", values="value", aggfunc="first"
        ).dropna()
        binary = set(np.unique(wide.to_numpy())) <= {0.0, 1.0}
        if wide.shape[1] < 3 or not binary or wide.empty:
            continue
        varies = wide.to_numpy().min(axis=1) != wide.to_numpy().max(axis=1)
        result = cochrans_q(wide.to_numpy()) if varies.any() else None
        rows.append(
            {
                "student": student,
                "seed": seed_,
                "metric": metric,
                "n_conditions": wide.shape[1],
                "n_items": len(wide),
                "q": float(result.statistic) if result else 0.0,
                "p": float(result.pvalue) if result else 1.0,
            }
        )
    return pd.DataFrame(rows, columns=COCHRAN_COLUMNS)


OMNIBUS_COLUMNS = ["family", "groups", "sizes", "anova_f", "anova_p", "kruskal_h", "kruskal_p", "note"]
POSTHOC_COLUMNS = [
    "family",
    "group_a",
    "group_b",
    "mean_a",
    "mean_b",
    "difference",
    "tukey_p",
    "tukey_ci_low",
    "tukey_ci_high",
    "mannwhitney_u",
    "mannwhitney_p",
    "mannwhitney_p_holm",
]


def group_tests(
    frame: pd.DataFrame, *, family: list[str], group: str, value: str, confidence: float = 0.95
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Within each `family` (e.g. student and metric), compare the `value`s of the `group`s (e.g.
    conditions, each observation a seed): one-way ANOVA and Kruskal-Wallis (SciPy); post hoc, Tukey's
    HSD and pairwise Mann-Whitney U with Holm adjustment. A family with fewer than two groups, or a
    group with fewer than two observations, is listed with a note and not tested.

    Returns (omnibus: one row per family, posthoc: one row per family and pair of groups)."""
    omnibus, posthoc = [], []
    for keys, rows in frame.groupby(family, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        label = " / ".join(str(k) for k in keys)
        samples = {
            name: g[value].dropna().to_numpy(dtype=float) for name, g in rows.groupby(group, sort=False)
        }
        names = list(samples)
        sizes = [len(samples[n]) for n in names]
        entry = {
            "family": label,
            "groups": " | ".join(str(n) for n in names),
            "sizes": " ".join(str(s) for s in sizes),
            **dict.fromkeys(("anova_f", "anova_p", "kruskal_h", "kruskal_p"), math.nan),
            "note": "",
        }
        if len(names) < 2 or min(sizes) < 2:
            entry["note"] = "not tested: needs 2+ groups with 2+ observations each (e.g. 2+ seeds)"
            omnibus.append(entry)
            continue
        arrays = [samples[n] for n in names]
        pooled = np.concatenate(arrays)
        if np.ptp(pooled) == 0:
            entry["note"] = "not tested: every observation is equal"
            omnibus.append(entry)
            continue
        anova, kruskal = stats.f_oneway(*arrays), stats.kruskal(*arrays)
        entry.update(
            anova_f=float(anova.statistic),
            anova_p=float(anova.pvalue),
            kruskal_h=float(kruskal.statistic),
            kruskal_p=float(kruskal.pvalue),
        )
        omnibus.append(entry)
        tukey = stats.tukey_hsd(*arrays)
        interval = tukey.confidence_interval(confidence)
        pairs = []
        for i, j in itertools.combinations(range(len(names)), 2):
            mann_whitney = stats.mannwhitneyu(arrays[i], arrays[j], alternative="two-sided")
            pairs.append(
                {
                    "family": label,
                    "group_a": names[i],
                    "group_b": names[j],
                    "mean_a": arrays[i].mean(),
                    "mean_b": arrays[j].mean(),
                    "difference": arrays[i].mean() - arrays[j].mean(),
                    "tukey_p": float(tukey.pvalue[i, j]),
                    "tukey_ci_low": float(interval.low[i, j]),
                    "tukey_ci_high": float(interval.high[i, j]),
                    "mannwhitney_u": float(mann_whitney.statistic),
                    "mannwhitney_p": float(mann_whitney.pvalue),
                }
            )
        pairs = pd.DataFrame(pairs)
        pairs["mannwhitney_p_holm"] = holm(pairs["mannwhitney_p"]).to_numpy()
        posthoc.extend(pairs.to_dict(orient="records"))
    return pd.DataFrame(omnibus, columns=OMNIBUS_COLUMNS), pd.DataFrame(posthoc, columns=POSTHOC_COLUMNS)


# ---- runs that collapsed --------------------------------------------------------------------------

FLAG_COLUMNS = [
    *CELL_KEYS,
    "accuracy",
    "answer_parse_rate",
    "top_answer",
    "top_answer_share",
    "flags",
    "reasons",
]


def flag_runs(
    predictions: pd.DataFrame,
    gold: pd.Series,
    sft_summary: pd.DataFrame | None = None,
    *,
    min_parse_rate: float = 0.5,
    collapse_share: float = 0.9,
    seed_gap: float = 0.1,
) -> pd.DataFrame:
    """Per cell, flags for runs a reader should not average in without a look (`gold`: the gold answer
    per item_id):

    - unparseable: fewer than `min_parse_rate` of the answers could be read;
    - constant_answer: one answer for at least `collapse_share` of the items, where gold is more varied;
    - seed_outlier: with 3+ seeds of a student and condition, accuracy further from the median over
      seeds than `seed_gap`, than 3 binomial standard errors (item sampling alone), and, where the seeds
      vary, than 3.5 robust z (scaled median absolute deviation);
    - training_failed: sft/summary.csv gives a non-finite final loss.
    `flags` is a comma-separated list ("" for none) and `reasons` says why, in numbers."""
    losses = {} if sft_summary is None else sft_summary.set_index(list(CELL_KEYS))["final_loss"].to_dict()
    rows = []
    for keys, group in predictions.groupby(list(CELL_KEYS), sort=False):
        counts = group["read_answer"].dropna().value_counts()
        top, top_share = (counts.index[0], counts.iloc[0] / len(group)) if len(counts) else (None, 0.0)
        gold_share = gold.reindex(group["item_id"]).value_counts(normalize=True).max()
        row = {
            **_cell(keys),
            "accuracy": group["answer_correct"].mean(),
            "answer_parse_rate": group["answer_parsed"].mean(),
            "top_answer": top,
            "top_answer_share": top_share,
            "flags": [],
            "reasons": [],
        }
        if row["answer_parse_rate"] < min_parse_rate:
            row["flags"].append("unparseable")
            row["reasons"].append(
                f"{row['answer_parse_rate']:.0%} of answers readable (< {min_parse_rate:.0%})"
            )
        if top_share >= collapse_share and gold_share < collapse_share:
            row["flags"].append("constant_answer")
            row["reasons"].append(
                f"answers {top!r} for {top_share:.0%} of items (most common gold answer: {gold_share:.0%})"
            )
        loss = losses.get(keys)
        if loss is not None and not math.isfinite(float(loss)):
            row["flags"].append("training_failed")
            row["reasons"].append(f"final training loss {loss}")
        rows.append(row)
    table = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    n_items = predictions.groupby(list(CELL_KEYS), sort=False).size().to_numpy()
    for _, group in table.groupby(["student", "condition"], sort=False):
        if len(group) < 3:
            continue
        accuracy = group["accuracy"].to_numpy(dtype=float)
        median = np.median(accuracy)
        mad = 1.4826 * np.median(np.abs(accuracy - median))
        sampling = 3 * math.sqrt(median * (1 - median) / n_items[group.index].min())
        for index, value in zip(group.index, accuracy, strict=True):
            gap = abs(value - median)
            if gap > max(seed_gap, sampling) and (mad == 0 or gap / mad > 3.5):
                table.at[index, "flags"].append("seed_outlier")
                table.at[index, "reasons"].append(
                    f"accuracy {value:.1%} against a median of {median:.1%} over {len(group)} seeds"
                )
    return table.assign(flags=table["flags"].map(",".join), reasons=table["reasons"].map("; ".join))


def describe_contingency(table: pd.DataFrame) -> list[str]:
    """One plain-language Markdown line per row of `table` (contingency rows of one criterion), or one
    saying there is none."""
    if table.empty:
        return [
            "No checkable traces: no condition writes a decomposed trace, or the items have no gold steps."
        ]
    lines = []
    for row in table.to_dict(orient="records"):
        cell = f"**{row['condition']}** ({row['student']}, seed {row['seed']})"
        opening = f"{cell}: the trace is right on {row['trace_accuracy']:.0%} of {row['n']} items"
        if math.isnan(row["phi"]):
            lines.append(f"{opening}; phi is undefined, since every trace or every answer is on one side.")
            continue
        lines.append(
            f"{opening}. The answer is right {row['p_answer_given_trace_right']:.0%} of the time after a "
            f"right trace and {row['p_answer_given_trace_wrong']:.0%} after a wrong one; trace and answer "
            f"are both right on {row[JOINT_SHARE]:.0%} of all items: phi "
            f"{row['phi']:+.2f} [{row['phi_ci_low']:+.2f}, {row['phi_ci_high']:+.2f}], Fisher p "
            f"{row['fisher_p']:.2g}."
        )
    return lines


BINARY_METRICS = ("accuracy", "label_first_acc")  # item outcomes that are right or wrong


def run_item_outcomes(run, predictions: pd.DataFrame, choice_scores: pd.DataFrame) -> pd.DataFrame:
    """item_outcomes of a run (RunLayout `run`), with the judge's and humans' ratings and the rated
    explanations where notebook 04 wrote them."""
    ratings = [pd.read_parquet(p) for p in (run.judge_ratings, run.human_ratings) if p.exists()]
    explanations = pd.read_parquet(run.explanations) if run.explanations.exists() else None
    return item_outcomes(predictions, choice_scores, pd.concat(ratings) if ratings else None, explanations)


def write_condition_tests(
    out: StageWriter, run, cells: pd.DataFrame, outcomes: pd.DataFrame, *, confidence: float
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Notebook 05's group_tests of the conditions, handed to `out` (run: the RunLayout): across seeds
    (each seed's accuracy in cell_summary `cells` one observation) and across rated explanations (each
    rating in `outcomes` one observation). Returns {"seed": (omnibus, posthoc), "rating": (...)}."""
    family = {"family": ["student", "metric"], "group": "condition", "value": "value"}
    rated = outcomes[~outcomes["metric"].isin(BINARY_METRICS)]
    tests = {
        "seed": group_tests(cells[cells["metric"].isin(BINARY_METRICS)], **family),
        "rating": group_tests(rated, **family, confidence=confidence),
    }
    for units, (omnibus, posthoc) in tests.items():
        out.table(run.group_tests(units, "omnibus"), omnibus)
        out.table(run.group_tests(units, "posthoc"), posthoc)
    return tests


def write_run_flags(
    out: StageWriter,
    run,
    predictions: pd.DataFrame,
    items: pd.DataFrame,
    sft_summary: pd.DataFrame,
    params: CorrelationParams,
) -> pd.DataFrame:
    """flag_runs under notebook 05's thresholds (`items`: items.parquet), handed to `out`."""
    flags = flag_runs(
        predictions,
        items.set_index("id")["answer"],
        sft_summary,
        min_parse_rate=params.min_parse_rate,
        collapse_share=params.collapse_share,
        seed_gap=params.seed_outlier_gap,
    )
    return out.table(run.run_flags, flags, title="Flagged runs", rows="flags.notna()")


def task_accuracy(predictions: pd.DataFrame) -> pd.DataFrame:
    """Greedy accuracy per task (question_type) with its Wilson interval."""
    rows = []
    for task, group in predictions.groupby("question_type", sort=False):
        hits, n = int(group["answer_correct"].sum()), len(group)
        low, high = wilson_interval(hits, n)
        rows.append({"task": task, "n": n, "accuracy": hits / n, "low": low, "high": high})
    return pd.DataFrame(rows)
