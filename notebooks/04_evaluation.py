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
# Writes `evaluation/predictions.parquet` (greedy), `samples.parquet`, `choice_scores.parquet` and
# `metrics.csv`.

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

# %%
import pandas as pd

from kdlib import config, io, plots
from kdlib.data.schema import frame_to_items
from kdlib.evaluation import evaluate_cells, summarise
from kdlib.models import resolve_device
from kdlib.paths import RunLayout

common, cfg = config.notebook_params("04_evaluation", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()

eval_items = frame_to_items(io.read_parquet(run.items, produced_by="01_teacher_traces"), role="eval")
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

# %%
io.write_parquet(run.predictions, predictions)
io.write_parquet(run.samples, samples)
io.write_parquet(run.choice_scores, choice_scores)
io.write_csv(run.metrics, metrics)
io.write_meta(
    run.stage("evaluation"),
    params={"common": common.model_dump(), "evaluation": cfg.model_dump(), "sft": sft},
    artifacts=[run.predictions.name, run.samples.name, run.choice_scores.name, run.metrics.name],
    metrics=metrics.to_dict(orient="records"),
)
