"""Stage 01, teacher rationales (notebooks/01_teacher_traces): the items, then rationales written by rule,
by a teacher LM under prompt recipes (backends, a content-hashed generation cache) or imported from
published outputs, each with its label parsed and leaks checked, and the filters.

Reads the data directory (kdlib.data); writes teacher_traces/items.parquet, traces.parquet,
filter_report.csv and rationale_summary.csv. Imports only the core and kdlib.data.
"""
