"""Artifact I/O: atomic writes, and the meta.json written beside every artifact."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdlib.paths import REPO_ROOT

TRACKED_PACKAGES = (
    "kdlib",
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "pandas",
    "plotly",
    "papermill",
    "tokenizers",
    "numpy",
    "scipy",
    "statsmodels",
    "captum",
    "bitsandbytes",
    "lm_eval",
)
CONSTRAINTS_FILE = REPO_ROOT / "constraints.txt"


log = logging.getLogger("kdlib.io")

LOCK_FILE = ".kdlib.lock"

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; swap it in for `path` only if the block succeeds.

    An existing folder is moved aside before the swap and deleted after it, so a crash at any point
    leaves either the old folder or the new one (plus a hidden leftover), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = staging.with_name(staging.name + ".old")
    try:
        yield staging
        if path.exists():
            path.rename(old)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_text_file(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> str:
    """A UTF-8 text file's content; a missing file, a folder, bytes that are not UTF-8 or a binary file
    (NUL bytes) raise `error` naming the file and `what` it is."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: {what} is a directory, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    if b"\x00" in data:
        raise error(f"{path}: {what} is not a text file (it holds NUL bytes)")
    try:
        return decode_utf8(data, path)
    except ValueError as problem:  # names the file and line
        raise error(f"{problem} ({what})") from None


def parse_yaml(text: str, path: str | os.PathLike, error: type[Exception] = ValueError) -> Any:
    """safe_load `text` read from `path`; bad YAML raises `error` naming the file, line and column."""

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {_yaml_problem(problem)}") from None


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """safe_load a YAML file; a missing, non-text or bad YAML file raises `error` naming the file and
    `what` it is."""
    return parse_yaml(read_text_file(path, what, error), path, error)


def _yaml_problem(problem) -> str:
    """pyyaml's error as one line: where, what, and in which construct (without its source excerpt)."""
    mark = getattr(problem, "problem_mark", None)
    what = getattr(problem, "problem", None)
    if mark is None or what is None:
        return " ".join(str(problem).split())
    context = getattr(problem, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" + (f" ({context})" if context else "")


def read_utf8(path: str | os.PathLike) -> str:
    """A text file's content; bytes that are not UTF-8 raise ValueError naming the file and line."""
    path = Path(path)
    return decode_utf8(path.read_bytes(), path)


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """`data` read from `path` as UTF-8; bytes that are not raise ValueError naming the file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column})"
        ) from None


def read_utf8_lines(path: str | os.PathLike) -> list[str]:
    """A text file's lines without their line ends (as `open` in text mode reads them), checked UTF-8."""
    lines = read_utf8(path).replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(require(path).read_text(encoding="utf-8"))


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


FRAMES_KEY = "key.json"


def stored_frames(
    folder: str | os.PathLike, key: dict, compute: Callable[[], dict[str, pd.DataFrame | None]]
) -> tuple[dict[str, pd.DataFrame | None], bool]:
    """The frames stored in `folder` (one parquet per name, and key.json) when they were computed under
    `key`; else compute(), stored atomically, so a crash keeps every finished folder. Returns
    (frames, reused)."""
    folder = Path(folder)
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    record_path = folder / FRAMES_KEY
    record = read_json(record_path) if record_path.exists() else None
    if record is not None and record["key"] == key:
        return {
            name: pd.read_parquet(folder / f"{name}.parquet") if kept else None
            for name, kept in record["frames"].items()
        }, True
    frames = compute()
    with atomic_folder(folder) as staging:
        for name, frame in frames.items():
            if frame is not None:
                frame.to_parquet(staging / f"{name}.parquet", index=False)
        record = {"key": key, "frames": {name: frame is not None for name, frame in frames.items()}}
        (staging / FRAMES_KEY).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    return frames, False


def require(path: str | os.PathLike, produced_by: str | None = None) -> Path:
    """Return `path` if it exists, else raise FileNotFoundError saying which notebook writes it."""
    path = Path(path)
    if not path.exists():
        hint = f"; run notebook {produced_by} first" if produced_by else ""
        raise FileNotFoundError(f"missing artifact {path}{hint}")
    return path


def read_parquet(path: str | os.PathLike, produced_by: str | None = None) -> pd.DataFrame:
    return pd.read_parquet(require(path, produced_by))


def _git(*args: str) -> str | None:
    """Output of a git command in the repository, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def git_sha() -> str | None:
    """HEAD when kdlib.io was imported: the commit of the code this process runs, even when HEAD moves on
    during a long run."""
    return _git("rev-parse", "HEAD")


@functools.cache
def git_dirty() -> bool | None:
    """Whether tracked files differed from HEAD when kdlib.io was imported (results then do not match the
    SHA exactly)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


git_sha(), git_dirty()  # taken at import, i.e. when a notebook's kernel loads kdlib


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def package_key(name: str) -> str:
    """A distribution name as PEP 503 normalises it: lm_eval and LM-Eval are lm-eval."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(path: str | os.PathLike = CONSTRAINTS_FILE) -> dict[str, str]:
    """package_key(name) -> version of every `name==version` line of a constraints file."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if version:
            pins[package_key(name.strip())] = version.strip()
    return pins


def write_meta(folder: str | os.PathLike, params: dict[str, Any], artifacts: list[str], **extra: Any) -> Path:
    """Write folder/meta.json describing the artifacts in `folder` and how they were made."""
    folder = Path(folder)
    meta = {
        "artifacts": sorted(artifacts),
        "params": params,
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),
        "packages": package_versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_json(folder / "meta.json", meta)


class RunLocked(RuntimeError):
    """Another live process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold run_dir/.kdlib.lock for the block, or raise RunLocked naming the process that holds it.

    The file records {pid, host, started}; the lock itself is an flock, which the kernel drops when its
    holder dies, so a lock file left by a killed run is detected as stale, reported and taken over.
    """
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "{}"
            handle.close()
            raise RunLocked(f"{run_dir} is in use by another run {holder} (lock file {path})") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break  # else the holder removed the file while we opened it: lock the new one
        handle.close()
    handle.seek(0)
    stale = handle.read().strip()
    if stale:
        log.warning("taking over the stale lock %s of a run that is no longer running: %s", path, stale)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder, sort_keys=True))
    handle.flush()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()
