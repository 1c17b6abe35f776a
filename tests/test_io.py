import os
import subprocess

import pandas as pd
import pytest

from kdlib import io


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "table.parquet"
    io.write_parquet(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("killed")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert os.listdir(tmp_path) == ["table.parquet"]


def test_written_files_get_the_usual_mode(tmp_path):
    path = io.write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_meta_records_params_sha_and_versions(tmp_path):
    io.write_meta(tmp_path, params={"common": {"seed": 1}}, artifacts=["b.csv", "a.csv"], extra=5)
    meta = io.read_json(tmp_path / "meta.json")
    assert meta["artifacts"] == ["a.csv", "b.csv"] and meta["params"] == {"common": {"seed": 1}}
    assert set(meta["packages"]) >= {"torch", "transformers", "peft", "kdlib"} and meta["extra"] == 5
    assert "git_sha" in meta and "git_dirty" in meta


def test_meta_names_the_commit_at_import_not_a_later_head(tmp_path, monkeypatch):
    """A long run records the commit its code came from, though HEAD moves on while it trains."""

    def commit(message: str) -> str:
        git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", message], check=True)
        return subprocess.run(
            [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    started = commit("code the run imported")
    monkeypatch.setattr(io, "REPO_ROOT", tmp_path)
    io.git_sha.cache_clear(), io.git_dirty.cache_clear()
    try:
        assert io.git_sha() == started
        assert commit("committed while it trains") != started
        io.write_meta(tmp_path / "stage", params={}, artifacts=[])
        assert io.read_json(tmp_path / "stage" / "meta.json")["git_sha"] == started
    finally:
        io.git_sha.cache_clear(), io.git_dirty.cache_clear()


def test_missing_artifact_names_the_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 02_decomposition first"):
        io.read_parquet(tmp_path / "nope.parquet", produced_by="02_decomposition")


def test_atomic_folder_swaps_in_only_a_complete_folder(tmp_path):
    target = tmp_path / "weights"
    with io.atomic_folder(target) as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), io.atomic_folder(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one"
    with io.atomic_folder(target) as staging:
        (staging / "b.txt").write_text("two")
    assert [p.name for p in tmp_path.iterdir()] == ["weights"] and [p.name for p in target.iterdir()] == [
        "b.txt"
    ]


HOLD_LOCK = """
import sys, time
from kdlib import io
with io.run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, caplog):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(io.RunLocked, match=f'"pid": {holder.pid}'), io.run_lock(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f'"pid": {holder.pid}' in (tmp_path / io.LOCK_FILE).read_text()  # left behind by the kill
    with caplog.at_level("WARNING", logger="kdlib.io"), io.run_lock(tmp_path) as lock:
        assert f'"pid": {os.getpid()}' in lock.read_text()
    assert f"stale lock {tmp_path / io.LOCK_FILE}" in caplog.text and f'"pid": {holder.pid}' in caplog.text
    assert not lock.exists()
    with io.run_lock(tmp_path):  # released: a later run takes it without a warning
        pass


def test_stored_frames_are_reused_under_the_same_key_only(tmp_path):
    folder = tmp_path / "cells" / "a"
    calls = []

    def compute():
        calls.append(1)
        return {"rows": pd.DataFrame({"x": [1, 2], "y": [None, "b"]}), "absent": None}

    first, reused = io.stored_frames(folder, {"seed": 0, "settings": (1, 2)}, compute)
    assert not reused and len(calls) == 1
    again, reused = io.stored_frames(folder, {"settings": [1, 2], "seed": 0}, compute)
    assert reused and len(calls) == 1 and again["absent"] is None
    pd.testing.assert_frame_equal(again["rows"], first["rows"])
    _, reused = io.stored_frames(folder, {"seed": 1, "settings": [1, 2]}, compute)
    assert not reused and len(calls) == 2


def test_stored_frames_keep_the_old_folder_when_compute_fails(tmp_path):
    folder = tmp_path / "cell"
    io.stored_frames(folder, {"seed": 0}, lambda: {"rows": pd.DataFrame({"x": [1]})})

    def broken():
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        io.stored_frames(folder, {"seed": 1}, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell"]
    kept, reused = io.stored_frames(folder, {"seed": 0}, broken)
    assert reused and kept["rows"]["x"].tolist() == [1]
