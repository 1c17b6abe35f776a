"""Reading answers from student outputs: choice text or letter, yes/no, numbers; unreadable is None."""

import pandas as pd
import pytest

from kdlib.data.schema import QAItem
from kdlib.evaluation.generation import (
    answer_is_correct,
    answer_text,
    answers_match,
    evaluate_outputs,
    read_answer,
    rescored,
)

CHOICES = QAItem("mc", "t", "test", "Where is it?", "kitchen", choices=["garden", "kitchen", "park"])
COUNTS = QAItem("count", "t", "test", "How many?", "two", choices=["none", "one", "two", "three"])
YES_NO = QAItem("yn", "t", "test", "Is it?", "no", choices=["yes", "no"])
NUMERIC = QAItem("num", "t", "test", "How much?", "1200")
OPEN = QAItem("open", "t", "test", "Who?", "The Liberals")
BISHOPS = ["titular bishop", "diocesan bishop"]
ANSWER_SET = QAItem(
    "cotempqa-equal-1", "cotempqa", "test", "Which post?", ", ".join(BISHOPS), metadata={"answers": BISHOPS}
)
CAMPUS = QAItem(
    "cotempqa-mix-2", "cotempqa", "test", "Which school?", "UC, Davis", metadata={"answers": ["UC, Davis"]}
)


@pytest.mark.parametrize(
    ("text", "item", "expected"),
    [
        ("kitchen", CHOICES, "kitchen"),
        ("  Kitchen. ", CHOICES, "kitchen"),
        ("B", CHOICES, "kitchen"),
        ("(B)", CHOICES, "kitchen"),
        ("B. kitchen", CHOICES, "kitchen"),
        ("(C) park", CHOICES, "park"),
        ("B. park", CHOICES, None),  # letter and text disagree
        ("D", CHOICES, None),  # no such letter
        ("it is in the kitchen", CHOICES, "kitchen"),
        ("kitchen or park", CHOICES, None),  # two choices named
        ("attic", CHOICES, None),
        ("2", COUNTS, "two"),
        ("three", COUNTS, "three"),
        ("No", YES_NO, "no"),
        ("no, it is not", YES_NO, "no"),
        ("The total is 1,200", NUMERIC, "1200"),
        ("roughly 3 then 1200.0", NUMERIC, "1200.0"),
        ("no number here", NUMERIC, None),
        ("the liberals", OPEN, "the liberals"),
        ("", OPEN, None),
        (None, CHOICES, None),
    ],
)
def test_read_answer(text, item, expected):
    assert read_answer(text, item) == expected


def test_answers_match_compares_numbers_by_value():
    assert answers_match("1200.0", "1200") and answers_match("2", "two") and not answers_match("12", "1200")
    assert answers_match("THE Liberals!", "the liberals")


def test_answer_text_reads_tags_lines_and_sentences():
    assert answer_text("<think>x</think><answer>park</answer>") == "park"
    assert answer_text("because\nAnswer: park") == "park"
    assert answer_text("So the answer is park.") == "park"
    assert answer_text("I am not sure") is None


def test_unreadable_answers_are_counted_apart_not_scored_wrong():
    cell = {"student": "s", "condition": "c", "seed": 0, "transform": "no_trace"}
    rows = evaluate_outputs(
        cell,
        [CHOICES, CHOICES, CHOICES],
        ["<answer>B</answer>", "<answer>attic</answer>", "nothing"],
    )
    assert rows["answer_parsed"].tolist() == [True, False, False]
    assert rows["answer_correct"].tolist() == [True, False, False]
    assert rows["read_answer"].iloc[0] == "kitchen" and rows["read_answer"].iloc[1:].isna().all()


@pytest.mark.parametrize(
    ("answer", "item", "right"),
    [
        ("titular bishop, diocesan bishop", ANSWER_SET, True),
        ("Diocesan Bishop and titular bishop.", ANSWER_SET, True),  # any order, case and punctuation
        ("titular bishop, titular bishop, diocesan bishop", ANSWER_SET, True),  # a repeat is one answer
        ("titular bishop", ANSWER_SET, False),  # one gold missing
        ("titular bishop, diocesan bishop, auxiliary bishop", ANSWER_SET, False),  # one answer too many
        ("bishop", ANSWER_SET, False),
        ("UC, Davis", CAMPUS, True),  # a comma inside the gold answer
        ("UC", CAMPUS, False),
        ("UC, Davis and Stanford", CAMPUS, False),
        ("the liberals", OPEN, True),  # other datasets: the normalised gold answer
        ("liberals", OPEN, False),
        (None, OPEN, False),
    ],
)
def test_an_answer_set_must_be_named_whole_in_any_order(answer, item, right):
    assert answer_is_correct(answer, item) is right


def test_reused_frames_are_scored_again_from_their_outputs():
    """A cell evaluated earlier is scored by today's rules: its stored answer_correct is not trusted."""
    cell = {"student": "s", "condition": "c", "seed": 0, "transform": "no_trace"}
    items, outputs = [ANSWER_SET, CHOICES], ["<answer>diocesan bishop, titular bishop</answer>", "park"]
    stale = evaluate_outputs(cell, items, outputs).assign(answer_correct=False)
    samples = pd.concat([stale.assign(sample=0), stale.assign(sample=1)], ignore_index=True)
    frames = rescored(cell, items, {"predictions": stale, "samples": samples, "explanations": None})
    assert frames["predictions"]["answer_correct"].tolist() == [True, False]
    assert frames["samples"]["answer_correct"].tolist() == [True, False, True, False]
    assert frames["samples"]["sample"].tolist() == [0, 0, 1, 1] and frames["explanations"] is None
