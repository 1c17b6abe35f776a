"""Stage 05, analysis (notebooks/05_correlation): trace against answer, conditions against each other
across seeds, run flags (tables); the three papers' published results and our verdicts against them
(reference, with reference_results.yaml); and docs/results.md from the finished runs (results).

Reads evaluation/ and earlier stages' artifacts; writes correlation/ (and, through `kdlib results`,
docs/). Imports the core, kdlib.data and stages 01-04.
"""
