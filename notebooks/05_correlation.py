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
# # 05 · Findings: traces against answers, conditions against each other, and the papers
#
# Reads what notebook 04 measured and asks three questions: does a correct trace go with a correct answer
# (2x2 tables, phi, point-biserial r)? Which conditions differ (paired tests on shared items, tests across
# seeds)? Does the run reproduce the papers (each published finding replicated, not replicated, or not
# comparable)? Intervals are 95 % unless `confidence` says otherwise. Writes every table below under
# `correlation/` and the figures under `correlation/figures/`.
#
# Guide: [analysis](../docs/analysis.md).

# %% tags=["parameters"]
run_dir = "outputs/demo"
run_name = "demo"
seed = 0
data_dir = None
device = "auto"
trace_criterion = "both_steps"
confidence = 0.95
bootstrap_resamples = 2000
baseline_condition = None
min_parse_rate = 0.5
collapse_share = 0.9
seed_outlier_gap = 0.1
reference_results = None

# %%
import pandas as pd
from IPython.display import Markdown, display

from kdlib import config, io, plots
from kdlib.analysis import reference
from kdlib.analysis import tables as analysis
from kdlib.paths import RunLayout
from kdlib.stage_writer import StageWriter, upstream_params
from kdlib.training.conditions import CHECKABLE_TRACE_TRANSFORMS

common, cfg = config.notebook_params("05_correlation", globals())
run = RunLayout(run_dir)
out = StageWriter(run, "05_correlation", common, cfg)
plots.use_offline_renderer()
pd.set_option("display.max_colwidth", 120)
statistics = {"confidence": cfg.confidence, "n_resamples": cfg.bootstrap_resamples, "seed": common.seed}

items = io.read_parquet(run.items, produced_by="01_teacher_traces")
sft = upstream_params(run, "03_sft")
sft_summary = pd.read_csv(io.require(run.sft_summary, produced_by="03_sft"))
predictions = io.read_parquet(run.predictions, produced_by="04_evaluation")
choice_scores = io.read_parquet(run.choice_scores, produced_by="04_evaluation")
print(f"{len(predictions)} greedy predictions of {len(sft_summary)} trained cells")

# %% [markdown]
# ## 1. Does a correct trace go with a correct answer?
#
# Rows of each 2x2 table: trace right or wrong; columns: answer right or wrong. `both_steps` needs the
# class, the exact set of supporting facts and their order; `classification` and `retrieval` score one
# step each. phi is the correlation of the two binary variables (0: unrelated, 1: a right trace always
# comes with a right answer); chi2 = n phi^2. The joint share P(trace right and answer right), over all
# items, sits beside the two conditionals: Bhambri et al. v2's "28 %" is a joint share, v1's 57.2 % a
# conditional.

# %%
traced = analysis.checkable_traces(predictions, CHECKABLE_TRACE_TRANSFORMS)
contingency = analysis.contingency(traced, **statistics)
out.table(run.contingency, contingency, title="Trace against answer", columns=analysis.CONTINGENCY_HEADLINE)
headline_rows = contingency[contingency["criterion"] == cfg.trace_criterion]
out.record(phi=dict(zip(plots.cell_labels(headline_rows), headline_rows["phi"], strict=True)))
print(f"{traced['condition'].nunique()} checkable-trace conditions; criterion: {cfg.trace_criterion}")
display(Markdown("\n".join(f"- {line}" for line in analysis.describe_contingency(headline_rows))))

# %%
contingency[analysis.CONTINGENCY_HEADLINE]

# %%
if not headline_rows.empty:
    display(out.figure("trace_vs_answer", plots.contingency_figure(headline_rows)))

# %% [markdown]
# **Graded trace scores.** A trace can be partly right. The point-biserial r correlates answer
# correctness with retrieval recall, precision, F1, and the step score (mean of the class being right
# and retrieval F1).

# %%
out.table(run.point_biserial, analysis.point_biserial(traced))

# %% [markdown]
# ## 2. Which conditions differ?
#
# Outcomes per item: `accuracy` (greedy generated answer), `label_first_acc` (choice scoring, where the
# items have choices), and the mean judge or human rating per explanation dimension.

# %%
outcomes = analysis.run_item_outcomes(run, predictions, choice_scores)
out.table(run.outcomes, outcomes)
cell_summary = out.table(run.cell_summary, analysis.cell_summary(outcomes, **statistics))
seed_summary = analysis.seed_summary(cell_summary, confidence=cfg.confidence)
out.table(run.seed_summary, seed_summary, title="Means over seeds")
seed_summary[seed_summary["metric"].isin(analysis.BINARY_METRICS)]

# %%
out.figure("condition_accuracy", plots.condition_accuracy(cell_summary, seed_summary))

# %% [markdown]
# **Paired tests on the same items.** For each student and seed, each pair of conditions (or each
# condition against `baseline_condition`): the difference a - b with a paired bootstrap interval, the
# items only a got right and only b got right, and McNemar's test (exact below 25 discordant items),
# Holm-adjusted within the family. Cochran's Q tests all conditions at once.

# %%
paired = analysis.paired_comparisons(outcomes, baseline=cfg.baseline_condition, **statistics)
accuracy_rows = f"metric in {list(analysis.BINARY_METRICS)}"
headline = {"title": "Conditions compared on the same items", "columns": analysis.PAIRED_HEADLINE}
out.table(run.paired_tests, paired, **headline, rows=accuracy_rows)
display(out.table(run.cochran_q, analysis.cochran_q(outcomes)))
paired.query(accuracy_rows)[analysis.PAIRED_HEADLINE]

# %%
out.figure("paired_differences", plots.paired_differences(paired))

# %% [markdown]
# **Across seeds.** Each seed's accuracy is one observation of its condition: one-way ANOVA and
# Kruskal-Wallis, then Tukey's HSD and pairwise Mann-Whitney U (Holm). With one seed per condition there
# is nothing to test, and the table says so. **Explanation ratings** get the same tests, each rated
# explanation one observation (the last two tables are empty when the run has no ratings).

# %%
tests = analysis.write_condition_tests(out, run, cell_summary, outcomes, confidence=cfg.confidence)
display(*tests["seed"], *tests["rating"])

# %% [markdown]
# **Runs to look at before averaging.** A cell is flagged when its answers are mostly unreadable, when
# it gives one answer to nearly every item (a collapsed run), when a seed lies far from its condition's
# other seeds, or when training ended with a non-finite loss.

# %%
run_flags = analysis.write_run_flags(out, run, predictions, items, sft_summary, cfg)
print(f"{(run_flags['flags'] != '').sum()} of {len(run_flags)} cells flagged")
run_flags

# %% [markdown]
# ## 3. Does the run reproduce the papers?
#
# The reference table (`kdlib/analysis/reference_results.yaml`, versioned) holds the three papers' published
# numbers with their sources, and their findings as testable claims. A finding is tested wherever the run
# has its conditions; a published number only where the run has the paper's dataset, student and data
# size. The verdict is *replicated* when the interval settles the claim in the paper's favour; *not
# replicated* otherwise, and `conclusive` says whether the interval settles it against the paper or
# leaves it open. An equivalence claim on accuracy ("a does as well as b") is *not comparable* when both
# conditions are at chance: students no better than chance match trivially. kdlib's own questions (no
# published number, e.g. the placeholder control against the rationale) are *measured*: the difference
# with its interval, `conclusive` when the interval excludes 0.

# %%
published, facts, comparison = reference.write_comparison(
    out, run, cfg, items, sft, outcomes, contingency, **statistics
)
print(f"reference table version {published.version}; this run: {facts.dataset}, {facts.n_train} train items")
display(Markdown("\n".join(reference.describe_findings(comparison))))

# %%
comparison[comparison["kind"] == "finding"][reference.COMPARISON_HEADLINE]

# %%
out.figure("reference_findings", plots.reference_forest(comparison))

# %% [markdown]
# The published numbers themselves, as the reference table records them:

# %%
reference.published_table(published)

# %%
out.close()
