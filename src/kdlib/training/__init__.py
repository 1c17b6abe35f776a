"""Stage 03, training (notebooks/03_sft): the grid students x conditions x seeds. Conditions are data
transforms of an item and its traces (conditions), the loop trains with target-only, weighted loss and
resumable checkpoints (loop), the grid builds, trains and records each cell (grid), and integrated
gradients pick the key tokens of the key-token condition (attribution).

Reads teacher_traces/ and decomposition/; writes sft/<student>/<condition>/seed<k>/ (weights, training
log, meta.json) and sft/summary.csv. Imports the core, kdlib.data and stages 01-02.
"""
