"""docs/results.md from the study runs: each finding beside the paper's, every number read from run files.

`kdlib results` reads `outputs/<run_name>/` of each study params file in STUDY_RUNS, copies the run's PNG
figures to `docs/figures/<run_name>/` and writes `docs/results.md`. A run whose notebook 05 has not
finished is listed with the notebooks done and the command that completes it. A run with no folder here
(a clone, another machine) keeps its section and figures from the earlier results.md, as long as its
params file still validates to the params that section was written from (the digest on its second line).
Nothing is typed in: every table is rendered from the CSV files that notebooks 04 and 05 wrote
(reference_comparison.csv, seed_summary.csv, contingency.csv, lens_emergence.csv, run_flags.csv) and
from run.json. The page closes with a summary, per run, of the baseline against its bar and the findings
its intervals settle, read from the sections above (carried ones included).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdlib import io
from kdlib.analysis.reference import (
    MIN_TRACES,
    NOT_IN_GRID,
    PERCENT_METRICS,
    TOO_FEW_TRACES,
    load_reference,
)
from kdlib.analysis.tables import BINARY_METRICS, JOINT_SHARE, task_accuracy, with_joint_share
from kdlib.cells import CELL_KEYS
from kdlib.config import (
    NOTEBOOKS,
    SECTION_KEYS,
    ExperimentParams,
    ExplanationParams,
    ParamsError,
    SftParams,
    load_params,
    params_digest,
    validate_params,
)
from kdlib.data.babi import BABI_TASKS
from kdlib.evaluation.explanations import describe_judge
from kdlib.paths import OUTPUTS_DIR, REPO_ROOT, RunLayout
from kdlib.stats import wilson_interval


@dataclass(frozen=True)
class StudyRuns:
    study: str  # a study id of kdlib/analysis/reference_results.yaml
    title: str
    params_files: tuple[str, ...]  # relative to the repository root


STUDY_RUNS = (
    StudyRuns(
        "wadhwa2024",
        "CoT-augmented distillation",
        ("params/wadhwa2024_csqa.yaml", "params/wadhwa2024_csqa_more_data.yaml"),
    ),
    StudyRuns("hendriks2025", "Distillation methods and explainability", ("params/hendriks2025_csqa.yaml",)),
    StudyRuns(
        "bhambri2025",
        "Interpretable traces",
        ("params/bhambri2025_babi.yaml", "params/bhambri2025_cotempqa.yaml"),
    ),
)
LEARNING_CHECK = "params/learning_check.yaml"  # its run and benchmarks/learning_parity.py's parity.csv
LEARNING_BAR = 0.95  # kdlib's no-trace student on the first bAbI task (issue 28)
BASELINE_TRANSFORMS = ("no_trace", "multitask")  # the students whose accuracy a study's bar is for
BAR_PER_BABI_TASK = 0.80  # the bars of issue 29: every bAbI task used,
BAR_COTEMPQA = 0.25  # CoTempQA,
BAR_OVER_CHANCE = 0.15  # and multiple choice: chance plus this much
GpuCost = Callable[[str, SftParams, float], str]  # student, sft, padded training tokens -> cost in words
FIGURES = (  # (stage, figure name, caption) copied and shown when the run has the PNG
    ("correlation", "reference_findings", "Findings: our estimate and interval against each claim"),
    ("correlation", "condition_accuracy", "Accuracy per condition, mean over seeds"),
    ("correlation", "trace_vs_answer", "Trace correctness against answer correctness"),
    ("correlation", "paired_differences", "Paired differences between conditions (bootstrap intervals)"),
    ("evaluation", "lens_gold_top", "Logit lens: share of items whose gold answer is top-ranked per layer"),
    ("evaluation", "explanation_quality", "Judge ratings of the students' explanations"),
)


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A GitHub markdown table of `frame` (values as strings; '|' escaped)."""

    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    header = [str(c) for c in frame.columns]
    rows = [
        [cell(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in frame.itertuples(index=False)
    ]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def with_interval(value: float, low: float, high: float, scale: float = 1.0, digits: int = 1) -> str:
    """'61.2 [55.0, 67.3]', or '' for a missing value; the interval is left out when it is missing."""
    if value is None or math.isnan(value):
        return ""
    text = f"{value * scale:.{digits}f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def stage_commits(run: RunLayout) -> str:
    """The git SHA each notebook ran at, from its stage's meta.json: "497cd56225 (01-04), 31ddaa6653 (05)"."""
    groups: list[tuple[str, list[str]]] = []
    for notebook in NOTEBOOKS:
        meta = run.stage(SECTION_KEYS[notebook]) / "meta.json"
        if not meta.exists():
            continue
        sha = (io.read_json(meta).get("git_sha") or "unknown")[:10]
        if groups and groups[-1][0] == sha:
            groups[-1][1].append(notebook[:2])
        else:
            groups.append((sha, [notebook[:2]]))
    return ", ".join(
        f"{sha} ({numbers[0]}{'-' + numbers[-1] if len(numbers) > 1 else ''})" for sha, numbers in groups
    )


def version_drift(run: RunLayout, pins: dict[str, str]) -> str:
    """The tracked packages a run's notebooks used at versions other than `pins` (io.pinned_versions),
    from each stage's meta.json: "transformers 5.20.0 (pinned 5.24.0) in 01, 02"; "" when none."""
    drift: dict[str, list[str]] = {}
    for notebook in NOTEBOOKS:
        meta = run.stage(SECTION_KEYS[notebook]) / "meta.json"
        packages = io.read_json(meta).get("packages", {}) if meta.exists() else {}
        for name, version in packages.items():
            pinned = pins.get(io.package_key(name))
            if version and pinned and version.split("+")[0] != pinned:
                drift.setdefault(f"{name} {version} (pinned {pinned})", []).append(notebook[:2])
    return "; ".join(f"{package} in {', '.join(numbers)}" for package, numbers in drift.items())


def packages_line(run: RunLayout) -> str:
    """Whether the run's notebooks used the package versions constraints.txt pins."""
    drift = version_drift(run, io.pinned_versions())
    return (
        f"- Packages: not as constraints.txt pins: {drift}"
        if drift
        else "- Packages: as constraints.txt pins"
    )


def planned_line(record: dict) -> str:
    """What `kdlib plan` estimated when the run started (run.json's "plan"), beside the measured time."""
    plan = record.get("plan")
    if not plan:
        return "- Planned: no estimate recorded (run before kdlib plan existed)"
    if plan.get("error") or plan.get("estimated_seconds") is None:
        return f"- Planned: no estimate ({plan.get('error') or 'a model was not calibrated'})"
    per_notebook = ", ".join(
        f"{nb} {seconds / 60:.1f}" for nb, seconds in plan["notebooks"].items() if seconds
    )
    return (
        f"- Planned: {plan['estimated_seconds'] / 60:.0f} min for notebooks 01-04 from scratch "
        f"({per_notebook} min; notebook start-up not included)"
    )


def training_time_line(run: RunLayout) -> str:
    """The training cells' own wall times (sft/summary.csv `seconds`), which count the parts trained before an
    interruption, unlike run.json's last invocation; "" when the run has no summary."""
    summary = _read(run.sft_summary)
    if summary is None or not len(summary):
        return ""
    cells = ", ".join(
        f"{row.cell} {row.seconds / 60:.0f} min at {row.tokens_per_second:.0f} tok/s"
        for row in summary.itertuples()
    )
    return (
        f"- Training, measured: {summary['seconds'].sum() / 60:.0f} min over {len(summary)} cells ({cells}); "
        "each cell's own time, interrupted parts included, in the run where it was trained"
    )


def run_facts_lines(params_file: str, params: ExperimentParams, record: dict, commits: str) -> list[str]:
    """Command, git SHAs (`commits`, from stage_commits), sizes and wall times of one run (`record`: its
    run.json)."""
    data, sft = params.teacher_traces.dataset, params.sft
    times = [(nb, record["notebooks"][nb]) for nb in NOTEBOOKS if nb in record["notebooks"]]
    total = sum(entry.get("seconds", 0.0) for _, entry in times)
    return [
        f"- Command: `kdlib run {params_file}`, then `kdlib results`",
        f"- Run: git {commits}, started {times[0][1]['started_at'] if times else '?'}; "
        f"wall time {total / 60:.0f} min ("
        + ", ".join(f"{nb} {entry.get('seconds', 0.0) / 60:.1f}" for nb, entry in times)
        + " min) on this 2-core CPU, in each notebook's last invocation (cells finished by an earlier,"
        " interrupted one are reused, not counted)",
        planned_line(record),
        f"- Data: {data.name}, {data.n_train} training items ({data.train_split}), {data.n_eval} evaluation "
        f"items ({data.eval_split})",
        f"- Grid: students {', '.join(sft.students)}; conditions "
        f"{', '.join(spec.name for spec in sft.condition_specs())}; seeds {', '.join(map(str, sft.seeds))}; "
        f"{sft.finetune}, {sft.epochs} epochs, lr {sft.learning_rate:g}",
    ]


def findings_table(comparison: pd.DataFrame, study: str) -> pd.DataFrame:
    rows = comparison[(comparison["kind"] == "finding") & (comparison["study"] == study)]
    return pd.DataFrame(
        {
            "finding": rows["id"],
            "claim": rows["claim"],
            "student": rows["student"],
            "paper": rows["paper"],
            "ours (95 % CI)": [
                f"{with_interval(r.estimate, r.ci_low, r.ci_high, digits=2)} {r.unit}".strip()
                if not pd.isna(r.estimate)
                else ""
                for r in rows.itertuples()
            ],
            "verdict": [
                r.verdict + (" (conclusive)" if r.conclusive and r.verdict == "not replicated" else "")
                for r in rows.itertuples()
            ],
            "why": rows["reason"],
            "interval from": rows["basis"].fillna(""),
        }
    )


def read_comparison(path: Path) -> pd.DataFrame:
    """reference_comparison.csv, with no unit read as "" (phi and other unitless estimates), not NaN."""
    return pd.read_csv(path).fillna({"unit": ""})


def published_table(
    comparison: pd.DataFrame, published: pd.DataFrame, study: str, dataset: str
) -> pd.DataFrame:
    """The paper's numbers for this dataset beside ours for the same condition and metric. `comparison` is
    reference_comparison.csv as read back: its paper column is text, since findings quote the paper."""
    on_dataset = set(published.loc[(published["study"] == study) & (published["dataset"] == dataset), "id"])
    rows = comparison[(comparison["kind"] == "published") & comparison["id"].isin(on_dataset)]
    rows = rows[rows["estimate"].notna() | (rows["scope"] == "same setup")]
    paper = published.set_index("id")
    if "version" not in paper:  # published_results.csv written before reference table version 2
        paper = paper.assign(version=None)

    def source(published_id: str) -> str:
        version = paper.loc[published_id, "version"]
        return paper.loc[published_id, "student"] + (f", {version}" if pd.notna(version) else "")

    return pd.DataFrame(
        {
            "published": rows["id"],
            "paper": [f"{float(r.paper):g} {r.unit} ({source(r.id)})" for r in rows.itertuples()],
            "ours": [
                f"{with_interval(r.estimate, r.ci_low, r.ci_high)} {r.unit} ({r.student})"
                for r in rows.itertuples()
            ],
            "verdict": rows["verdict"],
            "why": rows["reason"],
        }
    )


def metric_table(seed_summary: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds [interval] per student and condition, one column per metric (percent metrics x100)."""
    frame = seed_summary.assign(
        text=[
            with_interval(r.mean, r.ci_low, r.ci_high, scale=100.0 if r.metric in PERCENT_METRICS else 1.0)
            for r in seed_summary.itertuples()
        ]
    )
    table = frame.pivot_table(
        index=["student", "condition"], columns="metric", values="text", aggfunc="first", sort=False
    )
    seeds = frame.groupby(["student", "condition"], sort=False)["n_seeds"].max()
    return table.assign(seeds=seeds).reset_index()


def baseline_bar(dataset: str, eval_items: pd.DataFrame) -> tuple[float, str, bool] | None:
    """The accuracy a study's baseline must reach for its grid to say anything (issue 29), in words, and
    whether it holds per task (question_type); None for a dataset without a bar."""
    if dataset == "babi":
        return BAR_PER_BABI_TASK, f"at least {100 * BAR_PER_BABI_TASK:.0f} % on every bAbI task", True
    if dataset == "cotempqa":
        return BAR_COTEMPQA, f"at least {100 * BAR_COTEMPQA:.0f} %", False
    options = eval_items["choices"].map(len)
    if len(options) and (options > 1).all():
        chance = float((1 / options).mean())
        return (
            chance + BAR_OVER_CHANCE,
            f"chance ({100 * chance:.0f} %) + {100 * BAR_OVER_CHANCE:.0f} points",
            False,
        )
    return None


@dataclass(frozen=True)
class Baseline:
    """A study's baseline: its bar and the bar in words (baseline_bar), and one row per item of every
    baseline condition (BASELINE_TRANSFORMS, at any training size): `outcomes` has CELL_KEYS, metric
    (label-first accuracy where a cell has it, else accuracy), task ("all" unless the bar is per task),
    value (0/1) and training_items."""

    bar: float
    words: str
    outcomes: pd.DataFrame


def read_baseline(params: ExperimentParams, run: RunLayout) -> Baseline | None:
    """The run's Baseline; None when its dataset has no bar, its grid no baseline, or it has no outcomes."""
    if not (run.items.exists() and run.outcomes.exists()):
        return None
    items = pd.read_parquet(run.items)
    bar = baseline_bar(params.teacher_traces.dataset.name, items[items["role"] == "eval"])
    n_train = params.teacher_traces.dataset.n_train
    sizes = {
        spec.name: spec.train_items or n_train
        for spec in params.sft.condition_specs()
        if spec.transform in BASELINE_TRANSFORMS
    }
    if bar is None or not sizes:
        return None
    accuracy, words, per_task = bar
    outcomes = pd.read_parquet(run.outcomes)
    outcomes = outcomes[outcomes["condition"].isin(sizes) & outcomes["metric"].isin(BINARY_METRICS)]
    label_first = outcomes.groupby(list(CELL_KEYS))["metric"].transform(
        lambda m: (m == "label_first_acc").any()
    )
    outcomes = outcomes[outcomes["metric"] == label_first.map({True: "label_first_acc", False: "accuracy"})]
    task_of = items.set_index("id")["question_type"]
    outcomes = outcomes.assign(
        task=outcomes["item_id"].map(task_of) if per_task else "all",
        training_items=outcomes["condition"].map(sizes),
    )
    return Baseline(accuracy, words, outcomes)


def baseline_table(baseline: Baseline, n_train: int) -> pd.DataFrame:
    """Per cell of the baseline at full training size (`n_train`) and per task: accuracy with its Wilson
    interval against the bar."""
    full = baseline.outcomes[baseline.outcomes["training_items"] >= n_train]
    rows = []
    for (student, condition, seed, metric, task), group in full.groupby([*CELL_KEYS, "metric", "task"]):
        hits, n = int(group["value"].sum()), len(group)
        low, high = wilson_interval(hits, n)
        rows.append(
            {
                "student": student,
                "condition": condition,
                "seed": seed,
                "task": task,
                "metric": metric,
                "n": n,
                "accuracy % [95 % Wilson]": with_interval(hits / n, low, high, 100),
                "bar %": round(100 * baseline.bar, 1),
                "reached": "yes" if hits / n >= baseline.bar else "**no**",
            }
        )
    return pd.DataFrame(rows)


def items_to_bar(sizes: pd.Series, accuracy: pd.Series, bar: float) -> float | None:
    """The training size at which a least-squares line of accuracy against log(size) reaches `bar`; None
    with fewer than three sizes or a line that does not rise."""
    if sizes.nunique() < 3:
        return None
    slope, intercept = np.polyfit(np.log(sizes.to_numpy(float)), accuracy.to_numpy(float), 1)
    return float(math.exp((bar - intercept) / slope)) if slope > 0 else None


def baseline_lines(params: ExperimentParams, run: RunLayout, gpu_cost: GpuCost | None = None) -> list[str]:
    """The baseline against its bar: a sentence and baseline_table, then bar_estimate_lines where it misses
    the bar; nothing when there is no bar."""
    baseline = read_baseline(params, run)
    table = (
        pd.DataFrame()
        if baseline is None
        else baseline_table(baseline, params.teacher_traces.dataset.n_train)
    )
    if table.empty:
        return []
    missed = int((table["reached"] != "yes").sum())
    verdict = (
        "**reached** in every row" if not missed else f"**not reached** in {missed} of {len(table)} rows"
    )
    conditions = ", ".join(table["condition"].unique())
    lines = [
        "#### The baseline against its bar",
        "",
        f"The bar for the baseline ({conditions}): {baseline.words}, by the point estimate. It is {verdict}. "
        "A baseline below its bar has not learnt the task, and differences between conditions then say "
        "little about traces.",
        "",
        *markdown_table(table),
        "",
    ]
    return lines + (bar_estimate_lines(params, run, baseline, gpu_cost) if missed else [])


def bar_estimate_lines(
    params: ExperimentParams, run: RunLayout, baseline: Baseline, gpu_cost: GpuCost | None
) -> list[str]:
    """Per student and task whose full-size baseline misses the bar: its learning curve (accuracy over seeds
    and items per training size), the size items_to_bar puts at the bar, and what one cell of that size
    would cost to train here (the full-size cells' measured seconds per example and epoch) and on one GPU
    (`gpu_cost` of its padded tokens)."""
    curve = baseline.outcomes.groupby(["student", "task", "training_items"])["value"].mean().reset_index()
    n_train, epochs = params.teacher_traces.dataset.n_train, params.sft.epochs
    summary = _read(run.sft_summary)
    lines = []
    for (student, task), points in curve.groupby(["student", "task"], sort=False):
        if points["value"].iloc[-1] >= baseline.bar:
            continue
        where = student + ("" if task == "all" else f" on {task}")
        shown = ", ".join(
            f"{n:,} items {100 * v:.1f} %"
            for n, v in zip(points["training_items"], points["value"], strict=True)
        )
        needed = items_to_bar(points["training_items"], points["value"], baseline.bar)
        if needed is None:
            lines.append(f"- {where}: {shown}. Fewer than three sizes, or no rise with data: no estimate.")
            continue
        text = (
            f"- {where}: {shown}. A line in log(items) reaches {100 * baseline.bar:.0f} % at about "
            f"{needed:,.0f} training items ({needed / points['training_items'].max():.1f}x the largest size "
            "run; an extrapolation)"
        )
        full_size = baseline.outcomes.loc[baseline.outcomes["training_items"] >= n_train, "condition"]
        full = (
            summary[(summary["student"] == student) & summary["condition"].isin(full_size)]
            if summary is not None
            else None
        )
        if full is not None and len(full):
            per_example = (full["seconds"] / (full["examples"] * epochs)).mean()
            hours = needed * epochs * per_example / 3600
            text += (
                f". One cell of that size, {epochs} epochs: about {hours:.1f} h on this CPU "
                f"(measured: {per_example:.2f} s per example and epoch)"
            )
            if gpu_cost is not None:
                padded = (full["tokens_per_example"] / (1 - full["padding_share"])).mean()
                text += f"; {gpu_cost(student, params.sft, needed * epochs * padded)}"
        lines.append(text + ".")
    if not lines:
        return []
    return [
        "#### What would reach the bar",
        "",
        "The baseline's accuracy against its training size, per task below the bar, with the size a "
        "log-linear fit puts at the bar and the cost of training one cell of it:",
        "",
        *lines,
        "",
    ]


def learning_curve_table(seed_summary: pd.DataFrame, sft: SftParams, n_train: int) -> pd.DataFrame:
    """metric_table's rows of the conditions that differ only in train_items (a learning curve), with
    their number of training items, by student, curve and size; empty when the grid has none."""
    curves: dict[str, dict[str, int]] = {}
    for spec in sft.condition_specs():
        same_but_size = spec.model_dump_json(exclude={"name", "train_items"})
        curves.setdefault(same_but_size, {})[spec.name] = spec.train_items or n_train
    points = [curve for curve in curves.values() if len(set(curve.values())) > 1]
    curve_of = {name: n for n, curve in enumerate(points) for name in curve}
    if not curve_of:
        return pd.DataFrame()
    table = metric_table(seed_summary[seed_summary["condition"].isin(curve_of)])
    sizes = {name: size for curve in points for name, size in curve.items()}
    table.insert(2, "training items", table["condition"].map(sizes))
    table["curve"] = table["condition"].map(curve_of)
    ordered = table.sort_values(["student", "curve", "training items"], kind="stable")
    return ordered.drop(columns="curve").reset_index(drop=True)


def contingency_table(contingency: pd.DataFrame, criterion: str) -> pd.DataFrame:
    """One row per cell of `criterion`: the joint share P(trace right and answer right) of all items
    beside the conditional rates P(answer right | trace right / wrong), which divide by the items with a
    right (wrong) trace only."""
    rows = with_joint_share(contingency[contingency["criterion"] == criterion])

    def rate(column: str) -> list[str]:
        bounds = zip(rows[column], rows[f"{column}_ci_low"], rows[f"{column}_ci_high"], strict=True)
        return [with_interval(value, low, high, scale=100.0) for value, low, high in bounds]

    return pd.DataFrame(
        {
            "student": rows["student"],
            "condition": rows["condition"],
            "seed": rows["seed"],
            "n": rows["n"],
            "trace right %": (100 * rows["trace_accuracy"]).round(1),
            "answer right %": (100 * rows["answer_accuracy"]).round(1),
            "phi [95 % CI]": [
                with_interval(r.phi, r.phi_ci_low, r.phi_ci_high, digits=2) for r in rows.itertuples()
            ],
            "P(trace and answer right) %": rate(JOINT_SHARE),
            "P(answer | trace right) %": rate("p_answer_given_trace_right"),
            "P(answer | trace wrong) %": rate("p_answer_given_trace_wrong"),
            "Fisher p": rows["fisher_p"].map(lambda p: f"{p:.3f}"),
        }
    )


def emergence_table(emergence: pd.DataFrame) -> pd.DataFrame:
    """Mean emergence depth (0 = embeddings, 1 = output) per student, condition and lens, over seeds."""
    grouped = emergence.groupby(["student", "condition", "lens"], sort=False)
    return (
        grouped.agg(
            seeds=("seed", "nunique"),
            items=("n", "sum"),
            top_at_output=("top_at_output", "mean"),
            mean_emergence_depth=("mean_emergence_depth", "mean"),
        )
        .round(3)
        .reset_index()
    )


def judge_lines(explanations: ExplanationParams, ratings: pd.DataFrame) -> list[str]:
    """The "Explanation judge" subsection: explanations.describe_judge of judge_ratings.parquet rows."""
    return ["#### Explanation judge", "", describe_judge(explanations, ratings) + ".", ""]


def copy_figures(run: RunLayout, docs_dir: Path, run_name: str) -> list[str]:
    """Copy the run's PNG figures to docs/figures/<run_name>/; markdown image lines."""
    lines = []
    for stage, name, caption in FIGURES:
        source = run.stage(stage) / "figures" / f"{name}.png"
        if not source.exists():
            continue
        target = docs_dir / "figures" / run_name / source.name
        with io.atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        lines += [f"![{caption}](figures/{run_name}/{source.name})", ""]
    return lines


def stale_reason(params: ExperimentParams, run_dir: Path) -> str | None:
    """Why the run folder does not hold a run of `params` (None when it does, or holds none yet)."""
    saved = run_dir / "params.yaml"
    if not saved.exists():
        return None
    try:
        ran = load_params(saved)
    except ParamsError:
        return "its params.yaml does not validate against today's schema"
    changed = [name for name in ExperimentParams.model_fields if getattr(ran, name) != getattr(params, name)]
    return f"its params differ in {', '.join(changed)}" if changed else None


def params_line(params: ExperimentParams) -> str:
    """A hidden line naming the validated params a section was written from (comments and layout aside)."""
    return f"<!-- params sha256 {params_digest(params)[:16]} -->"


def page_sections(lines: list[str]) -> dict[str, list[str]]:
    """The sections of a results.md by params file: a run's from its '### <dataset>: `<file>`' header to the
    next header at its level or above (or its GPU twin's), the learning check's to the end."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        run_header = re.fullmatch(r"### .*: `(?P<file>[^`]+)`", line)
        if run_header or line.startswith("## Learning check"):
            current = sections.setdefault(run_header["file"] if run_header else LEARNING_CHECK, [])
        elif line.startswith(("## ", "### ", "#### At the paper's size")):
            current = None
        if current is not None:
            current.append(line)
    return sections


def carried_sections(page: Path, outputs_dir: Path, params_files: list[str]) -> dict[str, list[str]]:
    """The sections of the earlier `page` to keep: of runs with no run.json under `outputs_dir` whose
    params file still validates to the params the section was written from."""
    earlier = page_sections(page.read_text().splitlines()) if page.exists() else {}
    carried = {}
    for params_file in params_files:
        params = load_params(REPO_ROOT / params_file)
        section = earlier.get(params_file, [])
        absent = not (outputs_dir / params.common.run_name / "run.json").exists()
        if absent and params_line(params) in section:
            carried[params_file] = section
    return carried


def run_section(
    study: StudyRuns, params_file: str, outputs_dir: Path, docs_dir: Path, gpu_cost: GpuCost | None = None
) -> list[str]:
    params = load_params(REPO_ROOT / params_file)
    run_dir = outputs_dir / params.common.run_name
    run = RunLayout(run_dir)
    lines = [f"### {params.teacher_traces.dataset.name}: `{params_file}`", params_line(params), ""]
    record = io.read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {"notebooks": {}}
    done = [nb for nb in NOTEBOOKS if record["notebooks"].get(nb, {}).get("status") == "ok"]
    stale = stale_reason(params, run_dir)
    if stale:
        return lines + [
            f"Not current: the run folder holds another run ({stale}). Rerun with `kdlib run {params_file}`, "
            "then `kdlib results`.",
            "",
        ]
    if "05_correlation" not in done:
        return lines + [
            f"Not finished: notebooks done: {', '.join(done) or 'none'}. Complete it with "
            f"`kdlib run {params_file}` (finished cells are kept), then `kdlib results`.",
            "",
        ]
    lines += [*run_facts_lines(params_file, params, record, stage_commits(run))]
    lines += [line for line in [training_time_line(run), packages_line(run)] if line] + [""]
    lines += baseline_lines(params, run, gpu_cost)
    comparison = read_comparison(run.reference_comparison)
    lines += ["#### Findings", "", *markdown_table(findings_table(comparison, study.study)), ""]
    published = _read(run.published_results)
    if published is not None:
        table = published_table(comparison, published, study.study, params.teacher_traces.dataset.name)
        if len(table):
            lines += [
                "#### Published numbers beside ours",
                "",
                "Ours are shown for the same condition and metric; a different student or data size makes "
                "them not comparable, and the verdict says so.",
                "",
                *markdown_table(table),
                "",
            ]
    lines += [
        "#### Per condition (mean over seeds, 95 % t interval clipped to the metric's range; accuracy in %)",
        "",
        *markdown_table(metric_table(pd.read_csv(run.seed_summary))),
        "",
    ]
    curve = learning_curve_table(
        pd.read_csv(run.seed_summary), params.sft, params.teacher_traces.dataset.n_train
    )
    if len(curve):
        lines += [
            "#### Learning curve (the same condition on nested training subsets)",
            "",
            *markdown_table(curve),
            "",
        ]
    contingency = _read(run.contingency)
    if contingency is not None and len(contingency):
        criterion = params.correlation.trace_criterion
        lines += [
            f"#### Trace against answer (criterion {criterion}, per cell)",
            "",
            *markdown_table(contingency_table(contingency, criterion)),
            "",
        ]
    emergence = _read(run.lens_emergence)
    if emergence is not None and len(emergence):
        lines += [
            "#### Where the answer emerges (lens; depth 0 = embeddings, 1 = output)",
            "",
            *markdown_table(emergence_table(emergence)),
            "",
        ]
    if params.evaluation.explanations.enabled and run.judge_ratings.exists():
        lines += judge_lines(params.evaluation.explanations, pd.read_parquet(run.judge_ratings))
    flags = _read(run.run_flags)
    if flags is not None:
        flagged = flags[flags["flags"].notna() & (flags["flags"].astype(str) != "")]
        lines += ["#### Run flags", ""]
        lines += (
            markdown_table(flagged[["student", "condition", "seed", "flags", "reasons"]])
            if len(flagged)
            else ["No cell was flagged (unparseable, collapsed, seed outlier or failed training)."]
        )
        lines.append("")
    return lines + copy_figures(run, docs_dir, params.common.run_name)


def parity_rows(parity: pd.DataFrame) -> pd.DataFrame:
    """parity.csv (benchmarks/learning_parity.py) for the reader: per task, each trainer's accuracy with
    its Wilson interval and kdlib - HF Trainer with its paired bootstrap interval, in %."""
    return pd.DataFrame(
        {
            "task": parity["task"],
            "held-out items": parity["kdlib_n"],
            **{
                name: [
                    with_interval(row[key], max(row[f"{key}_low"], 0.0), min(row[f"{key}_high"], 1.0), 100)
                    for row in parity.to_dict(orient="records")
                ]
                for key, name in (("kdlib", "kdlib"), ("hf_trainer", "HF Trainer"))
            },
            "kdlib - HF Trainer (points)": [
                with_interval(row["difference"], row["difference_ci_low"], row["difference_ci_high"], 100)
                for row in parity.to_dict(orient="records")
            ],
            "McNemar p": parity["mcnemar_p"].map(lambda p: f"{p:.3g}"),
        }
    )


def learning_check_lines(outputs_dir: Path, params_file: str = LEARNING_CHECK) -> list[str]:
    """The learning check's section: its run's facts and benchmarks/learning_parity.py's table, with
    whether kdlib reaches LEARNING_BAR on the first task and matches HF Trainer there."""
    params = load_params(REPO_ROOT / params_file)
    run = RunLayout(outputs_dir / params.common.run_name)
    parity_file = run.root / "learning_parity" / "parity.csv"
    lines = [
        "## Learning check: does kdlib's trainer learn, and as well as HF Trainer?",
        params_line(params),
        "",
        f"`{params_file}` trains one no-trace student on bAbI and evaluates it on held-out items; "
        "`benchmarks/learning_parity.py` trains HF Trainer's twin on the same examples with the same LoRA, "
        f"optimiser, schedule and steps ([Training](training.md#learning-check)). The bar: at least "
        f"{LEARNING_BAR:.0%} on the first task, and a kdlib - HF Trainer interval that includes 0.",
        "",
    ]
    stale = stale_reason(params, run.root)
    run_json = run.root / "run.json"
    record = io.read_json(run_json) if run_json.exists() else {"notebooks": {}}
    if stale or record["notebooks"].get("04_evaluation", {}).get("status") != "ok":
        reason = f"the run folder holds another run ({stale})" if stale else "not run yet"
        return lines + [
            f"Not current: {reason}. Run `kdlib run {params_file} --to 04`, then "
            f"`.venv/bin/python benchmarks/learning_parity.py {params_file}`, then `kdlib results`.",
            "",
        ]
    record["notebooks"] = {nb: entry for nb, entry in record["notebooks"].items() if nb != "05_correlation"}
    lines += [*run_facts_lines(params_file, params, record, stage_commits(run)), packages_line(run)]
    parity_meta = parity_file.parent / "meta.json"
    if not parity_meta.exists():
        tasks = [BABI_TASKS[n] for n in params.teacher_traces.dataset.options.get("tasks") or BABI_TASKS]
        accuracy = task_accuracy(io.read_parquet(run.predictions)).set_index("task").loc[tasks].reset_index()
        first = accuracy.iloc[0]
        return lines + [
            f"- Parity: not run yet (`.venv/bin/python benchmarks/learning_parity.py {params_file}`)",
            "",
            "kdlib's held-out accuracy in % (95 % Wilson intervals):",
            "",
            *markdown_table(
                pd.DataFrame(
                    {
                        "task": accuracy["task"],
                        "held-out items": accuracy["n"],
                        "kdlib": [
                            with_interval(r["accuracy"], r["low"], r["high"], 100)
                            for r in accuracy.to_dict(orient="records")
                        ],
                    }
                )
            ),
            "",
            f"kdlib reaches {LEARNING_BAR:.0%} on {first['task']}: "
            f"**{'yes' if first['accuracy'] >= LEARNING_BAR else 'no'}** ({100 * first['accuracy']:.1f} %).",
            "",
        ]
    parity = pd.read_csv(parity_file)
    first = parity.iloc[0]
    reaches = first["kdlib"] >= LEARNING_BAR
    same = first["difference_ci_low"] <= 0 <= first["difference_ci_high"]
    seeds = [
        (params.sft.seeds[0], io.read_json(parity_meta), parity),
        *other_seed_parities(outputs_dir, params),
    ]
    lines += parity_lines(*seeds[0][1:])
    lines += [
        f"kdlib reaches {LEARNING_BAR:.0%} on {first['task']}: **{'yes' if reaches else 'no'}** "
        f"({100 * first['kdlib']:.1f} %). The same accuracy as HF Trainer there (the difference's interval "
        f"includes 0): **{'yes' if same else 'no'}**.",
        "",
    ]
    if len(seeds) == 1:
        caveat = (
            ": one training run each, so the interval covers the held-out items, not the spread between seeds"
        )
        return lines + differs_lines(parity, "Beyond the bar", caveat)
    lines += differs_lines(parity, f"Under training seed {seeds[0][0]}, beyond the bar")
    for seed, made, other in seeds[1:]:
        lines += [f"Under training seed {seed} (the same items, everything else the same):", ""]
        lines += parity_lines(made, other) + differs_lines(
            other, f"Under training seed {seed}, beyond the bar"
        )
    return lines + across_seeds_lines(seeds)


def other_seed_parities(outputs_dir: Path, params: ExperimentParams) -> list[tuple[int, dict, pd.DataFrame]]:
    """benchmarks/learning_parity.py's runs of `params` under other training seeds (`--seed N --run-dir
    outputs/...`), found by their meta.json: the same params but for sft.seeds; as (seed, meta, parity),
    by seed."""
    found = []
    for meta_file in sorted(outputs_dir.glob("*/learning_parity/meta.json")):
        made = io.read_json(meta_file)
        try:
            ran = validate_params(made.get("params"))
        except ParamsError:
            continue
        same_but_seeds = ran.model_copy(
            update={"sft": ran.sft.model_copy(update={"seeds": params.sft.seeds})}
        )
        parity_file = meta_file.parent / "parity.csv"
        if ran.sft.seeds != params.sft.seeds and same_but_seeds == params and parity_file.exists():
            found.append((ran.sft.seeds[0], made, pd.read_csv(parity_file)))
    return sorted(found, key=lambda entry: entry[0])


def parity_lines(made: dict, parity: pd.DataFrame) -> list[str]:
    """One parity run's command, commit and twin time (`made`: its meta.json), and its table."""
    return [
        f"- Parity: `{made['command']}`, git {(made.get('git_sha') or 'unknown')[:10]}, written "
        f"{made['written_at']}; HF Trainer's twin trained in {made['hf_trainer_seconds'] / 60:.0f} min",
        "",
        "Held-out accuracy in % (95 % Wilson intervals; the difference's is a paired bootstrap on the same "
        "items):",
        "",
        *markdown_table(parity_rows(parity)),
        "",
    ]


def differs_lines(parity: pd.DataFrame, lead: str, caveat: str = "") -> list[str]:
    """A sentence naming the tasks beyond the bar on which kdlib - HF Trainer's interval excludes 0."""
    apart = [
        f"{row['task']} ("
        + with_interval(row["difference"], row["difference_ci_low"], row["difference_ci_high"], 100)
        + " points)"
        for row in parity.iloc[1:].to_dict(orient="records")
        if not row["difference_ci_low"] <= 0 <= row["difference_ci_high"]
    ]
    return [f"{lead}, the trainers differ on {'; '.join(apart)}{caveat}.", ""] if apart else []


def across_seeds_lines(seeds: list[tuple[int, dict, pd.DataFrame]]) -> list[str]:
    """Per task, each trainer's accuracy range over the training seeds and the mean kdlib - HF Trainer."""
    tables = pd.concat([parity.assign(seed=seed) for seed, _, parity in seeds], ignore_index=True)
    rows = []
    for task, runs in tables.groupby("task", sort=False):
        row = {"task": task}
        for trainer, name in (("kdlib", "kdlib"), ("hf_trainer", "HF Trainer")):
            row[name] = f"{100 * runs[trainer].min():.1f} - {100 * runs[trainer].max():.1f}"
        row["mean kdlib - HF Trainer (points)"] = f"{100 * runs['difference'].mean():+.1f}"
        rows.append(row)
    names = ", ".join(str(seed) for seed, _, _ in seeds)
    firsts = [parity.iloc[0] for _, _, parity in seeds]
    reaches = all(first["kdlib"] >= LEARNING_BAR for first in firsts)
    same = all(first["difference_ci_low"] <= 0 <= first["difference_ci_high"] for first in firsts)
    return [
        f"Across training seeds {names}: each trainer's held-out accuracy in % (lowest - highest seed), and "
        "the difference averaged over seeds:",
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
        f"On {firsts[0]['task']}, under every seed: kdlib reaches {LEARNING_BAR:.0%} "
        f"**{'yes' if reaches else 'no'}**; the same accuracy as HF Trainer (the difference's interval "
        f"includes 0) **{'yes' if same else 'no'}**.",
        "",
    ]


SETTLED_VERDICTS = ("replicated", "not replicated (conclusive)")


def table_rows(section: list[str], header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table under `header` in `section`."""
    rows: list[list[str]] = []
    start = section.index(header) if header in section else len(section)
    for line in section[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    return rows[1:]  # the first row is the header


def summary_row(params_file: str, section: list[str]) -> tuple[dict[str, str], int]:
    """One run's line of the closing summary, read from its section of the page: the baseline against its
    bar, and its paper findings settled (replicated or not replicated (conclusive)) or left open (a verdict
    resting on fewer than MIN_TRACES right or wrong traces among them; a finding whose conditions the
    run does not train is in neither); and how many it settles."""
    row = {
        "run": f"`{params_file}`",
        "baseline against its bar": "not run yet",
        "settled": "",
        "left open": "",
    }
    if not any(line.startswith("- Run:") for line in section):
        return row, 0
    bar = next((line for line in section if line.startswith("The bar for the baseline")), "")
    reached = re.search(r"It is \*\*(not reached|reached)\*\*( in [^.]+)?", bar)
    row["baseline against its bar"] = reached[1] + (reached[2] or "") if reached else "no bar"
    findings = table_rows(section, "#### Findings")  # finding, claim, student, paper, ours, verdict, why, ...
    settled, vacuous, left_open = [], [], []
    for name, *_, ours, verdict, why, _ in findings:
        if verdict in SETTLED_VERDICTS and TOO_FEW_TRACES in why:
            vacuous.append(f"{name}: {verdict} on fewer than {MIN_TRACES} right or wrong traces")
        elif verdict in SETTLED_VERDICTS:
            settled.append(f"{name}: {verdict}, {ours}")
        elif verdict != "measured" and not why.startswith(NOT_IN_GRID):
            left_open.append(name)
    row["settled"] = "; ".join(settled) or "none"
    row["left open"] = "; ".join(left_open + vacuous) or "none"
    return row, len(settled)


def summary_lines(lines: list[str], params_files: list[str]) -> list[str]:
    """The closing summary of a results page (`lines`): per run, the baseline against its bar and which
    paper findings its intervals settle."""
    sections = page_sections(lines)
    rows, settled = zip(*(summary_row(f, sections.get(f, [])) for f in params_files), strict=True)
    return [
        "## Summary: what the runs settle",
        "",
        "Read from the sections above. A finding is settled when its interval decides the claim "
        f"(replicated, or not replicated (conclusive)): {sum(settled)} are. One left open has an interval "
        "that admits both answers at these sizes: it asks for more items, seeds or a larger student, not "
        "for a verdict.",
        "",
        *markdown_table(pd.DataFrame(list(rows))),
        "",
    ]


def write_results(
    outputs_dir: Path | None = None,
    docs_dir: Path | None = None,
    studies: tuple[StudyRuns, ...] = STUDY_RUNS,
    twin_plans: dict[str, list[str]] | None = None,
    gpu_cost: GpuCost | None = None,
) -> Path:
    """Write docs/results.md (and docs/figures/) from the study runs under `outputs_dir`; `twin_plans`
    holds, per study params file, the lines on its GPU twin (kdlib.planner.twin_lines); `gpu_cost` prices
    training on one GPU where a baseline misses its bar (kdlib.planner.training_gpu_cost)."""
    outputs_dir = Path(outputs_dir or OUTPUTS_DIR)
    docs_dir = Path(docs_dir or REPO_ROOT / "docs")
    reference = load_reference()
    params_files = [params_file for study in studies for params_file in study.params_files]
    carried = carried_sections(docs_dir / "results.md", outputs_dir, [*params_files, LEARNING_CHECK])
    carried_runs = {load_params(REPO_ROOT / params_file).common.run_name for params_file in carried}
    for folder in (docs_dir / "figures").glob("*"):
        if folder.is_dir() and folder.name not in carried_runs:
            shutil.rmtree(folder)
    lines = [
        "# Results: the three studies re-tested on real data",
        "",
        "Generated by `kdlib results` from the run folders under `outputs/`; do not edit by hand. Each run "
        "is a CPU-sized version of its study (one small student, LoRA, hundreds of training items, sized "
        "by `kdlib plan`; each file's header explains its design): a verdict says whether our interval "
        "settles the paper's claim at that size, not whether the paper is right. Each study's GPU-scale "
        "twin (`params/*_full.yaml`) has the papers' sizes.",
        "",
        "Verdicts: *replicated* when our interval settles the claim; *not replicated (conclusive)* when it "
        "settles it against the paper; *not replicated* when it leaves it open; *not comparable* when the "
        "run lacks what the claim needs, or when an equivalence claim compares two conditions that are both "
        "at chance (the reason says which); *measured* for kdlib's own questions, which no paper answers "
        "(the difference and its interval).",
        "",
    ]
    for study in studies:
        source = reference.studies[study.study]
        lines += [f"## {study.title}: {source['citation']}", "", f"<{source['url']}>", ""]
        for params_file in study.params_files:
            lines += carried.get(params_file) or run_section(
                study, params_file, outputs_dir, docs_dir, gpu_cost
            )
            lines += (twin_plans or {}).get(params_file, [])
    lines += carried.get(LEARNING_CHECK) or learning_check_lines(outputs_dir)
    lines += summary_lines(lines, params_files)
    return io.write_text(docs_dir / "results.md", "\n".join(lines).rstrip() + "\n")
