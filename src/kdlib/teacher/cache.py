"""A content-hashed, resumable cache of teacher generations (one SQLite file, shared across runs).

A completion's key hashes the backend identity (kind, model, revision or weight hash), the endpoint, the
conversation and the decoding settings; the sample index sits beside it. Completions are committed as they
arrive, so an interrupted run loses at most the chunk in flight, and the (key, sample) primary key means a
resumed run can never duplicate a row. A rerun with the same params finds every completion and makes zero
model calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kdlib.paths import cache_dir
from kdlib.teacher.backends import Backend, Decoding, Request

CACHE_FILE = "teacher_generations.sqlite"


def default_cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def request_key(backend: Backend, request: Request, decoding: Decoding) -> str:
    """sha256 of everything that determines a completion except the sample index."""
    payload = {
        "identity": backend.identity(),
        "endpoint": backend.endpoint,
        "messages": [list(pair) for pair in request.messages],
        "decoding": decoding.as_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class CacheStats:
    """Per-run counts: completions found in the cache, and completions the backend had to generate."""

    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class GenerationCache:
    """(key, sample) -> completion text, plus the request it answers, in one SQLite file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS generations ("
            " key TEXT NOT NULL, sample INTEGER NOT NULL, text TEXT NOT NULL,"
            " request TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (key, sample))"
        )
        self._db.commit()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def get(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        found: dict[tuple[str, int], str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            where = " OR ".join(["(key = ? AND sample = ?)"] * len(chunk))
            params = [value for pair in chunk for value in pair]
            for key, sample, text in self._db.execute(
                f"SELECT key, sample, text FROM generations WHERE {where}", params
            ):
                found[(key, sample)] = text
        return found

    def put(self, rows: list[tuple[str, int, str, str]]) -> None:
        """Commit (key, sample, text, request json) rows; an existing (key, sample) is kept as it is."""
        now = time.time()
        self._db.executemany(
            "INSERT OR IGNORE INTO generations (key, sample, text, request, created) VALUES (?, ?, ?, ?, ?)",
            [(*row, now) for row in rows],
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_cached(
    backend: Backend, cache: GenerationCache, requests: list[Request], decoding: Decoding
) -> list[str]:
    """Completions for `requests` in order: cached ones are read, missing ones generated and committed
    chunk by chunk as they arrive. Identical requests in one call are generated once."""
    keys = [(request_key(backend, r, decoding), r.sample) for r in requests]
    found = cache.get(list(dict.fromkeys(keys)))
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    cache.stats.hits += sum(1 for k in keys if k in found)
    if missing:
        first = {k: r for k, r in zip(keys, requests, strict=True)}
        todo = [first[k] for k in missing]
        for chunk in backend.stream(todo, decoding):
            rows = []
            for index, text in chunk:
                key, sample = missing[index]
                found[(key, sample)] = text
                rows.append((key, sample, text, _request_json(backend, todo[index], decoding)))
            cache.put(rows)
        cache.stats.misses += len(missing)
    return [found[k] for k in keys]


def _request_json(backend: Backend, request: Request, decoding: Decoding) -> str:
    return json.dumps(
        {
            "identity": backend.identity(),
            "endpoint": backend.endpoint,
            "messages": request.message_dicts(),
            "decoding": decoding.as_dict(),
        }
    )
