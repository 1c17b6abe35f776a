"""kdlib.stage_writer: a notebook's artifacts, report entries and meta.json written together, on close."""

import json

import pandas as pd
import plotly.graph_objects as go
import pytest

from kdlib import config
from kdlib.paths import RunLayout
from kdlib.stage_writer import StageWriter, upstream_params


def test_nothing_is_written_before_close_then_everything_with_its_report_entry(tmp_path):
    run = RunLayout(tmp_path)
    common, section = config.CommonParams(), config.CorrelationParams()
    out = StageWriter(run, "05_correlation", common, section)
    frame = pd.DataFrame({"metric": ["accuracy", "judge_fluency"], "value": [0.5, 3.0]})
    assert out.table(run.cell_summary, frame, title="Cells", columns=["value"], rows="value > 1") is frame
    out.table(run.outcomes, frame)
    out.text("form.html", "<p>form</p>")
    out.produced("cells/")
    shown = go.Figure(go.Bar(x=[1], y=[2]))
    assert out.figure("bars", shown) is shown
    out.record(phi={"a": 0.25})
    assert list(run.stage("correlation").iterdir()) == []

    out.close()
    stage = run.stage("correlation")
    assert pd.read_csv(run.cell_summary).equals(frame)
    assert pd.read_parquet(run.outcomes).equals(frame)
    assert (stage / "form.html").read_text() == "<p>form</p>"
    assert json.loads((stage / "figures" / "bars.json").read_text())["data"][0]["y"] == [2]
    meta = json.loads((stage / "meta.json").read_text())
    assert meta["artifacts"] == ["cell_summary.csv", "cells/", "figures/", "form.html", "outcomes.parquet"]
    assert meta["params"] == {"common": common.model_dump(), "correlation": section.model_dump()}
    assert meta["report"]["tables"] == [
        {"file": "cell_summary.csv", "title": "Cells", "columns": ["value"], "rows": "value > 1"}
    ]
    assert list(meta["report"]["figures"]) == ["bars"]
    assert meta["phi"] == {"a": 0.25}
    with pytest.raises(RuntimeError, match="already closed"):
        out.close()


def test_tables_must_be_csv_or_parquet_and_headlines_csv(tmp_path):
    out = StageWriter(
        RunLayout(tmp_path), "02_decomposition", config.CommonParams(), config.DecompositionParams()
    )
    with pytest.raises(ValueError, match=r"x\.json: a table is written as \.csv or \.parquet"):
        out.table("x.json", pd.DataFrame())
    with pytest.raises(ValueError, match="shows CSV tables only"):
        out.table("x.parquet", pd.DataFrame(), title="X")


def test_upstream_params_come_back_typed(tmp_path):
    run = RunLayout(tmp_path)
    sft = config.SftParams(
        conditions=["no_trace", {"name": "after", "transform": "rationale_after_label"}], epochs=3
    )
    with pytest.raises(FileNotFoundError, match="run notebook 03_sft first"):
        upstream_params(run, "03_sft")
    StageWriter(run, "03_sft", config.CommonParams(), sft).close()
    read = upstream_params(run, "03_sft")
    assert isinstance(read, config.SftParams) and read == sft
    assert [spec.transform for spec in read.condition_specs()] == ["no_trace", "rationale_after_label"]
