import math
import re

import pandas as pd
import pytest

from kdlib import io
from kdlib.analysis.reference import NOT_IN_GRID, TOO_FEW_TRACES
from kdlib.analysis.results import (
    LEARNING_CHECK,
    STUDY_RUNS,
    baseline_lines,
    contingency_table,
    findings_table,
    items_to_bar,
    judge_lines,
    learning_check_lines,
    learning_curve_table,
    params_line,
    planned_line,
    published_table,
    read_comparison,
    stage_commits,
    summary_lines,
    training_time_line,
    version_drift,
    write_results,
)
from kdlib.analysis.tables import contingency
from kdlib.config import ExplanationParams, SftParams, dump_params, load_params
from kdlib.paths import REPO_ROOT, RunLayout
from kdlib.stats import wilson_interval
from kdlib.teacher.backends import choice_reply


def test_published_numbers_are_read_from_a_comparison_that_also_quotes_findings(tmp_path):
    """reference_comparison.csv holds quoted findings and published numbers in one paper column, so it
    reads back as text; the published table still prints the numbers."""
    comparison = pd.DataFrame(
        {
            "kind": ["finding", "published"],
            "study": ["s", "s"],
            "claim": ["phi is low", "accuracy"],
            "conclusive": [True, False],
            "id": ["s.finding", "s.cf"],
            "student": ["smollm2-135m-instruct"] * 2,
            "scope": ["same setup"] * 2,
            "estimate": [0.07, 41.5],
            "ci_low": [-0.1, 36.0],
            "ci_high": [0.2, 47.0],
            "unit": ["", "%"],
            "paper": ["T5-base 62.1 vs 53.2", 53.17],
            "verdict": ["replicated", "not comparable"],
            "reason": ["", "other student"],
            "basis": ["1 seed, bootstrap over items, not over training seeds", None],
        }
    )
    io.write_csv(tmp_path / "reference_comparison.csv", comparison)
    read_back = read_comparison(tmp_path / "reference_comparison.csv")
    findings = findings_table(read_back, "s")
    assert findings["ours (95 % CI)"].tolist() == ["0.07 [-0.10, 0.20]"]  # phi: no unit
    assert findings["interval from"].tolist() == ["1 seed, bootstrap over items, not over training seeds"]
    published = pd.DataFrame({"id": ["s.cf"], "study": ["s"], "dataset": ["babi"], "student": ["T5-base"]})
    table = published_table(read_back, published, "s", "babi")  # published_results.csv without versions
    assert table["paper"].tolist() == ["53.17 % (T5-base)"]
    assert table["ours"].str.startswith("41.5").all()
    io.write_csv(tmp_path / "published_results.csv", published.assign(version="v2"))
    versioned = pd.read_csv(tmp_path / "published_results.csv")
    assert published_table(read_back, versioned, "s", "babi")["paper"].tolist() == ["53.17 % (T5-base, v2)"]


def test_contingency_table_shows_the_joint_share_beside_the_conditionals(tmp_path):
    # 10 items: trace right on 4, answer right on 3 of those and on 2 of the 6 wrong traces
    predictions = pd.DataFrame(
        {
            "student": "s",
            "condition": "correct_trace",
            "seed": 0,
            "trace_correct": [True] * 4 + [False] * 6,
            "answer_correct": [True, True, True, False, True, True, False, False, False, False],
        }
    ).assign(class_correct=lambda f: f["trace_correct"], retrieval_exact=lambda f: f["trace_correct"])
    written = contingency(predictions, n_resamples=50)
    table = contingency_table(written, "both_steps")
    columns = list(table.columns)
    joint = columns.index("P(trace and answer right) %")
    assert columns[joint + 1 : joint + 3] == ["P(answer | trace right) %", "P(answer | trace wrong) %"]
    assert table.iloc[0, joint].startswith("30.0 [")
    assert table.iloc[0, joint + 1].startswith("75.0 [") and table.iloc[0, joint + 2].startswith("33.3 [")
    # a contingency.csv written before the joint share existed: the counts give it
    old = written.drop(columns=[c for c in written.columns if c.startswith("p_trace_right_and_answer_right")])
    io.write_csv(tmp_path / "contingency.csv", old)
    assert contingency_table(pd.read_csv(tmp_path / "contingency.csv"), "both_steps").equals(table)


def test_stage_commits_name_the_commit_each_notebook_ran_at(tmp_path):
    run = RunLayout(tmp_path)
    shas = {"teacher_traces": "a" * 40, "decomposition": "a" * 40, "sft": "a" * 40, "correlation": "b" * 40}
    for stage, sha in shas.items():
        io.write_meta(run.stage(stage), params={}, artifacts=[])
        meta = io.read_json(run.stage(stage) / "meta.json")
        io.write_json(run.stage(stage) / "meta.json", {**meta, "git_sha": sha})
    assert stage_commits(run) == f"{'a' * 10} (01-03), {'b' * 10} (05)"  # 04 never ran


def test_version_drift_names_packages_not_at_the_pinned_versions(tmp_path):
    run = RunLayout(tmp_path)
    used = {"teacher_traces": "5.20.0", "decomposition": "5.20.0", "sft": "5.24.0+local", "correlation": None}
    for stage, transformers in used.items():
        io.write_meta(run.stage(stage), params={}, artifacts=[])
        meta = io.read_json(run.stage(stage) / "meta.json")
        packages = {"transformers": transformers, "lm_eval": "0.4.13", "kdlib": "0.1.0"}
        io.write_json(run.stage(stage) / "meta.json", {**meta, "packages": packages})
    pins = {"transformers": "5.24.0", "lm-eval": "0.4.13"}
    assert version_drift(run, pins) == "transformers 5.20.0 (pinned 5.24.0) in 01, 02"
    assert version_drift(run, {**pins, "lm-eval": "0.4.14"}).startswith(
        "lm_eval 0.4.13 (pinned 0.4.14) in 01, 02, 03, 05; transformers"
    )


def test_pinned_versions_read_exact_pins_under_their_normalised_names(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# header\nLM_Eval==0.4.13  # why\ntorch >= 2\nzope.interface == 7.2\n\n")
    assert io.pinned_versions(constraints) == {"lm-eval": "0.4.13", "zope-interface": "7.2"}


def test_constraints_pin_every_tracked_package_that_make_venv_installs():
    pins = io.pinned_versions()
    makefile = (REPO_ROOT / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.MULTILINE)
    assert pins["torch"] == torch_spec.group(1)  # `make venv` installs torch first, from the Makefile's pin
    unpinned = [name for name in io.TRACKED_PACKAGES if name != "kdlib" and io.package_key(name) not in pins]
    assert unpinned == []


def test_judge_lines_report_the_readable_share_and_the_rating_probability():
    replies = [
        choice_reply({str(r): -3.0 for r in range(1, 6)}),
        choice_reply({str(r): -4.0 for r in range(1, 6)}),
    ]
    ratings = pd.DataFrame(
        {
            "explanation_id": ["a", "a", "b", "b"],
            "dimension": ["plausibility", "completeness"] * 2,
            "rating": [3.0, 3.0, 3.0, float("nan")],
            "judge_output": replies * 2,
        }
    )
    judge = {"backend": "transformers", "model": "tiny-llama"}
    scored = ExplanationParams(judge=judge, judge_mode="rating_probabilities")
    line = judge_lines(scored, ratings)[2]
    assert line.startswith(
        "Judge `tiny-llama` (transformers), mode `rating_probabilities`: 2 explanations x 2"
    )
    mass = (5 * math.exp(-3) + 5 * math.exp(-4)) / 2
    assert "75% of the ratings readable" in line and f"replying with a rating at all is {mass:.1%}" in line
    joint = judge_lines(ExplanationParams(judge=judge), ratings)[2]
    assert "mode `joint`" in joint and "probability" not in joint


def test_planned_time_is_shown_beside_the_measured_one():
    plan = {
        "estimated_seconds": 5400.0,
        "notebooks": {"01_teacher_traces": 0.0, "03_sft": 3600.0, "04_evaluation": 1800.0},
        "warnings": [],
    }
    assert planned_line({"plan": plan}) == (
        "- Planned: 90 min for notebooks 01-04 from scratch (03_sft 60.0, 04_evaluation 30.0 min; "
        "notebook start-up not included)"
    )
    assert "no estimate recorded" in planned_line({"notebooks": {}})
    assert "a model was not calibrated" in planned_line({"plan": {**plan, "estimated_seconds": None}})
    assert "ValueError: x" in planned_line({"plan": {"error": "ValueError: x"}})


def outcome_rows(condition: str, metric: str, item_ids: list[str], values: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "student": "s",
            "condition": condition,
            "seed": 0,
            "transform": condition,
            "metric": metric,
            "item_id": item_ids,
            "value": values,
        }
    )


def test_baseline_bar_is_per_babi_task_and_chance_plus_15_points_on_multiple_choice(tmp_path):
    babi, csqa = RunLayout(tmp_path / "babi"), RunLayout(tmp_path / "csqa")
    ids = [f"i{k}" for k in range(10)]
    items = pd.DataFrame(
        {
            "id": ["t0", *ids],
            "role": ["train", *["eval"] * 10],
            "question_type": ["t1", *["t1"] * 5, *["t2"] * 5],
            "choices": [[]] * 11,
        }
    )
    io.write_parquet(babi.items, items)
    outcomes = pd.concat(
        [
            outcome_rows("no_trace", "accuracy", ids, [1.0] * 5 + [1.0, 1.0, 1.0, 0.0, 0.0]),
            outcome_rows("correct_trace", "accuracy", ids, [0.0] * 10),  # not a baseline
        ]
    )
    io.write_parquet(babi.outcomes, outcomes)
    lines = baseline_lines(load_params(REPO_ROOT / "params/bhambri2025_babi.yaml"), babi)
    text = "\n".join(lines)
    assert "at least 80 % on every bAbI task" in text and "**not reached** in 1 of 2 rows" in text
    assert "| s | no_trace | 0 | t2 | accuracy | 5 | 60.0 [23.1, 88.2] | 80.0 | **no** |" in lines
    assert "| s | no_trace | 0 | t1 | accuracy | 5 | 100.0 [56.6, 100.0] | 80.0 | yes |" in lines
    assert "correct_trace" not in text

    io.write_parquet(csqa.items, items.assign(choices=[["a", "b", "c", "d", "e"]] * 11))
    outcomes = pd.concat(
        [
            outcome_rows("no_trace", "accuracy", ids, [0.0] * 10),
            outcome_rows("no_trace", "label_first_acc", ids, [1.0] * 4 + [0.0] * 6),
            outcome_rows(
                "no_trace_n200", "label_first_acc", ids, [0.0] * 10
            ),  # a smaller size: not the bar's
        ]
    )
    io.write_parquet(csqa.outcomes, outcomes)
    lines = baseline_lines(load_params(REPO_ROOT / "params/wadhwa2024_csqa.yaml"), csqa)
    assert "chance (20 %) + 15 points" in "\n".join(lines) and "**reached** in every row" in "\n".join(lines)
    assert lines[-2] == "| s | no_trace | 0 | all | label_first_acc | 10 | 40.0 [16.8, 68.7] | 35.0 | yes |"
    generated = RunLayout(tmp_path / "generated")  # stories without choices: no bar
    io.write_parquet(generated.items, items)
    io.write_parquet(generated.outcomes, outcome_rows("no_trace", "accuracy", ids, [0.0] * 10))
    assert baseline_lines(load_params(REPO_ROOT / "params/demo.yaml"), generated) == []


def test_results_page_without_runs_says_how_to_run_each_study(tmp_path):
    page = write_results(tmp_path / "outputs", tmp_path / "docs", twin_plans={}, gpu_cost=None).read_text()
    for params_file in [f for study in STUDY_RUNS for f in study.params_files]:
        assert f"Not finished: notebooks done: none. Complete it with `kdlib run {params_file}`" in page
    assert "## Learning check: does kdlib's trainer learn" in page


def test_a_run_without_a_folder_here_keeps_its_section_while_its_params_are_unchanged(tmp_path):
    """A clone has no outputs/: `kdlib results` keeps what the earlier page said of such runs, and their
    figures, but only where the section's params digest is the params file's today."""
    outputs, docs = tmp_path / "outputs", tmp_path / "docs"
    babi, cotempqa = "params/bhambri2025_babi.yaml", "params/bhambri2025_cotempqa.yaml"
    learning = load_params(REPO_ROOT / LEARNING_CHECK)
    sections = {
        babi: [
            "### babi: `params/bhambri2025_babi.yaml`",
            params_line(load_params(REPO_ROOT / babi)),
            "",
            "- Run: measured elsewhere",
            "",
            "![Accuracy](figures/bhambri2025_babi/a.png)",
            "",
        ],
        cotempqa: [
            "### cotempqa: `params/bhambri2025_cotempqa.yaml`",
            params_line(learning),  # written from other params than cotempqa's
            "",
            "- Run: from other params",
            "",
        ],
        LEARNING_CHECK: [
            "## Learning check: does kdlib's trainer learn, and as well as HF Trainer?",
            params_line(learning),
            "",
            "kdlib reaches 95%: **yes** (measured elsewhere).",
            "",
        ],
    }
    docs.mkdir()
    (docs / "results.md").write_text(
        "\n".join(
            [
                *sections[babi],
                "#### At the paper's size: `x`",
                "old twin",
                *sections[cotempqa],
                *sections[LEARNING_CHECK],
            ]
        )
    )
    for run_name in ("bhambri2025_babi", "bhambri2025_cotempqa"):
        (docs / "figures" / run_name).mkdir(parents=True)
        (docs / "figures" / run_name / "a.png").write_bytes(b"png")

    page = write_results(
        outputs, docs, twin_plans={babi: ["#### At the paper's size: `new`", ""]}
    ).read_text()
    assert "\n".join(sections[babi] + ["#### At the paper's size: `new`"]) in page
    assert "old twin" not in page and (docs / "figures" / "bhambri2025_babi" / "a.png").exists()
    assert "from other params" not in page and not (docs / "figures" / "bhambri2025_cotempqa").exists()
    assert f"Not finished: notebooks done: none. Complete it with `kdlib run {cotempqa}`" in page
    assert "\n".join(sections[LEARNING_CHECK]) in page

    (outputs / "bhambri2025_babi").mkdir(parents=True)  # a run folder here is read, not the page
    io.write_json(outputs / "bhambri2025_babi" / "run.json", {"notebooks": {}})
    page = write_results(outputs, docs, twin_plans={}).read_text()
    assert "- Run: measured elsewhere" not in page and "**yes** (measured elsewhere)" in page  # the check's
    assert f"Not finished: notebooks done: none. Complete it with `kdlib run {babi}`" in page
    assert not (docs / "figures" / "bhambri2025_babi").exists()


def test_closing_summary_reads_each_runs_bar_and_settled_findings_from_the_page():
    header = "| finding | claim | student | paper | ours (95 % CI) | verdict | why | interval from |"
    page = [
        "### babi: `a.yaml`",
        "- Run: git 0",
        "The bar for the baseline (no_trace): 80 %, by the point estimate. "
        "It is **not reached** in 1 of 2 rows. A baseline below its bar has not learnt the task.",
        "#### Findings",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
        "| x.low_phi | phi < 0.3 | s | a \\| t | 0.89 [0.82, 0.95] | not replicated (conclusive) | w | 1 |",
        "| x.same | within 2 | s | p | -2.9 [-5.3, -0.4] points | not replicated | w | 1 seed |",
        "| x.ours | kdlib's | s | p | 1.0 [0.0, 2.0] points | measured | w | 1 seed |",
        "| x.wrong | wrong traces | s | p | 0.0 [0.0, 1.3] % | replicated | w | 1 seed |",
        f"| x.vacuous | few traces | s | p | 0.0 [0.0, 1.3] % | replicated | w; {TOO_FEW_TRACES} | 1 |",
        f"| x.untrained | other grid | s | p |  | not comparable | {NOT_IN_GRID} x | |",
        "",
        "#### Per condition",
        "| a | b |",
        "|---|---|",
        "| replicated | replicated |",
        "### cotempqa: `b.yaml`",
        "Not finished: notebooks done: none.",
    ]
    summary = summary_lines(page, ["a.yaml", "b.yaml"])
    assert "(replicated, or not replicated (conclusive)): 2 are." in summary[2]
    assert summary[6] == (
        "| `a.yaml` | not reached in 1 of 2 rows | "
        "x.low_phi: not replicated (conclusive), 0.89 [0.82, 0.95]; "
        "x.wrong: replicated, 0.0 [0.0, 1.3] % | "
        "x.same; x.vacuous: replicated on fewer than 20 right or wrong traces |"
    )
    assert summary[7] == "| `b.yaml` | not run yet |  |  |"


def test_items_to_bar_fits_accuracy_against_log_items():
    sizes = pd.Series([150, 300, 600])
    assert items_to_bar(sizes, pd.Series([0.10, 0.15, 0.20]), 0.25) == pytest.approx(1200.0)
    assert items_to_bar(sizes, pd.Series([0.20, 0.20, 0.20]), 0.25) is None  # no rise
    assert items_to_bar(sizes[:2], pd.Series([0.10, 0.15]), 0.25) is None  # two sizes


def test_a_baseline_below_its_bar_shows_its_curve_and_the_size_and_cost_that_would_reach_it(tmp_path):
    run = RunLayout(tmp_path)
    ids = [f"i{k}" for k in range(20)]
    items = pd.DataFrame({"id": ids, "role": "eval", "question_type": "equal", "choices": [[]] * 20})
    io.write_parquet(run.items, items)
    hits = {"no_trace_n150": 2, "no_trace_n300": 3, "no_trace": 4}  # 10, 15 and 20 % of 20 items
    outcomes = [outcome_rows(name, "accuracy", ids, [1.0] * k + [0.0] * (20 - k)) for name, k in hits.items()]
    io.write_parquet(run.outcomes, pd.concat(outcomes))
    summary = {"student": "s", "condition": "no_trace", "examples": 600, "seconds": 1200.0}
    io.write_csv(
        run.sft_summary, pd.DataFrame([{**summary, "tokens_per_example": 90.0, "padding_share": 0.1}])
    )
    params = load_params(REPO_ROOT / "params/bhambri2025_cotempqa.yaml")  # 600 items, 2 epochs
    lines = baseline_lines(params, run, gpu_cost=lambda student, sft, tokens: f"{student} on {tokens:.0f}")
    assert "at least 25 %, by the point estimate. It is **not reached** in 1 of 1 rows" in "\n".join(lines)
    assert lines[-2] == (
        "- s: 150 items 10.0 %, 300 items 15.0 %, 600 items 20.0 %. A line in log(items) reaches 25 % at "
        "about 1,200 training items (2.0x the largest size run; an extrapolation). One cell of that size, "
        "2 epochs: about 0.7 h on this CPU (measured: 1.00 s per example and epoch); s on 240000."
    )
    io.write_parquet(run.outcomes, pd.concat(outcomes[1:]))  # two sizes: no fit
    assert baseline_lines(params, run)[-2].endswith(
        "Fewer than three sizes, or no rise with data: no estimate."
    )


def test_measured_training_time_sums_each_cells_own_seconds(tmp_path):
    run = RunLayout(tmp_path)
    assert training_time_line(run) == ""
    summary = pd.DataFrame(
        {
            "cell": ["s/no_trace/seed0", "s/correct_trace/seed0"],
            "seconds": [6000.0, 3900.0],
            "tokens_per_second": [74.9, 140.2],
        }
    )
    io.write_csv(run.sft_summary, summary)
    assert training_time_line(run) == (
        "- Training, measured: 165 min over 2 cells (s/no_trace/seed0 100 min at 75 tok/s, "
        "s/correct_trace/seed0 65 min at 140 tok/s); each cell's own time, interrupted parts included, "
        "in the run where it was trained"
    )


def test_learning_check_section_reports_the_bar_and_parity_or_how_to_run_it(tmp_path):
    params = load_params(REPO_ROOT / LEARNING_CHECK)
    lines = "\n".join(learning_check_lines(tmp_path))
    assert "Not current: not run yet" in lines and "benchmarks/learning_parity.py" in lines
    run = tmp_path / params.common.run_name
    io.write_text(run / "params.yaml", dump_params(params))
    entry = {"status": "ok", "seconds": 600.0, "started_at": "2026-11-30T11:00:00"}
    io.write_json(run / "run.json", {"notebooks": {"03_sft": entry, "04_evaluation": entry}})
    parity = pd.DataFrame(
        {
            "task": ["single-supporting-fact", "two-supporting-facts"],
            "kdlib_n": [352, 348],
            "kdlib": [0.96, 0.70],
            "kdlib_low": [0.935, 0.65],
            "kdlib_high": [0.976, 0.75],
            "hf_trainer_n": [352, 348],
            "hf_trainer": [0.97, 0.72],
            "hf_trainer_low": [0.946, 0.67],
            "hf_trainer_high": [0.984, 0.77],
            "difference": [-0.01, -0.02],
            "difference_ci_low": [-0.03, -0.06],
            "difference_ci_high": [0.01, 0.02],
            "mcnemar_p": [0.45, 0.3],
        }
    )
    predictions = pd.DataFrame(
        {
            "condition": "no_trace",
            "question_type": ["two-supporting-facts"] * 4 + ["single-supporting-fact"] * 20,
            "answer_correct": [True, False, False, True] + [True] * 19 + [False],
        }
    )
    io.write_parquet(run / "evaluation" / "predictions.parquet", predictions)
    io.write_csv(run / "learning_parity" / "parity.csv", parity)  # no meta.json: the parity did not finish
    text = "\n".join(learning_check_lines(tmp_path))
    low, high = wilson_interval(19, 20)
    assert "- Parity: not run yet" in text and "wall time 20 min" in text
    assert f"| single-supporting-fact | 20 | 95.0 [{100 * low:.1f}, {100 * high:.1f}] |" in text
    assert text.index("| single-supporting-fact |") < text.index("| two-supporting-facts | 4 | 50.0")
    assert "on single-supporting-fact: **yes** (95.0 %)" in text
    io.write_meta(
        run / "learning_parity",
        params={},
        artifacts=["parity.csv"],
        command="python benchmarks/learning_parity.py params/learning_check.yaml",
        hf_trainer_seconds=3000.0,
    )
    lines = learning_check_lines(tmp_path)
    text = "\n".join(lines)
    assert (
        "| single-supporting-fact | 352 | 96.0 [93.5, 97.6] | 97.0 [94.6, 98.4] | -1.0 [-3.0, 1.0] | 0.45 |"
        in lines
    )
    assert "on single-supporting-fact: **yes** (96.0 %)" in text and "includes 0): **yes**" in text
    assert "trained in 50 min" in text and "wall time 20 min" in text
    assert "Beyond the bar" not in text  # task 2's interval includes 0
    io.write_csv(
        run / "learning_parity" / "parity.csv",
        parity.assign(
            difference=[-0.01, -0.055], difference_ci_low=[-0.03, -0.092], difference_ci_high=[0.01, -0.02]
        ),
    )
    text = "\n".join(learning_check_lines(tmp_path))
    assert "the trainers differ on two-supporting-facts (-5.5 [-9.2, -2.0] points)" in text
    io.write_csv(
        run / "learning_parity" / "parity.csv", parity.assign(kdlib=[0.94, 0.7], difference_ci_high=-0.005)
    )
    text = "\n".join(learning_check_lines(tmp_path))
    assert "**no** (94.0 %)" in text and "includes 0): **no**" in text
    io.write_csv(run / "learning_parity" / "parity.csv", parity)
    other_seed = tmp_path / "learning_check_seed1" / "learning_parity"
    seed_params = params.model_copy(update={"sft": params.sft.model_copy(update={"seeds": [1]})})
    io.write_csv(other_seed / "parity.csv", parity.assign(kdlib=[0.99, 0.90], difference=[0.02, 0.18]))
    io.write_meta(
        other_seed,
        params=seed_params.model_dump(mode="json"),
        artifacts=["parity.csv"],
        command="python benchmarks/learning_parity.py params/learning_check.yaml --seed 1",
        hf_trainer_seconds=2400.0,
    )
    stranger = tmp_path / "other_items" / "learning_parity"  # another n_train: not a seed of this check
    io.write_csv(stranger / "parity.csv", parity)
    other_items = seed_params.teacher_traces.dataset.model_copy(update={"n_train": 10})
    io.write_meta(
        stranger,
        params=seed_params.model_copy(
            update={"teacher_traces": seed_params.teacher_traces.model_copy(update={"dataset": other_items})}
        ).model_dump(mode="json"),
        artifacts=["parity.csv"],
        command="python benchmarks/learning_parity.py params/learning_check.yaml --n-train 10",
        hf_trainer_seconds=60.0,
    )
    lines = learning_check_lines(tmp_path)
    text = "\n".join(lines)
    assert text.count("Under training seed 1 (the same items") == 1 and "--n-train 10" not in text
    assert "--seed 1`" in text and "trained in 40 min" in text
    assert (
        "| single-supporting-fact | 352 | 99.0 [93.5, 97.6] | 97.0 [94.6, 98.4] | 2.0 [-3.0, 1.0] | 0.45 |"
        in lines
    )
    assert "| single-supporting-fact | 96.0 - 99.0 | 97.0 - 97.0 | +0.5 |" in lines
    assert "| two-supporting-facts | 70.0 - 90.0 | 72.0 - 72.0 | +8.0 |" in lines
    assert "Across training seeds 0, 1" in text and "under every seed: kdlib reaches 95% **yes**" in text
    assert "includes 0) **yes**." in text
    io.write_text(
        run / "params.yaml",
        dump_params(params.model_copy(update={"common": params.common.model_copy(update={"seed": 1})})),
    )
    assert "holds another run (its params differ in common)" in "\n".join(learning_check_lines(tmp_path))


def test_learning_curve_rows_are_the_conditions_that_differ_only_in_size():
    sft = SftParams(
        conditions=[
            "rationale_after_label",
            {"name": "no_trace_n100", "transform": "no_trace", "train_items": 100},
            "no_trace",
            {"name": "no_trace_n300", "transform": "no_trace", "train_items": 300},
        ]
    )
    rows = [
        {
            "student": "s",
            "condition": c,
            "metric": "accuracy",
            "mean": m,
            "ci_low": m - 0.1,
            "ci_high": m + 0.1,
        }
        for c, m in (
            ("rationale_after_label", 0.5),
            ("no_trace_n100", 0.3),
            ("no_trace", 0.6),
            ("no_trace_n300", 0.4),
        )
    ]
    seed_summary = pd.DataFrame(rows).assign(n_seeds=3)
    table = learning_curve_table(seed_summary, sft, n_train=1000)
    assert list(table["condition"]) == ["no_trace_n100", "no_trace_n300", "no_trace"]
    assert list(table["training items"]) == [100, 300, 1000]
    assert list(table["accuracy"]) == ["30.0 [20.0, 40.0]", "40.0 [30.0, 50.0]", "60.0 [50.0, 70.0]"]
    assert learning_curve_table(seed_summary, SftParams(conditions=["no_trace", "correct_trace"]), 1000).empty
