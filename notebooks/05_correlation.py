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
from kdlib.cells import CELL_KEYS
from kdlib.paths import RunLayout, resolve_repo_path
from kdlib.report import headline
from kdlib.training.conditions import CHECKABLE_TRACE_TRANSFORMS

common, cfg = config.notebook_params("05_correlation", globals())
run = RunLayout(run_dir)
plots.use_offline_renderer()
pd.set_option("display.max_colwidth", 120)
statistics = {"confidence": cfg.confidence, "n_resamples": cfg.bootstrap_resamples, "seed": common.seed}

items = io.read_parquet(run.items, produced_by="01_teacher_traces")
sft_params = io.read_json(io.require(run.root / "sft" / "meta.json", produced_by="03_sft"))["params"]["sft"]
sft_summary = pd.read_csv(io.require(run.sft_summary, produced_by="03_sft"))
predictions = io.read_parquet(run.predictions, produced_by="04_evaluation")
choice_scores = io.read_parquet(run.choice_scores, produced_by="04_evaluation")
ratings = [io.read_parquet(p) for p in (run.judge_ratings, run.human_ratings) if p.exists()]
explanations = io.read_parquet(run.explanations) if run.explanations.exists() else None
print(f"{len(predictions)} greedy predictions: {predictions.groupby(list(CELL_KEYS)).ngroups} cells")

# %% [markdown]
# ## 1. Does a correct trace go with a correct answer?
#
# Rows of each 2x2 table: trace right or wrong; columns: answer right or wrong. `both_steps` needs the
# class, the exact set of supporting facts and their order; `classification` and `retrieval` score one
# step each. phi is the correlation of the two binary variables (0: unrelated, 1: a right trace always
# comes with a right answer); chi2 = n phi^2.

# %%
figures, tables = {}, {}
traced = analysis.checkable_traces(predictions, CHECKABLE_TRACE_TRANSFORMS)
tables["contingency"] = analysis.contingency(traced, **statistics)
tables["point_biserial"] = analysis.point_biserial(traced)
headline_rows = tables["contingency"][tables["contingency"]["criterion"] == cfg.trace_criterion]
print(
    f"{traced['condition'].nunique()} checkable-trace conditions; headline criterion: {cfg.trace_criterion}"
)
if traced.empty:
    print("no checkable traces: no condition writes a decomposed trace, or the items have no gold steps")
display(Markdown("\n".join(f"- {line}" for line in analysis.describe_contingency(headline_rows))))

# %%
tables["contingency"][analysis.CONTINGENCY_HEADLINE]

# %%
if not headline_rows.empty:
    figures["trace_vs_answer"] = plots.contingency_figure(headline_rows)
    display(figures["trace_vs_answer"])

# %% [markdown]
# **Graded trace scores.** A trace can be partly right. The point-biserial r correlates answer
# correctness with retrieval recall, precision, F1, and the step score (mean of the class being right
# and retrieval F1).

# %%
tables["point_biserial"]

# %% [markdown]
# ## 2. Which conditions differ?
#
# Outcomes per item: `accuracy` (greedy generated answer), `label_first_acc` (choice scoring, where the
# items have choices), and the mean judge or human rating per explanation dimension.

# %%
outcomes = analysis.item_outcomes(
    predictions, choice_scores, pd.concat(ratings) if ratings else None, explanations
)
tables["cell_summary"] = analysis.cell_summary(outcomes, **statistics)
tables["seed_summary"] = analysis.seed_summary(tables["cell_summary"], confidence=cfg.confidence)
tables["seed_summary"][tables["seed_summary"]["metric"].isin(["accuracy", "label_first_acc"])]

# %%
figures["condition_accuracy"] = plots.condition_accuracy(tables["cell_summary"], tables["seed_summary"])
figures["condition_accuracy"]

# %% [markdown]
# **Paired tests on the same items.** For each student and seed, each pair of conditions (or each
# condition against `baseline_condition`): the difference a - b with a paired bootstrap interval, the
# items only a got right and only b got right, and McNemar's test (exact below 25 discordant items),
# Holm-adjusted within the family. Cochran's Q tests all conditions at once.

# %%
tables["paired_tests"] = analysis.paired_comparisons(outcomes, baseline=cfg.baseline_condition, **statistics)
tables["cochran_q"] = analysis.cochran_q(outcomes)
display(tables["cochran_q"])
accuracy_pairs = tables["paired_tests"]["metric"].isin(["accuracy", "label_first_acc"])
tables["paired_tests"][accuracy_pairs][analysis.PAIRED_HEADLINE]

# %%
figures["paired_differences"] = plots.paired_differences(tables["paired_tests"])
figures["paired_differences"]

# %% [markdown]
# **Across seeds.** Each seed's accuracy is one observation of its condition: one-way ANOVA and
# Kruskal-Wallis, then Tukey's HSD and pairwise Mann-Whitney U (Holm). With one seed per condition there
# is nothing to test, and the table says so. **Explanation ratings** get the same tests, each rated
# explanation one observation.

# %%
binary = tables["cell_summary"]["metric"].isin(["accuracy", "label_first_acc"])
seed_omnibus, seed_posthoc = analysis.group_tests(
    tables["cell_summary"][binary], family=["student", "metric"], group="condition", value="value"
)
rated = outcomes[~outcomes["metric"].isin(["accuracy", "label_first_acc"])]
rating_omnibus, rating_posthoc = analysis.group_tests(
    rated, family=["student", "metric"], group="condition", value="value", confidence=cfg.confidence
)
tables |= {
    "seed_omnibus": seed_omnibus,
    "seed_posthoc": seed_posthoc,
    "rating_omnibus": rating_omnibus,
    "rating_posthoc": rating_posthoc,
}
display(seed_omnibus, seed_posthoc)
display(rating_omnibus if len(rating_omnibus) else Markdown("No explanation ratings in this run."))
rating_posthoc

# %% [markdown]
# **Runs to look at before averaging.** A cell is flagged when its answers are mostly unreadable, when
# it gives one answer to nearly every item (a collapsed run), when a seed lies far from its condition's
# other seeds, or when training ended with a non-finite loss.

# %%
tables["run_flags"] = analysis.flag_runs(
    predictions,
    items.set_index("id")["answer"],
    sft_summary,
    min_parse_rate=cfg.min_parse_rate,
    collapse_share=cfg.collapse_share,
    seed_gap=cfg.seed_outlier_gap,
)
flagged = tables["run_flags"][tables["run_flags"]["flags"] != ""]
print(f"{len(flagged)} of {len(tables['run_flags'])} cells flagged")
tables["run_flags"]

# %% [markdown]
# ## 3. Does the run reproduce the papers?
#
# The reference table (`kdlib/analysis/reference_results.yaml`, versioned) holds the three papers' published
# numbers with their sources, and their findings as testable claims. A finding is tested wherever the run
# has its conditions; a published number only where the run has the paper's dataset, student and data
# size. The verdict is *replicated* when the interval settles the claim in the paper's favour; *not
# replicated* otherwise, and `conclusive` says whether the interval settles it against the paper or
# leaves it open. An equivalence claim on accuracy ("a does as well as b") is *not comparable* when both
# conditions are at chance: students no better than chance match trivially.

# %%
reference_path = resolve_repo_path(cfg.reference_results) if cfg.reference_results else None
published = reference.load_reference(reference_path)
facts = reference.run_facts(items, sft_params)
tables["reference_comparison"] = reference.compare_with_reference(
    published, facts, outcomes, tables["contingency"], **statistics
)
tables["published_results"] = reference.published_table(published)
print(f"reference table version {published.version}; this run: {facts.dataset}, {facts.n_train} train items")
display(Markdown("\n".join(reference.describe_findings(tables["reference_comparison"]))))

# %%
comparison = tables["reference_comparison"]
comparison[comparison["kind"] == "finding"][reference.COMPARISON_HEADLINE]

# %%
figures["reference_findings"] = plots.reference_forest(comparison)
figures["reference_findings"]

# %% [markdown]
# The published numbers themselves, as the reference table records them:

# %%
tables["published_results"]

# %%
stage = run.stage("correlation")
files = {
    "contingency": run.contingency,
    "point_biserial": run.point_biserial,
    "cell_summary": run.cell_summary,
    "seed_summary": run.seed_summary,
    "paired_tests": run.paired_tests,
    "cochran_q": run.cochran_q,
    "seed_omnibus": run.group_tests("seed", "omnibus"),
    "seed_posthoc": run.group_tests("seed", "posthoc"),
    "rating_omnibus": run.group_tests("rating", "omnibus"),
    "rating_posthoc": run.group_tests("rating", "posthoc"),
    "run_flags": run.run_flags,
    "reference_comparison": run.reference_comparison,
    "published_results": run.published_results,
}
for name, path in files.items():
    io.write_csv(path, tables[name])
io.write_parquet(run.outcomes, outcomes)
saved = plots.save_figures(stage, figures)
io.write_meta(
    stage,
    params={"common": common.model_dump(), "correlation": cfg.model_dump()},
    artifacts=[*(path.name for path in files.values()), run.outcomes.name, "figures/"],
    report=headline(
        [
            {
                "file": run.contingency.name,
                "title": "Trace against answer",
                "columns": analysis.CONTINGENCY_HEADLINE,
            },
            {
                "file": run.paired_tests.name,
                "title": "Conditions compared on the same items",
                "columns": analysis.PAIRED_HEADLINE,
                "rows": "metric in ['accuracy', 'label_first_acc']",
            },
            {"file": run.seed_summary.name, "title": "Means over seeds"},
            {"file": run.run_flags.name, "title": "Flagged runs", "rows": "flags.notna()"},
            {
                "file": run.reference_comparison.name,
                "title": "Against the published results",
                "columns": reference.COMPARISON_HEADLINE,
                "rows": "kind == 'finding' or verdict != 'not comparable'",
            },
        ],
        saved,
    ),
    reference=reference.reference_id(reference_path),
    phi=dict(zip(plots.cell_labels(headline_rows), headline_rows["phi"], strict=True)),
)
