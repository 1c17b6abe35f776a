"""Stage 02, checkable traces (notebooks/02_decomposition): each item's classification + retrieval steps
from gold metadata, correct and perturbed traces in a tagged or plain format, trace parsing and
scoring, and the verifier that checks every perturbation is found.

Reads teacher_traces/items.parquet and traces.parquet; writes decomposition/. Imports the core, kdlib.data
and stage 01.
"""
