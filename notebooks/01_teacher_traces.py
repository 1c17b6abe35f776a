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
# # 01 · Teacher traces
#
# Loads the experiment's items (training and held-out evaluation split) and collects rationales for the
# training items in three ways:
#
# * **rule-written** reasoning from each item's gold supporting facts;
# * an **LLM teacher** (local `transformers`, any OpenAI-compatible server, or vLLM) under versioned prompt
#   recipes: few-shot CoT with the label last or first, rationalisation of the gold answer, critique then
#   revision, and counterfactual rationales for wrong choices. Every completion goes through a
#   content-hashed cache, so a rerun makes no model calls;
# * **imported** published outputs: distilling step-by-step's PaLM CoT and Hendriks et al.'s rationale sets.
#
# Each rationale is checked: its label is parsed (or is the label it was asked to explain), compared with
# gold, and scanned for statements of the label (leaks). Filters then keep what the params ask for.
# Writes `teacher_traces/items.parquet`, `teacher_traces/traces.parquet` (kept rows) and
# `teacher_traces/filter_report.csv`, with a `meta.json` holding the cache statistics.

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
dataset = {
    "name": "generated",
    "train_split": "train",
    "eval_split": "test",
    "n_train": 64,
    "n_eval": 32,
    "options": {},
}
rule_traces = True
teacher = {
    "backend": "transformers",
    "model": "smollm2-135m-instruct",
    "revision": None,
    "trust_remote_code": False,
    "endpoint": "chat",
    "base_url": None,
    "api_key_env": None,
    "max_concurrency": 8,
    "dtype": "auto",
    "batch_size": 8,
}
generation = {
    "recipes": ["cot_label_last", "label_first", "rationalize", "critique_revision"],
    "n_items": 4,
    "n_shots": 2,
    "exemplars_file": None,
    "samples": 1,
    "temperature": 0.0,
    "top_p": 1.0,
    "max_new_tokens": 64,
    "stop": [],
    "critique_revision": [
        {
            "critique": "Point out the specific ways in which your explanation is inaccurate, vague or "
            "incomplete, and what it would need to show why this answer is right.",
            "revision": "Rewrite your explanation so that it fixes every problem in the critique. Keep it "
            "short, accurate and specific, and say briefly why the other choices are worse.",
        }
    ],
}
imports = []
filters = {
    "drop_unparseable": True,
    "keep_label_correct": False,
    "drop_duplicates": True,
    "drop_leaking": False,
}
cache_path = None

# %%
import pandas as pd
import plotly.express as px

from kdlib import config, io, plots
from kdlib.data import load_train_eval
from kdlib.data.schema import items_to_frame
from kdlib.paths import RunLayout
from kdlib.report import headline
from kdlib.teacher.rationales import filter_traces, summarise_traces, unparseable_counts
from kdlib.teacher.stage import collect_rationales

common, cfg = config.notebook_params("01_teacher_traces", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()

# %% [markdown]
# ## Items

# %%
data = cfg.dataset
train_items, eval_items = load_train_eval(
    data.name,
    data.train_split,
    data.eval_split,
    data.n_train,
    data.n_eval,
    seed=common.seed,
    data_dir=common.data_dir,
    options=data.options,
)
items = pd.concat(
    [items_to_frame(train_items).assign(role="train"), items_to_frame(eval_items).assign(role="eval")],
    ignore_index=True,
)
items.groupby(["role", "question_type"], dropna=False).size().unstack(fill_value=0)

# %%
items[["id", "split", "question", "answer", "context"]].head(5)

# %% [markdown]
# ## Rationales
# The teacher sees `n_shots` worked exemplars (training items it is not asked about), never the gold label
# of an item it must answer; rationalisation recipes are given the label on purpose.

# %%
traces, report = collect_rationales(
    cfg, train_items, device=common.device, seed=common.seed, data_dir=common.data_dir
)
print(f"model calls: {report.model_calls}; cache: {report.cache}")
summary = summarise_traces(traces)
summary

# %% [markdown]
# ## Filters
# Teacher outputs that are empty, too long, not valid UTF-8 or without an answer are recorded as
# unparseable (why, per source and recipe, below); then the rows in and the rows each filter dropped.

# %%
unparseable_counts(traces)

# %%
kept, filter_report = filter_traces(traces, **cfg.filters.model_dump())
filter_report

# %% [markdown]
# ## Parse rate, agreement with gold and leak rate

# %%
figures = {}
rates = summary.melt(
    id_vars=["source", "recipe"],
    value_vars=["parse_rate", "agreement_with_gold", "leak_rate"],
    var_name="measure",
    value_name="share",
)
figures["rationale_rates"] = px.bar(
    rates,
    x="recipe",
    y="share",
    color="measure",
    barmode="group",
    facet_col="source",
    range_y=[0, 1],
    title="Per recipe: label parse rate, agreement with gold, label-leak rate",
)
figures["rationale_rates"]

# %%
figures["rationale_lengths"] = px.histogram(
    traces.assign(words=traces["rationale"].str.split().str.len()),
    x="words",
    color="recipe",
    facet_row="source",
    barmode="overlay",
    title="Rationale length (words)",
)
figures["rationale_lengths"]

# %% [markdown]
# ## Examples per recipe

# %%
pd.set_option("display.max_colwidth", 300)
examples = traces.groupby(["source", "recipe"]).head(2)
examples[["source", "recipe", "item_id", "rationale", "parsed_label", "gold_label", "leaks_label"]]

# %%
io.write_parquet(run.items, items)
io.write_parquet(run.traces, kept)
io.write_csv(run.stage("teacher_traces") / "filter_report.csv", filter_report)
io.write_csv(run.stage("teacher_traces") / "rationale_summary.csv", summary)
saved = plots.save_figures(run.stage("teacher_traces"), figures)
io.write_meta(
    run.stage("teacher_traces"),
    params={"common": common.model_dump(), "teacher_traces": cfg.model_dump()},
    artifacts=[run.items.name, run.traces.name, "filter_report.csv", "rationale_summary.csv", "figures/"],
    report=headline(
        [
            {"file": "rationale_summary.csv", "title": "Teacher rationales per source and recipe"},
            {"file": "filter_report.csv", "title": "Filters"},
        ],
        saved,
    ),
    counts={"items": len(items), "rationales": len(traces), "kept": len(kept)},
    cache=report.cache,
    model_calls=report.model_calls,
    asked_items=report.asked_items,
    exemplar_items=report.exemplar_items,
    summary=summary.to_dict(orient="records"),
)
