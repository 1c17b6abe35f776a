from collections import Counter

import pytest

from kdlib.data.generated import QUESTION_TYPES, generate_items
from kdlib.data.schema import frame_to_items, items_to_frame


def test_generation_is_deterministic_and_splits_are_disjoint():
    assert generate_items(12, seed=5) == generate_items(12, seed=5)
    assert generate_items(12, seed=5) != generate_items(12, seed=6)
    train = {tuple(i.context) for i in generate_items(40, seed=5, split="train")}
    test = {tuple(i.context) for i in generate_items(40, seed=5, split="test")}
    assert not train & test


def test_question_types_are_balanced(generated_items):
    counts = Counter(item.question_type for item in generated_items)
    assert set(counts) == set(QUESTION_TYPES)
    assert len(set(counts.values())) == 1


def test_supporting_facts_entail_the_answer(generated_items):
    """Replaying the story from the gold facts alone gives the gold answer, for every type."""
    for item in generated_items:
        facts = [item.context[i] for i in item.supporting_facts]
        words = item.question.removesuffix("?").split()
        person = {"where_person": words[-1], "yes_no": words[1], "counting": words[-2]}.get(
            item.question_type
        )
        if item.question_type == "where_person":
            assert len(facts) == 1 and facts[0].startswith(person) and facts[0].endswith(f"{item.answer}.")
            later = item.context[item.supporting_facts[0] + 1 :]
            assert not any(f.startswith(person) and " to the " in f for f in later), "not the last move"
        elif item.question_type == "where_object":
            obj = item.question.removesuffix("?").split()[-1]
            (take,) = [f for f in facts if " to the " not in f]
            (move,) = [f for f in facts if " to the " in f]
            holder = take.split()[0]
            assert (
                take.endswith(f"the {obj}.") and move.startswith(holder) and move.endswith(f"{item.answer}.")
            )
        elif item.question_type == "yes_no":
            asked = item.question.removesuffix("?").split()[-1]
            assert item.answer == ("yes" if facts[0].endswith(f"the {asked}.") else "no")
        elif item.question_type == "counting":
            takes = [f for f in item.context if f.startswith(person) and " to the " not in f]
            assert sorted(facts) == sorted(takes)
            assert item.answer == ("none", "one", "two", "three", "four")[len(takes)]
        assert item.answer in item.choices


def test_items_round_trip_through_a_frame(generated_items):
    frame = items_to_frame(generated_items).assign(role="train")
    assert frame_to_items(frame) == generated_items
    assert frame_to_items(frame, role="eval") == []


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="telepathy"):
        generate_items(3, question_types=["telepathy"])


def test_load_split_names_a_bad_generated_option():
    from kdlib.data import load_split

    with pytest.raises(ValueError, match="dataset.options.*colour"):
        load_split("generated", "train", 4, seed=0, data_dir=None, options={"colour": "red"})
    assert len(load_split("generated", "train", 4, seed=0, data_dir=None, options={"max_events": 5})) == 4


def test_registered_like_the_read_datasets_but_kept_in_order():
    """The registry takes any split name for generated, and load_split keeps the items made from the run's
    seed in order (no seeded sample), as generate_items makes them."""
    from kdlib.data import load_split
    from kdlib.data.registry import check_split, load_items

    check_split("generated", "held-out")
    options = {"question_types": ["counting", "yes_no"], "max_events": 5}
    kept = load_split("generated", "held-out", 6, seed=3, data_dir=None, options=options)
    assert kept == generate_items(6, seed=3, split="held-out", **options)
    with pytest.raises(ValueError, match="min_events' of generated must be"):
        load_split("generated", "train", 4, seed=0, data_dir=None, options={"min_events": True})
    with pytest.raises(ValueError, match="made from the run's seed"):
        load_items("generated", "train")
