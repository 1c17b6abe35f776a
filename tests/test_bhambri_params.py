"""Notebooks 01-02 on each real open-book dataset, run by `kdlib run params/bhambri2025_*.yaml --to 02`."""

import subprocess
import sys

import pandas as pd
import pytest

from kdlib.config import load_params
from kdlib.paths import REPO_ROOT
from tests.helpers import PARAMS_DIR, needs_data

pytestmark = pytest.mark.slow

GOLD_SOURCES = {
    "babi": ("annotation", "annotation"),
    "cotempqa": ("annotation", "rule"),
    "openbookqa": ("rule", "annotation"),
    "msmarco": ("annotation", "annotation"),
}
# The shared data folder each study reads (bhambri2025_msmarco reads the packaged msmarco-sample).
SHARED_DATA = {"babi": ["babi"], "cotempqa": ["cotempqa"], "openbookqa": ["openbookqa"], "msmarco": []}


@pytest.mark.parametrize(
    "dataset", [pytest.param(name, marks=needs_data(*SHARED_DATA[name])) for name in sorted(GOLD_SOURCES)]
)
def test_decomposition_notebook_on_real_data(tmp_path, dataset):
    params_file = PARAMS_DIR / f"bhambri2025_{dataset}.yaml"
    params = load_params(params_file)
    command = [
        sys.executable,
        "-m",
        "kdlib",
        "run",
        str(params_file),
        "--to",
        "02",
        "--run-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    items = pd.read_parquet(tmp_path / "teacher_traces" / "items.parquet")
    roles = items.groupby("role")["id"].apply(set)
    data = params.teacher_traces.dataset
    assert len(roles["train"]) == data.n_train and len(roles["eval"]) == data.n_eval
    assert not roles["train"] & roles["eval"]

    check = pd.read_csv(tmp_path / "decomposition" / "verifier_check.csv")
    assert check["detected"].all()
    assert set(check["variant"]) >= {"correct", "class", "retrieval", "both"}
    statistics = pd.read_csv(tmp_path / "decomposition" / "trace_statistics.csv").iloc[0]
    assert statistics["items"] == data.n_train + data.n_eval
    assert statistics["gold_is_whole_context"] < 0.15  # bAbI task 17: every story is all gold (1 task in 18)
    class_source, facts_source = GOLD_SOURCES[dataset]
    assert statistics["class_source"].startswith(class_source)
    assert statistics["facts_source"].startswith(facts_source)
    rationales = pd.read_csv(tmp_path / "decomposition" / "rationale_check.csv")
    assert set(rationales["source"]) == {"rule"} and len(rationales) == data.n_train
