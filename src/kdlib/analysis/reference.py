"""The three studies' published results (reference_results.yaml, versioned) and a run's verdicts against them.

Every published number and every finding gets one row per student of the run: replicated, not
replicated, or not comparable, with the reason; kdlib's own questions (no paper claim) are measured, never
replicated. Estimates pool seeds: with one seed the interval is a bootstrap over items, with two or more a
t interval over the per-seed values.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import ValidationError, model_validator

from kdlib.analysis.tables import JOINT_SHARE, cell_summary, paired_comparisons
from kdlib.config import ConditionSpec, CorrelationParams, Schema, SftParams, format_errors
from kdlib.io import read_yaml
from kdlib.paths import resolve_repo_path
from kdlib.stage_writer import StageWriter
from kdlib.stats import difference_range, pool_seeds, value_range

REFERENCE_RESULTS = Path(__file__).with_name("reference_results.yaml")
PERCENT_METRICS = frozenset(
    {
        "accuracy",
        "label_first_acc",
        "trace_accuracy",
        JOINT_SHARE,
        "p_answer_given_trace_right",
        "p_answer_given_trace_wrong",
    }
)
CONTINGENCY_STATISTICS = (  # a published number of one of these is compared with its own contingency column
    "phi",
    "trace_accuracy",
    JOINT_SHARE,
    "p_answer_given_trace_right",
    "p_answer_given_trace_wrong",
)
KDLIB_QUESTION = "kdlib"  # the version of a finding that is kdlib's question, with no published claim
CHANCE_METRICS = frozenset({"accuracy", "label_first_acc"})  # where guessing sets a floor
MIN_TRACES = 20  # right (or wrong) traces below which a verdict about traces says it is no evidence
TOO_FEW_TRACES = "too few to be evidence either way"  # how the verdict's reason says so
NOT_IN_GRID = "the run has no condition of"  # how a finding whose conditions the run lacks says so


class ReferenceFileError(ValueError):
    """The reference-results file is malformed; the message names the file and the key."""


class Selector(Schema):
    """Which condition of a run a result is about: its transform, and where it matters its recipe."""

    transform: str
    rationale_recipe: str | None = None

    def matches(self, spec: ConditionSpec) -> bool:
        return spec.transform == self.transform and self.rationale_recipe in (None, spec.rationale_recipe)

    def label(self) -> str:
        return self.transform + (f" ({self.rationale_recipe})" if self.rationale_recipe else "")


class Published(Schema):
    """One published number. `metric` names what it measures; for a 2x2 statistic
    (CONTINGENCY_STATISTICS) the joint share p_trace_right_and_answer_right and the conditional
    p_answer_given_trace_right are different metrics, each compared with its own column. `version` says
    which release of a study with several prints it (e.g. "v1", "v2", or "repository" for a number only
    the authors' files give); `note` says where releases disagree or what the number is not."""

    id: str
    study: str
    dataset: str
    students: list[str]
    n_train: int | None = None
    n_eval: int | None = None
    condition: Selector
    metric: str
    value: float
    sd: float | None = None
    n_runs: int | None = None
    unit: str
    tolerance: float
    source: str
    version: str | None = None
    note: str | None = None


class FindingTest(Schema):
    """greater: a - b > margin; at_least: a - b >= -tolerance; close: |a - b| <= tolerance; below:
    statistic < threshold; question: a - b measured, with no claim to test (kdlib's own questions)."""

    kind: Literal["greater", "at_least", "close", "below", "question"]
    metric: str | None = None
    statistic: Literal[CONTINGENCY_STATISTICS] | None = None  # type: ignore[valid-type]
    a: Selector | None = None
    b: Selector | None = None
    condition: Selector | None = None
    margin: float = 0.0
    tolerance: float = 0.0
    threshold: float | None = None

    @model_validator(mode="after")
    def _complete(self) -> FindingTest:
        if self.kind == "below":
            if self.statistic is None or self.condition is None or self.threshold is None:
                raise ValueError("kind below needs statistic, condition and threshold")
        elif self.metric is None or self.a is None or self.b is None:
            raise ValueError(f"kind {self.kind} needs metric, a and b")
        return self


class Finding(Schema):
    """A claim about conditions relative to each other. `version: kdlib` marks kdlib's own question about a
    study's setup, which the paper does not answer: its test is a question, and its paper field says so."""

    id: str
    study: str
    claim: str
    datasets: list[str]
    test: FindingTest
    paper: str
    source: str
    version: str | None = None

    @model_validator(mode="after")
    def _question_is_kdlibs(self) -> Finding:
        if (self.test.kind == "question") != (self.version == KDLIB_QUESTION):
            raise ValueError(f"a finding with version {KDLIB_QUESTION!r} has test kind question, and only it")
        return self


class Reference(Schema):
    version: int
    changes: list[dict[str, str | int]]
    studies: dict[str, dict[str, str]]
    sources: dict[str, str]
    published: list[Published]
    findings: list[Finding]

    @model_validator(mode="after")
    def _consistent(self) -> Reference:
        ids = [p.id for p in self.published] + [f.id for f in self.findings]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"ids {repeated} appear more than once")
        for entry in [*self.published, *self.findings]:
            if entry.study not in self.studies:
                raise ValueError(f"{entry.id}: unknown study {entry.study!r}")
            if entry.source not in self.sources:
                raise ValueError(f"{entry.id}: unknown source {entry.source!r}")
        return self


def load_reference(path: str | os.PathLike | None = None) -> Reference:
    """Read and validate a reference-results file (default: the packaged one)."""
    path = Path(path) if path is not None else REFERENCE_RESULTS
    raw = read_yaml(path, "reference results", ReferenceFileError)
    try:
        return Reference.model_validate(raw)
    except ValidationError as error:
        raise ReferenceFileError(format_errors(str(path), error)) from None


def reference_id(path: str | os.PathLike | None = None) -> dict[str, str | int]:
    """What a run records about the table it was compared with: path, version and sha256."""
    path = Path(path) if path is not None else REFERENCE_RESULTS
    return {
        "path": str(path),
        "version": load_reference(path).version,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def published_table(reference: Reference) -> pd.DataFrame:
    """The published numbers as a table, one row each, with the source spelled out."""
    return pd.DataFrame(
        [
            {
                "id": p.id,
                "study": p.study,
                "dataset": p.dataset,
                "student": p.students[0],
                "condition": p.condition.label(),
                "metric": p.metric,
                "value": p.value,
                "sd": p.sd,
                "n_runs": p.n_runs,
                "unit": p.unit,
                "version": p.version,
                "source": reference.sources[p.source],
                "note": p.note,
            }
            for p in reference.published
        ]
    )


@dataclass(frozen=True)
class RunFacts:
    """What comparability depends on: the run's dataset, its item counts and its condition specs, and the
    accuracy (%) a student reaches by guessing among each eval item's choices (0 for free-form answers)."""

    dataset: str
    n_train: int
    n_eval: int
    conditions: tuple[ConditionSpec, ...]
    chance_accuracy: float


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    basis: str


def combine_seeds(per_seed: pd.DataFrame, confidence: float, bounds: tuple[float, float]) -> Estimate:
    """One estimate from per-seed rows (value, low, high) of a quantity within `bounds`:
    analysis.pool_seeds."""
    return Estimate(*pool_seeds(per_seed["value"], per_seed["low"], per_seed["high"], confidence, bounds))


REFERENCE_COLUMNS = [
    "kind",
    "id",
    "study",
    "claim",
    "student",
    "scope",
    "estimate",
    "ci_low",
    "ci_high",
    "unit",
    "paper",
    "verdict",
    "conclusive",
    "reason",
    "basis",
    "source",
]

COMPARISON_HEADLINE = [  # the columns a reader looks at first
    c for c in REFERENCE_COLUMNS if c not in ("kind", "study", "claim", "scope", "basis", "source")
]


class _NotComparable(Exception):
    """Raised inside the comparison of one row; its message is the reason."""


def _condition(facts: RunFacts, selector: Selector) -> str:
    """The one condition that `selector` matches; where a learning curve adds smaller sizes of it (set
    train_items), the one trained on every item."""
    matches = [spec for spec in facts.conditions if selector.matches(spec)]
    names = [spec.name for spec in matches]
    full_size = [spec.name for spec in matches if spec.train_items is None]
    if len(names) > 1 and len(full_size) == 1:
        return full_size[0]
    if not names:
        raise _NotComparable(f"{NOT_IN_GRID} {selector.label()}")
    if len(names) > 1:
        raise _NotComparable(f"{len(names)} conditions match {selector.label()}: {', '.join(names)}")
    return names[0]


def _rating_metric(metric: str, outcomes: pd.DataFrame) -> tuple[str, str]:
    """A finding's metric as an outcome metric: a rating dimension is read from human ratings where the
    run has them, else from the LLM judge's. Returns (metric, note)."""
    # imports the model stack (torch, transformers): only when a run is compared, not when validated
    from kdlib.evaluation.explanations import DIMENSIONS

    if metric not in DIMENSIONS:
        return metric, ""
    if (outcomes["metric"] == f"human_{metric}").any():
        return f"human_{metric}", ""
    return f"judge_{metric}", "; LLM-judge ratings, where the paper had human raters"


def _scaled(metric: str, estimate: Estimate) -> Estimate:
    if metric.removeprefix("judge_").removeprefix("human_") in PERCENT_METRICS:
        return Estimate(estimate.value * 100, estimate.low * 100, estimate.high * 100, estimate.basis)
    return estimate


def _metric_estimate(
    outcomes: pd.DataFrame, student: str, condition: str, metric: str, settings: dict
) -> Estimate:
    rows = outcomes[
        (outcomes["student"] == student)
        & (outcomes["condition"] == condition)
        & (outcomes["metric"] == metric)
    ]
    if rows.empty:
        raise _NotComparable(f"no {metric} outcomes for {condition}")
    cells = cell_summary(rows, **settings).rename(columns={"ci_low": "low", "ci_high": "high"})
    return _scaled(metric, combine_seeds(cells, settings["confidence"], value_range(metric)))


def _difference_estimate(
    outcomes: pd.DataFrame, student: str, a: str, b: str, metric: str, settings: dict
) -> Estimate:
    rows = outcomes[
        (outcomes["student"] == student) & outcomes["condition"].isin([a, b]) & (outcomes["metric"] == metric)
    ]
    missing = [c for c in (a, b) if c not in set(rows["condition"])]
    if missing:
        raise _NotComparable(f"no {metric} outcomes for {' or '.join(missing)}")
    pairs = paired_comparisons(rows, baseline=b, **settings)
    pairs = pairs[(pairs["condition_a"] == a) & (pairs["n_items"] > 0)]
    if pairs.empty:
        raise _NotComparable(f"no items with {metric} under both {a} and {b}")
    per_seed = pairs.rename(
        columns={"difference": "value", "difference_ci_low": "low", "difference_ci_high": "high"}
    )
    bounds = difference_range(value_range(metric))
    return _scaled(metric, combine_seeds(per_seed, settings["confidence"], bounds))


def _statistic_estimate(contingency: pd.DataFrame, student: str, condition: str, statistic: str, confidence):
    rows = contingency[
        (contingency["student"] == student)
        & (contingency["condition"] == condition)
        & (contingency["criterion"] == "both_steps")
    ]
    if rows.empty:
        raise _NotComparable(f"no checkable traces for {condition}")
    per_seed = pd.DataFrame(
        {
            "value": rows[statistic].to_numpy(),
            "low": rows[f"{statistic}_ci_low"].to_numpy(),
            "high": rows[f"{statistic}_ci_high"].to_numpy(),
        }
    ).dropna(subset=["value"])
    if per_seed.empty:
        raise _NotComparable(
            f"{statistic} is undefined for {condition} (a row or column of the 2x2 table is empty)"
        )
    return _scaled(statistic, combine_seeds(per_seed, confidence, value_range(statistic)))


def _thin_traces(contingency: pd.DataFrame, student: str, condition: str) -> str:
    """A note for a verdict about traces that rests on fewer than MIN_TRACES right or wrong traces (both
    steps, all seeds of the cell together), else ""."""
    rows = contingency[
        (contingency["student"] == student)
        & (contingency["condition"] == condition)
        & (contingency["criterion"] == "both_steps")
    ]
    right = int(rows["trace_right_answer_right"].sum() + rows["trace_right_answer_wrong"].sum())
    wrong = int(rows["trace_wrong_answer_right"].sum() + rows["trace_wrong_answer_wrong"].sum())
    kinds = [kind for n, kind in ((right, "right"), (wrong, "wrong")) if n < MIN_TRACES]
    if not kinds:
        return ""
    return (
        f"; it rests on {right} right and {wrong} wrong traces (fewer than {MIN_TRACES} "
        f"{' and '.join(kinds)}): {TOO_FEW_TRACES}"
    )


def _interval(e: Estimate) -> str:
    return f"{e.value:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"


def judge(test: FindingTest, e: Estimate) -> tuple[str, bool, str]:
    """(verdict, conclusive, reason) of a finding's test against an estimate with its interval."""
    if math.isnan(e.low) or math.isnan(e.high):
        return "not comparable", False, f"estimate {e.value:+.2f} has no interval (too few items)"
    if test.kind == "question":
        unanswered = "kdlib's question, no published number"
        if e.low > 0 or e.high < 0:
            return "measured", True, f"difference {_interval(e)} excludes 0 ({unanswered})"
        return "measured", False, f"difference {_interval(e)} includes 0 ({unanswered})"
    if test.kind == "greater":
        bound = test.margin
        if e.low > bound:
            return "replicated", True, f"difference {_interval(e)} lies above {bound:g}"
        if e.high <= bound:
            return "not replicated", True, f"difference {_interval(e)} is not above {bound:g}"
        return "not replicated", False, f"inconclusive: difference {_interval(e)} includes {bound:g}"
    if test.kind == "at_least":
        bound = -test.tolerance
        if e.low >= bound:
            return "replicated", True, f"difference {_interval(e)} stays above {bound:g}"
        if e.high < bound:
            return "not replicated", True, f"difference {_interval(e)} lies below {bound:g}"
        return "not replicated", False, f"inconclusive: difference {_interval(e)} reaches below {bound:g}"
    if test.kind == "close":
        tol = test.tolerance
        if -tol <= e.low and e.high <= tol:
            return "replicated", True, f"difference {_interval(e)} lies within ±{tol:g}"
        if e.low > tol or e.high < -tol:
            return "not replicated", True, f"difference {_interval(e)} lies outside ±{tol:g}"
        return "not replicated", False, f"inconclusive: difference {_interval(e)} is not within ±{tol:g}"
    threshold = test.threshold
    if e.high < threshold:
        return "replicated", True, f"{_interval(e)} lies below {threshold:g}"
    if e.low >= threshold:
        return "not replicated", True, f"{_interval(e)} is not below {threshold:g}"
    return "not replicated", False, f"inconclusive: {_interval(e)} includes {threshold:g}"


def _student_names(student: str) -> set[str]:
    return {student.lower(), Path(student).name.lower()}


def _published_row(p: Published, student: str, facts: RunFacts, outcomes, contingency, settings) -> dict:
    row = {
        "kind": "published",
        "id": p.id,
        "study": p.study,
        "student": student,
        "paper": p.value,
        "unit": p.unit,
    }
    version = f" ({p.version})" if p.version else ""
    row["claim"] = f"{p.condition.label()} reaches {p.metric} {p.value:g} {p.unit} on {p.dataset}{version}"
    mismatches = []
    if facts.dataset != p.dataset:
        mismatches.append(f"dataset {facts.dataset} (paper: {p.dataset})")
    if not _student_names(student) & {s.lower() for s in p.students}:
        mismatches.append(f"student {student} (paper: {p.students[0]})")
    for name, ours, theirs in (("train", facts.n_train, p.n_train), ("eval", facts.n_eval, p.n_eval)):
        if theirs is not None and ours < theirs:
            mismatches.append(f"{ours} {name} items (paper: {theirs})")
    row["scope"] = "same setup" if not mismatches else "other setup"
    try:
        condition = _condition(facts, p.condition)
        if p.metric in CONTINGENCY_STATISTICS:
            e = _statistic_estimate(contingency, student, condition, p.metric, settings["confidence"])
        else:
            e = _metric_estimate(outcomes, student, condition, p.metric, settings)
    except _NotComparable as reason:
        return {
            **row,
            "verdict": "not comparable",
            "conclusive": False,
            "reason": "; ".join([*mismatches, str(reason)]),
        }
    estimate = {"estimate": e.value, "ci_low": e.low, "ci_high": e.high, "basis": e.basis}
    if mismatches:  # ours is shown beside the paper's, but not judged against it
        return {
            **row,
            **estimate,
            "verdict": "not comparable",
            "conclusive": False,
            "reason": "; ".join(mismatches),
        }
    inside = e.low - p.tolerance <= p.value <= e.high + p.tolerance
    return {
        **row,
        **estimate,
        "verdict": "replicated" if inside else "not replicated",
        "conclusive": True,
        "reason": f"ours {e.value:.2f} [{e.low:.2f}, {e.high:.2f}] {'is' if inside else 'is not'} within "
        f"±{p.tolerance:g} of {p.value:g}"
        + (_thin_traces(contingency, student, condition) if p.metric in CONTINGENCY_STATISTICS else ""),
    }


def _both_at_chance(outcomes, student: str, conditions: tuple[str, str], metric: str, facts, settings):
    """Why an equivalence claim ("a does as well as b") says nothing here, or "": both conditions'
    accuracy intervals reach down to chance."""
    chance = facts.chance_accuracy
    levels = {c: _metric_estimate(outcomes, student, c, metric, settings) for c in conditions}
    if any(e.low > chance for e in levels.values()):
        return ""
    shown = "; ".join(f"{c} {e.value:.1f} [{e.low:.1f}, {e.high:.1f}]" for c, e in levels.items())
    return (
        f"both conditions are at chance ({chance:.1f}%: {shown}): "
        "students no better than chance match trivially"
    )


def _finding_row(f: Finding, student: str, facts: RunFacts, outcomes, contingency, settings) -> dict:
    test = f.test
    row = {
        "kind": "finding",
        "id": f.id,
        "study": f.study,
        "claim": f.claim,
        "student": student,
        "paper": f.paper,
    }
    row["scope"] = (
        "same dataset" if facts.dataset in f.datasets else f"other dataset (paper: {', '.join(f.datasets)})"
    )
    note = at_chance = ""
    try:
        if test.kind == "below":
            condition = _condition(facts, test.condition)
            e = _statistic_estimate(contingency, student, condition, test.statistic, settings["confidence"])
            row["unit"] = "%" if test.statistic in PERCENT_METRICS else ""
            note = _thin_traces(contingency, student, condition)
        else:
            metric, note = _rating_metric(test.metric, outcomes)
            a, b = _condition(facts, test.a), _condition(facts, test.b)
            e = _difference_estimate(outcomes, student, a, b, metric, settings)
            row["unit"] = "points" if test.metric in PERCENT_METRICS else "rating"
            if test.kind in ("at_least", "close") and metric in CHANCE_METRICS:
                at_chance = _both_at_chance(outcomes, student, (a, b), metric, facts, settings)
    except _NotComparable as reason:
        return {**row, "verdict": "not comparable", "conclusive": False, "reason": str(reason)}
    estimate = {"estimate": e.value, "ci_low": e.low, "ci_high": e.high, "basis": e.basis}
    if at_chance:  # ours is shown, but not judged
        return {**row, **estimate, "verdict": "not comparable", "conclusive": False, "reason": at_chance}
    verdict, conclusive, reason = judge(test, e)
    return {**row, **estimate, "verdict": verdict, "conclusive": conclusive, "reason": reason + note}


def compare_with_reference(
    reference: Reference,
    facts: RunFacts,
    outcomes: pd.DataFrame,
    contingency: pd.DataFrame,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per finding and published number, per student of the run (`outcomes` from
    analysis.item_outcomes, `contingency` from analysis.contingency): the run's estimate with its
    interval, the verdict, whether the interval settles it, and why."""
    settings = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    rows = []
    for student in dict.fromkeys(outcomes["student"]):
        for finding in reference.findings:
            rows.append(_finding_row(finding, student, facts, outcomes, contingency, settings))
        for published in reference.published:
            rows.append(_published_row(published, student, facts, outcomes, contingency, settings))
    table = pd.DataFrame(rows, columns=REFERENCE_COLUMNS)
    source_of = {
        entry.id: reference.sources[entry.source] for entry in [*reference.published, *reference.findings]
    }
    return table.assign(source=table["id"].map(source_of))


def run_facts(items: pd.DataFrame, sft_params: dict) -> RunFacts:
    """RunFacts from a run's items.parquet (dataset, role, choices) and the sft params it trained with."""
    eval_choices = items.loc[items["role"] == "eval", "choices"].map(len)
    return RunFacts(
        dataset="+".join(sorted(items["dataset"].unique())),
        n_train=int((items["role"] == "train").sum()),
        n_eval=len(eval_choices),
        conditions=tuple(SftParams.model_validate(sft_params).condition_specs()),
        chance_accuracy=100 * float(eval_choices.map(lambda n: 1 / n if n else 0.0).mean()),
    )


def describe_findings(comparison: pd.DataFrame) -> list[str]:
    """Markdown lines: each finding the run could test, with its verdict and why, then a count of the
    findings and published numbers it could not be compared with."""
    lines = []
    tested = comparison[comparison["verdict"] != "not comparable"]
    for row in tested.to_dict(orient="records"):
        lines.append(
            f"- **{row['verdict']}** ({row['student']}): {row['claim']} Ours: {row['reason']} "
            f"({row['basis']}; {row['scope']})."
        )
    untested = comparison[comparison["verdict"] == "not comparable"]
    if len(untested):
        kinds = untested["kind"].value_counts()
        lines.append(
            f"- not comparable: {kinds.get('finding', 0)} findings and {kinds.get('published', 0)} published "
            "numbers (missing conditions, conditions at chance, or another dataset, student or data "
            "size; see the table)."
        )
    return lines


def write_comparison(
    out: StageWriter,
    run,
    params: CorrelationParams,
    items: pd.DataFrame,
    sft: SftParams,
    outcomes: pd.DataFrame,
    contingency: pd.DataFrame,
    **statistics,
) -> tuple[Reference, RunFacts, pd.DataFrame]:
    """Notebook 05's comparison with the published results: the reference table `params` name (or the
    packaged one), this run's facts, and compare_with_reference under `statistics` (confidence,
    n_resamples, seed), handed to `out` with the published table itself."""
    path = resolve_repo_path(params.reference_results) if params.reference_results else None
    published = load_reference(path)
    out.record(reference=reference_id(path))
    facts = run_facts(items, sft)
    comparison = compare_with_reference(published, facts, outcomes, contingency, **statistics)
    out.table(
        run.reference_comparison,
        comparison,
        title="Against the published results",
        columns=COMPARISON_HEADLINE,
        rows="kind == 'finding' or verdict != 'not comparable'",
    )
    out.table(run.published_results, published_table(published))
    return published, facts, comparison
