"""The trace formats, the perturbations and the verifier, on generated items and on every real dataset."""

import random

import pandas as pd
import pytest

from kdlib.data.generated import QUESTION_TYPES
from kdlib.data.registry import load_items
from kdlib.data.schema import QAItem
from kdlib.traces.decomposition import (
    EXPECTED_ERRORS,
    PERTURBATIONS,
    Steps,
    decompose,
    format_target,
    gold_steps,
    normalise,
    parse_output,
    perturb,
    perturbation_coverage,
    quoted_facts,
    score_trace,
    summarise_verification,
    trace_statistics,
    verify_decomposition,
)
from tests.helpers import DATA_DIR, needs_data


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
def test_traces_parse_back_into_their_steps(generated_items, fmt):
    for item in generated_items:
        gold = gold_steps(item)
        parsed = parse_output(format_target(gold, item, item.answer, fmt))
        assert parsed.question_type == gold.question_type
        assert quoted_facts(parsed.facts_text, item.context).context_facts == tuple(
            normalise(item.context[i]) for i in gold.fact_ids
        )
        assert parsed.answer == item.answer
        assert score_trace(parsed, item, gold)["trace_correct"]


def test_the_two_formats_look_as_documented():
    item = where_is_mary("t0", ["Mary went to the kitchen.", "Mary went to the garden."], [1])
    gold = gold_steps(item)
    assert format_target(gold, item, "garden", "tagged") == (
        "<think>The question type is: where_person. I need to use the following facts: "
        "Mary went to the garden.</think><answer>garden</answer>"
    )
    assert format_target(gold, item, "garden", "plain") == (
        "The question type is: where_person.\nI need to use the following facts: Mary went to the garden.\n"
        "Answer: garden"
    )


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
def test_every_perturbation_is_detected_and_blamed_on_its_step(generated_items, fmt):
    decomposed = decompose(generated_items, fmt, list(PERTURBATIONS), seed=0)
    assert set(decomposed["variant"]) == {"correct", *PERTURBATIONS}
    check = verify_decomposition(generated_items, decomposed, fmt)
    assert check["detected"].all()
    assert check[check["variant"] == "correct"]["trace_correct"].all()
    assert not check[check["variant"] != "correct"]["trace_correct"].any()
    blamed = check.groupby("variant")["errors"].unique().to_dict()
    assert blamed == {v: ["+".join(sorted(e)) or "none"] for v, e in EXPECTED_ERRORS.items()}


def where_is_mary(
    item_id: str, context: list[str], support: list[int], qtype: str = "where_person"
) -> QAItem:
    return QAItem(
        id=item_id,
        dataset="test",
        split="train",
        question="Where is Mary?",
        answer="garden",
        context=context,
        metadata={"question_type": qtype, "supporting_facts": support},
    )


ITEM = where_is_mary(
    "t1", ["Mary went to the kitchen.", "John went to the garden.", "Mary went to the garden."], [2]
)


def test_listing_every_context_fact_is_not_a_correct_retrieval():
    """Gold is only the supporting facts: a trace that copies the whole context must not pass.

    (Bhambri et al.'s public code counted every context fact as gold; this would catch that.)
    """
    copied_all = "<think>The question type is: where_person. I need to use the following facts: " + " ".join(
        ITEM.context
    )
    scores = score_trace(parse_output(copied_all + "</think><answer>garden</answer>"), ITEM, gold_steps(ITEM))
    assert scores["retrieval_recall"] == 1.0
    assert scores["retrieval_precision"] == pytest.approx(1 / 3)
    assert not scores["retrieval_exact"] and not scores["trace_correct"]


def test_hallucinated_fact_and_missing_steps_score_wrong():
    invented = (
        "<think>The question type is: where_person. "
        "I need to use the following facts: Mary went to the garden. Mary flew to Mars.</think>"
    )
    scores = score_trace(parse_output(invented + "<answer>Mars</answer>"), ITEM, gold_steps(ITEM))
    assert scores["retrieval_recall"] == 1.0 and scores["retrieval_precision"] == 0.5
    assert not scores["retrieval_exact"] and not scores["trace_correct"]
    bare = score_trace(parse_output("<answer>garden</answer>"), ITEM, gold_steps(ITEM))
    assert not bare["trace_parsed"] and not bare["class_correct"] and not bare["trace_correct"]


def test_quoting_ignores_case_and_punctuation_but_not_words():
    loose = "the question type is: WHERE_PERSON\nI need to use the following facts: mary went to the garden\n"
    assert score_trace(parse_output(loose + "Answer: garden"), ITEM, gold_steps(ITEM))["trace_correct"]
    wrong = loose.replace("the garden", "a garden")
    assert not score_trace(parse_output(wrong + "Answer: garden"), ITEM, gold_steps(ITEM))["retrieval_exact"]


def test_facts_with_inner_full_stops_and_without_a_final_one_are_matched():
    context = [
        "Neill Roberts plays for Durban City F.C. from 1977 to 1978.",
        "Bruce Grobbelaar plays for Durban City F.C. from 1977 to 1978.",
        "plants need sunlight",
    ]
    item = where_is_mary("t4", context, [0, 2], qtype="equal")
    gold = gold_steps(item)
    text = format_target(gold, item, "a", "tagged")
    assert "F.C. from 1977 to 1978. plants need sunlight.</think>" in text
    assert score_trace(parse_output(text), item, gold)["trace_correct"]


def test_order_and_repeats_of_the_gold_facts_matter():
    """Counting in bAbI: got, left, got is one apple; the trace must keep that sequence."""
    context = ["Mary got the apple.", "Mary left the apple.", "John went home.", "Mary got the apple."]
    item = where_is_mary("t5", context, [0, 1, 3], qtype="counting")
    gold = gold_steps(item)
    assert score_trace(parse_output(format_target(gold, item, "one", "tagged")), item, gold)["trace_correct"]
    dropped_repeat = format_target(Steps("counting", (0, 1)), item, "one", "tagged")
    scores = score_trace(parse_output(dropped_repeat), item, gold)
    assert scores["retrieval_exact"] and not scores["retrieval_ordered"] and not scores["trace_correct"]
    for seed in range(10):
        shuffled = perturb(gold, item, "shuffled", QUESTION_TYPES, random.Random(seed))
        texts = [context[i] for i in shuffled.fact_ids]
        assert sorted(texts) == sorted(context[i] for i in gold.fact_ids)
        assert texts != [context[i] for i in gold.fact_ids]


def test_shuffling_needs_two_distinct_facts_and_distractors_need_a_non_gold_fact():
    one_fact = perturb(gold_steps(ITEM), ITEM, "shuffled", QUESTION_TYPES, random.Random(0))
    all_gold = where_is_mary("t6", ["Mary went to the garden."], [0])
    no_distractor = perturb(gold_steps(all_gold), all_gold, "retrieval", QUESTION_TYPES, random.Random(0))
    assert one_fact is None and no_distractor is None


def test_repeated_sentence_never_becomes_a_distractor():
    item = where_is_mary(
        "t2", ["Mary went to the garden.", "John went to the hall.", "Mary went to the garden."], [2]
    )
    for seed in range(20):
        wrong = perturb(gold_steps(item), item, "retrieval", QUESTION_TYPES, random.Random(seed))
        assert wrong == Steps("where_person", (1,))


def test_gold_ids_outside_the_context_are_an_error():
    bad = where_is_mary("t3", ["x."], [4])
    with pytest.raises(ValueError, match="t3"):
        gold_steps(bad)


def test_an_item_without_gold_steps_names_the_item_and_the_datasets_that_have_them():
    closed_book = QAItem(id="csqa-1", dataset="commonsenseqa", split="train", question="q", answer="a")
    with pytest.raises(ValueError, match="csqa-1.*babi, cotempqa, openbookqa"):
        decompose([closed_book], "tagged", ["class"], seed=0)


def _real_datasets() -> dict[str, list[QAItem]]:
    return {
        "babi": load_items("babi", "test", data_dir=DATA_DIR),
        "cotempqa": load_items("cotempqa", "test", data_dir=DATA_DIR),
        "openbookqa": load_items("openbookqa", "test", data_dir=DATA_DIR),
        "openbookqa-silver": load_items("openbookqa", "dev", data_dir=DATA_DIR, with_facts=False),
        "msmarco-sample": load_items("msmarco-sample", "dev"),
    }


@pytest.fixture(scope="module")
def real_checks():
    checks = {}
    for name, items in _real_datasets().items():
        decomposed = decompose(items, "tagged", list(PERTURBATIONS), seed=0)
        checks[name] = (items, decomposed, verify_decomposition(items, decomposed, "tagged"))
    return checks


@needs_data("babi", "cotempqa", "openbookqa")
def test_verifier_passes_every_gold_trace_and_catches_every_perturbation_on_real_data(real_checks):
    """bAbI 1-20 (20,000 test questions), CoTempQA, OpenBookQA (gold and silver facts), MS MARCO sample."""
    for name, (_, decomposed, check) in real_checks.items():
        summary = summarise_verification(check)
        assert summary["detected"].eq(1.0).all(), (name, summary)
        assert check.loc[check["variant"] == "correct", "trace_correct"].all(), name
        coverage = perturbation_coverage(decomposed, list(PERTURBATIONS))
        assert (coverage[["class", "retrieval", "both"]] > 0.9).all().all(), (name, coverage)
    babi = real_checks["babi"][1]
    assert babi["question_type"].nunique() == 20 and (babi["variant"] == "correct").sum() == 20_000


@needs_data("babi", "cotempqa", "openbookqa")
def test_gold_facts_are_the_support_not_the_whole_context(real_checks):
    """If a loader or decomposer counted every context fact as gold (as Bhambri et al.'s public code does),
    gold would be the whole context for every item; here it is for very few, and a trace that copies the
    whole context fails wherever gold is a strict subset."""
    for name, (items, decomposed, _) in real_checks.items():
        stats = trace_statistics(decomposed).iloc[0]
        assert stats["gold_is_whole_context"] < 0.1, (name, stats)
        assert stats["gold_facts"] < stats["context_facts"] / 2, (name, stats)
        for item in items[:200]:
            gold = gold_steps(item)
            copied = "The question type is: x.\nI need to use the following facts: " + " ".join(item.context)
            scores = score_trace(parse_output(copied), item, gold)
            whole = {normalise(f) for f in item.context} == {
                normalise(item.context[i]) for i in gold.fact_ids
            }
            assert scores["retrieval_exact"] == whole, (name, item.id)


def test_plain_and_tagged_verdicts_agree(generated_items):
    verdicts = [
        verify_decomposition(
            generated_items, decompose(generated_items, fmt, list(PERTURBATIONS), seed=1), fmt
        )
        for fmt in ("tagged", "plain")
    ]
    pd.testing.assert_series_equal(verdicts[0]["errors"], verdicts[1]["errors"])


def test_a_dataset_without_gold_steps_gives_empty_tables():
    """CommonsenseQA has no class or supporting facts: notebook 02 decomposes none of its items, and every
    table it writes is empty with its columns, so a Wadhwa or Hendriks run passes through."""
    from kdlib.traces.decomposition import (
        DECOMPOSED_COLUMNS,
        VERIFIER_COLUMNS,
        example_traces,
        has_gold_steps,
        perturbation_coverage,
        summarise_verification,
        trace_statistics,
        verify_decomposition,
    )

    item = QAItem("csqa-1", "commonsenseqa", "train", "Where are cows?", "farm", choices=["farm", "sea"])
    assert not has_gold_steps(item)
    decomposed = decompose([], "tagged", ["class", "both"], seed=0)
    assert list(decomposed.columns) == DECOMPOSED_COLUMNS and decomposed.empty
    check = verify_decomposition([item], decomposed, "tagged")
    assert list(check.columns) == VERIFIER_COLUMNS and check["detected"].all()
    assert summarise_verification(check).empty and trace_statistics(decomposed).empty
    assert list(perturbation_coverage(decomposed, ["class", "both"]).columns) == ["class", "both"]
    assert example_traces(decomposed).empty
