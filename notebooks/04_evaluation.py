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
# # 04 · Evaluation on the held-out split
#
# Each trained student generates a trace and an answer for every evaluation item: greedily, and
# `generation.samples` more times by sampling. The answer is read robustly (choice text or letter,
# yes/no, numbers) and compared with gold; an output whose answer cannot be read is counted as
# unparsed, separately, never as a wrong label. The trace is parsed back into its two steps and checked
# by the same verifier as notebook 02.
#
# **Label-first scoring** needs no generation: every answer choice is scored by the student's
# log-probability right after the answer opening (`acc`), and per character (`acc_norm`), as
# lm-evaluation-harness defines them. It also scores students trained with the trace after the label at
# the point where they state it.
#
# **Integrated gradients** (Captum, layer IG on the embeddings) attribute the gold answer's
# log-probability under the `attribution.condition` student to the words of the teacher rationale of
# each training item. The word file is what the `key_tokens_after_label` condition of notebook 03 reads:
# rerun 03 with that condition to close the loop.
#
# Writes `evaluation/predictions.parquet` (greedy), `samples.parquet`, `choice_scores.parquet`,
# `metrics.csv`, and with attribution `attributions.parquet` (words) and `token_attributions.parquet`.

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
attribution = {"condition": "rationale_after_label", "n_items": 32, "n_steps": 32, "internal_batch_size": 8}

# %%
import pandas as pd
from IPython.display import HTML, display

from kdlib import config, io, plots
from kdlib.attribution import attribute_condition
from kdlib.data.schema import frame_to_items
from kdlib.evaluation import evaluate_cells, summarise
from kdlib.models import resolve_device
from kdlib.paths import RunLayout

common, cfg = config.notebook_params("04_evaluation", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()

items_frame = io.read_parquet(run.items, produced_by="01_teacher_traces")
eval_items = frame_to_items(items_frame, role="eval")
sft = io.read_json(io.require(run.root / "sft" / "meta.json", produced_by="03_sft"))["params"]["sft"]
cells = pd.read_csv(io.require(run.sft_summary, produced_by="03_sft"))
print(f"{len(eval_items)} evaluation items; {len(cells)} trained cells")

# %%
frames = evaluate_cells(
    run, cells, eval_items, device=resolve_device(common.device), seed=common.seed, params=cfg
)
predictions, samples, choice_scores = frames["predictions"], frames["samples"], frames["choice_scores"]
metrics = summarise(predictions, samples, choice_scores)
metrics

# %%
plots.accuracy_bars(metrics)

# %%
plots.parse_failure_bars(metrics)

# %% [markdown]
# ## Example outputs

# %%
pd.set_option("display.max_colwidth", 200)
predictions.groupby(["student", "condition", "seed"]).head(2)[
    ["student", "condition", "seed", "item_id", "output", "answer_correct", "trace_correct"]
]

# %% [markdown]
# ## Integrated gradients over rationale words

# %%
attributed = attribute_condition(
    run,
    cells,
    frame_to_items(items_frame, role="train"),
    io.read_parquet(run.traces, produced_by="01_teacher_traces"),
    device=resolve_device(common.device),
    seed=common.seed,
    params=cfg.attribution,
)
if attributed is None:
    print(f"no attribution: no causal student of condition {cfg.attribution.condition!r} in the grid")
else:
    word_attributions, token_attributions, attributed_cell = attributed
    print(f"attributed under {attributed_cell['cell']}: {word_attributions['item_id'].nunique()} items")
    display(HTML(plots.attribution_highlights(word_attributions)))

# %%
artifacts = [run.predictions.name, run.samples.name, run.choice_scores.name, run.metrics.name]
if attributed is not None:
    io.write_parquet(run.attributions, word_attributions)
    io.write_parquet(run.token_attributions, token_attributions)
    artifacts += [run.attributions.name, run.token_attributions.name]
io.write_parquet(run.predictions, predictions)
io.write_parquet(run.samples, samples)
io.write_parquet(run.choice_scores, choice_scores)
io.write_csv(run.metrics, metrics)
io.write_meta(
    run.stage("evaluation"),
    params={"common": common.model_dump(), "evaluation": cfg.model_dump(), "sft": sft},
    artifacts=artifacts,
    metrics=metrics.to_dict(orient="records"),
)
