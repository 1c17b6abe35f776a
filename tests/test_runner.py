import os

import pytest

from kdlib.runner import select_notebooks


def test_select_notebooks():
    assert select_notebooks() == [
        "01_teacher_traces",
        "02_decomposition",
        "03_sft",
        "04_evaluation",
        "05_correlation",
    ]
    assert select_notebooks(only="3") == ["03_sft"]
    assert select_notebooks(only="03_sft") == ["03_sft"]
    assert select_notebooks(start_from="04") == ["04_evaluation", "05_correlation"]
    assert select_notebooks(stop_after="2") == ["01_teacher_traces", "02_decomposition"]
    assert select_notebooks(start_from="02", stop_after="03") == ["02_decomposition", "03_sft"]
    with pytest.raises(ValueError, match="unknown notebook '07'"):
        select_notebooks(only="07")
    with pytest.raises(ValueError, match="comes after"):
        select_notebooks(start_from="04", stop_after="02")
    with pytest.raises(ValueError, match="either --only"):
        select_notebooks(only="01", stop_after="02")


def test_a_second_run_on_a_locked_run_folder_is_refused(tmp_path, capsys):
    """`kdlib run` into a folder whose lock a live process holds: exit 3, naming it; nothing written."""
    from kdlib import io
    from kdlib.cli import main
    from tests.helpers import PARAMS_DIR

    with io.run_lock(tmp_path):
        status = main(["run", str(PARAMS_DIR / "smoke.yaml"), "--run-dir", str(tmp_path), "--only", "01"])
    assert status == 3
    error = capsys.readouterr().err
    assert "is in use by another run" in error and f'"pid": {os.getpid()}' in error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_continued_run_keeps_its_first_plan_while_the_params_are_the_same(monkeypatch):
    from types import SimpleNamespace

    from kdlib import runner
    from kdlib.config import load_params
    from tests.helpers import PARAMS_DIR

    calls = []

    def plan_params(params):
        calls.append(params)
        return SimpleNamespace(summary=lambda: {"estimated_seconds": 60.0 * len(calls), "warnings": []})

    monkeypatch.setattr(runner, "plan_params", plan_params)
    smoke = load_params(PARAMS_DIR / "smoke.yaml")
    first = runner.planned(smoke)
    assert len(calls) == 1 and first["estimated_seconds"] == 60.0 and len(first["params_sha256"]) == 64
    assert runner.planned(smoke, first) == first and len(calls) == 1
    changed = smoke.model_copy(update={"common": smoke.common.model_copy(update={"seed": 1})})
    again = runner.planned(changed, first)
    assert len(calls) == 2 and again["estimated_seconds"] == 120.0
    assert again["params_sha256"] != first["params_sha256"]
    assert runner.planned(smoke, {"estimated_seconds": 1.0})["estimated_seconds"] == 180.0  # no digest: plan
