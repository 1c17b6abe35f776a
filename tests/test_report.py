import json

import pandas as pd
import plotly.graph_objects as go
import pytest

from kdlib import io, plots
from kdlib.config import ExperimentParams
from kdlib.report import headline, write_report


def _figure(title):
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2])).update_layout(title=title)


def test_save_figures_writes_json_and_standalone_html(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plots, "write_pngs", lambda figures, paths: "kaleido is not installed")
    saved = plots.save_figures(tmp_path, {"bars": _figure("Bars")})
    assert saved == {"bars": ["figures/bars.json", "figures/bars.html"]}
    assert json.loads((tmp_path / "figures" / "bars.json").read_text())["layout"]["title"]["text"] == "Bars"
    standalone = (tmp_path / "figures" / "bars.html").read_text()
    assert 'src="plotly.min.js"' in standalone and "cdn.plot.ly" not in standalone
    assert (tmp_path / "figures" / "plotly.min.js").exists()
    assert not list((tmp_path / "figures").glob(".*tmp"))
    assert "no PNG: kaleido is not installed" in capsys.readouterr().out


def test_pngs_through_kaleido_or_a_reason(tmp_path):
    pytest.importorskip("kaleido", reason="kaleido (notebooks extra) not installed")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    reason = plots.write_pngs([_figure("A"), _figure("B")], paths)
    if reason is not None:  # kaleido without a Chromium: nothing half-written, and a reason
        assert reason.startswith("kaleido failed") and not list(tmp_path.iterdir())
        pytest.skip(f"no browser for kaleido here: {reason}")
    assert [p.read_bytes()[:4] for p in paths] == [b"\x89PNG"] * 2
    assert [int.from_bytes(p.read_bytes()[16:20], "big") for p in paths] == [plots.PNG_WIDTH] * 2
    assert not list(tmp_path.glob(".*tmp"))


def _stage(run_dir, name, tables, figures):
    folder = run_dir / name
    folder.mkdir(parents=True)
    for file, frame in tables.items():
        io.write_csv(folder / file, frame)
    return folder


def test_report_gathers_headline_tables_and_figures(tmp_path):
    figures = {"trace_vs_answer": _figure("Trace <b>vs</b> answer")}
    folder = _stage(
        tmp_path,
        "correlation",
        {
            "paired_tests.csv": pd.DataFrame(
                {"metric": ["accuracy", "judge_x"], "p": [0.04, 0.5], "extra": [1, 2]}
            )
        },
        figures,
    )
    saved = plots.save_figures(folder, figures)
    io.write_meta(
        folder,
        params={},
        artifacts=[],
        report=headline(
            [
                {
                    "file": "paired_tests.csv",
                    "title": "Paired tests",
                    "columns": ["metric", "p"],
                    "rows": "metric == 'accuracy'",
                },
                {"file": "gone.csv", "title": "Gone"},
            ],
            saved,
        ),
    )
    record = {
        "params_file": "params/x.yaml",
        "git_sha": "abc123",
        "kernel": "kdlib",
        "notebooks": {
            "04_evaluation": {"status": "failed", "seconds": 3.0, "error": "boom <script>"},
            "05_correlation": {"status": "ok", "seconds": 12.5, "started_at": "2026-11-22T01:00:00"},
        },
    }
    index = write_report(tmp_path, record, ExperimentParams()).read_text()
    assert "abc123" in index and "params/x.yaml" in index and "notebook wall time: 16 s" in index
    assert "boom &lt;script&gt;" in index and "boom <script>" not in index
    section = index.split('<h2 id="correlation">')[1]
    assert "<h3>Paired tests</h3>" in section and "1 of 2 rows (metric == &#x27;accuracy&#x27;)" in section
    assert "judge_x" not in section and "extra" not in section.split("<h3>Gone")[0]
    assert "missing: <a" in section
    assert section.count('class="plotly-graph-div"') == 1
    assert 'href="correlation/figures/trace_vs_answer.html"' in section
    assert '<h2 id="teacher_traces">01_teacher_traces</h2><p>not run</p>' in index
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000 and "cdn.plot.ly" not in index
