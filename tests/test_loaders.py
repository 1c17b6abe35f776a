"""Dataset loaders: small slices of the real data in the shared data folder, and every error path.

No test reaches the Hugging Face hub: each reader module's `hub_records` is replaced by a stub that raises.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kdlib.data import commonsenseqa, cotempqa, gsm8k, msmarco, openbookqa, strategyqa
from kdlib.data.registry import DATASET_NAMES, load_items
from tests.helpers import DATA_DIR, needs_data


class HubReached(Exception):
    pass


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    def refuse(dataset_id, split, **kwargs):
        raise HubReached(dataset_id)

    for reader in (commonsenseqa, openbookqa, cotempqa, strategyqa, gsm8k, msmarco):
        monkeypatch.setattr(reader, "hub_records", refuse)


def local(name: str, split: str, **kwargs):
    return load_items(name, split, data_dir=DATA_DIR, source="local", **kwargs)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def csqa_row(answer_key: str = "A") -> dict:
    choices = [{"label": label, "text": text} for label, text in zip("AB", ("yes", "no"), strict=True)]
    return {
        "answerKey": answer_key,
        "id": "q1",
        "question": {"question_concept": "c", "choices": choices, "stem": "?"},
    }


def test_dataset_names():
    assert DATASET_NAMES == (
        "generated",
        "commonsenseqa",
        "openbookqa",
        "babi",
        "cotempqa",
        "strategyqa",
        "gsm8k",
        "msmarco",
        "msmarco-sample",
    )


# --- CommonsenseQA ---------------------------------------------------------------------------------------


@needs_data("commonsenseqa")
def test_csqa_counts_and_first_row():
    train = local("commonsenseqa", "train")
    assert len(train) == 9741
    assert len(local("commonsenseqa", "dev")) == 1221
    first = train[0]
    assert first.id == "csqa-075e483d21c29a511267ef62bedc0461"
    assert (first.dataset, first.split) == ("commonsenseqa", "train")
    assert first.question.startswith("The sanctions against the school were a punishing blow")
    assert first.choices == ["ignore", "enforce", "authoritarian", "yell at", "avoid"]
    assert first.answer == "ignore" and first.answer_index == 0
    assert first.context == []
    assert first.metadata == {
        "choice_labels": ["A", "B", "C", "D", "E"],
        "answer_label": "A",
        "question_concept": "punishing",
        "source_file": "commonsenseqa/train_rand_split.jsonl",
        "source_line": 1,
    }


@needs_data("commonsenseqa")
def test_csqa_duplicate_choice_texts_keep_the_gold_label():
    # Two choices read "impossibility"; the gold one is B, which answer_index (first match) cannot tell.
    item = next(i for i in local("commonsenseqa", "train") if i.id == "csqa-ff5297c09281d17f2dfcc9cac84d21dc")
    assert item.choices[:2] == ["impossibility", "impossibility"]
    assert item.metadata["answer_label"] == "B" and item.answer == "impossibility"


def test_csqa_test_split_is_refused():
    with pytest.raises(ValueError, match="has no answers"):
        load_items("commonsenseqa", "test", source="local")


# --- OpenBookQA ------------------------------------------------------------------------------------------


@needs_data("openbookqa")
def test_obqa_counts_and_first_row_with_fact():
    train = local("openbookqa", "train")
    assert [len(train), len(local("openbookqa", "dev")), len(local("openbookqa", "test"))] == [4957, 500, 500]
    first = train[0]
    assert first.id == "obqa-7-980"
    assert first.question == "The sun is responsible for"
    assert first.choices == [
        "puppies learning new tricks",
        "children growing up and getting old",
        "flowers wilting in a vase",
        "plants sprouting, blooming and wilting",
    ]
    assert first.answer == "plants sprouting, blooming and wilting"
    # The gold fact among 4 BM25-ranked open-book distractors; the class is the relation it states.
    [gold] = first.supporting_facts
    assert first.context[gold] == "the sun is the source of energy for physical cycles on Earth"
    assert len(first.context) == 5 and len(set(first.context)) == 5
    assert first.question_type == "source" and first.gold_sources == {"class": "rule", "facts": "annotation"}
    assert local("openbookqa", "train", limit=1, distractors=0)[0].context == [first.context[gold]]
    assert first.metadata["humanScore"] == 1.0 and first.metadata["clarity"] == 2.0
    assert first.metadata["choice_labels"] == ["A", "B", "C", "D"] and first.metadata["answer_label"] == "D"
    assert (
        first.metadata["source_file"]
        == "openbookqa/OpenBookQA-V1-Sep2018/Data/Additional/train_complete.jsonl"
    )


@needs_data("openbookqa")
def test_obqa_without_facts_reads_main():
    with_facts = local("openbookqa", "dev", limit=20)
    without = local("openbookqa", "dev", limit=20, with_facts=False)
    assert [i.id for i in without] == [i.id for i in with_facts]
    assert [(i.question, i.choices, i.answer) for i in without] == [
        (i.question, i.choices, i.answer) for i in with_facts
    ]
    assert without[0].metadata["source_file"] == "openbookqa/OpenBookQA-V1-Sep2018/Data/Main/dev.jsonl"
    # Without the gold fact, BM25's top book fact for question + answer is the silver supporting fact.
    assert all(len(i.supporting_facts) == 1 and i.gold_sources["facts"] == "bm25" for i in without)
    closed_book = local("openbookqa", "dev", limit=20, with_facts=False, distractors=0)
    assert all(i.context == [] and i.supporting_facts is None for i in closed_book)


@needs_data("commonsenseqa", "openbookqa")
@pytest.mark.parametrize(("name", "split"), [("commonsenseqa", "dev"), ("openbookqa", "train")])
def test_multiple_choice_answer_matches_its_label(name, split):
    for item in local(name, split, limit=300):
        labels = item.metadata["choice_labels"]
        assert labels == sorted(labels) and len(labels) == len(item.choices)
        assert item.choices[labels.index(item.metadata["answer_label"])] == item.answer


# --- bAbI ------------------------------------------------------------------------------------------------


@needs_data("babi")
def test_babi_task1_has_1000_questions():
    items = local("babi", "train", tasks=[1])
    assert len(items) == 1000
    assert items[0].id == "babi-qa1-train-0" and items[-1].id == "babi-qa1-train-999"
    assert items[0].question == "Where is Mary?" and items[0].answer == "bathroom"
    assert items[0].context == ["Mary moved to the bathroom.", "John went to the hallway."]
    assert items[0].question_type == "single-supporting-fact" and items[0].metadata["task"] == 1


@needs_data("babi")
def test_babi_two_supporting_facts_map_to_context_sentences():
    first, second = local("babi", "train", tasks=[2], limit=2)
    assert first.question == "Where is the football?" and first.answer == "garden"
    assert [first.context[i] for i in first.supporting_facts] == [
        "Mary got the football there.",
        "Mary went back to the garden.",
    ]
    # Line 14 cites ids "12 6"; the question on line 7 is not in the context, so id 12 is position 10.
    assert second.id == "babi-qa2-train-1" and second.metadata["source_line"] == 14
    assert len(second.context) == 12 and "Where is the football?" not in second.context
    assert second.supporting_facts == [10, 5]
    assert [second.context[i] for i in second.supporting_facts] == [
        "Mary dropped the football.",
        "Mary went back to the garden.",
    ]
    assert second.question_type == "two-supporting-facts"


@needs_data("babi", "cotempqa")
@pytest.mark.parametrize(("name", "options"), [("babi", {"tasks": [3]}), ("cotempqa", {})])
def test_max_context_keeps_the_supporting_facts_and_the_latest_other_statements(name, options):
    split = "train" if name == "babi" else "test"
    full = local(name, split, limit=300, **options)
    kept = local(name, split, limit=300, max_context=6, **options)
    assert [item.id for item in kept] == [item.id for item in full]
    cut = 0
    for whole, item in zip(full, kept, strict=True):
        support = set(whole.supporting_facts)
        others = [i for i in range(len(whole.context)) if i not in support]
        expected = sorted(support | set(others[len(others) - max(6 - len(support), 0) :]))
        assert item.context == [whole.context[i] for i in expected]
        assert [item.context[i] for i in item.supporting_facts] == [
            whole.context[i] for i in whole.supporting_facts
        ]
        assert (item.question, item.answer) == (whole.question, whole.answer)
        assert len(item.context) <= max(6, len(support))
        if len(whole.context) > 6:
            cut += 1
            assert item.metadata["context_kept"] == f"{len(item.context)}/{len(whole.context)}"
        else:
            assert item == whole
    assert cut > 100
    for bad in (-1, True, "6"):
        with pytest.raises(ValueError, match="option 'max_context' must be a non-negative int"):
            local(name, split, limit=1, max_context=bad, **options)


@needs_data("babi")
def test_babi_list_answers_are_kept_and_tasks_follow_the_given_order():
    path = local("babi", "test", tasks=[19], limit=1)[0]
    assert path.answer == "s,s" and path.question == "How do you go from the bathroom to the hallway?"
    assert [path.context[i] for i in path.supporting_facts] == [
        "The bathroom is north of the bedroom.",
        "The bedroom is north of the hallway.",
    ]
    items = local("babi", "train", tasks=[8, 3], limit=1001)
    assert [items[0].metadata["task"], items[-1].metadata["task"]] == [8, 3]
    assert all(0 <= i < len(item.context) for item in items for i in item.supporting_facts)


@needs_data("babi")
def test_babi_defaults_to_all_twenty_tasks():
    items = local("babi", "test", limit=1000 * 19 + 1)
    assert items[-1].metadata["task"] == 20 and items[-1].question_type == "agents-motivations"


@pytest.mark.parametrize("tasks", [[0], [21], [1, 1], [], "1", [True]])
def test_babi_rejects_bad_tasks(tasks):
    with pytest.raises(ValueError, match="option 'tasks'"):
        load_items("babi", "train", source="local", tasks=tasks)


# --- CoTempQA --------------------------------------------------------------------------------------------


@needs_data("cotempqa")
def test_cotempqa_counts_and_first_row():
    counts = {s: len(local("cotempqa", "test", subsets=[s])) for s in ("equal", "overlap", "mix")}
    assert counts == {"equal": 436, "overlap": 653, "mix": 563}
    everything = local("cotempqa", "test")
    if not (DATA_DIR / "cotempqa" / "during.json").is_file():
        assert len(everything) == 1652
        assert {i.question_type for i in everything} == {"equal", "overlap", "mix"}
    first = everything[0]
    assert first.id == "cotempqa-equal-0" and first.split == "test"
    assert first.answer == "Liberals" and first.metadata["answers"] == ["Liberals"]
    assert len(first.context) == 10 and first.metadata["triple_element"] == "S1_R1_O2"
    # The time-span rule: the anchor event's fact and the answer's co-temporal fact.
    assert first.supporting_facts == [5, 7] and first.gold_sources == {"class": "annotation", "facts": "rule"}
    assert first.context[5] == "Emma Carlsson Löfdahl is a member of the Liberals in March 11, 2019."
    assert (
        first.context[7]
        == "Emma Carlsson Löfdahl is a member of the independent politician in March 11, 2019."
    )
    assert first.metadata["source_file"] == "cotempqa/equal.json" and first.metadata["source_line"] == 1


@needs_data("cotempqa")
def test_cotempqa_supporting_facts_are_the_anchor_and_the_cotemporal_answer_facts():
    # The subject "Frederick III, Holy Roman Emperor" is in every fact; only the anchor (monarch of Italy)
    # and the three positions held at the same time count.
    mix = local("cotempqa", "test", subsets=["mix"])
    item = next(i for i in mix if i.id == "cotempqa-mix-96")
    assert item.metadata["answers"] == [
        "King of the Romans",
        "Holy Roman Emperor",
        "Apostolic King of Hungary",
    ]
    assert item.supporting_facts == [0, 3, 5, 9]
    # Answers may hold commas, so the joined answer string cannot be split back: use metadata["answers"].
    joined = next(i for i in mix if i.id == "cotempqa-mix-51")
    assert joined.metadata["answers"][0] == "European Commissioner for Research, Innovation and Science"
    assert joined.answer == ", ".join(joined.metadata["answers"])


def test_cotempqa_default_subsets_are_those_present(tmp_path):
    row = {
        "index": 7,
        "triple_element": "S1_R1_O2",
        "question": "q?",
        "facts": ["A is in B.", "C"],
        "answer": ["B"],
    }
    write_lines(tmp_path / "cotempqa" / "overlap.json", [json.dumps(row)])
    (item,) = load_items("cotempqa", "test", data_dir=tmp_path, source="local")
    assert (
        item.id == "cotempqa-overlap-7" and item.question_type == "overlap" and item.supporting_facts == [0]
    )
    with pytest.raises(FileNotFoundError, match="during.json"):
        load_items("cotempqa", "test", data_dir=tmp_path, source="local", subsets=["during"])


# --- StrategyQA ------------------------------------------------------------------------------------------


@needs_data("strategyqa")
def test_strategyqa_counts_and_first_row():
    train = local("strategyqa", "train")
    assert len(train) == 2061 and len(local("strategyqa", "dev")) == 229
    first = train[0]
    assert first.id == "strategyqa-2bc9c4f9c19c167187f2"
    assert first.question == "Are more people today related to Genghis Khan than Julius Caesar?"
    assert first.answer == "yes" and first.choices == ["yes", "no"]
    assert first.context[:2] == ["Julius Caesar had three children.", "Genghis Khan had sixteen children."]
    assert len(first.context) == 3 and first.supporting_facts == [0, 1, 2]
    assert first.metadata["decomposition"][0] == "How many kids did Julius Caesar have?"
    assert first.metadata["source_file"] == "strategyqa/train.json" and first.metadata["source_line"] == 2
    assert {i.answer for i in train} == {"yes", "no"}


# --- GSM8K -----------------------------------------------------------------------------------------------


@needs_data("gsm8k")
def test_gsm8k_counts_first_row_and_comma_answers():
    train = load_items("gsm8k", "train", data_dir=DATA_DIR)  # source="auto" with the files present: local
    assert len(train) == 7473 and len(local("gsm8k", "test")) == 1319
    first = train[0]
    assert first.id == "gsm8k-train-0" and first.answer == "72"
    assert first.question.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.metadata["solution"].endswith("#### 72") and first.metadata["source_line"] == 1
    assert train[345].answer == "1080" and train[345].metadata["solution"].endswith("#### 1,080")
    assert train[345].metadata["source_line"] == 346


@needs_data("gsm8k")
def test_limit_keeps_the_first_items():
    head = local("gsm8k", "test", limit=5)
    assert [i.id for i in head] == [f"gsm8k-test-{n}" for n in range(5)]
    assert local("gsm8k", "test", limit=0) == []


# --- Errors ----------------------------------------------------------------------------------------------


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_lines(
        tmp_path / "commonsenseqa" / "train_rand_split.jsonl", [json.dumps(csqa_row()), "{oops"]
    )
    with pytest.raises(ValueError, match="bad JSON") as error:
        load_items("commonsenseqa", "train", data_dir=tmp_path, source="local")
    assert f"{path} line 2" in str(error.value)


def test_answer_key_not_among_choices_names_file_line_and_key(tmp_path):
    path = write_lines(tmp_path / "commonsenseqa" / "dev_rand_split.jsonl", [json.dumps(csqa_row("Z"))])
    with pytest.raises(ValueError, match="answerKey") as error:
        load_items("commonsenseqa", "dev", data_dir=tmp_path, source="local")
    assert f"{path} line 1" in str(error.value) and "'Z'" in str(error.value)


def test_missing_key_names_file_line_and_key(tmp_path):
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}]
    path = write_lines(tmp_path / "gsm8k" / "test.jsonl", [json.dumps(row) for row in rows])
    with pytest.raises(ValueError, match="missing key 'answer'") as error:
        load_items("gsm8k", "test", data_dir=tmp_path, source="local")
    assert f"{path} line 2" in str(error.value)


def test_json_list_error_names_the_line_the_entry_starts_on(tmp_path):
    good = {"qid": "a", "question": "q?", "answer": True, "facts": ["f"], "decomposition": ["d"]}
    bad = {"qid": "b", "question": "q?", "answer": "yes", "facts": [], "decomposition": []}
    path = tmp_path / "strategyqa" / "dev.json"
    path.parent.mkdir()
    path.write_text(json.dumps([good, bad], indent=2), encoding="utf-8")
    second_entry_line = json.dumps([good, bad], indent=2).splitlines().index("  {", 2) + 1
    with pytest.raises(ValueError, match="key 'answer' should be bool") as error:
        load_items("strategyqa", "dev", data_dir=tmp_path, source="local")
    assert f"{path} line {second_entry_line}" in str(error.value)


@pytest.mark.parametrize(
    ("lines", "bad_line", "message"),
    [
        (["1 Mary moved to the bathroom.", "Where is Mary?\tbathroom\t1"], 2, "expected '<id> <sentence>'"),
        (["1 Mary moved to the bathroom.", "2 Where is Mary?\tbathroom"], 2, "3 tab-separated fields"),
        (["1 Mary moved to the bathroom.", "2 Where is Mary?\tbathroom\tone"], 2, "supporting fact ids"),
        (["1 Mary went home.", "2 Where is Mary?\thome\t1", "3 Who?\tMary\t2"], 3, "name no statement"),
        (["1 Mary moved to the bathroom.", "3 John went to the hallway."], 2, "does not follow"),
    ],
)
def test_unparseable_babi_line_names_file_and_line(tmp_path, lines, bad_line, message):
    path = write_lines(
        tmp_path / "babi" / "tasks_1-20_v1-2" / "en" / "qa1_single-supporting-fact_train.txt", lines
    )
    with pytest.raises(ValueError, match=message) as error:
        load_items("babi", "train", data_dir=tmp_path, source="local", tasks=[1])
    assert f"{path} line {bad_line}" in str(error.value)


@pytest.mark.parametrize(
    ("dataset", "split", "relative", "options"),
    [
        ("commonsenseqa", "train", "commonsenseqa/train_rand_split.jsonl", {}),
        ("strategyqa", "dev", "strategyqa/dev.json", {}),
        ("babi", "train", "babi/tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt", {"tasks": [1]}),
    ],
)
def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path, dataset, split, relative, options):
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_bytes(b"1 Mary went home.\n2 Caf\xe9 au lait.\n")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match="not valid UTF-8") as error:
        load_items(dataset, split, data_dir=tmp_path, source="local", **options)
    assert f"{path} line 2: not valid UTF-8 (byte 0xe9 at column 6)" in str(error.value)


def test_missing_file_names_path_and_how_to_point_at_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="KDLIB_DATA_DIR") as error:
        load_items("gsm8k", "train", data_dir=tmp_path, source="local")
    assert str(tmp_path / "gsm8k" / "train.jsonl") in str(error.value)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_items("gsm8k", "train", data_dir=tmp_path / "absent", source="local")


def test_auto_falls_back_to_the_hub_only_when_local_files_are_missing(tmp_path):
    with pytest.raises(HubReached, match="openai/gsm8k"):
        load_items("gsm8k", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="qa1_single-supporting-fact_train.txt"):
        load_items("babi", "train", data_dir=tmp_path, tasks=[1])


@pytest.mark.parametrize(
    ("name", "split", "kwargs", "message"),
    [
        (
            "squad",
            "train",
            {"source": "hub"},
            "unknown dataset 'squad'; valid names: generated, commonsenseqa, openbookqa",
        ),
        ("gsm8k", "dev", {}, "unknown split 'dev' for gsm8k; valid splits: train, test"),
        ("cotempqa", "train", {}, "valid splits: test"),
        ("babi", "train", {"subsets": ["equal"]}, "unknown option 'subsets' for babi; valid options: tasks"),
        ("gsm8k", "train", {"tasks": [1]}, "valid options: none"),
        ("cotempqa", "test", {"subsets": ["before"]}, "option 'subsets'"),
        ("openbookqa", "dev", {"with_facts": "yes"}, "option 'with_facts' must be True or False"),
        ("gsm8k", "train", {"source": "web"}, "unknown source 'web'; valid sources: auto, local, hub"),
        ("gsm8k", "train", {"limit": -1}, "limit must be None or a non-negative int"),
        ("babi", "train", {"source": "hub"}, "loading-script"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(name, split, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_items(name, split, **kwargs)
