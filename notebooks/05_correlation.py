# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: kdlib
#     language: python
#     name: kdlib
# ---

# %% [markdown]
# # 05 · Does a correct trace go with a correct answer?
#
# For each condition that generates a trace, a 2x2 table of trace correctness (rows) against answer
# correctness (columns), the phi coefficient, and P(answer right | trace right) against
# P(answer right | trace wrong). Bhambri et al. (2025) found this correlation to be low.
# Writes `correlation/contingency.csv` and the figure `correlation/trace_vs_answer.html`.

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
trace_criterion = "both_steps"

# %%
from kdlib import config, io, plots
from kdlib.analysis import contingency
from kdlib.conditions import CHECKABLE_TRACE_TRANSFORMS
from kdlib.paths import RunLayout

common, cfg = config.notebook_params("05_correlation", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()

predictions = io.read_parquet(run.predictions, produced_by="04_evaluation")
traced = predictions[predictions["transform"].isin(CHECKABLE_TRACE_TRANSFORMS)]
print(f"{len(traced)} predictions from {traced['condition'].nunique()} checkable-trace conditions")

# %%
table = contingency(traced, cfg.trace_criterion)
table

# %%
figure = plots.contingency_figure(table)
figure

# %%
io.write_csv(run.contingency, table)
plots.save_figure(figure, run.contingency_figure)
io.write_meta(
    run.stage("correlation"),
    params={"common": common.model_dump(), "correlation": cfg.model_dump()},
    artifacts=[run.contingency.name, run.contingency_figure.name, "plotly.min.js"],
    phi=dict(zip(plots.cell_labels(table), table["phi"], strict=True)),
)
