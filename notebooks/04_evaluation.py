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
from kdlib.data.schema import frame_to_items
from kdlib.evaluation.explanations import assess_explanations, describe_assessment, write_assessment
from kdlib.evaluation.generation import METRIC_COLUMNS, evaluate_cells, summarise
from kdlib.evaluation.lens import write_lens_tables
from kdlib.models import resolve_device
from kdlib.paths import RunLayout
from kdlib.stage_writer import StageWriter, upstream_params

common, cfg = config.notebook_params("04_evaluation", globals())
run = RunLayout(run_dir)
out = StageWriter(run, "04_evaluation", common, cfg, upstream={"sft": upstream_params(run, "03_sft")})
plots.use_offline_renderer()
device = resolve_device(common.device)

items_frame = io.read_parquet(run.items, produced_by="01_teacher_traces")
eval_items = frame_to_items(items_frame, role="eval")
train_items = frame_to_items(items_frame, role="train")
cells = pd.read_csv(io.require(run.sft_summary, produced_by="03_sft"))
print(f"{len(eval_items)} evaluation items; {len(cells)} trained cells")

# %%
frames = evaluate_cells(run, cells, eval_items, device=device, seed=common.seed, params=cfg)
predictions = out.table(run.predictions, frames["predictions"])
samples = out.table(run.samples, frames["samples"])
choice_scores = out.table(run.choice_scores, frames["choice_scores"])
out.produced("cells/")
print(frames["cells"]["status"].value_counts().to_string())
metrics = summarise(predictions, samples, choice_scores)
out.record(metrics=metrics.to_dict(orient="records"))
out.table(
    run.metrics, metrics, title="Held-out accuracy per cell (95% Wilson intervals)", columns=METRIC_COLUMNS
)

# %%
out.figure("accuracy", plots.accuracy_bars(metrics))

# %%
out.figure("parse_failures", plots.parse_failure_bars(metrics))

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
    layer_summary, emergence = write_lens_tables(
        out, run, cells, train_items, eval_items, device=device, seed=common.seed, params=cfg.lens
    )
    display(emergence, out.figure("lens_gold_top", plots.lens_heatmap(layer_summary)))
    display(out.figure("lens_kl", plots.lens_kl_lines(layer_summary)))
else:
    print("lens analysis off (lens.enabled: false)")

# %% [markdown]
# ## Explanation quality
#
# Mean judge (and human) rating per dimension and cell, with 95% t intervals; then, when filled rating
# sheets are listed, how well the judge agrees with the humans.

# %%
explained = frames["explanations"]
if cfg.explanations.enabled:
    out.table(run.explanations, explained)
if cfg.explanations.enabled and not explained.empty:
    assessed = assess_explanations(
        explained, eval_items, cfg.explanations, device=common.device, seed=common.seed
    )
    print(describe_assessment(cfg.explanations, assessed))
    write_assessment(out, run, assessed)
    display(out.figure("explanation_quality", plots.explanation_bars(assessed["scores"])))
    if assessed["agreement"] is not None:
        display(assessed["agreement"])
elif cfg.explanations.enabled:
    print("no explanations to rate: no cell wrote one (no_trace only, or blank outputs)")

# %%
out.close()
