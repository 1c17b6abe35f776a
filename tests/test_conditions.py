"""The condition transforms: what each puts in the target, and that every target reads back."""

import dataclasses

import pandas as pd
import pytest

from kdlib.models import byte_tokenizer, model_tokenizer
from kdlib.teacher.rationales import rule_traces, trace_row, traces_frame
from kdlib.traces.decomposition import decompose, normalise, parse_output, steps_by_item
from kdlib.training.conditions import (
    COUNTERFACTUAL,
    EXPLAIN,
    PREDICT,
    TRANSFORMS,
    ItemTraces,
    TransformSettings,
    condition_examples,
    evaluation_prompt,
    pick_counterfactuals,
    pick_rationales,
    read_key_words,
    student_filler,
    student_question,
)

BYTE_FILLER = student_filler(byte_tokenizer())


@pytest.fixture(scope="module")
def sources(generated_items):
    """Rule rationales, 02's steps, two counterfactual rationales per item and key words for every item."""
    rationales = rule_traces(generated_items)
    counterfactual_rows = [
        trace_row(
            item,
            source="llm",
            model="m",
            prompt_id="counterfactual/v1",
            recipe="counterfactual",
            rationale=f"One could argue for {choice}.",
            completion=f"One could argue for {choice}.",
            parsed_label=choice,
            label_source="conditioned",
            target_label=choice,
        )
        for item in generated_items
        for choice in [c for c in item.choices if c != item.answer][:2]
    ]
    traces = pd.concat([rationales, traces_frame(counterfactual_rows)], ignore_index=True)
    steps = steps_by_item(decompose(generated_items, "tagged", ["both"], seed=0))
    by_item = dict(zip(rationales["item_id"], rationales["rationale"], strict=True))
    counterfactuals = pick_counterfactuals(traces)
    return {
        item.id: ItemTraces(
            rationale=by_item[item.id],
            steps=steps[item.id],
            counterfactuals=counterfactuals[item.id],
            key_words=tuple(by_item[item.id].split()[:3]),
        )
        for item in generated_items
    }


def settings(fmt="tagged", seed=0, **changes):
    base = {"random_vocabulary": ("alpha", "beta", "gamma"), "filler": BYTE_FILLER}
    return TransformSettings(fmt=fmt, seed=seed, **{**base, **changes})


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_every_answering_target_reads_back_as_the_gold_answer(generated_items, sources, transform, fmt):
    examples, skipped = condition_examples(transform, generated_items, sources, settings(fmt))
    items = {item.id: item for item in generated_items}
    assert not skipped and {example.item_id for example in examples} == set(items)  # every item trains
    for example in examples:
        item = items[example.item_id]
        assert student_question(item) in example.prompt
        parsed = parse_output(example.target)
        if example.task == EXPLAIN:
            assert parsed.answer is None  # the [explain] task writes the rationale alone
        elif example.task == COUNTERFACTUAL:
            assert normalise(parsed.answer) != normalise(item.answer)
            assert f"Explain the answer: {parsed.answer}" in example.prompt
        else:
            assert normalise(parsed.answer) == normalise(item.answer), example.target


def test_wadhwa_placements_put_the_rationale_before_or_after_the_label(generated_items, sources):
    item = generated_items[0]
    rationale = sources[item.id].rationale
    (before,), _ = condition_examples("rationale_before_label", [item], sources, settings())
    (after,), _ = condition_examples("rationale_after_label", [item], sources, settings())
    assert before.target == f"<think>{rationale}</think><answer>{item.answer}</answer>"
    assert after.target == f"<answer>{item.answer}</answer><think>{rationale}</think>"
    (plain,), _ = condition_examples("rationale_after_label", [item], sources, settings("plain"))
    assert plain.target == f"Answer: {item.answer}\n{rationale}"


def _reasoning(example):
    return example.target.split("<think>")[1].removesuffix("</think>")


def test_shuffled_rationale_permutes_words_seeded_per_item(generated_items, sources):
    long_items = [item for item in generated_items if len(sources[item.id].rationale.split()) >= 8]
    examples, _ = condition_examples("shuffled_rationale_after_label", long_items, sources, settings())
    for item, example in zip(long_items, examples, strict=True):
        words = _reasoning(example).split()
        assert sorted(words) == sorted(sources[item.id].rationale.split())
    assert any(_reasoning(e) != sources[i.id].rationale for i, e in zip(long_items, examples, strict=True))
    reversed_order, _ = condition_examples(
        "shuffled_rationale_after_label", long_items[::-1], sources, settings()
    )
    assert {e.item_id: e.target for e in reversed_order} == {e.item_id: e.target for e in examples}
    other_seed, _ = condition_examples(
        "shuffled_rationale_after_label", long_items, sources, settings(seed=1)
    )
    assert [e.target for e in other_seed] != [e.target for e in examples]


def test_random_rationale_matches_length_and_draws_from_the_vocabulary(generated_items, sources):
    examples, _ = condition_examples("random_rationale_after_label", generated_items, sources, settings())
    for item, example in zip(generated_items, examples, strict=True):
        words = _reasoning(example).split()
        assert len(words) == len(sources[item.id].rationale.split())
        assert set(words) <= {"alpha", "beta", "gamma"}


def smollm2_tokenizer():
    """SmolLM2's tokenizer where this machine has it without the network (else the test is skipped)."""
    try:
        tokenizer = model_tokenizer("smollm2-135m-instruct")
    except FileNotFoundError:
        tokenizer = None
    if tokenizer is None:
        pytest.skip("SmolLM2's tokenizer is not available offline here")
    return tokenizer


TOKENIZERS = {"byte": byte_tokenizer, "smollm2": smollm2_tokenizer}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_the_filler_is_one_token_whose_copies_encode_token_by_token(name):
    tokenizer = TOKENIZERS[name]()
    filler = student_filler(tokenizer)
    assert filler.text == tokenizer.unk_token  # both have an unk token that is not EOS, BOS or pad
    assert filler.token_id not in {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id}
    for k in range(1, 41):
        assert tokenizer(filler.text * k, add_special_tokens=False)["input_ids"] == [filler.token_id] * k


def test_the_filler_falls_back_to_a_word_where_the_unk_token_is_reserved():
    tokenizer = byte_tokenizer()
    tokenizer.unk_token = tokenizer.eos_token
    filler = student_filler(tokenizer)
    assert filler.text == "x"  # " x" is two byte tokens
    assert filler.encode("x" * 7) == [filler.token_id] * 7


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_placeholder_puts_as_many_filler_tokens_after_the_label_as_the_rationale_has(
    generated_items, sources, name, fmt
):
    """The placeholder target is the label, then n filler tokens, where n is what the rationale adds to the
    rationale_after_label target: both targets have the same token count under the student's tokenizer."""
    tokenizer = TOKENIZERS[name]()
    filler = student_filler(tokenizer)
    with_filler = settings(fmt, filler=filler)
    placeholders, skipped = condition_examples(
        "placeholder_after_label", generated_items, sources, with_filler
    )
    after, _ = condition_examples("rationale_after_label", generated_items, sources, with_filler)
    assert not skipped and len(placeholders) == len(after) == len(generated_items)
    label_only, _ = condition_examples("no_trace", generated_items, sources, with_filler)
    for item, placeholder, rationale, label in zip(
        generated_items, placeholders, after, label_only, strict=True
    ):
        ids = filler.encode(placeholder.target)
        n = ids.count(filler.token_id)
        assert len(ids) == len(filler.encode(rationale.target)) and n >= 5
        assert placeholder.target.startswith(label.target)
        assert placeholder.target.replace(filler.text * n, sources[item.id].rationale) == rationale.target
        assert placeholder.prompt == rationale.prompt
        if name == "byte":  # one token per byte: n is the rationale's length in bytes
            assert n == len(sources[item.id].rationale.encode())


def test_placeholder_without_the_students_filler_is_an_error(generated_items, sources):
    with pytest.raises(ValueError, match="placeholder_after_label needs the student's filler"):
        condition_examples("placeholder_after_label", generated_items, sources, settings(filler=None))


def test_key_tokens_keep_top_attributed_words_in_rationale_order(tmp_path):
    attributions = pd.DataFrame(
        {
            "item_id": ["a"] * 5 + ["b"] * 2,
            "word_index": [0, 1, 2, 3, 4, 0, 1],
            "word": ["Mary", "went", "to", "the", "garden.", "John", "left."],
            "attribution": [0.9, -0.05, 0.01, -0.5, 0.7, 0.1, 0.2],
        }
    )
    path = tmp_path / "attributions.parquet"
    attributions.to_parquet(path)
    assert read_key_words(path, top_k=3, fraction=None) == {
        "a": ("Mary", "the", "garden."),
        "b": ("John", "left."),
    }
    assert read_key_words(path, top_k=None, fraction=0.4) == {"a": ("Mary", "garden."), "b": ("left.",)}
    attributions.drop(columns="attribution").to_parquet(path)
    with pytest.raises(ValueError, match=r"attributions.parquet: columns \['attribution'\] missing"):
        read_key_words(path, top_k=3, fraction=None)


def test_multitask_tags_and_weights(generated_items, sources):
    examples, _ = condition_examples("multitask", generated_items[:1], sources, settings(alpha=0.3, beta=0.7))
    predict, explain = examples
    assert (predict.task, predict.weight, explain.task, explain.weight) == (PREDICT, 0.3, EXPLAIN, 0.7)
    assert predict.prompt.startswith("[predict]\n") and explain.prompt.startswith("[explain]\n")
    assert explain.target == f"<think>{sources[generated_items[0].id].rationale}</think>"
    assert evaluation_prompt("multitask", generated_items[0]) == predict.prompt
    assert evaluation_prompt("no_trace", generated_items[0]) == student_question(generated_items[0])


def test_counterfactual_examples_argue_for_each_wrong_choice(generated_items, sources):
    item = generated_items[0]
    examples, _ = condition_examples("multitask_counterfactual", [item], sources, settings())
    assert [e.task for e in examples] == [PREDICT, EXPLAIN, COUNTERFACTUAL, COUNTERFACTUAL]
    for example, (choice, rationale) in zip(examples[2:], sources[item.id].counterfactuals, strict=True):
        assert example.target == f"<think>{rationale}</think><answer>{choice}</answer>"


def test_counterfactuals_per_item_draws_wrong_choices_per_seed(generated_items, sources):
    """Hendriks et al. train on one wrong-answer rationale per item: drawn per item and seed, repeatably."""
    item = generated_items[0]
    pairs = sources[item.id].counterfactuals
    drawn = {}
    for seed in range(8):
        examples, _ = condition_examples(
            "counterfactual", [item], sources, settings(seed=seed, counterfactuals_per_item=1)
        )
        assert [e.task for e in examples] == [PREDICT, COUNTERFACTUAL]
        again, _ = condition_examples(
            "counterfactual", [item], sources, settings(seed=seed, counterfactuals_per_item=1)
        )
        assert again == examples
        drawn[seed] = examples[1].target
    assert set(drawn.values()) == {f"<think>{r}</think><answer>{c}</answer>" for c, r in pairs}  # both drawn


def test_items_without_the_needed_trace_are_skipped_and_named(generated_items, sources):
    partial = dict(sources)
    first = generated_items[0].id
    partial[first] = dataclasses.replace(partial[first], rationale=None, steps={})
    for transform in ("rationale_after_label", "placeholder_after_label", "correct_trace"):
        examples, skipped = condition_examples(transform, generated_items, partial, settings())
        assert skipped == [first] and len(examples) == len(generated_items) - 1
    examples, skipped = condition_examples("no_trace", generated_items, partial, settings())
    assert not skipped and len(examples) == len(generated_items)


def test_pick_rationales_prefers_label_correct_rows(generated_items):
    item = generated_items[0]
    rows = [
        trace_row(
            item,
            source="llm",
            model="m",
            prompt_id="p",
            recipe="cot",
            rationale=text,
            completion=text,
            parsed_label=label,
            label_source="parsed",
            sample=sample,
        )
        for sample, (text, label) in enumerate([("wrong reasons", "nowhere"), ("right reasons", item.answer)])
    ]
    assert pick_rationales(traces_frame(rows), "cot") == {item.id: "right reasons"}
    assert pick_rationales(traces_frame(rows), "cot", source="rule") == {}


def test_unknown_transform_is_an_error(generated_items, sources):
    with pytest.raises(ValueError, match="unknown condition transform 'telepathy'"):
        condition_examples("telepathy", generated_items, sources, settings())
