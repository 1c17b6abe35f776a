"""Plotly figures shared by the notebooks and the run report."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import NotebookRenderer
from plotly.subplots import make_subplots

from kdlib.cells import CELL_KEYS
from kdlib.io import atomic_path, write_text


class _OfflineNotebookRenderer(NotebookRenderer):
    """plotly's "notebook" renderer (plotly.js embedded once, when it becomes a default), but its figures
    load no MathJax from a CDN."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            default_height=525,
            validate=False,
        )
        return {"text/html": html}


pio.renderers["kdlib_offline"] = _OfflineNotebookRenderer()


def use_offline_renderer() -> None:
    """Render figures both as the Plotly mimetype (JupyterLab) and as HTML that needs no network (exports).

    The HTML form embeds plotly.js once per notebook, so exported notebooks open from disk offline.
    """
    pio.renderers.default = "plotly_mimetype+kdlib_offline"


FIGURES_FOLDER = "figures"
PNG_WIDTH = 1000  # pixels, where a figure sets no width: wide enough for long category labels


def write_pngs(figures: list[go.Figure], paths: list) -> str | None:
    """Render figures to PNG files with kaleido, one browser for all; None, or why no PNG was written
    (kaleido missing, or no Chromium for it)."""

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed"
    temporary = [Path(path).with_name(f".{Path(path).name}.tmp") for path in paths]
    try:
        pio.write_images(figures, temporary, format="png", width=PNG_WIDTH)
    except Exception as error:  # kaleido present but no browser for it: keep the JSON and HTML
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        return f"kaleido failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
    for tmp, path in zip(temporary, paths, strict=True):
        os.replace(tmp, path)
    return None


def save_figures(stage_dir, figures: dict[str, go.Figure]) -> dict[str, list[str]]:
    """Write each figure under <stage_dir>/figures/: <name>.json (Plotly JSON, which the run report
    embeds), <name>.html (standalone, with plotly.min.js placed once beside it, no CDN) and <name>.png
    where kaleido can render it. Returns {name: [written paths relative to stage_dir]}."""
    folder = Path(stage_dir) / FIGURES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, figure in figures.items():
        write_text(folder / f"{name}.json", figure.to_json())
        with atomic_path(folder / f"{name}.html") as tmp:
            figure.write_html(tmp, include_plotlyjs="directory", full_html=True)
        written[name] = [f"{FIGURES_FOLDER}/{name}.json", f"{FIGURES_FOLDER}/{name}.html"]
    if figures:
        no_png = write_pngs(list(figures.values()), [folder / f"{name}.png" for name in figures])
        if no_png:
            print(f"figures saved as JSON and HTML only (no PNG: {no_png})")
        else:
            for name in figures:
                written[name].append(f"{FIGURES_FOLDER}/{name}.png")
    return written


def cell_labels(frame: pd.DataFrame) -> pd.Series:
    """Short names of grid cells: only the student / condition / seed parts that vary in `frame`."""
    varying = [k for k in CELL_KEYS if frame[k].nunique() > 1] or ["condition"]
    parts = [("seed " if k == "seed" else "") + frame[k].astype(str) for k in varying]
    label = parts[0]
    for part in parts[1:]:
        label = label + " / " + part
    return label


def rationale_rates(summary: pd.DataFrame) -> go.Figure:
    """Per teacher recipe and source: label parse rate, agreement with gold, label-leak rate
    (rationales.summarise_traces' table)."""
    rates = summary.melt(
        id_vars=["source", "recipe"],
        value_vars=["parse_rate", "agreement_with_gold", "leak_rate"],
        var_name="measure",
        value_name="share",
    )
    return px.bar(
        rates,
        x="recipe",
        y="share",
        color="measure",
        barmode="group",
        facet_col="source",
        range_y=[0, 1],
        title="Per recipe: label parse rate, agreement with gold, label-leak rate",
    )


def rationale_lengths(traces: pd.DataFrame) -> go.Figure:
    """Histogram of rationale lengths in words, per recipe and source."""
    return px.histogram(
        traces.assign(words=traces["rationale"].str.split().str.len()),
        x="words",
        color="recipe",
        facet_row="source",
        barmode="overlay",
        title="Rationale length (words)",
    )


def gold_classes(decomposed: pd.DataFrame) -> go.Figure:
    """Gold question classes (the classification step) of the correct decomposed traces, per dataset."""
    correct = decomposed[decomposed["variant"] == "correct"]
    figure = px.histogram(
        correct, x="question_type", facet_col="dataset", title="Gold classes (classification step)"
    )
    return figure.update_xaxes(matches=None, categoryorder="total descending")


def gold_facts(decomposed: pd.DataFrame) -> go.Figure:
    """Gold supporting facts per item (the retrieval step), per dataset."""
    correct = decomposed[decomposed["variant"] == "correct"]
    return px.histogram(
        correct,
        x="n_facts",
        color="dataset",
        barmode="group",
        title="Gold supporting facts per item (retrieval step)",
    )


def verifier_bars(verdicts: pd.DataFrame) -> go.Figure:
    """Share of perturbed traces whose verifier verdict names exactly the perturbed step
    (decomposition.summarise_verification's table)."""
    return px.bar(
        verdicts.reset_index(),
        x="variant",
        y="detected",
        color="dataset",
        barmode="group",
        range_y=[0, 1.05],
        title="Verifier: share of traces whose verdict names exactly the perturbed step",
    )


def tokens_per_example(summary: pd.DataFrame) -> go.Figure:
    """Prompt + target and target tokens per training example, per condition (sft/summary.csv)."""
    tokens = summary.melt(
        id_vars=list(CELL_KEYS),
        value_vars=["tokens_per_example", "target_tokens_per_example"],
        var_name="count",
        value_name="tokens",
    )
    return px.bar(
        tokens,
        x="condition",
        y="tokens",
        color="count",
        barmode="group",
        facet_col="student",
        title="Tokens per training example",
    )


def training_speed(summary: pd.DataFrame) -> go.Figure:
    """Training tokens/s of each trained cell (sft/summary.csv)."""
    return px.bar(
        summary.assign(cell=cell_labels(summary)),
        x="cell",
        y="tokens_per_second",
        color="student",
        title="Training tokens/s per cell",
    )


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
    """Left: P(answer right | trace right / wrong) per cell with Wilson intervals. Right: phi per cell with
    its bootstrap interval (`table`: analysis.contingency rows of one criterion)."""
    labels = cell_labels(table)
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("P(answer right | trace)", "phi(trace right, answer right)")
    )
    for column, name in (
        ("p_answer_given_trace_right", "trace right"),
        ("p_answer_given_trace_wrong", "trace wrong"),
    ):
        figure.add_trace(_bar_with_interval(labels, table, column, name), row=1, col=1)
    figure.add_trace(
        go.Bar(
            x=labels,
            y=table["phi"],
            name="phi",
            marker_color="gray",
            showlegend=False,
            error_y=_error_bars(table["phi"], table["phi_ci_low"], table["phi_ci_high"]),
        ),
        row=1,
        col=2,
    )
    figure.update_yaxes(range=[0, 1], row=1, col=1)
    figure.update_yaxes(range=[-1, 1], row=1, col=2)
    criterion = table["criterion"].iloc[0] if len(table) else ""
    figure.update_layout(
        barmode="group", height=420, title=f"Does a correct trace go with a correct answer? ({criterion})"
    )
    return figure


def condition_accuracy(cells: pd.DataFrame, seeds: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """Per student and condition: each seed's value (dots) and the mean over seeds with its interval
    (`cells`, `seeds` from analysis.cell_summary / seed_summary)."""
    cells, seeds = cells[cells["metric"] == metric], seeds[seeds["metric"] == metric]
    figure = go.Figure()
    for student, rows in seeds.groupby("student", sort=False):
        figure.add_trace(
            go.Scatter(
                x=rows["condition"],
                y=rows["mean"],
                mode="markers",
                marker={"size": 12, "symbol": "diamond"},
                name=f"{student}: mean",
                error_y=_error_bars(rows["mean"], rows["ci_low"], rows["ci_high"]),
            )
        )
        seed_rows = cells[cells["student"] == student]
        figure.add_trace(
            go.Scatter(
                x=seed_rows["condition"],
                y=seed_rows["value"],
                mode="markers",
                marker={"size": 6, "opacity": 0.6},
                name=f"{student}: seeds",
                text="seed " + seed_rows["seed"].astype(str),
            )
        )
    figure.update_layout(title=f"{metric} per condition (seeds and their mean)", yaxis_title=metric)
    return figure


def paired_differences(paired: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """Forest plot: difference a - b on shared items for each pair of conditions, with its paired
    bootstrap interval; hover shows McNemar's Holm-adjusted p (`paired` from analysis.paired_comparisons)."""
    rows = paired[paired["metric"] == metric]
    labels = rows["condition_a"] + " − " + rows["condition_b"]
    for key in ("student", "seed"):
        if rows[key].nunique() > 1:
            labels = labels + f" · {key} " + rows[key].astype(str)
    figure = go.Figure(
        go.Scatter(
            x=rows["difference"],
            y=labels,
            mode="markers",
            marker={"size": 9},
            error_x=_error_bars(rows["difference"], rows["difference_ci_low"], rows["difference_ci_high"]),
            customdata=rows[["p_holm", "n_items"]].to_numpy(),
            hovertemplate="%{y}: %{x:.3f}<br>McNemar p (Holm) %{customdata[0]:.3g}, n=%{customdata[1]}"
            "<extra></extra>",
        )
    )
    figure.add_vline(x=0, line_dash="dot")
    figure.update_layout(
        title=f"Paired differences in {metric} (same items)",
        xaxis_title="difference",
        height=200 + 30 * len(rows),
    )
    return figure


def reference_forest(comparison: pd.DataFrame) -> go.Figure:
    """The run's estimate and interval for every finding it could test (kdlib's questions included, as
    "measured"), coloured by verdict, one panel per unit (`comparison` from
    reference.compare_with_reference)."""
    tested = comparison[(comparison["kind"] == "finding") & (comparison["verdict"] != "not comparable")]
    tested = tested.assign(unit=tested["unit"].fillna("").replace("", "phi"))
    units = list(dict.fromkeys(tested["unit"])) or [""]
    figure = make_subplots(rows=len(units), cols=1, subplot_titles=units, vertical_spacing=0.12)
    colours = {"replicated": "seagreen", "not replicated": "firebrick", "measured": "steelblue"}
    for row, unit in enumerate(units, start=1):
        for verdict, rows in tested[tested["unit"] == unit].groupby("verdict", sort=False):
            figure.add_trace(
                go.Scatter(
                    x=rows["estimate"],
                    y=rows["id"] + " · " + rows["student"],
                    mode="markers",
                    name=verdict,
                    legendgroup=verdict,
                    showlegend=verdict not in {t.name for t in figure.data},
                    marker={"size": 10, "color": colours.get(verdict)},
                    error_x=_error_bars(rows["estimate"], rows["ci_low"], rows["ci_high"]),
                    text=rows["reason"],
                    hovertemplate="%{y}<br>%{text}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    figure.update_layout(
        title="Published findings re-tested on this run (estimate and interval)",
        height=200 + 40 * len(tested) + 60 * len(units),
    )
    return figure


def attribution_highlights(words: pd.DataFrame, n_items: int = 3) -> str:
    """HTML: the rationale of the first `n_items` items, each word shaded by its attribution (green
    raises the gold answer's log-probability, red lowers it; scaled per item)."""

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
    lens (`summary` from kdlib.evaluation.lens.lens_summary)."""
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
    `scores` from kdlib.evaluation.explanations.rating_means."""
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
