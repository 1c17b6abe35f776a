"""Determinism: the same params and seeds, run twice from cold caches on CPU, give identical metrics files."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from kdlib.paths import REPO_ROOT
from tests.helpers import PARAMS_DIR

pytestmark = pytest.mark.slow

# What legitimately differs between two runs: wall-clock times and throughput.
TIMING_COLUMNS = {"seconds", "tokens_per_second", "started_at", "written_at"}


def small_smoke_params() -> dict:
    """params/smoke.yaml cut to one student, three conditions and one recipe: every stage still runs."""
    params = yaml.safe_load((PARAMS_DIR / "smoke.yaml").read_text())
    params["common"]["run_name"] = "determinism"
    params["teacher_traces"]["generation"].update(recipes=["cot_label_last"], n_items=2)
    params["sft"].update(
        students=["tiny-llama"], conditions=["no_trace", "correct_trace", "incorrect_trace"], seeds=[0, 1]
    )
    return params


def run_cold(tmp_path, name: str) -> dict[str, pd.DataFrame]:
    """Run the chain into tmp_path/name with its own empty kdlib cache; its tables by relative path."""
    params = tmp_path / "determinism.yaml"
    params.write_text(yaml.safe_dump(small_smoke_params()))
    env = {**os.environ, "KDLIB_CACHE": str(tmp_path / f"cache-{name}")}
    command = [sys.executable, "-m", "kdlib", "run", str(params), "--run-dir", str(tmp_path / name)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = {}
    for stage in ("teacher_traces", "decomposition", "sft", "evaluation", "correlation"):
        for path in sorted((tmp_path / name / stage).rglob("*")):
            if path.suffix in (".csv", ".parquet"):
                read = pd.read_csv if path.suffix == ".csv" else pd.read_parquet
                table = read(path)
                tables[str(path.relative_to(tmp_path / name))] = table.drop(
                    columns=[c for c in table.columns if c in TIMING_COLUMNS]
                )
    return tables


def test_same_params_and_seeds_give_identical_metrics(tmp_path):
    first, second = run_cold(tmp_path, "first"), run_cold(tmp_path, "second")
    assert first.keys() == second.keys()
    assert {"evaluation/metrics.csv", "correlation/contingency.csv", "sft/summary.csv"} <= first.keys()
    for name, table in first.items():
        pd.testing.assert_frame_equal(second[name], table, check_exact=True, obj=name)
    metrics = [(tmp_path / run / "evaluation" / "metrics.csv").read_bytes() for run in ("first", "second")]
    assert metrics[0] == metrics[1]
