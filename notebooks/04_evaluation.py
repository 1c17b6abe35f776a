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
# # 04 · Evaluation on the held-out split
#
# Each trained student answers every held-out item (greedy and sampled generation, answers read robustly,
# unparsed answers counted apart), is scored label-first (`acc`, `acc_norm`) without generation, has its
# generated traces checked by notebook 02's verifier, its layers read by the logit and tuned lens, and its
# explanations rated on Hendriks et al.'s five dimensions by an LLM judge and, optionally, by people.
# Writes its tables under `evaluation/`.
#
# Guide: [evaluation](../docs/evaluation.md).

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
max_new_tokens = 96
batch_size = 16
label_first = True
generation = {"samples": 0, "temperature": 0.7, "top_p": 0.95}
lens = {
    "enabled": True,
    "tuned": True,
    "train_items": 32,
    "steps": 30,
    "positions_per_step": 32,
    "learning_rate": 0.001,
    "batch_size": 8,
}
explanations = {
    "enabled": True,
    "n_items": 16,
    "judge": {
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
    },
    "judge_mode": "joint",
    "max_new_tokens": 48,
    "cache_path": None,
    "human_ratings": [],
}

# %%
import pandas as pd
from IPython.display import display

from kdlib import config, io, plots
from kdlib.cells import CELL_KEYS
from kdlib.data.schema import frame_to_items
from kdlib.evaluation.explanations import assess_explanations, describe_judge
from kdlib.evaluation.generation import METRIC_COLUMNS, evaluate_cells, summarise
from kdlib.evaluation.lens import emergence_summary, lens_cells, lens_summary
from kdlib.models import resolve_device
from kdlib.paths import RunLayout
from kdlib.report import headline

common, cfg = config.notebook_params("04_evaluation", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()

items_frame = io.read_parquet(run.items, produced_by="01_teacher_traces")
eval_items = frame_to_items(items_frame, role="eval")
train_items = frame_to_items(items_frame, role="train")
sft = io.read_json(io.require(run.root / "sft" / "meta.json", produced_by="03_sft"))["params"]["sft"]
cells = pd.read_csv(io.require(run.sft_summary, produced_by="03_sft"))
print(f"{len(eval_items)} evaluation items; {len(cells)} trained cells")

# %%
frames = evaluate_cells(
    run, cells, eval_items, device=resolve_device(common.device), seed=common.seed, params=cfg
)
predictions, samples, choice_scores = frames["predictions"], frames["samples"], frames["choice_scores"]
print(frames["cells"]["status"].value_counts().to_string())
metrics = summarise(predictions, samples, choice_scores)
metrics

# %%
figures = {"accuracy": plots.accuracy_bars(metrics)}
figures["accuracy"]

# %%
figures["parse_failures"] = plots.parse_failure_bars(metrics)
figures["parse_failures"]

# %% [markdown]
# ## Example outputs

# %%
pd.set_option("display.max_colwidth", 200)
shown = ["student", "condition", "seed", "item_id", "output", "answer_correct", "trace_correct"]
predictions.groupby(["student", "condition", "seed"]).head(2).reindex(columns=shown)  # no gold steps: NaN

# %% [markdown]
# ## Where the answer emerges: logit lens and tuned lens
#
# Share of held-out items whose gold answer is top-ranked at each layer (layer 0 is the embeddings, the
# last is the output), then the emergence layer per cell: the first layer from which gold stays
# top-ranked, averaged over items that are right at the output.

# %%
if cfg.lens.enabled:
    lens_frames = lens_cells(
        run,
        cells,
        train_items,
        eval_items,
        device=resolve_device(common.device),
        seed=common.seed,
        params=cfg.lens,
    )
    layer_summary = lens_summary(lens_frames["ranks"], CELL_KEYS)
    emergence = emergence_summary(lens_frames["ranks"], CELL_KEYS)
    figures["lens_gold_top"] = plots.lens_heatmap(layer_summary)
    figures["lens_kl"] = plots.lens_kl_lines(layer_summary)
    display(emergence, figures["lens_gold_top"], figures["lens_kl"])
else:
    print("lens analysis off (lens.enabled: false)")

# %% [markdown]
# ## Explanation quality
#
# Mean judge (and human) rating per dimension and cell, with 95% t intervals; then, when filled rating
# sheets are listed, how well the judge agrees with the humans.

# %%
explained = frames["explanations"]
assessed = None
if cfg.explanations.enabled and not explained.empty:
    assessed = assess_explanations(
        explained, eval_items, cfg.explanations, device=common.device, seed=common.seed
    )
    calls = assessed["judge_calls"]
    print(f"judge: {calls['misses']} new calls, {calls['hits']} cached")
    print(describe_judge(cfg.explanations, assessed["judge_ratings"]))
    figures["explanation_quality"] = plots.explanation_bars(assessed["scores"])
    display(figures["explanation_quality"])
    if assessed["agreement"] is None:
        print("no human ratings yet: fill evaluation/rating_sheet.csv or rating_form.html, list the files")
        print("under evaluation.explanations.human_ratings, and rerun this notebook")
    else:
        display(assessed["agreement"])
elif cfg.explanations.enabled:
    print("no explanations to rate: no cell wrote one (no_trace only, or blank outputs)")

# %%
artifacts = [run.predictions.name, run.samples.name, run.choice_scores.name, run.metrics.name, "cells/"]
if cfg.lens.enabled:
    io.write_parquet(run.lens_ranks, lens_frames["ranks"])
    io.write_csv(run.lens_summary, layer_summary)
    io.write_csv(run.lens_emergence, emergence)
    artifacts += [run.lens_ranks.name, run.lens_summary.name, run.lens_emergence.name]
    if cfg.lens.tuned:
        io.write_csv(run.lens_training, lens_frames["training"])
        artifacts += [run.lens_training.name, "tuned_lens/"]
if cfg.explanations.enabled:
    io.write_parquet(run.explanations, explained)
    artifacts.append(run.explanations.name)
if assessed is not None:
    io.write_parquet(run.judge_ratings, assessed["judge_ratings"])
    io.write_csv(run.explanation_scores, assessed["scores"])
    io.write_csv(run.rating_sheet, assessed["sheet"])
    io.write_text(run.rating_form, assessed["form"])
    artifacts += [
        run.judge_ratings.name,
        run.explanation_scores.name,
        run.rating_sheet.name,
        run.rating_form.name,
    ]
    if assessed["agreement"] is not None:
        io.write_parquet(run.human_ratings, assessed["human_ratings"])
        io.write_csv(run.rating_agreement, assessed["agreement"])
        artifacts += [run.human_ratings.name, run.rating_agreement.name]
io.write_parquet(run.predictions, predictions)
io.write_parquet(run.samples, samples)
io.write_parquet(run.choice_scores, choice_scores)
io.write_csv(run.metrics, metrics)
saved = plots.save_figures(run.stage("evaluation"), figures)
headline_tables = [
    {
        "file": run.metrics.name,
        "title": "Held-out accuracy per cell (95% Wilson intervals)",
        "columns": METRIC_COLUMNS,
    }
]
if cfg.lens.enabled:
    headline_tables.append({"file": run.lens_emergence.name, "title": "Where the answer emerges (lens)"})
if assessed is not None:
    headline_tables.append({"file": run.explanation_scores.name, "title": "Explanation ratings"})
io.write_meta(
    run.stage("evaluation"),
    params={"common": common.model_dump(), "evaluation": cfg.model_dump(), "sft": sft},
    artifacts=[*artifacts, "figures/"],
    report=headline(headline_tables, saved),
    metrics=metrics.to_dict(orient="records"),
)
