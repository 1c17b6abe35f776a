"""The per-dataset decomposers: CoTempQA's time-span rule, OpenBookQA's relations and book distractors,
BM25, MS MARCO rows (hub shape and the offline sample), and disjoint train/eval items from one split."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from kdlib.data import load_train_eval
from kdlib.data.msmarco_sample import NO_ANSWER, sample_rows
from kdlib.data.openbook import OpenBook, fact_relation
from kdlib.data.registry import load_items
from kdlib.data.retrieval import BM25Index
from kdlib.data.temporal import date_span, parse_fact, supporting_facts
from tests.helpers import DATA_DIR, needs_data

# --- CoTempQA ------------------------------------------------------------------------------------------


def test_date_spans_follow_the_precision_written():
    assert date_span("2019") == (dt.date(2019, 1, 1), dt.date(2019, 12, 31))
    assert date_span("February, 2020") == (dt.date(2020, 2, 1), dt.date(2020, 2, 29))
    assert date_span("March 11, 2019") == (dt.date(2019, 3, 11), dt.date(2019, 3, 11))
    with pytest.raises(ValueError, match="not a CoTempQA date"):
        date_span("spring 2019")


def test_facts_parse_into_subject_object_and_span():
    fact = parse_fact("Jan Trøjborg works for NKT from March 25, 2010 to May 6, 2012.")
    assert (fact.subject, fact.object) == ("Jan Trøjborg", "NKT")
    assert (fact.start, fact.end) == (dt.date(2010, 3, 25), dt.date(2012, 5, 6))
    assert parse_fact("Jan Trøjborg likes NKT.") is None


OVERLAP_FACTS = [
    "Jan Trøjborg worked for Federal Reserve Bank of New York in 2002.",
    "Jan Trøjborg holds the position of mayor from January 1, 2007 to May 6, 2012.",
    "Jan Trøjborg works for Billund Airport from January 2, 2007 to December 3, 2010.",
    "Jan Trøjborg works for NKT from March 25, 2010 to May 6, 2012.",
    "Jan Trøjborg works for NKT in 2001.",
]
OVERLAP_QUESTION = (
    "While Jan Trøjborg was working for Billund Airport, which employer did Jan Trøjborg work for during "
    "the same time span?"
)


def test_support_is_the_anchor_and_the_cotemporal_answer_fact():
    # Not the mayor position (co-temporal but no answer), not NKT in 2001 (names the answer, wrong time).
    assert supporting_facts(OVERLAP_QUESTION, OVERLAP_FACTS, ["NKT"]) == [2, 3]


def test_the_rule_declines_when_no_fact_meets_the_anchor():
    assert supporting_facts(OVERLAP_QUESTION, OVERLAP_FACTS, ["Federal Reserve Bank of New York"]) is None
    no_anchor = OVERLAP_QUESTION.replace("Billund Airport", "Lego")
    assert supporting_facts(no_anchor, OVERLAP_FACTS, ["NKT"]) is None


@needs_data("cotempqa")
def test_the_time_span_rule_covers_almost_all_of_cotempqa():
    items = load_items("cotempqa", "test", data_dir=DATA_DIR)
    sources = [item.gold_sources["facts"] for item in items]
    assert sources.count("rule") >= 0.99 * len(items)
    # every rule-found support includes a fact naming each answer
    for item in items:
        if item.gold_sources["facts"] == "rule":
            support = " ".join(item.context[i] for i in item.supporting_facts)
            assert all(answer in support for answer in item.metadata["answers"]), item.id


# --- OpenBookQA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "relation"),
    [
        ("pushing an object requires force", "requirement"),
        ("if a weed is pulled then that weed is destroyed", "cause-effect"),
        ("a radiator is a source of heat", "source"),
        ("sleet is made of ice", "part-whole"),
        ("a pulley is used to lift a flag on a flagpole", "use"),
        ("tearing means changing a whole into pieces", "definition"),
        ("the earth has more mass than the moon", "comparison"),
        ("bluebirds live in grassy spaces", "location"),
        ("chickens cluck", "other"),
    ],
)
def test_fact_relations(fact, relation):
    assert fact_relation(fact) == relation


BOOK = OpenBook(
    [
        "the sun is the source of energy for physical cycles on Earth",
        "plants need sunlight to grow",
        "the sun is a star",
        "a magnet attracts iron",
        "The sun is the source of energy for physical cycles on Earth.",
    ]
)


def test_book_context_holds_the_gold_fact_once_among_ranked_distractors():
    gold = "the sun is the source of energy for physical cycles on Earth"
    asked = ("obqa-x", "The sun is responsible for", ["plants growing", "magnets"], "plants growing", gold)
    context, position = BOOK.context(*asked, k=2)
    assert context[position] == gold
    assert len(context) == 3 and sum("source of energy" in fact for fact in context) == 1
    assert BOOK.context(*asked, k=2) == (context, position)


def test_book_silver_fact_is_the_top_hit_for_question_and_answer():
    context, position = BOOK.context(
        "obqa-y", "What do plants need", ["sunlight", "iron"], "sunlight", None, k=1
    )
    assert context[position] == "plants need sunlight to grow"
    with pytest.raises(ValueError, match="obqa-z"):
        BOOK.context("obqa-z", "zebra", ["quokka"], "quokka", None, k=1)


def test_bm25_ranks_by_shared_stemmed_words_and_honours_exclusions():
    index = BM25Index(["the cat sat", "dogs bark loudly", "a dog barked at the cat"])
    assert index.top("barking dog", 3) == [1, 2]
    assert index.top("barking dog", 3, exclude=[1]) == [2]
    assert index.top("zebra", 3) == [] and index.top("the", 3) == []
    with pytest.raises(ValueError, match="non-empty corpus"):
        BM25Index([])


@needs_data("openbookqa")
def test_openbook_distractors_option_is_checked():
    with pytest.raises(ValueError, match="distractors"):
        load_items("openbookqa", "dev", data_dir=DATA_DIR, distractors=-1)


# --- MS MARCO ------------------------------------------------------------------------------------------


def test_msmarco_sample_rows_have_the_hub_shape_and_are_deterministic():
    rows = sample_rows(50, seed=0, split="train")
    assert rows == sample_rows(50, seed=0, split="train") != sample_rows(50, seed=1, split="train")
    assert set(rows[0]) == {"answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers"}
    assert set(rows[0]["passages"]) == {"is_selected", "passage_text", "url"}
    unanswerable = [r for r in rows if r["answers"] == [NO_ANSWER]]
    assert 0 < len(unanswerable) < len(rows) / 2
    assert all(sum(r["passages"]["is_selected"]) == 0 for r in unanswerable)
    train_queries = {r["query"] for r in rows}
    assert train_queries.isdisjoint(r["query"] for r in sample_rows(50, seed=0, split="dev"))


def test_msmarco_sample_items_decompose_into_query_type_and_selected_passages():
    items = load_items("msmarco-sample", "train", rows=20)
    assert len(items) == 20 and {i.question_type for i in items} <= {
        "description",
        "numeric",
        "entity",
        "location",
        "person",
    }
    for item in items:
        if item.answer == NO_ANSWER:
            assert item.supporting_facts == []
        else:
            [selected] = item.supporting_facts
            assert item.answer.lower() in item.context[selected].lower()
    by_answerability = load_items("msmarco-sample", "train", rows=20, classify="answerability")
    assert {i.question_type for i in by_answerability} == {"answerable", "unanswerable"}


def _hub_row(selected: list[int], answers: list[str]) -> dict:
    return {
        "answers": answers,
        "passages": {
            "is_selected": selected,
            "passage_text": ["Paris is the capital of France.", "Lyon is a city in France."],
            "url": ["u1", "u2"],
        },
        "query": "what is the capital of france",
        "query_id": 7,
        "query_type": "LOCATION",
        "wellFormedAnswers": [],
    }


def test_msmarco_local_rows_with_and_without_selected_passages(tmp_path):
    rows = [_hub_row([0, 0], ["Paris"]), _hub_row([0, 1], ["Lyon"]), _hub_row([0, 0], [NO_ANSWER])]
    (tmp_path / "msmarco").mkdir()
    (tmp_path / "msmarco" / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    silver, gold, unanswerable = load_items("msmarco", "dev", data_dir=tmp_path, source="local")
    assert silver.supporting_facts == [0] and silver.gold_sources["facts"] == "bm25"
    assert gold.supporting_facts == [1] and gold.gold_sources["facts"] == "annotation"
    assert unanswerable.supporting_facts == [] and unanswerable.answer == NO_ANSWER
    assert gold.question_type == "location" and gold.id == "msmarco-7"


def test_msmarco_bad_selection_flags_name_the_file_and_line(tmp_path):
    (tmp_path / "msmarco").mkdir()
    (tmp_path / "msmarco" / "dev.jsonl").write_text(json.dumps(_hub_row([0], ["Paris"])))
    with pytest.raises(ValueError, match=r"dev.jsonl line 1: key 'passages.is_selected'"):
        load_items("msmarco", "dev", data_dir=tmp_path, source="local")


# --- one split for training and evaluation -------------------------------------------------------------


@needs_data("cotempqa")
def test_train_and_eval_items_from_one_split_never_overlap():
    train, held_out = load_train_eval(
        "cotempqa", "test", "test", 40, 20, seed=0, data_dir=str(DATA_DIR), options={}
    )
    assert len(train) == 40 and len(held_out) == 20
    assert not {i.id for i in train} & {i.id for i in held_out}


def test_train_and_eval_from_two_splits_are_separate_samples():
    train, held_out = load_train_eval(
        "msmarco-sample", "train", "dev", 8, 4, seed=0, data_dir=None, options={}
    )
    assert {i.split for i in train} == {"train"} and {i.split for i in held_out} == {"dev"}


def test_check_traces_command_prints_statistics_and_verdicts(capsys):
    from kdlib.cli import main

    assert (
        main(["check-traces", "msmarco-sample", "dev", "--format", "plain", "--options", '{"rows": 30}']) == 0
    )
    printed = capsys.readouterr().out
    assert "gold_is_whole_context" in printed and "0 verdicts that do not name exactly" in printed
    assert main(["check-traces", "msmarco-sample", "dev", "--options", "{rows: 30}"]) == 2
    assert "--options is not JSON" in capsys.readouterr().err


def test_msmarco_hub_path_asks_for_v2_1_and_maps_dev_to_validation(monkeypatch):
    """No network here: datasets.load_dataset is stubbed, so this checks the hub id, config and split
    names, and that hub rows go through the same converter as local rows."""
    import datasets

    asked = []

    def load_dataset(dataset_id, config=None, split=None, **kwargs):
        asked.append((dataset_id, config, split))
        return [_hub_row([0, 1], ["Lyon"])]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    [item] = load_items("msmarco", "dev", source="hub")
    assert asked == [("microsoft/ms_marco", "v2.1", "validation")]
    assert (
        item.supporting_facts == [1]
        and item.metadata["source_file"] == "hub:microsoft/ms_marco[v2.1]:validation"
    )
