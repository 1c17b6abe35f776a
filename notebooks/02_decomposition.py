# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: kdlib
#     language: python
#     name: kdlib
# ---

# %% [markdown]
# # 02 · Decomposition into checkable steps
#
# Following Bhambri et al. (2025), each item becomes a trace of two checkable steps, a **classification**
# and an **information retrieval** (the supporting facts only, in story order), plus incorrect traces
# (wrong class, non-supporting facts, both, shuffled). The verifier must accept every correct trace and
# name exactly the perturbed step of every incorrect one; it also scores the teacher's rationales from 01.
# Writes `decomposition/decomposed.parquet`, `verifier_check.csv`, `trace_statistics.csv` and
# `rationale_check.csv`.
#
# Guide: [checkable traces](../docs/checkable-traces.md).

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
trace_format = "tagged"
perturbations = ["class", "retrieval", "both", "shuffled"]

# %%
import pandas as pd

from kdlib import config, io, plots
from kdlib.data.schema import frame_to_items
from kdlib.paths import RunLayout
from kdlib.stage_writer import StageWriter
from kdlib.traces.decomposition import (
    check_rationales,
    decompose,
    example_traces,
    has_gold_steps,
    perturbation_coverage,
    summarise_verification,
    trace_statistics,
    verify_decomposition,
)

common, cfg = config.notebook_params("02_decomposition", globals())
run = RunLayout(run_dir)
out = StageWriter(run, "02_decomposition", common, cfg)
plots.use_offline_renderer()
pd.set_option("display.max_colwidth", 400)

items = frame_to_items(io.read_parquet(run.items, produced_by="01_teacher_traces"))
teacher_traces = io.read_parquet(run.traces, produced_by="01_teacher_traces")
checkable_items = [item for item in items if has_gold_steps(item)]
datasets = sorted({item.dataset for item in items})
print(f"{len(items)} items from {datasets}; {len(checkable_items)} with gold steps")
if not checkable_items:
    print("no item has gold steps (class + supporting facts): the tables below are empty")

# %% [markdown]
# ## Decomposition and trace statistics
# Per dataset, over the correct traces: the number of classes, the mean context size and number of gold
# facts, the share of items whose gold is the whole context (small, or gold is not the support), trace
# length in words, and how each gold step was found.

# %%
decomposed = out.table(
    run.decomposed, decompose(checkable_items, cfg.trace_format, cfg.perturbations, seed=common.seed)
)
statistics = trace_statistics(decomposed)
out.table(run.trace_statistics, statistics.reset_index(), title="Trace statistics per dataset")
statistics

# %% [markdown]
# Share of items each perturbation applies to: shuffling needs two distinct supporting facts, a
# retrieval perturbation needs a context fact that is not gold.

# %%
perturbation_coverage(decomposed, cfg.perturbations)

# %%
out.figure("gold_classes", plots.gold_classes(decomposed))

# %%
out.figure("gold_facts", plots.gold_facts(decomposed))

# %% [markdown]
# ## Examples: a correct trace and each kind of incorrect trace
# Per dataset, the first item to which every perturbation applies (else the one with most variants).

# %%
items_by_id = {item.id: item for item in items}
for item_id, rows in example_traces(decomposed).groupby("item_id", sort=False):
    item = items_by_id[item_id]
    print(f"=== {item.dataset} · {item.id}\nQ: {item.question}  A: {item.answer}\ncontext: {item.context}")
    for row in rows.itertuples():
        print(f"[{row.variant}] {row.trace}")
    print()

# %% [markdown]
# ## Verifier check
# Each trace is written out with the gold answer, parsed back and scored. `detected` is the share whose
# verdict names exactly the perturbed steps: it must be 100 % for the correct traces (no error) and for
# every perturbation.

# %%
check = out.table(run.verifier_check, verify_decomposition(checkable_items, decomposed, cfg.trace_format))
verdicts = summarise_verification(check)
out.table(run.verifier_summary, verdicts.reset_index(), title="Verifier: perturbed steps detected")
out.record(verifier=verdicts.reset_index().to_dict(orient="records"))
verdicts

# %%
out.figure("verifier", plots.verifier_bars(verdicts))

# %%
assert check["detected"].all(), check[~check["detected"]]

# %% [markdown]
# ## The teacher's rationales, read by the same verifier
# Free-text rationales state no class, so only their retrieval step is scored: which gold facts they
# quote (word for word, up to case and punctuation), and how much else they say.

# %%
rationale_check = out.table(run.rationale_check, check_rationales(items, teacher_traces))
rationale_check.groupby(["source", "recipe"]).agg(
    rationales=("item_id", "size"),
    precision=("retrieval_precision", "mean"),
    recall=("retrieval_recall", "mean"),
    exact=("retrieval_exact", "mean"),
)

# %%
out.close()
