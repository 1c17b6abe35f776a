"""What a notebook writes: each artifact together with its report entry, and its stage's meta.json.

A notebook opens one `StageWriter` on its stage, hands it tables, texts and figures as it computes them
(a table with a `title` heads the run report), and closes it last. Nothing is written before `close`,
which writes the figures, then every artifact, then meta.json (artifacts, params, headline, facts), so a
notebook that stops half-way leaves its stage folder as the previous run wrote it. Folders that kdlib's
stage code fills as it goes (trained cells, evaluated cells) are named with `produced`.

`upstream_params` gives a later notebook an earlier stage's params, typed and validated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from kdlib import io, plots
from kdlib.config import SECTION_KEYS, SECTIONS, CommonParams, Schema
from kdlib.paths import RunLayout
from kdlib.report import headline


def upstream_params(run: RunLayout, notebook: str) -> Schema:
    """The params section notebook `notebook` (e.g. "03_sft") ran with, read from its meta.json."""
    stage = SECTION_KEYS[notebook]
    meta = io.read_json(io.require(run.stage(stage) / "meta.json", produced_by=notebook))
    return SECTIONS[notebook].model_validate(meta["params"][stage])


class StageWriter:
    """Collects one notebook's artifacts and writes them, with their report entries and meta.json, on
    `close`. `upstream`: earlier stages' params recorded beside this stage's own (e.g. {"sft": ...})."""

    def __init__(
        self,
        run: RunLayout,
        notebook: str,
        common: CommonParams,
        section: Schema,
        upstream: dict[str, Schema] | None = None,
    ):
        stage = SECTION_KEYS[notebook]
        self.folder = run.stage(stage)
        self.params = {
            "common": common.model_dump(),
            stage: section.model_dump(),
            **{name: params.model_dump() for name, params in (upstream or {}).items()},
        }
        self._files: dict[str, pd.DataFrame | str] = {}
        self._produced: list[str] = []
        self._tables: list[dict[str, Any]] = []
        self._figures: dict[str, go.Figure] = {}
        self._facts: dict[str, Any] = {}
        self._closed = False

    def _name(self, path: str | os.PathLike) -> str:
        """`path` relative to the stage folder: a RunLayout path inside it, or a bare file name."""
        path = Path(path)
        if path.is_absolute():
            return path.relative_to(self.folder).as_posix()
        return path.as_posix()

    def table(
        self,
        path: str | os.PathLike,
        frame: pd.DataFrame,
        *,
        title: str | None = None,
        columns: list[str] | None = None,
        rows: str | None = None,
    ) -> pd.DataFrame:
        """Write `frame` to `path` (.csv or .parquet) on close; with a `title` it heads the run report,
        showing `columns` (all if None) and the rows the pandas query `rows` picks. Returns `frame`."""
        name = self._name(path)
        if Path(name).suffix not in (".csv", ".parquet"):
            raise ValueError(f"{name}: a table is written as .csv or .parquet")
        if title is not None and not name.endswith(".csv"):
            raise ValueError(f"{name}: the run report shows CSV tables only")
        self._files[name] = frame
        if title is not None:
            entry = {"file": name, "title": title}
            entry |= {"columns": columns} if columns else {}
            entry |= {"rows": rows} if rows else {}
            self._tables.append(entry)
        return frame

    def text(self, path: str | os.PathLike, text: str) -> None:
        """Write `text` to `path` on close (e.g. an HTML form)."""
        self._files[self._name(path)] = text

    def produced(self, name: str) -> None:
        """Record an artifact that the stage's own code wrote as it went: a file, or a folder named with
        a trailing slash (e.g. "cells/")."""
        self._produced.append(name)

    def figure(self, name: str, figure: go.Figure) -> go.Figure:
        """Save `figure` as figures/<name>.{json,html,png} on close, shown in the run report. Returns it,
        so that a notebook cell can end with this call to display the figure."""
        self._figures[name] = figure
        return figure

    def record(self, **facts: Any) -> None:
        """Extra JSON-able facts for meta.json (counts, cache statistics, headline numbers)."""
        self._facts |= facts

    def close(self) -> Path:
        """Write the figures, the artifacts and meta.json; returns the stage folder."""
        if self._closed:
            raise RuntimeError(f"the stage writer of {self.folder} is already closed")
        saved = plots.save_figures(self.folder, self._figures)
        for name, content in self._files.items():
            path = self.folder / name
            if isinstance(content, str):
                io.write_text(path, content)
            elif name.endswith(".parquet"):
                io.write_parquet(path, content)
            else:
                io.write_csv(path, content)
        artifacts = [*self._files, *self._produced, *(["figures/"] if saved else [])]
        io.write_meta(
            self.folder,
            params=self.params,
            artifacts=artifacts,
            report=headline(self._tables, saved),
            **self._facts,
        )
        self._closed = True
        return self.folder
