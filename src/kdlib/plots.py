"""Plotly figures shared by the notebooks and the run report."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from kdlib.analysis import CELL_KEYS


def use_offline_renderer() -> None:
    """Render figures both as the Plotly mimetype (JupyterLab) and as self-contained HTML (exports).

    The HTML form embeds plotly.js once per notebook, so exported notebooks open with no network.
    """
    pio.renderers.default = "plotly_mimetype+notebook"


def save_figure(figure: go.Figure, path) -> None:
    """Standalone HTML with plotly.js placed once beside it (no CDN)."""
    from kdlib.io import atomic_path

    with atomic_path(path) as tmp:
        figure.write_html(tmp, include_plotlyjs="directory", full_html=True)


def cell_labels(frame: pd.DataFrame) -> pd.Series:
    """Short names of grid cells: only the student / condition / seed parts that vary in `frame`."""
    varying = [k for k in CELL_KEYS if frame[k].nunique() > 1] or ["condition"]
    parts = [("seed " if k == "seed" else "") + frame[k].astype(str) for k in varying]
    label = parts[0]
    for part in parts[1:]:
        label = label + " / " + part
    return label


def loss_curves(logs: pd.DataFrame) -> go.Figure:
    """Training loss per optimiser step, one line per cell (`logs` has student, condition, seed, step,
    loss)."""
    figure = go.Figure()
    for label, log in logs.assign(cell=cell_labels(logs)).groupby("cell", sort=False):
        figure.add_trace(go.Scatter(x=log["step"], y=log["loss"], mode="lines", name=label))
    figure.update_layout(title="Training loss (target tokens only)", xaxis_title="step", yaxis_title="loss")
    return figure


def _error_bars(value: pd.Series, low: pd.Series, high: pd.Series) -> dict:
    """Plotly error_y for an interval [low, high] around `value`."""
    return {"type": "data", "symmetric": False, "array": high - value, "arrayminus": value - low}


def _bar_with_interval(labels: list[str], metrics: pd.DataFrame, column: str, name: str) -> go.Bar:
    interval = _error_bars(metrics[column], metrics[f"{column}_ci_low"], metrics[f"{column}_ci_high"])
    return go.Bar(x=labels, y=metrics[column], name=name, error_y=interval)


def accuracy_bars(metrics: pd.DataFrame) -> go.Figure:
    """Per cell: generated-answer accuracy and label-first acc / acc_norm with 95% Wilson intervals,
    and trace accuracy where defined."""
    labels = cell_labels(metrics)
    figure = go.Figure(_bar_with_interval(labels, metrics, "accuracy", "generated answer"))
    if metrics["label_first_acc"].notna().any():
        figure.add_trace(_bar_with_interval(labels, metrics, "label_first_acc", "label-first acc"))
        figure.add_trace(_bar_with_interval(labels, metrics, "label_first_acc_norm", "label-first acc_norm"))
    figure.add_trace(go.Bar(x=labels, y=metrics["trace_accuracy"], name="trace accuracy"))
    figure.update_layout(barmode="group", yaxis_range=[0, 1], title="Held-out accuracy per cell")
    return figure


def parse_failure_bars(metrics: pd.DataFrame) -> go.Figure:
    """Share of outputs per cell whose answer (and, for checkable traces, trace) could not be read."""
    labels = cell_labels(metrics)
    figure = go.Figure(
        go.Bar(x=labels, y=1 - metrics["answer_parse_rate"], name="answer unreadable (greedy)")
    )
    if metrics["sample_parse_rate"].notna().any():
        figure.add_trace(
            go.Bar(x=labels, y=1 - metrics["sample_parse_rate"], name="answer unreadable (sampled)")
        )
    figure.add_trace(go.Bar(x=labels, y=1 - metrics["trace_parse_rate"], name="trace unreadable"))
    figure.update_layout(barmode="group", yaxis_range=[0, 1], title="Parse failures per cell")
    return figure


def contingency_figure(table: pd.DataFrame) -> go.Figure:
    """Left: P(answer right | trace right/wrong) per cell. Right: phi per cell."""
    labels = cell_labels(table)
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("P(answer right | trace)", "phi(trace right, answer right)")
    )
    for column, name in (
        ("p_answer_given_trace_right", "trace right"),
        ("p_answer_given_trace_wrong", "trace wrong"),
    ):
        figure.add_trace(go.Bar(x=labels, y=table[column], name=name), row=1, col=1)
    figure.add_trace(
        go.Bar(x=labels, y=table["phi"], name="phi", marker_color="gray", showlegend=False),
        row=1,
        col=2,
    )
    figure.update_yaxes(range=[0, 1], row=1, col=1)
    figure.update_yaxes(range=[-1, 1], row=1, col=2)
    figure.update_layout(barmode="group", height=400, title="Does a correct trace go with a correct answer?")
    return figure


def attribution_highlights(words: pd.DataFrame, n_items: int = 3) -> str:
    """HTML: the rationale of the first `n_items` items, each word shaded by its attribution (green
    raises the gold answer's log-probability, red lowers it; scaled per item)."""
    import html

    blocks = []
    for item_id, rows in list(words.groupby("item_id", sort=False))[:n_items]:
        scale = rows["attribution"].abs().max() or 1.0
        spans = []
        for word, score in zip(rows["word"], rows["attribution"], strict=True):
            alpha = min(1.0, abs(score) / scale)
            colour = "0,150,0" if score >= 0 else "200,0,0"
            style = f"background: rgba({colour},{alpha:.2f})"
            spans.append(f'<span title="{score:+.4f}" style="{style}">{html.escape(word)}</span>')
        blocks.append(f"<p><b>{html.escape(str(item_id))}</b>: {' '.join(spans)}</p>")
    return "\n".join(blocks)


def lens_heatmap(summary: pd.DataFrame) -> go.Figure:
    """Share of items whose gold answer is top-ranked, per cell (rows) and layer (columns), one panel per
    lens (`summary` from kdlib.lens.lens_summary)."""
    lenses = list(summary["lens"].unique())
    figure = make_subplots(rows=len(lenses), cols=1, subplot_titles=[f"{lens} lens" for lens in lenses])
    summary = summary.assign(cell=cell_labels(summary))
    for row, lens in enumerate(lenses, start=1):
        grid = summary[summary["lens"] == lens].pivot(index="cell", columns="layer", values="gold_top_rate")
        figure.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=grid.columns,
                y=grid.index,
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                colorbar={"title": "gold top"},
                showscale=row == 1,
                hovertemplate="%{y}<br>layer %{x}: %{z:.2f}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        figure.update_xaxes(title_text="layer (0 = embeddings)", row=row, col=1)
    n_cells = summary["cell"].nunique()
    figure.update_layout(
        title="Where the gold answer becomes top-ranked", height=150 + len(lenses) * (80 + 24 * n_cells)
    )
    return figure


def lens_kl_lines(summary: pd.DataFrame) -> go.Figure:
    """Mean KL(output || lens) per layer on held-out items: logit lens dashed, tuned lens solid."""
    figure = go.Figure()
    summary = summary.assign(cell=cell_labels(summary))
    for (cell, lens), rows in summary.groupby(["cell", "lens"], sort=False):
        dash = "dash" if lens == "logit" else "solid"
        figure.add_trace(
            go.Scatter(x=rows["layer"], y=rows["kl_to_final"], name=f"{cell} · {lens}", line={"dash": dash})
        )
    figure.update_layout(
        title="How far each layer's lens is from the output", xaxis_title="layer", yaxis_title="KL (nats)"
    )
    return figure


def explanation_bars(scores: pd.DataFrame) -> go.Figure:
    """Mean rating per dimension and cell with 95% intervals, one panel per rater kind (judge, human);
    `scores` from kdlib.explanations.rating_means."""
    kinds = list(scores["rater_kind"].unique())
    if not kinds:
        return go.Figure().update_layout(title="Explanation quality: no readable ratings")
    figure = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
    scores = scores.assign(cell=cell_labels(scores))
    for col, kind in enumerate(kinds, start=1):
        for cell, rows in scores[scores["rater_kind"] == kind].groupby("cell", sort=False):
            figure.add_trace(
                go.Bar(
                    x=rows["dimension"],
                    y=rows["mean"],
                    name=cell,
                    legendgroup=cell,
                    showlegend=col == 1,
                    error_y=_error_bars(rows["mean"], rows["ci_low"], rows["ci_high"]),
                ),
                row=1,
                col=col,
            )
    figure.update_yaxes(range=[1, 5], title_text="rating (1-5)", row=1, col=1)
    figure.update_layout(barmode="group", title="Explanation quality (Hendriks et al. dimensions)")
    return figure
