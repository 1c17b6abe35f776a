import math

import numpy as np
import pandas as pd
import pytest
import yaml

from kdlib.analysis.reference import (
    REFERENCE_RESULTS,
    Estimate,
    FindingTest,
    ReferenceFileError,
    RunFacts,
    combine_seeds,
    compare_with_reference,
    describe_findings,
    judge,
    load_reference,
    published_table,
    reference_id,
    run_facts,
)
from kdlib.analysis.tables import contingency
from kdlib.config import ConditionSpec
from kdlib.stats import t_interval
from kdlib.training.conditions import TRANSFORMS
from tests.helpers import accuracy_outcomes


def test_packaged_table_is_valid_and_names_only_known_conditions():
    reference = load_reference()
    assert reference.version >= 1 and reference.changes[-1]["version"] == reference.version
    selectors = [p.condition for p in reference.published]
    for finding in reference.findings:
        selectors += [s for s in (finding.test.a, finding.test.b, finding.test.condition) if s is not None]
    assert {s.transform for s in selectors} <= set(TRANSFORMS)
    table = published_table(reference)
    assert len(table) == len(reference.published) and table["source"].str.len().gt(20).all()
    # the Hendriks means as the authors' experiment.csv gives them (62.1 / 53.2 / 59.8 / 61.9 for T5-base)
    base = table[table["id"].str.startswith("hendriks.t5base.")].set_index("id")["value"]
    assert base["hendriks.t5base.mt"] == pytest.approx(62.1, abs=0.05)
    assert base["hendriks.t5base.mtcf_revised"] == pytest.approx(61.9, abs=0.05)
    assert {"bhambri2025", "hendriks2025", "wadhwa2024"} == {f.study for f in reference.findings}
    recorded = reference_id()
    assert recorded["version"] == reference.version and len(recorded["sha256"]) == 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["published"][0].pop("value"), "published.0.value"),
        (lambda r: r["published"][1].update(source="nowhere"), "unknown source 'nowhere'"),
        (lambda r: r["findings"][0]["test"].update(kind="greater", metric=None), "needs metric"),
        (lambda r: r["findings"][0].update(colour="red"), "findings.0.colour': unknown key"),
        (lambda r: r["findings"][1].update(id=r["findings"][0]["id"]), "appear more than once"),
        (lambda r: r["findings"][-1].pop("version"), "has test kind question, and only it"),
        (lambda r: r["findings"][0].update(version="kdlib"), "has test kind question, and only it"),
    ],
)
def test_a_malformed_table_names_the_file_and_key(tmp_path, edit, message):
    raw = yaml.safe_load(REFERENCE_RESULTS.read_text())
    edit(raw)
    path = tmp_path / "reference.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ReferenceFileError, match=str(path)) as error:
        load_reference(path)
    assert message in str(error.value)


def test_judge_reads_intervals_against_each_kind_of_claim():
    greater = FindingTest(kind="greater", metric="accuracy", a={"transform": "x"}, b={"transform": "y"})
    assert judge(greater, Estimate(5, 1, 9, ""))[:2] == ("replicated", True)
    assert judge(greater, Estimate(-5, -9, -1, ""))[:2] == ("not replicated", True)
    verdict, conclusive, reason = judge(greater, Estimate(2, -1, 5, ""))
    assert (verdict, conclusive) == ("not replicated", False) and reason.startswith("inconclusive")
    close = greater.model_copy(update={"kind": "close", "tolerance": 3.0})
    assert judge(close, Estimate(0.5, -2, 2.5, ""))[:2] == ("replicated", True)
    assert judge(close, Estimate(8, 4, 12, ""))[:2] == ("not replicated", True)
    at_least = greater.model_copy(update={"kind": "at_least", "tolerance": 2.0})
    assert judge(at_least, Estimate(-1, -1.5, 3, ""))[:2] == ("replicated", True)
    assert judge(at_least, Estimate(-9, -12, -4, ""))[:2] == ("not replicated", True)
    question = greater.model_copy(update={"kind": "question"})
    assert judge(question, Estimate(-5, -9, -1, ""))[:2] == ("measured", True)
    verdict, conclusive, reason = judge(question, Estimate(2, -1, 5, ""))
    assert (verdict, conclusive) == ("measured", False) and "kdlib's question, no published number" in reason
    below = FindingTest(kind="below", statistic="phi", condition={"transform": "x"}, threshold=0.3)
    assert judge(below, Estimate(0.05, -0.1, 0.2, ""))[:2] == ("replicated", True)
    assert judge(below, Estimate(0.05, math.nan, math.nan, ""))[0] == "not comparable"


def test_combine_seeds_uses_a_t_interval_over_seeds():
    one = combine_seeds(pd.DataFrame({"value": [0.5], "low": [0.4], "high": [0.6]}), 0.95, (0, 1))
    assert (one.value, one.low, one.high) == (0.5, 0.4, 0.6)
    assert one.basis == "1 seed, bootstrap over items, not over training seeds"
    three = combine_seeds(pd.DataFrame({"value": [0.5, 0.6, 0.7], "low": 0.0, "high": 1.0}), 0.95, (0, 1))
    assert three.value == pytest.approx(0.6) and three.low > 0.3 and "3 seeds" in three.basis
    rare = pd.DataFrame({"value": [0.0, 0.0, 0.01], "low": 0.0, "high": 0.05})
    near_zero = combine_seeds(rare, 0.95, (0, 1))
    assert t_interval(rare["value"])[0] < 0  # a rate's interval that would reach below 0
    assert near_zero.low == 0.0 and near_zero.high == pytest.approx(t_interval(rare["value"])[1])


def _outcomes(student, accuracy_by_condition, n=200, seeds=(0,), rng=None):
    rng = rng or np.random.default_rng(0)
    per_seed = [
        accuracy_outcomes({c: rng.random(n) < a for c, a in accuracy_by_condition.items()}, seed, student)
        for seed in seeds
    ]
    return pd.concat(per_seed, ignore_index=True)


def _no_traces():
    columns = [
        "student",
        "condition",
        "seed",
        "answer_correct",
        "trace_correct",
        "class_correct",
        "retrieval_exact",
    ]
    return contingency(pd.DataFrame(columns=columns))


def _facts(dataset, conditions, n_train=100, n_eval=200, chance_accuracy=20.0):
    specs = tuple(
        c if isinstance(c, ConditionSpec) else ConditionSpec(name=c, transform=c) for c in conditions
    )
    return RunFacts(
        dataset=dataset, n_train=n_train, n_eval=n_eval, conditions=specs, chance_accuracy=chance_accuracy
    )


@pytest.mark.parametrize(("accuracy", "verdict"), [(0.2, "not comparable"), (0.6, "replicated")])
def test_an_equivalence_claim_needs_a_condition_above_chance(accuracy, verdict):
    after = _outcomes("s", {"rationale_after_label": accuracy}, n=400)
    key_tokens = after.assign(condition="key_tokens_after_label")  # the same answers, item for item
    table = compare_with_reference(
        load_reference(),
        _facts("commonsenseqa", ["key_tokens_after_label", "rationale_after_label"]),
        pd.concat([after, key_tokens]),
        _no_traces(),
        n_resamples=300,
    ).set_index("id")
    row = table.loc["wadhwa.key_tokens_match_full_rationale"]
    assert row["verdict"] == verdict
    if verdict == "not comparable":
        assert row["reason"].startswith("both conditions are at chance (20.0%: key_tokens_after_label")
        assert row["reason"].endswith("students no better than chance match trivially")
    assert row["estimate"] == 0.0 and row["ci_low"] == row["ci_high"] == 0.0


def test_run_facts_reads_chance_from_the_eval_items_choices():
    sft = {"conditions": ["no_trace"], "students": ["tiny-llama"]}
    items = pd.DataFrame(
        {
            "dataset": "commonsenseqa",
            "role": ["train", "eval", "eval"],
            "choices": [["a", "b"], ["a", "b", "c", "d", "e"], ["a", "b", "c", "d"]],
        }
    )
    facts = run_facts(items, sft)
    assert (facts.n_train, facts.n_eval) == (1, 2) and facts.chance_accuracy == pytest.approx(22.5)
    assert run_facts(items.assign(choices=[[]] * 3), sft).chance_accuracy == 0.0


def test_findings_get_verdicts_from_the_runs_numbers():
    conditions = ["rationale_after_label", "rationale_before_label", "no_trace"]
    outcomes = _outcomes("s", {"rationale_after_label": 0.8, "rationale_before_label": 0.4, "no_trace": 0.8})
    after = outcomes[outcomes["condition"] == "rationale_after_label"]["value"].to_numpy()
    swapped = after.copy()  # no_trace: the same accuracy, 5 items won and 5 lost
    swapped[np.flatnonzero(after == 1)[:5]], swapped[np.flatnonzero(after == 0)[:5]] = 0.0, 1.0
    outcomes.loc[outcomes["condition"] == "no_trace", "value"] = swapped
    table = compare_with_reference(
        load_reference(), _facts("commonsenseqa", conditions), outcomes, _no_traces(), n_resamples=300
    )
    rows = table[table["kind"] == "finding"].set_index("id")
    after_before = rows.loc["wadhwa.after_beats_before"]
    assert after_before["verdict"] == "replicated" and after_before["conclusive"]
    assert after_before["estimate"] == pytest.approx(
        100
        * (
            outcomes.query("condition == 'rationale_after_label'")["value"].mean()
            - outcomes.query("condition == 'rationale_before_label'")["value"].mean()
        )
    )
    assert after_before["scope"] == "same dataset" and after_before["unit"] == "points"
    label_only = rows.loc["wadhwa.after_beats_label_only"]
    assert label_only["verdict"] == "not replicated" and not label_only["conclusive"]
    assert rows.loc["wadhwa.shuffled_keeps_the_gain", "verdict"] == "not comparable"
    assert (
        "no condition of shuffled_rationale_after_label"
        in rows.loc["wadhwa.shuffled_keeps_the_gain", "reason"]
    )
    assert rows.loc["bhambri.traces_do_not_help", "reason"] == "the run has no condition of correct_trace"
    judged = table["verdict"].isin(["replicated", "not replicated"])
    assert table.loc[judged, ["estimate", "ci_low", "ci_high"]].notna().all().all()
    unjudged = table[~judged]
    assert (unjudged["verdict"] == "not comparable").all() and unjudged["reason"].str.len().gt(0).all()
    reference = load_reference()  # each row cites its own entry's source, spelled out
    cited = {e.id: reference.sources[e.source] for e in [*reference.published, *reference.findings]}
    assert table["source"].tolist() == [cited[entry_id] for entry_id in table["id"]]


def test_kdlibs_placeholder_questions_are_measured_not_replicated():
    """The placeholder control has no published number: its comparisons with the rationale after the label
    and with the label alone report the difference and its interval, never a replication."""
    reference = load_reference()
    questions = {f.id: f for f in reference.findings if f.version == "kdlib"}
    assert {(f.test.a.transform, f.test.b.transform) for f in questions.values()} == {
        ("placeholder_after_label", "rationale_after_label"),
        ("placeholder_after_label", "no_trace"),
    }
    assert all(f.test.kind == "question" and "no published number" in f.paper for f in questions.values())
    conditions = ["placeholder_after_label", "rationale_after_label", "no_trace"]
    outcomes = _outcomes(
        "s", {"placeholder_after_label": 0.3, "rationale_after_label": 0.8, "no_trace": 0.3}, n=400
    )
    table = compare_with_reference(
        reference, _facts("commonsenseqa", conditions), outcomes, _no_traces(), n_resamples=300
    ).set_index("id")
    content = table.loc["wadhwa.kdlib.placeholder_vs_rationale_after_label"]
    means = outcomes.groupby("condition")["value"].mean()
    assert content["verdict"] == "measured" and content["conclusive"]
    assert content["estimate"] == pytest.approx(
        100 * (means["placeholder_after_label"] - means["rationale_after_label"])
    )
    assert content["ci_high"] < 0 and content["unit"] == "points" and content["scope"] == "same dataset"
    assert "kdlib's question, no published number" in content["reason"]
    length = table.loc["wadhwa.kdlib.placeholder_vs_no_trace"]
    assert length["verdict"] == "measured" and length["ci_low"] <= length["estimate"] <= length["ci_high"]
    assert "replicated" not in set(table.loc[list(questions), "verdict"])
    lines = describe_findings(table.reset_index())
    assert any(line.startswith("- **measured** (s): kdlib's question: filler tokens") for line in lines)


def test_ambiguous_conditions_and_rating_findings():
    conditions = [
        ConditionSpec(name="mt", transform="multitask", rationale_recipe="positive"),
        ConditionSpec(name="mt_rev", transform="multitask", rationale_recipe="revised"),
        ConditionSpec(name="cf", transform="counterfactual", rationale_recipe="positive"),
        ConditionSpec(name="cf_rev", transform="counterfactual", rationale_recipe="revised"),
        ConditionSpec(name="both_rev", transform="multitask_counterfactual", rationale_recipe="revised"),
    ]
    outcomes = _outcomes("s", {"mt": 0.7, "mt_rev": 0.6, "cf": 0.5, "cf_rev": 0.4, "both_rev": 0.7})
    same = outcomes[outcomes["condition"] == "mt"]["value"].to_numpy()
    outcomes.loc[outcomes["condition"] == "both_rev", "value"] = same  # equal accuracy, item by item
    ratings = outcomes[outcomes["condition"].isin(["mt", "both_rev"])].assign(
        metric="judge_contrastiveness", value=lambda f: np.where(f["condition"] == "both_rev", 4.0, 2.0)
    )
    table = compare_with_reference(
        load_reference(),
        _facts("commonsenseqa", conditions),
        pd.concat([outcomes, ratings]),
        _no_traces(),
        n_resamples=200,
    )
    rows = table[table["kind"] == "finding"].set_index("id")
    assert (
        "2 conditions match counterfactual: cf, cf_rev"
        in rows.loc["hendriks.multitask_beats_counterfactual", "reason"]
    )
    curve = [
        *conditions,
        ConditionSpec(name="mt_n50", transform="multitask", rationale_recipe="positive", train_items=50),
    ]
    sized = compare_with_reference(  # a learning curve's smaller size does not make mt ambiguous
        load_reference(), _facts("commonsenseqa", curve), outcomes, _no_traces(), n_resamples=200
    ).set_index("id")
    assert "mt_n50" not in "".join(sized["reason"].fillna(""))
    assert sized.loc["hendriks.revised_both_match_multitask", "verdict"] == "replicated"
    contrast = rows.loc["hendriks.revised_both_more_contrastive"]
    assert contrast["verdict"] == "replicated" and contrast["estimate"] == pytest.approx(2.0)
    assert "LLM-judge ratings" in contrast["reason"]
    assert rows.loc["hendriks.revised_both_match_multitask", "verdict"] == "replicated"
    unrated = compare_with_reference(  # the judge rated no explanation of mt on this dimension
        load_reference(),
        _facts("commonsenseqa", conditions),
        pd.concat([outcomes, ratings[ratings["condition"] == "both_rev"]]),
        _no_traces(),
        n_resamples=200,
    ).set_index("id")
    assert unrated.loc["hendriks.revised_both_more_contrastive", "verdict"] == "not comparable"
    assert (
        "no judge_contrastiveness outcomes for mt"
        in unrated.loc["hendriks.revised_both_more_contrastive", "reason"]
    )


def test_published_numbers_are_compared_only_in_the_same_setup():
    conditions = ["no_trace", "correct_trace", "incorrect_trace"]
    outcomes = _outcomes(
        "Qwen/Qwen3-1.7B", {"no_trace": 0.58, "correct_trace": 0.545, "incorrect_trace": 0.2}, n=1000
    )
    predictions = pd.DataFrame(
        {
            "student": "Qwen/Qwen3-1.7B",
            "condition": "correct_trace",
            "seed": 0,
            "answer_correct": outcomes.query("condition == 'correct_trace'")["value"].astype(bool).to_numpy(),
            "trace_correct": np.random.default_rng(1).random(1000) < 0.5,
        }
    ).assign(class_correct=lambda f: f["trace_correct"], retrieval_exact=lambda f: f["trace_correct"])
    table = compare_with_reference(
        load_reference(),
        _facts("cotempqa", conditions, 5000, 1000),
        outcomes,
        contingency(predictions, n_resamples=200),
        n_resamples=300,
    )
    rows = table[table["kind"] == "published"].set_index("id")
    assert rows.loc["bhambri.cotempqa.qwen1.7b.no_trace", "verdict"] == "replicated"
    assert rows.loc["bhambri.cotempqa.qwen1.7b.incorrect_trace", "verdict"] == "not replicated"
    assert rows.loc["bhambri.cotempqa.qwen1.7b.p_answer_given_trace_right", "verdict"] in {
        "replicated",
        "not replicated",
    }
    other_student = rows.loc["bhambri.cotempqa.llama1b.no_trace"]
    assert (
        other_student["verdict"] == "not comparable" and "student Qwen/Qwen3-1.7B" in other_student["reason"]
    )
    assert other_student["estimate"] == pytest.approx(100 * 0.58, abs=3)  # shown beside the paper's, unjudged
    assert "dataset cotempqa (paper: babi)" in rows.loc["bhambri.babi.qwen1.7b.no_trace", "reason"]
    correlation = table.set_index("id").loc["bhambri.trace_answer_correlation_is_low"]
    assert correlation["verdict"] == "replicated"  # independent trace and answer: phi near 0


def _matrix_predictions(student, right_right, right_wrong, wrong_right, wrong_wrong):
    """Greedy predictions of one correct_trace cell with the given 2x2 counts (trace x answer)."""
    cells = [(True, True)] * right_right + [(True, False)] * right_wrong
    cells += [(False, True)] * wrong_right + [(False, False)] * wrong_wrong
    trace, answer = (np.array(column) for column in zip(*cells, strict=True))
    return pd.DataFrame(
        {
            "student": student,
            "condition": "correct_trace",
            "seed": 0,
            "answer_correct": answer,
            "trace_correct": trace,
            "class_correct": trace,
            "retrieval_exact": trace,
        }
    )


def test_a_joint_share_is_compared_with_the_joint_share_and_a_conditional_with_the_conditional():
    """The authors' CoTempQA matrix for Qwen3-1.7B (261, 195, 248, 245): v1's 57.2 % is the conditional
    P(answer | trace right) = 261/456, v2's 28 % the joint share 261/949."""
    student = "Qwen/Qwen3-1.7B"
    predictions = _matrix_predictions(student, 261, 195, 248, 245)
    outcomes = accuracy_outcomes({"correct_trace": predictions["answer_correct"]}, 0, student)
    reference = load_reference()
    table = compare_with_reference(
        reference,
        _facts("cotempqa", ["correct_trace"], 5000, 949),
        outcomes,
        contingency(predictions, n_resamples=200),
        n_resamples=200,
    ).set_index("id")
    joint = table.loc["bhambri.cotempqa.qwen1.7b.p_trace_right_and_answer_right"]
    assert joint["estimate"] == pytest.approx(100 * 261 / 949) and joint["paper"] == 28
    assert joint["verdict"] == "replicated" and joint["claim"].endswith("on cotempqa (v2)")
    conditional = table.loc["bhambri.cotempqa.qwen1.7b.p_answer_given_trace_right"]
    assert conditional["estimate"] == pytest.approx(100 * 261 / 456)
    assert conditional["verdict"] == "replicated"
    assert table.loc["bhambri.cotempqa.qwen1.7b.p_answer_given_trace_wrong", "verdict"] == "replicated"
    # the conditional's value published as a joint share is judged against the joint share, and fails
    v2 = next(p for p in reference.published if p.id == joint.name)
    misread = reference.model_copy(update={"published": [v2.model_copy(update={"value": 57.2})]})
    row = (
        compare_with_reference(
            misread,
            _facts("cotempqa", ["correct_trace"], 5000, 949),
            outcomes,
            contingency(predictions, n_resamples=200),
            n_resamples=200,
        )
        .set_index("id")
        .loc[v2.id]
    )
    assert row["verdict"] == "not replicated" and row["estimate"] == pytest.approx(100 * 261 / 949)
    assert "is not within ±3 of 57.2" in row["reason"]


def test_published_table_names_each_numbers_paper_version():
    table = published_table(load_reference()).set_index("id")
    assert table.loc["bhambri.cotempqa.qwen1.7b.p_answer_given_trace_right", "version"] == "v1"
    assert table.loc["bhambri.cotempqa.qwen1.7b.p_trace_right_and_answer_right", "version"] == "v2"
    assert "261 of 949" in table.loc["bhambri.cotempqa.qwen1.7b.p_trace_right_and_answer_right", "note"]
    marco = table[table["dataset"] == "msmarco"]
    assert (marco["version"] == "repository").all()
    assert marco["source"].str.contains(r"results/Marcoqa/.+ \(commit [0-9a-f]{40}\)").all()
    assert table["version"].isna().sum() == (~table["study"].eq("bhambri2025")).sum()


@pytest.mark.parametrize(
    ("incorrect_counts", "thin"),
    [
        ((1, 2, 150, 147), "it rests on 3 right and 297 wrong traces (fewer than 20 right)"),
        ((40, 20, 120, 120), ""),
    ],
)
def test_a_verdict_about_traces_says_when_it_rests_on_fewer_than_20_right_or_wrong_traces(
    incorrect_counts, thin
):
    student = "s"
    correct = _matrix_predictions(student, 120, 60, 10, 8)  # 18 wrong traces
    incorrect = _matrix_predictions(student, *incorrect_counts).assign(condition="incorrect_trace")
    predictions = pd.concat([correct, incorrect], ignore_index=True)
    outcomes = pd.concat(
        [
            accuracy_outcomes({"correct_trace": correct["answer_correct"]}, 0, student),
            accuracy_outcomes({"incorrect_trace": incorrect["answer_correct"]}, 0, student),
        ],
        ignore_index=True,
    )
    table = compare_with_reference(
        load_reference(),
        _facts("babi", ["correct_trace", "incorrect_trace"], 1000, 300),
        outcomes,
        contingency(predictions, n_resamples=200),
        n_resamples=200,
    ).set_index("id")
    phi = table.loc["bhambri.trace_answer_correlation_is_low", "reason"]
    assert phi.endswith(
        "; it rests on 180 right and 18 wrong traces (fewer than 20 wrong): too few to be evidence either way"
    )
    wrote_wrong = table.loc["bhambri.incorrect_trace_students_write_wrong_traces"]
    assert wrote_wrong["verdict"] != "not comparable"
    assert (thin in wrote_wrong["reason"]) if thin else "rests on" not in wrote_wrong["reason"]
