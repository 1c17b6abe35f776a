"""Helpers the test modules share (fixtures are in conftest.py): the shared data folder and the skip that
names what is missing from it, outcome rows for the analysis tests, and the kdlib command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlib.paths import REPO_ROOT, resolve_data_dir


def _shared_data_dir() -> Path | None:
    try:
        return resolve_data_dir()
    except FileNotFoundError:
        return None


DATA_DIR = _shared_data_dir()
PARAMS_DIR = REPO_ROOT / "params"


def needs_data(*datasets: str) -> pytest.MarkDecorator:
    """Skip unless the shared data folder holds each of `datasets` (its subfolder names, e.g. "babi");
    the reason, in pytest's summary, names the folders that are missing."""
    root = DATA_DIR if DATA_DIR is not None else Path("..", "shared", "data")
    missing = [name for name in datasets if DATA_DIR is None or not (DATA_DIR / name).is_dir()]
    where = ", ".join(str(root / name) for name in missing)
    return pytest.mark.skipif(
        bool(missing), reason=f"needs {where} (shared data; or set $KDLIB_DATA_DIR to the folder holding it)"
    )


def accuracy_outcomes(per_condition: dict, seed=0, student="s") -> pd.DataFrame:
    """Outcome rows (analysis.OUTCOME_COLUMNS) of one student and seed: 0/1 accuracy per item."""
    frames = [
        pd.DataFrame(
            {
                "student": student,
                "condition": condition,
                "seed": seed,
                "transform": condition,
                "metric": "accuracy",
                "item_id": [f"i{k}" for k in range(len(values))],
                "value": np.asarray(values, dtype=float),
            }
        )
        for condition, values in per_condition.items()
    ]
    return pd.concat(frames, ignore_index=True)


def kdlib(*args, check=True, env=None):
    """Run the kdlib command line in a subprocess from the repository root."""
    result = subprocess.run(
        [sys.executable, "-m", "kdlib", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kdlib {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result
