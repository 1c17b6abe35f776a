import random

import pytest
import torch

from kdlib.decomposition import decompose, steps_by_item
from kdlib.models import chat_prompt, load_model
from kdlib.training import (
    CONDITIONS,
    IGNORE_INDEX,
    add_lora,
    build_examples,
    collate,
    length_grouped_batches,
    student_question,
    train,
)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=0)


@pytest.fixture(scope="module")
def steps(generated_items):
    return steps_by_item(decompose(generated_items, "tagged", ["both"], seed=0))


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_prompt_tokens_are_masked_and_target_tokens_are_not(tiny, generated_items, steps, condition):
    _, tokenizer = tiny
    examples = build_examples(
        tokenizer,
        generated_items,
        steps,
        condition,
        fmt="tagged",
        incorrect_perturbation="both",
        max_length=2048,
    )
    assert len(examples) == len(generated_items)
    for item, example in zip(generated_items, examples, strict=True):
        prompt = chat_prompt(tokenizer, student_question(item))
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        target = example.labels[n_prompt:]
        assert target == example.input_ids[n_prompt:] and IGNORE_INDEX not in target
        assert target[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(target[:-1])
        assert text.endswith(f"<answer>{item.answer}</answer>")
        assert ("<think>" in text) == (condition != "no_trace")


def _loss(model, examples, pad_id):
    batch = collate(examples, pad_id)
    with torch.no_grad():
        return model(**batch).loss.item()


def _first_example(tokenizer, items, steps):
    (example,) = build_examples(
        tokenizer,
        items[:1],
        steps,
        "correct_trace",
        fmt="tagged",
        incorrect_perturbation="both",
        max_length=2048,
    )
    return example


def test_loss_is_the_mean_over_target_tokens_only(tiny, generated_items, steps):
    model, tokenizer = tiny
    example = _first_example(tokenizer, generated_items, steps)
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    targets = torch.tensor(example.labels[1:])
    keep = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep]).item()
    assert _loss(model, [example], tokenizer.pad_token_id) == pytest.approx(manual, rel=1e-5)


def test_loss_changes_only_when_target_tokens_change(tiny, generated_items, steps):
    model, tokenizer = tiny
    example = _first_example(tokenizer, generated_items, steps)
    base = _loss(model, [example], tokenizer.pad_token_id)
    n_prompt = example.labels.count(IGNORE_INDEX)
    # Right padding (to a longer batch neighbour) adds only masked positions: the loss is unchanged.
    longer = type(example)("x", example.input_ids + [5] * 30, example.labels + [IGNORE_INDEX] * 30)
    padded = collate([example, longer], tokenizer.pad_token_id)
    assert padded["labels"][0, len(example.labels) :].eq(IGNORE_INDEX).all()
    with torch.no_grad():
        padded_loss = model(**{k: v[:1] for k, v in padded.items()}).loss.item()
    assert padded_loss == pytest.approx(base, rel=1e-5)
    # Changing the label of a target token changes the loss ...
    changed = list(example.labels)
    changed[n_prompt + 1] = (changed[n_prompt + 1] + 1) % 256
    assert _loss(
        model, [type(example)("x", example.input_ids, changed)], tokenizer.pad_token_id
    ) != pytest.approx(base)
    # ... while prompt positions carry no label at all, so no prompt label can enter the loss.
    assert all(label == IGNORE_INDEX for label in example.labels[:n_prompt])


def test_length_grouped_batches_cover_every_example_once():
    lengths = [random.Random(i).randint(5, 50) for i in range(37)]
    batches = length_grouped_batches(lengths, 4, random.Random(0))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(37))
    assert all(len(b) <= 4 for b in batches)


def test_lora_training_lowers_the_loss_and_trains_only_the_adapter(generated_items, steps):
    model, tokenizer = load_model("tiny-llama", seed=0)
    model = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = build_examples(
        tokenizer,
        generated_items[:8],
        steps,
        "no_trace",
        fmt="tagged",
        incorrect_perturbation="both",
        max_length=2048,
    )
    log = train(
        model,
        tokenizer,
        examples,
        epochs=6,
        batch_size=4,
        grad_accum=2,
        learning_rate=1e-2,
        bf16=False,
        seed=0,
    )
    assert len(log) == 6 and log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert log["target_tokens"].iloc[-1] == 6 * sum(e.n_target_tokens for e in examples)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_too_long_example_is_an_error_naming_the_item(tiny, generated_items, steps):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match=generated_items[0].id):
        build_examples(
            tokenizer,
            generated_items[:1],
            steps,
            "no_trace",
            fmt="tagged",
            incorrect_perturbation="both",
            max_length=10,
        )
