"""The grid runner: cells of students x conditions x seeds, skip when finished, resume when interrupted,
and evaluation of the trained cells of both model families."""

import json

import pandas as pd
import pytest
import torch

import kdlib.evaluation.generation
import kdlib.training.grid
from kdlib.cells import load_trained
from kdlib.config import CommonParams, EvaluationParams, SftParams
from kdlib.evaluation.generation import evaluate_cells, summarise
from kdlib.models import load_model, peft_checkpointing_probe_quiet
from kdlib.paths import RunLayout
from kdlib.teacher.rationales import rule_traces
from kdlib.traces.decomposition import decompose, steps_by_item
from kdlib.training.grid import TraceSources, grid_cells, train_grid

COMMON = CommonParams(device="cpu")


def grid(**changes):
    base = {
        "students": ["tiny-llama", "tiny-t5"],
        "seeds": [0],
        "conditions": ["no_trace", "correct_trace", {"name": "mt", "transform": "multitask"}],
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "epochs": 1,
        "batch_size": 4,
        "bf16": False,
        "checkpoint_every": 1,
        "max_length": 2048,
    }
    return SftParams.model_validate({**base, **changes})


@pytest.fixture(scope="module")
def sources(generated_items):
    return TraceSources(
        traces=rule_traces(generated_items),
        steps=steps_by_item(decompose(generated_items, "tagged", ["both"], seed=0)),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, generated_items, sources):
    run = RunLayout(tmp_path_factory.mktemp("grid"))
    summary = train_grid(run, generated_items[:8], sources, sft=grid(), common=COMMON, fmt="tagged")
    return run, summary


def test_every_cell_is_trained_and_written(trained):
    run, summary = trained
    assert list(summary["status"]) == ["trained"] * 6
    assert list(zip(summary["student"], summary["condition"], strict=True)) == [
        (s, c) for s in ("tiny-llama", "tiny-t5") for c in ("no_trace", "correct_trace", "mt")
    ]
    for row in summary.itertuples():
        cell = run.sft_cell(row.student, row.condition, row.seed)
        assert cell == run.root / "sft" / row.cell
        assert (cell / "adapter" / "adapter_model.safetensors").exists()
        assert len(pd.read_csv(cell / "train_log.csv")) == row.steps
        assert not (cell / "checkpoint").exists()
    mt = summary[summary["condition"] == "mt"]
    assert (mt["examples"] == 16).all() and (mt["items"] == 8).all()


def test_a_lora_cell_loads_with_its_adapter_merged(trained):
    """load_trained returns a plain model whose logits are the adapter-wrapped model's, not the base's."""
    from peft import PeftModel

    run, _ = trained
    cell = run.sft_cell("tiny-llama", "correct_trace", 0)
    merged, tokenizer = load_trained(cell, device=torch.device("cpu"))
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    base, _ = load_model("tiny-llama")
    ids = tokenizer("Where is the milk?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(ids).logits
        with peft_checkpointing_probe_quiet():
            wrapped = PeftModel.from_pretrained(base, cell / "adapter").eval()
        wrapped_logits = wrapped(ids).logits
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, wrapped_logits, rtol=1e-4, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3


def test_rerun_skips_finished_cells_and_new_seeds_train_only_new_cells(trained, generated_items, sources):
    run, _ = trained
    adapter = run.sft_cell("tiny-llama", "no_trace", 0) / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    again = train_grid(run, generated_items[:8], sources, sft=grid(), common=COMMON, fmt="tagged")
    assert set(again["status"]) == {"finished earlier"} and adapter.stat().st_mtime_ns == before
    more = train_grid(
        run,
        generated_items[:8],
        sources,
        sft=grid(students=["tiny-llama"], conditions=["no_trace"], seeds=[0, 1]),
        common=COMMON,
        fmt="tagged",
    )
    assert list(more["status"]) == ["finished earlier", "trained"]
    # Changed training texts (here: other items) make a finished cell stale.
    changed = train_grid(
        run,
        generated_items[8:16],
        sources,
        sft=grid(students=["tiny-llama"], conditions=["no_trace"]),
        common=COMMON,
        fmt="tagged",
    )
    assert list(changed["status"]) == ["trained"]


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path, generated_items, sources, monkeypatch):
    run = RunLayout(tmp_path)
    sft = grid(students=["tiny-llama"], conditions=["correct_trace"], epochs=2)
    real_train = kdlib.training.grid.train

    def interrupted(*args, **kwargs):
        def stop(row):
            if row["step"] == 3:
                raise KeyboardInterrupt

        return real_train(*args, **kwargs, on_step=stop)

    monkeypatch.setattr(kdlib.training.grid, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_grid(run, generated_items[:16], sources, sft=sft, common=COMMON, fmt="tagged")
    cell = run.sft_cell("tiny-llama", "correct_trace", 0)
    assert json.loads((cell / "checkpoint" / "progress.json").read_text())["step"] == 3
    assert not (cell / "meta.json").exists() and not (cell / "adapter").exists()
    monkeypatch.setattr(kdlib.training.grid, "train", real_train)
    (row,) = train_grid(run, generated_items[:16], sources, sft=sft, common=COMMON, fmt="tagged").itertuples()
    assert row.status == "resumed" and row.steps == 8
    log = pd.read_csv(cell / "train_log.csv")
    assert log["step"].tolist() == list(range(1, 9)) and not (cell / "checkpoint").exists()


def test_data_parallel_cells_match_one_process(tmp_path, generated_items, sources):
    """`sft.num_processes: 2` trains each cell under `accelerate launch` (DDP, gloo on CPU): each step's
    micro-batches are split over the processes (steps of 3 and of 1 micro-batch here, so one process
    sometimes has none), and both families end at the one-process weights, losses and token counts."""
    from safetensors.torch import load_file

    sft = grid(conditions=["correct_trace"], epochs=2, batch_size=2, grad_accum=3)
    runs = {}
    for processes in (1, 2):
        run = RunLayout(tmp_path / f"p{processes}")
        runs[processes] = train_grid(
            run, generated_items[:7], sources, sft=sft.model_copy(update={"num_processes": processes}),
            common=COMMON, fmt="tagged",
        )  # fmt: skip
        runs[processes]["root"] = str(run.root / "sft")
    assert runs[2]["processes"].tolist() == [2, 2] and runs[1]["processes"].tolist() == [1, 1]
    for one, two in zip(runs[1].itertuples(), runs[2].itertuples(), strict=True):
        logs = [pd.read_csv(f"{row.root}/{row.cell}/train_log.csv") for row in (one, two)]
        assert len(logs[0]) == 4 and logs[1]["target_tokens"].tolist() == logs[0]["target_tokens"].tolist()
        assert logs[1]["loss"].tolist() == pytest.approx(logs[0]["loss"].tolist(), rel=1e-4)
        weights = [
            load_file(f"{row.root}/{row.cell}/adapter/adapter_model.safetensors") for row in (one, two)
        ]
        for name, value in weights[0].items():
            torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6)
        assert not list((tmp_path / "p2").rglob("job.json"))


def test_full_finetune_cell_saves_the_whole_model(tmp_path, generated_items, sources):
    run = RunLayout(tmp_path)
    sft = grid(students=["tiny-t5"], conditions=["no_trace"], finetune="full")
    (row,) = train_grid(run, generated_items[:8], sources, sft=sft, common=COMMON, fmt="tagged").itertuples()
    cell = run.root / "sft" / row.cell
    assert (cell / "model" / "model.safetensors").exists() and row.trainable_parameters == 181_504
    model, _ = load_trained(cell, device=torch.device("cpu"))
    assert model.config.is_encoder_decoder


def test_trained_cells_of_both_families_evaluate(trained, generated_items):
    """Greedy, sampled and label-first evaluation of every cell; results do not depend on batch size."""
    run, summary = trained
    params = EvaluationParams(max_new_tokens=8, batch_size=4, generation={"samples": 2, "temperature": 1.0})
    items = generated_items[8:13]
    frames = evaluate_cells(run, summary, items, device=torch.device("cpu"), seed=0, params=params)
    predictions, samples, scores = frames["predictions"], frames["samples"], frames["choice_scores"]
    assert len(predictions) == 6 * 5 and len(samples) == 6 * 5 * 2 and len(scores) == 6 * 5
    assert set(samples["sample"]) == {0, 1}
    metrics = summarise(predictions, samples, scores)
    assert list(metrics["condition"]) == list(summary["condition"])
    for column in ("accuracy", "sample_accuracy", "label_first_acc", "label_first_acc_norm"):
        assert metrics[column].between(0, 1).all(), column
    assert (metrics["label_first_acc_ci_low"] <= metrics["label_first_acc"]).all()
    assert metrics.loc[metrics["condition"] == "correct_trace", "trace_parse_rate"].notna().all()
    assert metrics.loc[metrics["condition"] == "mt", "trace_parse_rate"].isna().all()
    one_by_one = evaluate_cells(
        run, summary, items, device=torch.device("cpu"), seed=0,
        params=params.model_copy(update={"batch_size": 1}),
    )  # fmt: skip
    compared = {
        "predictions": ["output"],
        "samples": ["output"],
        "choice_scores": ["predicted_index", "predicted_index_norm"],
        "explanations": ["explanation_id", "explanation"],
    }
    assert set(frames) == {*compared, "cells"}
    for name, columns in compared.items():
        pd.testing.assert_frame_equal(frames[name][columns], one_by_one[name][columns], obj=name)


@pytest.fixture
def trained_copy(trained, tmp_path):
    """The trained grid's sft/ folder in a fresh run folder (no evaluation yet), and its summary."""
    import shutil

    run, summary = trained
    shutil.copytree(run.root / "sft", tmp_path / "sft")
    return RunLayout(tmp_path), summary


def test_evaluation_cut_off_midway_keeps_its_finished_cells(trained_copy, generated_items, monkeypatch):
    """Cells evaluated before a crash are reused on the rerun, scored by the current rules; a changed
    setting or a retrained cell is evaluated again."""
    run, summary = trained_copy
    params = EvaluationParams(max_new_tokens=4, batch_size=4, label_first=False)
    items, cpu = generated_items[8:10], torch.device("cpu")
    evaluate_cell = kdlib.evaluation.generation.evaluate_cell
    calls, crash_at = [], [3]

    def crash_once(*args, **kwargs):
        calls.append(args[1]["cell"])
        if len(calls) == crash_at[0]:
            crash_at[0] = None
            raise RuntimeError("killed")
        return evaluate_cell(*args, **kwargs)

    monkeypatch.setattr(kdlib.evaluation.generation, "evaluate_cell", crash_once)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_cells(run, summary, items, device=cpu, seed=0, params=params)
    kept = sorted(
        str(p.parent.parent.relative_to(run.root / "evaluation" / "cells"))
        for p in run.root.rglob("key.json")
    )
    assert kept == sorted(calls[:2])
    assert not [p for p in (run.root / "evaluation").rglob(".*")]
    calls.clear()
    frames = evaluate_cells(run, summary, items, device=cpu, seed=0, params=params)
    statuses = frames["cells"].set_index("cell")["status"]
    assert len(calls) == 4 and len(frames["predictions"]) == 6 * 2
    assert statuses.value_counts().to_dict() == {"evaluated": 4, "evaluated earlier": 2}
    calls.clear()
    again = evaluate_cells(run, summary, items, device=cpu, seed=0, params=params)
    assert calls == [] and (again["cells"]["status"] == "evaluated earlier").all()
    pd.testing.assert_frame_equal(again["predictions"], frames["predictions"])
    with pytest.MonkeyPatch.context() as new_rule:
        new_rule.setattr(kdlib.evaluation.generation, "answer_is_correct", lambda answer, item: True)
        rescored = evaluate_cells(run, summary, items, device=cpu, seed=0, params=params)
    assert calls == [] and rescored["predictions"]["answer_correct"].all()
    retrained = run.root / "sft" / summary["cell"][0] / "meta.json"
    retrained.write_text(retrained.read_text().replace("{", "{\n", 1))
    evaluate_cells(run, summary, items, device=cpu, seed=0, params=params)
    assert calls == [summary["cell"][0]]
    calls.clear()
    longer = params.model_copy(update={"max_new_tokens": 5})
    evaluate_cells(run, summary, items, device=cpu, seed=0, params=longer)
    assert calls == list(summary["cell"])


def test_lens_frames_are_reused_while_the_tuned_lens_is_kept(trained_copy, generated_items, monkeypatch):
    import kdlib.evaluation.lens
    from kdlib.config import LensParams

    run, summary = trained_copy
    summary = summary[summary["student"] == "tiny-llama"].iloc[:2]
    params = LensParams(train_items=2, steps=2, positions_per_step=4, batch_size=4)
    items, cpu = generated_items, torch.device("cpu")
    lens_cell = kdlib.evaluation.lens.lens_cell
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1]["cell"])
        return lens_cell(*args, **kwargs)

    monkeypatch.setattr(kdlib.evaluation.lens, "lens_cell", counted)
    first = kdlib.evaluation.lens.lens_cells(
        run, summary, items[:8], items[8:10], device=cpu, seed=0, params=params
    )
    assert calls == list(summary["cell"]) and len(first["training"]) == 2 * 2
    calls.clear()
    run.tuned_lens(summary["cell"].iloc[1]).unlink()
    again = kdlib.evaluation.lens.lens_cells(
        run, summary, items[:8], items[8:10], device=cpu, seed=0, params=params
    )
    assert calls == [summary["cell"].iloc[1]] and run.tuned_lens(summary["cell"].iloc[1]).exists()
    pd.testing.assert_frame_equal(again["ranks"], first["ranks"])


def test_grid_cells_cover_the_product():
    sft = grid(seeds=[0, 1, 2])
    cells = grid_cells(sft)
    assert len(cells) == 2 * 3 * 3 and len({c.label for c in cells}) == 18


def test_a_placeholder_cell_trains_on_as_many_target_tokens_as_the_rationale(
    tmp_path, generated_items, sources
):
    """placeholder_after_label is written with the student's filler token when the cell's texts are built,
    then tokenised and masked like every condition; its texts are the same on a rerun (the cell is kept)."""
    sft = grid(students=["tiny-llama"], conditions=["rationale_after_label", "placeholder_after_label"])
    run, items = RunLayout(tmp_path), generated_items[:8]
    summary = train_grid(run, items, sources, sft=sft, common=COMMON, fmt="tagged")
    assert list(summary["status"]) == ["trained", "trained"] and (summary["examples"] == 8).all()
    rationale, placeholder = summary["target_tokens_per_example"]
    assert placeholder == rationale and placeholder > 20
    (cell,) = [c for c in grid_cells(sft) if c.condition.transform == "placeholder_after_label"]
    job = kdlib.training.grid.cell_job(
        run.sft_cell("tiny-llama", "placeholder_after_label", 0), cell, items, sources,
        sft=sft, common=COMMON, fmt="tagged",
    )  # fmt: skip
    assert all("<think><|unk|><|unk|>" in text["target"] for text in job.texts)
    again = train_grid(run, items, sources, sft=sft, common=COMMON, fmt="tagged")
    assert set(again["status"]) == {"finished earlier"}


def test_missing_rationales_are_an_error_naming_the_recipe(tmp_path, generated_items, sources):
    sft = grid(
        students=["tiny-llama"], conditions=["rationale_after_label"], rationale_recipe="critique_revision"
    )
    with pytest.raises(ValueError, match=r"no rationale of recipe 'critique_revision'.*\('rule', 'rule'\)"):
        train_grid(RunLayout(tmp_path), generated_items[:8], sources, sft=sft, common=COMMON, fmt="tagged")


SLOW_TRAIN_CELL = """
import sys, time
import kdlib.evaluation.generation
import kdlib.training.grid
from kdlib.training.grid import CellJob, fit_cell

real_train = kdlib.training.grid.train
# slow each step down, so that the parent's kill lands at a chosen point of a known step
kdlib.training.grid.train = lambda *a, **k: real_train(*a, **k, on_step=lambda row: time.sleep(0.2))
fit_cell(CellJob.read(sys.argv[1]))
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path, generated_items, sources, seed):
    """A cell trained in a real subprocess, SIGKILLed at a random point (mid-step or mid-checkpoint), then
    resumed, ends with the weights and losses of an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from kdlib import io
    from kdlib.training.grid import cell_job, fit_cell

    sft = grid(students=["tiny-llama"], conditions=["correct_trace"], epochs=2)  # 8 steps, 1 checkpoint each
    (cell,) = grid_cells(sft)
    items = generated_items[:16]
    jobs = {
        name: cell_job(tmp_path / name, cell, items, sources, sft=sft, common=COMMON, fmt="tagged")
        for name in ("whole", "killed")
    }
    fit_cell(jobs["whole"])
    rng = random.Random(seed)
    kill_after_step, delay = rng.randint(1, 6), rng.uniform(0.0, 0.25)
    job_path = io.write_json(tmp_path / "killed" / "job.json", jobs["killed"].__dict__)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN_CELL, str(job_path)], stderr=subprocess.DEVNULL
    )
    progress = tmp_path / "killed" / "checkpoint" / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["step"] >= kill_after_step:
            break
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the cell should be killed part-way"
    assert not (tmp_path / "killed" / "meta.json").exists()
    assert json.loads(progress.read_text())["step"] >= kill_after_step
    fit_cell(jobs["killed"])  # resumes from the checkpoint the kill left
    weights = [load_file(tmp_path / name / "adapter" / "adapter_model.safetensors") for name in jobs]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(weights[1][name], value), name
    logs = [pd.read_csv(tmp_path / name / "train_log.csv").drop(columns="seconds") for name in jobs]
    pd.testing.assert_frame_equal(logs[0], logs[1])
    assert not list((tmp_path / "killed").glob(".*"))  # no staging folder left behind


def test_trust_remote_code_is_off_unless_set_and_recorded_with_the_cell():
    """Off by default, so existing cells keep their params; when set, load_trained reads it back."""
    (cell,) = grid_cells(grid(students=["tiny-llama"], conditions=["no_trace"]))
    assert "trust_remote_code" not in kdlib.training.grid.cell_params(cell, grid(), "tagged", "sha")
    trusted = kdlib.training.grid.cell_params(cell, grid(trust_remote_code=True), "tagged", "sha")
    assert trusted["trust_remote_code"] is True


def test_a_learning_curve_point_trains_on_the_first_items_only(tmp_path, generated_items, sources):
    """train_items cuts the run's (seeded, shuffled) training items to their first N; a condition without
    it keeps the cell params it had before the option existed, so finished cells stay finished."""
    curve = [{"name": f"no_trace_n{n}", "transform": "no_trace", "train_items": n} for n in (2, 5)]
    sft = grid(students=["tiny-llama"], conditions=[*curve, "no_trace"])
    items = generated_items[:8]
    summary = train_grid(RunLayout(tmp_path), items, sources, sft=sft, common=COMMON, fmt="tagged")
    assert list(summary["examples"]) == [2, 5, 8] and list(summary["items"]) == [2, 5, 8]
    small, _, whole = grid_cells(sft)
    job = kdlib.training.grid.cell_job(
        tmp_path / "cell", small, items, sources, sft=sft, common=COMMON, fmt="tagged"
    )
    assert [text["prompt"] for text in job.texts] == [
        text.prompt for text in kdlib.training.grid.cell_text_examples(
            whole.condition, items[:2], sources, sft, "tagged", 0
        )[0]
    ]  # fmt: skip
    assert job.params["condition"]["train_items"] == 2
    assert "train_items" not in kdlib.training.grid.cell_params(whole, sft, "tagged", "sha")["condition"]
