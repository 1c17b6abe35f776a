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
# # 03 · Student SFT: the condition grid
#
# Every student x condition x seed is one cell, trained on the same items with the same tokenisation and
# target-only loss; the conditions of the three studies differ only in their training texts. Finished
# cells are skipped on a rerun, interrupted ones resume from their checkpoint, and key-token cells take
# their words from integrated gradients. Shows loss curves, tokens per condition and tokens/s per cell.
# Writes `sft/<student>/<condition>/seed<k>/` and `sft/summary.csv`.
#
# Guide: [training](../docs/training.md).

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
students = ["smollm2-135m-instruct"]
seeds = [0]
conditions = ["no_trace", "correct_trace", "incorrect_trace"]
rationale_recipe = "rule"
rationale_source = None
counterfactual_recipe = "counterfactual"
counterfactuals_per_item = 1
incorrect_perturbation = "both"
multitask_alpha = 1.0
multitask_beta = 1.0
key_tokens = {
    "attributions": None,
    "condition": "rationale_after_label",
    "n_items": None,
    "n_steps": 32,
    "internal_batch_size": 8,
    "top_k": None,
    "fraction": 0.2,
}
finetune = "lora"
lora = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
epochs = 2
batch_size = 8
grad_accum = 1
learning_rate = 0.002
max_length = 512
bf16 = True
compile = False
checkpoint_every = 50
num_processes = 1
trust_remote_code = False

# %%
from IPython.display import HTML, display

from kdlib import config, io, plots
from kdlib.cells import CELL_KEYS
from kdlib.data.schema import frame_to_items
from kdlib.paths import RunLayout
from kdlib.stage_writer import StageWriter, upstream_params
from kdlib.traces.decomposition import steps_by_item
from kdlib.training.grid import TraceSources, train_grid, training_logs

common, cfg = config.notebook_params("03_sft", globals())
run = RunLayout(run_dir)
out = StageWriter(run, "03_sft", common, cfg)
plots.use_offline_renderer()

train_items = frame_to_items(io.read_parquet(run.items, produced_by="01_teacher_traces"), role="train")
sources = TraceSources(
    traces=io.read_parquet(run.traces, produced_by="01_teacher_traces"),
    steps=steps_by_item(io.read_parquet(run.decomposed, produced_by="02_decomposition")),
)
trace_format = upstream_params(run, "02_decomposition").trace_format
print(f"{len(train_items)} training items, trace format {trace_format!r}")
print(f"grid: {len(cfg.students)} student(s) x {len(cfg.conditions)} condition(s) x {len(cfg.seeds)} seed(s)")

# %%
summary = train_grid(run, train_items, sources, sft=cfg, common=common, fmt=trace_format)
out.table(
    run.sft_summary,
    summary,
    title="Trained cells",
    columns=[*CELL_KEYS, "status", "examples", "steps", "final_loss", "seconds", "tokens_per_second"],
)
for cell in sorted({f"{cell.split('/')[0]}/" for cell in summary["cell"]}):
    out.produced(cell)
summary[["student", "condition", "seed", "status", "examples", "skipped_items", "steps", "final_loss"]]

# %% [markdown]
# ## Integrated gradients over rationale words (key-token cells)
# Example rationales shaded by attribution (green raises the gold answer's log-probability, red lowers it).

# %%
key_token_cells = summary["transform"] == "key_tokens_after_label"
if key_token_cells.any() and run.attributions.exists():
    word_attributions = io.read_parquet(run.attributions)
    attributed_cell = io.read_json(run.attribution_record)["cell"]
    print(f"{word_attributions['item_id'].nunique()} rationales attributed under {attributed_cell}")
    display(HTML(plots.attribution_highlights(word_attributions)))
else:
    print("no key-token cell in the grid, or its words come from key_tokens.attributions")
for path in run.attribution_files:
    if path.exists():
        out.produced(path.name)

# %% [markdown]
# ## Loss curves (target tokens only)

# %%
out.figure("loss_curves", plots.loss_curves(training_logs(run, summary)))

# %% [markdown]
# ## Tokens per condition
# Prompt + target tokens and target tokens per example: what each condition asks the student to learn.

# %%
out.figure("tokens_per_example", plots.tokens_per_example(summary))

# %% [markdown]
# ## Speed per cell
# Wall time and training tokens/s (real tokens, padding excluded) of each cell, and the share of
# batch positions that were padding.

# %%
speed = summary.assign(cell=plots.cell_labels(summary))
speed[["cell", "finetune", "bf16", "trainable_parameters", "seconds", "tokens_per_second", "padding_share"]]

# %%
out.figure("tokens_per_second", plots.training_speed(summary))

# %%
out.close()
