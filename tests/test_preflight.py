"""kdlib.preflight: the checks that need this machine, the data and the students' configs, run before
notebook 01 writes anything (the one-line errors of each kind are in tests/bad_params/)."""

import importlib.util
from dataclasses import replace

import pytest

from kdlib import config, models
from kdlib.cli import main
from kdlib.preflight import preflight
from tests.helpers import DATA_DIR, PARAMS_DIR, needs_data

GPU_TWINS = sorted(PARAMS_DIR.glob("*_full.yaml"))
CPU_PARAMS = sorted(set(PARAMS_DIR.glob("*.yaml")) - set(GPU_TWINS))


def params_with(**sections) -> config.ExperimentParams:
    return config.validate_params({"common": {"run_name": "preflight-test"}, **sections})


def problem(params: config.ExperimentParams) -> str:
    with pytest.raises(config.ParamsError) as error:
        preflight(params, "test.yaml")
    return str(error.value)


def _params_or_skip(path) -> config.ExperimentParams:
    """The params of `path`; the test skips, naming what it reads, when that is shared data not found here."""
    params = config.load_params(path)
    dataset = params.teacher_traces.dataset.name
    if DATA_DIR is None and (params.teacher_traces.imports or dataset not in ("generated", "msmarco-sample")):
        imported = " and imported teacher traces" if params.teacher_traces.imports else ""
        pytest.skip(f"{path.name} reads dataset {dataset!r}{imported} from ../shared/data (shared data)")
    return params


@pytest.mark.parametrize("path", CPU_PARAMS, ids=lambda p: p.name)
def test_cpu_params_files_pass_preflight_here(path):
    params = _params_or_skip(path)
    preflight(params, str(path))


@pytest.mark.parametrize("path", GPU_TWINS, ids=lambda p: p.name)
def test_gpu_twins_pass_preflight_on_a_gpu_machine(path, monkeypatch):
    """The twins ask for CUDA (and some for vLLM): on a machine that has them, nothing else fails."""
    params = _params_or_skip(path)
    with pytest.raises(config.ParamsError, match="key 'common.device'"):
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
        preflight(params, str(path))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a)
    )
    preflight(params, str(path))


def test_validate_runs_preflight_unless_schema_only(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    twin = str(PARAMS_DIR / "wadhwa2024_csqa_full.yaml")
    assert main(["validate", twin]) == 2
    assert "key 'common.device'" in capsys.readouterr().err
    assert main(["validate", "--schema-only", twin]) == 0
    assert "ok (schema only)" in capsys.readouterr().out


def test_params_path_that_is_a_folder(tmp_path, capsys):
    assert main(["run", str(PARAMS_DIR), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{PARAMS_DIR}: params file is a directory, not a file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_offline_run_without_local_data_stops_before_notebook_01(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = params_with(
        common={"run_name": "x", "data_dir": str(tmp_path)},
        teacher_traces={"dataset": {"name": "commonsenseqa", "train_split": "train", "eval_split": "dev"}},
        sft={"conditions": ["no_trace"]},
    )
    assert "key 'common.data_dir'" in problem(params) and "commonsenseqa file" in problem(params)


def test_online_run_without_local_data_is_left_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    params = params_with(
        common={"run_name": "x", "data_dir": str(tmp_path)},
        teacher_traces={"dataset": {"name": "commonsenseqa", "train_split": "train", "eval_split": "dev"}},
        sft={"conditions": ["no_trace"], "students": ["tiny-llama"]},
        evaluation={"explanations": {"enabled": False}},
    )
    preflight(params, "test.yaml")


@needs_data("babi")
def test_n_train_larger_than_the_chosen_babi_task():
    params = params_with(
        teacher_traces={"dataset": {"name": "babi", "n_train": 1001, "n_eval": 8, "options": {"tasks": [1]}}},
    )
    message = problem(params)
    assert "key 'teacher_traces.dataset.n_train'" in message
    assert "1001 items asked for, but babi split 'train' with options {'tasks': [1]} holds 1000" in message


@needs_data("cotempqa")
def test_one_split_for_both_counts_train_and_eval_together():
    params = params_with(
        teacher_traces={
            "dataset": {
                "name": "cotempqa",
                "train_split": "test",
                "eval_split": "test",
                "n_train": 900,
                "n_eval": 900,
                "options": {"subsets": ["equal"]},
            }
        },
    )
    assert "n_train 900 + n_eval 900 items asked for, but cotempqa split 'test'" in problem(params)


@needs_data("commonsenseqa")
def test_checkable_traces_need_a_dataset_with_gold_steps():
    params = params_with(
        teacher_traces={"dataset": {"name": "commonsenseqa", "train_split": "train", "eval_split": "dev"}},
        sft={"conditions": ["no_trace", "correct_trace"]},
    )
    message = problem(params)
    assert (
        "key 'sft.conditions.1'" in message and "no training item of commonsenseqa has gold steps" in message
    )


def test_lora_targets_follow_peft_suffix_rule():
    names = models.module_names(models.model_config("tiny-llama"))
    assert "model.layers.0.self_attn.q_proj" in names
    ok = params_with(
        sft={"students": ["tiny-llama"], "lora": {"target_modules": ["self_attn.q_proj", "up_proj"]}}
    )
    preflight(ok, "test.yaml")
    partial = params_with(sft={"students": ["tiny-llama"], "lora": {"target_modules": ["elf_attn.q_proj"]}})
    assert "has no module named ['elf_attn.q_proj']" in problem(partial)


def test_packaged_student_config_is_read_from_the_gguf_header_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    first = models.model_config("smollm2-135m-instruct")
    assert (tmp_path / "gguf-headers").is_dir()

    def not_again(package):
        raise AssertionError("the GGUF header was read again")

    spec = models.PRETRAINED["smollm2-135m-instruct"]
    monkeypatch.setitem(models.PRETRAINED, "smollm2-135m-instruct", replace(spec, locate_gguf=not_again))
    second = models.model_config("smollm2-135m-instruct")  # from the cache: the GGUF is not located again
    assert (first.model_type, first.num_hidden_layers, first.hidden_size) == ("llama", 30, 576)
    assert second.to_dict() == first.to_dict()


@needs_data("cotempqa")
def test_max_length_below_a_sampled_cotempqa_prompt_stops_before_notebook_01():
    """The CPU CoTempQA study once stopped in notebook 03 on a 1,130-token item at max_length 1024."""
    raw = config.load_params(PARAMS_DIR / "bhambri2025_cotempqa.yaml").model_dump(mode="json")
    raw["sft"] = {**raw["sft"], "students": ["smollm2-135m-instruct"], "max_length": 1024}
    raw["teacher_traces"]["dataset"]["options"] = {}  # whole contexts: the study file cuts them to 6 facts
    message = problem(config.validate_params(raw))
    assert "key 'sft.max_length'" in message and "exceed sft.max_length=1024" in message
    assert config.load_params(PARAMS_DIR / "bhambri2025_cotempqa.yaml").sft.max_length == 1024
    raw["teacher_traces"]["dataset"]["options"] = {"max_context": 6}
    preflight(config.validate_params(raw), "cut.yaml", ["03_sft"])


def test_checks_follow_the_notebooks_that_run():
    """`kdlib run --only 01` is not stopped by a problem only notebook 03 would meet, and `--from 04`
    is not stopped by the teacher's."""
    grid_problem = params_with(sft={"students": ["tiny-llama"], "lora": {"target_modules": ["nowhere"]}})
    preflight(grid_problem, "test.yaml", ["01_teacher_traces", "02_decomposition"])
    with pytest.raises(config.ParamsError, match="sft.lora.target_modules"):
        preflight(grid_problem, "test.yaml", ["03_sft"])
    teacher_problem = params_with(
        teacher_traces={"teacher": {"backend": "vllm", "model": "served"}},
        evaluation={"explanations": {"enabled": False}},
    )
    preflight(teacher_problem, "test.yaml", ["04_evaluation", "05_correlation"])
    with pytest.raises(config.ParamsError, match="teacher_traces.teacher.backend"):
        preflight(teacher_problem, "test.yaml", ["01_teacher_traces"])
