"""Stage 04, evaluation (notebooks/04_evaluation): every trained cell on held-out items. Greedy and
sampled generation with answers read and checked against gold, traces parsed and scored (generation);
label-first choice scoring (scoring); logit and tuned lens (lens); explanations rated by an LLM judge
and rating sheets for people (explanations).

Reads the trained cells (kdlib.cells) and earlier stages' artifacts; writes evaluation/. Imports the
core, kdlib.data and stages 01-03.
"""
