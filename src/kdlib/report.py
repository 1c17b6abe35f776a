"""The run report, outputs/<run>/index.html: the run's params, git SHA and wall times, a link to every
executed notebook, then each stage's headline tables and interactive figures.

A notebook lists its headline artifacts in its meta.json under "report" (see `headline`); the report
reads them from there, so it never needs to know a stage's files. plotly.js sits once beside index.html,
so the page opens from disk with no network.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kdlib import io
from kdlib.config import NOTEBOOKS, SECTION_KEYS, ExperimentParams, dump_params

MAX_ROWS = 60


def headline(tables: list[dict] = (), figures: dict[str, list[str]] | None = None) -> dict:
    """The "report" entry of a stage's meta.json. `tables`: dicts with file (relative to the stage folder)
    and title, optionally columns (a subset to show) and rows (a pandas query picking the rows to show);
    `figures`: as plots.save_figures returned them."""
    return {"tables": [dict(table) for table in tables], "figures": figures or {}}


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _table_html(stage_dir: Path, entry: dict) -> str:
    path = stage_dir / entry["file"]
    file = html.escape(entry["file"])
    link = f'<a href="{html.escape(stage_dir.name)}/{file}">{file}</a>'
    if not path.exists():
        return f"<h3>{html.escape(entry['title'])}</h3><p>missing: {link}</p>"
    frame = pd.read_csv(path)
    total, note = len(frame), ""
    if entry.get("rows"):
        frame = frame.query(entry["rows"])
        note = f"{len(frame)} of {total} rows ({html.escape(entry['rows'])}); "
    if entry.get("columns"):
        frame = frame[[c for c in entry["columns"] if c in frame.columns]]
    if len(frame) > MAX_ROWS:
        note += f"first {MAX_ROWS} of {len(frame)} rows shown; "
    body = frame.head(MAX_ROWS).to_html(index=False, border=0, na_rep="–", float_format=_number)
    return f"<h3>{html.escape(entry['title'])}</h3>{body}<p class=note>{note}full table: {link}</p>"


def _figure_html(stage_dir: Path, name: str, files: list[str]) -> str:
    json_file = next((f for f in files if f.endswith(".json")), None)
    if json_file is None or not (stage_dir / json_file).exists():
        return f"<p>missing figure {html.escape(name)}</p>"
    figure = pio.from_json((stage_dir / json_file).read_text(encoding="utf-8"))
    div = figure.to_html(full_html=False, include_plotlyjs=False)
    links = " · ".join(
        f'<a href="{html.escape(stage_dir.name)}/{html.escape(f)}">{f.rsplit(".", 1)[-1].upper()}</a>'
        for f in files
        if not f.endswith(".json")
    )
    return f"<div class=figure>{div}<p class=note>{html.escape(name)}: {links}</p></div>"


def _stage_html(run_dir: Path, notebook: str, entry: dict | None) -> str:
    stage = SECTION_KEYS[notebook]
    title = f'<h2 id="{stage}">{notebook}</h2>'
    meta_path = run_dir / stage / "meta.json"
    if entry is None or entry.get("status") != "ok" or not meta_path.exists():
        status = "not run" if entry is None else entry.get("status", "?")
        return f"{title}<p>{html.escape(status)}</p>"
    meta = io.read_json(meta_path)
    report = meta.get("report", {})
    parts = [title, f'<p><a href="notebooks/{notebook}.html">executed notebook</a></p>']
    parts += [_table_html(run_dir / stage, table) for table in report.get("tables", [])]
    parts += [_figure_html(run_dir / stage, n, f) for n, f in report.get("figures", {}).items()]
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.note{color:#666;font-size:.85em}.figure{margin:1em 0 2em}"""


def write_report(run_dir: Path, record: dict, params: ExperimentParams) -> Path:
    """Write index.html (and plotly.min.js beside it) for the run in `run_dir`; `record` is run.json."""

    run_dir = Path(run_dir)
    plotly_js = run_dir / "plotly.min.js"
    if not plotly_js.exists():
        io.write_text(plotly_js, get_plotlyjs())
    rows = []
    for name in NOTEBOOKS:
        entry = record["notebooks"].get(name)
        if entry is None:
            rows.append(f"<tr><td>{name}</td><td>not run</td><td></td><td></td><td></td></tr>")
            continue
        links = f'<a href="notebooks/{name}.html">HTML</a> · <a href="notebooks/{name}.ipynb">ipynb</a>'
        error = f"<br><code>{html.escape(entry['error'])}</code>" if entry.get("error") else ""
        rows.append(
            f'<tr><td><a href="#{SECTION_KEYS[name]}">{name}</a></td><td>{entry["status"]}{error}</td>'
            f"<td>{html.escape(entry.get('started_at', ''))}</td><td>{entry.get('seconds', '')}</td>"
            f"<td>{links}</td></tr>"
        )
    seconds = sum(e.get("seconds", 0) for e in record["notebooks"].values())
    stages = "\n".join(_stage_html(run_dir, n, record["notebooks"].get(n)) for n in NOTEBOOKS)
    name = html.escape(params.common.run_name)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kdlib run {name}</title>
<script src="plotly.min.js"></script><style>{STYLE}</style></head>
<body><h1>kdlib run: {name}</h1>
<p>params file: <code>{html.escape(str(record.get("params_file")))}</code> ·
git SHA: <code>{html.escape(str(record.get("git_sha")))}</code> · kernel: {html.escape(record["kernel"])} ·
notebook wall time: {seconds:.0f} s</p>
<table><tr><th>notebook</th><th>status</th><th>started</th><th>seconds</th><th>executed copy</th></tr>
{"".join(rows)}</table>
{stages}
<h2>Resolved params</h2><pre>{html.escape(dump_params(params))}</pre>
<p><a href="params.yaml">params.yaml</a> · <a href="run.json">run.json</a> · <a href="run.log">run.log</a></p>
</body></html>
"""
    return io.write_text(run_dir / "index.html", page)
