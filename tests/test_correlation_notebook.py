"""Notebook 05 alone, on a fabricated three-seed run: the seed-level tests and flags that the one-seed
smoke run cannot reach."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kdlib import io
from kdlib.config import SftParams
from kdlib.data import load_train_eval
from kdlib.data.schema import items_to_frame
from kdlib.paths import REPO_ROOT, RunLayout

pytestmark = pytest.mark.slow
CONDITIONS = {"no_trace": 0.55, "correct_trace": 0.7, "incorrect_trace": 0.6}


def _fabricate(run: RunLayout, traces: bool = True) -> None:
    """Items, sft meta and summary, and greedy predictions of three seeds per condition; without
    `traces`, the predictions carry no trace scores (items without gold steps, as CommonsenseQA's)."""
    train, evaluation = load_train_eval(
        "generated", "train", "test", 16, 60, seed=0, data_dir=None, options={}
    )
    items = pd.concat(
        [items_to_frame(train).assign(role="train"), items_to_frame(evaluation).assign(role="eval")],
        ignore_index=True,
    )
    io.write_parquet(run.items, items)
    sft = SftParams(students=["tiny-llama"], conditions=list(CONDITIONS), seeds=[0, 1, 2])
    io.write_meta(run.stage("sft"), params={"sft": sft.model_dump()}, artifacts=[])
    rng = np.random.default_rng(0)
    rows, summary = [], []
    for condition, accuracy in CONDITIONS.items():
        for seed in (0, 1, 2):
            collapsed = condition == "correct_trace" and seed == 2
            for item in evaluation:
                right = bool(rng.random() < accuracy) and not collapsed
                answer = item.answer if right else "nobody"
                if collapsed:
                    answer = "nobody"
                trace = condition != "no_trace" and bool(rng.random() < 0.5)
                row = {
                    "student": "tiny-llama",
                    "condition": condition,
                    "seed": seed,
                    "transform": condition,
                    "item_id": item.id,
                    "read_answer": answer,
                    "answer_parsed": True,
                    "answer_correct": right,
                }
                scores = {
                    "trace_correct": trace,
                    "class_correct": trace or bool(rng.random() < 0.5),
                    "retrieval_exact": trace,
                    "retrieval_recall": 1.0 if trace else float(rng.random()),
                    "retrieval_precision": 1.0 if trace else float(rng.random()),
                }
                rows.append(row | scores if traces else row)
            summary.append(
                {
                    "cell": f"tiny-llama/{condition}/seed{seed}",
                    "student": "tiny-llama",
                    "condition": condition,
                    "seed": seed,
                    "final_loss": 0.1,
                    "seconds": 60.0,
                    "tokens_per_second": 150.0,
                }
            )
    io.write_csv(run.sft_summary, pd.DataFrame(summary))
    io.write_parquet(run.predictions, pd.DataFrame(rows))
    io.write_parquet(run.choice_scores, pd.DataFrame())


def _run_notebook_05(run_dir) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdlib",
            "run",
            "params/smoke.yaml",
            "--only",
            "05",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """An outputs folder holding the fabricated run as `smoke` (the run name of params/smoke.yaml),
    after notebook 05."""
    outputs = tmp_path_factory.mktemp("outputs")
    _fabricate(RunLayout(outputs / "smoke"))
    _run_notebook_05(outputs / "smoke")
    return outputs


def test_notebook_05_tests_seeds_and_flags_a_collapsed_seed(outputs):
    tmp_path = outputs / "smoke"
    run = RunLayout(tmp_path)
    seeds = pd.read_csv(run.seed_summary).set_index(["condition", "metric"])
    assert (seeds["n_seeds"] == 3).all() and seeds["interval"].str.startswith("3 seeds").all()
    omnibus = pd.read_csv(run.group_tests("seed", "omnibus"))
    (row,) = omnibus.to_dict(orient="records")
    assert (
        row["family"] == "tiny-llama / accuracy" and 0 <= row["anova_p"] <= 1 and 0 <= row["kruskal_p"] <= 1
    )
    assert len(pd.read_csv(run.group_tests("seed", "posthoc"))) == 3
    flags = pd.read_csv(run.run_flags, keep_default_na=False).set_index(["condition", "seed"])["flags"]
    assert flags[("correct_trace", 2)] == "constant_answer,seed_outlier"
    assert (flags.drop(("correct_trace", 2)) == "").all()
    comparison = pd.read_csv(run.reference_comparison).set_index("id")
    assert comparison.loc["bhambri.traces_do_not_help", "basis"] == "3 seeds, t interval over seeds"
    meta = json.loads((tmp_path / "correlation" / "meta.json").read_text())
    assert set(meta["phi"]) == {
        f"{c} / seed {s}" for c in ("correct_trace", "incorrect_trace") for s in (0, 1, 2)
    }
    assert "Means over seeds" in (tmp_path / "index.html").read_text()


def test_notebook_05_without_checkable_traces(tmp_path):
    """A run whose items have no gold steps (CommonsenseQA): the trace tables are empty, the rest holds."""
    run = RunLayout(tmp_path / "smoke")
    _fabricate(run, traces=False)
    _run_notebook_05(run.root)
    assert pd.read_csv(run.contingency).empty and pd.read_csv(run.point_biserial).empty
    seeds = pd.read_csv(run.seed_summary)
    assert sorted(seeds["condition"]) == sorted(CONDITIONS) and (seeds["metric"] == "accuracy").all()
    figures = {p.stem for p in (run.root / "correlation" / "figures").glob("*.html")}
    assert "trace_vs_answer" not in figures and "condition_accuracy" in figures
    comparison = pd.read_csv(run.reference_comparison).set_index("id")
    assert comparison.loc["bhambri.trace_answer_correlation_is_low", "verdict"] == "not comparable"
    assert "no checkable traces" in comparison.loc["bhambri.trace_answer_correlation_is_low", "reason"]


def test_results_document_is_rendered_from_the_run_files(outputs, tmp_path):
    """docs/results.md: every number comes from the run's CSV files; an unfinished run says how to finish."""
    from kdlib.analysis.results import FIGURES, StudyRuns, with_interval, write_results

    run = RunLayout(outputs / "smoke")
    study = StudyRuns(
        "bhambri2025",
        "Interpretable traces",
        ("params/smoke.yaml", "params/demo.yaml", "params/bhambri2025_babi.yaml"),
    )
    stale = outputs / "bhambri2025_babi"
    stale.mkdir(exist_ok=True)
    (stale / "params.yaml").write_text((outputs / "smoke" / "params.yaml").read_text())
    text = write_results(outputs, tmp_path, studies=(study,)).read_text()
    assert "## Interpretable traces: Bhambri, Biswas, Kambhampati" in text
    assert "- Command: `kdlib run params/smoke.yaml`, then `kdlib results`" in text
    assert "- Training, measured: 9 min over 9 cells (tiny-llama/no_trace/seed0 1 min at 150 tok/s, " in text
    comparison = pd.read_csv(run.reference_comparison).set_index("id")
    finding = comparison.loc["bhambri.traces_do_not_help"]
    ours = with_interval(finding["estimate"], finding["ci_low"], finding["ci_high"], digits=2)
    assert f"| bhambri.traces_do_not_help | {finding['claim']} | tiny-llama |" in text and ours in text
    seeds = pd.read_csv(run.seed_summary).set_index(["condition", "metric"])
    accuracy = seeds.loc[("correct_trace", "accuracy")]
    assert with_interval(accuracy["mean"], accuracy["ci_low"], accuracy["ci_high"], scale=100.0) in text
    assert "| tiny-llama | correct_trace | 2 | constant_answer,seed_outlier |" in text
    contingency = pd.read_csv(run.contingency).query("criterion == 'both_steps'")
    assert text.count("| tiny-llama | correct_trace | ") >= 3 and len(contingency) == 6
    for png in [run.stage(stage) / "figures" / f"{name}.png" for stage, name, _ in FIGURES]:
        if not png.exists():  # no PNG without a Chromium for kaleido
            continue
        assert (tmp_path / "figures" / "smoke" / png.name).read_bytes() == png.read_bytes()
        assert f"](figures/smoke/{png.name})" in text
    assert "### generated: `params/demo.yaml`" in text
    assert "Not finished: notebooks done: none. Complete it with `kdlib run params/demo.yaml`" in text
    assert "Not current: the run folder holds another run (its params differ in common, " in text
