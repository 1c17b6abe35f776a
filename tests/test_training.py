"""Tokenisation, target-only loss, batching, the training loop and its checkpoints, on tiny models of both
families (causal Llama, encoder-decoder T5)."""

import random

import pytest
import torch

from kdlib.config import LoraParams, SftParams
from kdlib.models import byte_tokenizer, count_parameters, encode_prompt, load_model, student_prompt
from kdlib.progress import PROGRESS_ENV
from kdlib.teacher.rationales import rule_traces
from kdlib.traces.decomposition import decompose, steps_by_item
from kdlib.training.conditions import (
    TRANSFORMS,
    ItemTraces,
    TransformSettings,
    condition_examples,
    student_filler,
)
from kdlib.training.grid import add_lora, prepare_student
from kdlib.training.loop import (
    IGNORE_INDEX,
    Checkpoint,
    TrainSettings,
    collate,
    encode_example,
    length_grouped_batches,
    target_logits,
    train,
    training_flops,
    weighted_loss_sum,
)

FAMILIES = ["tiny-llama", "tiny-t5"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, tokenizer = load_model(request.param, seed=0)
    return model, tokenizer


def item_traces(items):
    steps = steps_by_item(decompose(items, "tagged", ["both"], seed=0))
    rationales = rule_traces(items).set_index("item_id")["rationale"]
    return {
        item.id: ItemTraces(
            rationale=rationales[item.id],
            steps=steps[item.id],
            counterfactuals=((item.choices[0], "A reason for it."),),
            key_words=tuple(rationales[item.id].split()[:2]),
        )
        for item in items
    }


@pytest.fixture(scope="module")
def traces(generated_items):
    return item_traces(generated_items)


def texts(transform, items, traces, tokenizer=None):
    settings = TransformSettings(
        fmt="tagged",
        seed=0,
        random_vocabulary=("a", "b"),
        alpha=0.5,
        beta=2.0,
        filler=student_filler(tokenizer or byte_tokenizer()),
    )
    examples, _ = condition_examples(transform, items, traces, settings)
    return examples


def test_tiny_t5_is_an_encoder_decoder_of_known_size():
    model, _ = load_model("tiny-t5", seed=0)
    assert model.config.is_encoder_decoder and count_parameters(model) == 181_504


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_prompt_tokens_carry_no_label_for_every_condition_and_family(
    tiny, generated_items, traces, transform
):
    model, tokenizer = tiny
    for text in texts(transform, generated_items[:4], traces, tokenizer):
        example = encode_example(model, tokenizer, text, max_length=4096)
        prompt_ids = encode_prompt(model, tokenizer, student_prompt(model, tokenizer, text.prompt))
        target_ids = tokenizer(text.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if model.config.is_encoder_decoder:
            assert example.input_ids == prompt_ids and example.labels == target_ids
        else:
            n = len(prompt_ids)
            assert example.labels[:n] == [IGNORE_INDEX] * n
            assert example.labels[n:] == example.input_ids[n:] == target_ids
        assert example.weight == text.weight


def test_placeholder_learns_the_label_and_its_filler_as_many_tokens_as_the_rationale(
    tiny, generated_items, traces
):
    """Against rationale_after_label: the same prompt (no label on it) and as many learnt tokens, the label
    and EOS alike and the rationale's tokens replaced by filler tokens."""
    model, tokenizer = tiny
    filler = student_filler(tokenizer)
    items = generated_items[:4]
    for placeholder, rationale in zip(
        texts("placeholder_after_label", items, traces, tokenizer),
        texts("rationale_after_label", items, traces, tokenizer),
        strict=True,
    ):
        ours, theirs = (encode_example(model, tokenizer, t, 4096) for t in (placeholder, rationale))
        learnt = [label for label in ours.labels if label != IGNORE_INDEX]
        assert ours.n_target_tokens == theirs.n_target_tokens and len(ours.labels) == len(theirs.labels)
        n_filler = learnt.count(filler.token_id)
        prompt = ours.input_ids if model.config.is_encoder_decoder else ours.input_ids[: -len(learnt)]
        assert n_filler >= 5 and filler.token_id not in prompt
        differ = [i for i, (a, b) in enumerate(zip(ours.labels, theirs.labels, strict=True)) if a != b]
        assert len(differ) <= n_filler and all(ours.labels[i] == filler.token_id for i in differ)
        assert learnt[-1] == tokenizer.eos_token_id


def _loss(model, batch):
    logits, labels, weights = target_logits(model, batch)
    return weighted_loss_sum(logits, labels, weights) / (labels != IGNORE_INDEX).sum()


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_loss_depends_only_on_target_positions(tiny, generated_items, traces, transform):
    """The gradient of the training loss w.r.t. every logit is zero off the target positions, nonzero on
    them, and the training loss (logits at target positions only) equals the loss of the full logits."""
    model, tokenizer = tiny
    examples = [
        encode_example(model, tokenizer, t, 4096)
        for t in texts(transform, generated_items[:3], traces, tokenizer)
    ]
    batch = collate(examples, tokenizer.pad_token_id)
    labels, weights = batch["labels"], batch["weights"]
    if model.config.is_encoder_decoder:
        full = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels),
        ).logits
        predicted, predicted_weights, predicting = labels, weights, full
    else:
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        predicted, predicted_weights, predicting = labels[:, 1:], weights[:, 1:], full[:, :-1]
    full.retain_grad()
    reference = (
        weighted_loss_sum(predicting, predicted, predicted_weights) / (predicted != IGNORE_INDEX).sum()
    )
    reference.backward()
    is_target = predicted != IGNORE_INDEX
    gradient = full.grad[:, : predicted.shape[1]].abs().sum(-1)
    assert gradient[~is_target].eq(0).all() and gradient[is_target].gt(0).all()
    if not model.config.is_encoder_decoder:
        assert full.grad[:, -1].eq(0).all()  # the last position predicts nothing
    assert _loss(model, batch).item() == pytest.approx(reference.item(), rel=1e-5)
    # A changed target token changes the loss.
    changed = examples[0]
    labels_changed = list(changed.labels)
    position = next(i for i, label in enumerate(labels_changed) if label != IGNORE_INDEX)
    labels_changed[position] = (labels_changed[position] + 1) % 200
    altered = collate([type(changed)("x", "t", changed.input_ids, labels_changed), *examples[1:]], 0)
    assert _loss(model, altered).item() != _loss(model, batch).item()


def test_padding_adds_nothing_to_the_loss(tiny, generated_items, traces):
    model, tokenizer = tiny
    short, long = sorted(
        (encode_example(model, tokenizer, t, 4096) for t in texts("no_trace", generated_items[:6], traces)),
        key=lambda e: e.length,
    )[::5]
    alone = _loss(model, collate([short], tokenizer.pad_token_id))
    padded = collate([short, long], tokenizer.pad_token_id)
    one_row = {k: v[:1] for k, v in padded.items()}
    assert padded["input_ids"].shape[1] > len(short.input_ids) or padded["labels"].shape[1] > len(
        short.labels
    )
    assert _loss(model, one_row).item() == pytest.approx(alone.item(), rel=1e-5)


def test_example_weights_scale_their_tokens(tiny, generated_items, traces):
    model, tokenizer = tiny
    example = encode_example(model, tokenizer, texts("no_trace", generated_items[:1], traces)[0], 4096)
    heavy = type(example)("x", "t", example.input_ids, example.labels, weight=3.0)
    light = _loss(model, collate([example], 0))
    assert _loss(model, collate([heavy], 0)).item() == pytest.approx(3 * light.item(), rel=1e-5)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [random.Random(i).randint(5, 50) for i in range(37)]
    batches = length_grouped_batches(lengths, 4, random.Random(0))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(37))
    assert all(len(b) <= 4 for b in batches)


def _examples(model, tokenizer, items, traces, transform="correct_trace"):
    return [encode_example(model, tokenizer, t, 4096) for t in texts(transform, items, traces)]


def _settings(**changes):
    base = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-2, "bf16": False, "seed": 0}
    return TrainSettings(**{**base, **changes})


NO_DROPOUT = LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def test_gradient_accumulation_matches_the_large_batch(generated_items, traces):
    """One step over 4 examples: batch 4, or 2 micro-batches of 2, give the same update (the loss is
    normalised over the whole accumulation group, not averaged per micro-batch)."""
    trained = []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        model, tokenizer = load_model("tiny-llama", seed=0)
        model = add_lora(model, NO_DROPOUT, seed=0)
        examples = _examples(model, tokenizer, generated_items[:4], traces)
        train(model, examples, _settings(batch_size=batch_size, grad_accum=grad_accum), pad_token_id=0)
        trained.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, value in trained[0].items():
        torch.testing.assert_close(trained[1][name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("student", FAMILIES)
def test_lora_training_lowers_the_loss_and_trains_only_the_adapter(student, generated_items, traces):
    model, tokenizer = load_model(student, seed=0)
    target_modules = ["q", "v"] if student == "tiny-t5" else ["q_proj", "v_proj"]
    model = add_lora(model, NO_DROPOUT.model_copy(update={"target_modules": target_modules}), seed=0)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = _examples(model, tokenizer, generated_items[:8], traces, "multitask")
    log = train(model, examples, _settings(epochs=6, grad_accum=2), pad_token_id=tokenizer.pad_token_id)
    assert len(log) == 6 * 2 and log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert log["target_tokens"].iloc[-1] == 6 * sum(e.n_target_tokens for e in examples)
    assert (log["tokens"] <= log["padded_tokens"]).all()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_training_bar_redraws_only_at_its_interval_under_kdlib_run(
    generated_items, traces, monkeypatch, capsys
):
    """Text bars (kdlib run's kernels) redraw at most every $KDLIB_PROGRESS_SECONDS: the per-step loss
    must not force a redraw, or the log gets a line per step."""
    monkeypatch.setenv(PROGRESS_ENV, "1000")
    model, tokenizer = load_model("tiny-llama", seed=0)
    examples = _examples(model, tokenizer, generated_items[:8], traces)
    train(model, examples, _settings(epochs=3), pad_token_id=tokenizer.pad_token_id, desc="steps")
    frames = capsys.readouterr().err.replace("\n", "\r").split("\r")
    assert [frame.split("|")[0] for frame in frames if frame.startswith("steps")] == [
        "steps:   0%",
        "steps: 100%",
    ]


@pytest.mark.parametrize("finetune", ["full", "lora", "qlora"])
def test_finetune_methods_train_the_right_parameters(finetune, generated_items, traces):
    sft = SftParams(finetune=finetune, lora=NO_DROPOUT)
    model, tokenizer = prepare_student("tiny-llama", sft, device=torch.device("cpu"), seed=0, bf16=False)
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    if finetune == "full":
        assert trainable == total == 90_688
    else:
        # r=4 on q_proj (64 -> 64) and v_proj (64 -> 32) in 2 layers: 2 x (4*64 + 64*4 + 4*64 + 32*4)
        assert trainable == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4) == 1_792
    if finetune == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    log = train(model, _examples(model, tokenizer, generated_items[:4], traces), _settings(), pad_token_id=0)
    assert len(log) == 1 and log["loss"].notna().all()
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.float(), before[n])
    ]
    # full: every weight moves; LoRA: one step moves lora_B only (lora_A's gradient is 0 while lora_B is 0)
    expected = sorted(before) if finetune == "full" else sorted(n for n in before if ".lora_B." in n)
    assert sorted(changed) == expected and len(expected) == (20 if finetune == "full" else 4)


def test_interrupted_training_resumes_to_the_same_result(tmp_path, generated_items, traces):
    def fresh():
        model, tokenizer = load_model("tiny-llama", seed=0)
        return add_lora(
            model, LoraParams(r=4, alpha=8, dropout=0.1, target_modules=["q_proj"]), seed=0
        ), tokenizer

    settings = _settings(epochs=3, batch_size=4, checkpoint_every=2)
    model, tokenizer = fresh()
    examples = _examples(model, tokenizer, generated_items[:12], traces)
    straight = train(model, examples, settings, pad_token_id=0)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def interrupt(row):
        if row["step"] == 5:
            raise KeyboardInterrupt

    checkpoint = Checkpoint(tmp_path / "checkpoint", fingerprint="run-a")
    model, _ = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(model, examples, settings, pad_token_id=0, checkpoint=checkpoint, on_step=interrupt)
    model, _ = fresh()
    resumed = train(model, examples, settings, pad_token_id=0, checkpoint=checkpoint)
    assert len(resumed) == len(straight) == 9
    assert resumed["loss"].tolist() == pytest.approx(straight["loss"].tolist(), rel=1e-5)
    for name, value in model.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(value, expected[name])
    # A checkpoint of another run is ignored.
    model, _ = fresh()
    assert Checkpoint(tmp_path / "checkpoint", fingerprint="run-b").load(model, None, None) == (0, [])


def test_compiled_forward_trains_like_eager(generated_items, traces):
    losses = []
    for compile_forward in (False, True):
        model, tokenizer = load_model("tiny-llama", seed=0)
        model = add_lora(model, NO_DROPOUT, seed=0)
        examples = _examples(model, tokenizer, generated_items[:8], traces)
        log = train(model, examples, _settings(epochs=2, compile=compile_forward), pad_token_id=0)
        losses.append(log["loss"].tolist())
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_too_long_example_is_an_error_naming_the_item(generated_items, traces):
    model, tokenizer = load_model("tiny-llama", seed=0)
    text = texts("no_trace", generated_items[:1], traces)[0]
    with pytest.raises(ValueError, match=f"item {generated_items[0].id} .*sft.max_length=10"):
        encode_example(model, tokenizer, text, max_length=10)


def test_training_flops_follow_the_palm_accounting():
    model, _ = load_model("tiny-llama", seed=0)
    embedding = 260 * 64  # tied with the LM head
    body = count_parameters(model) - embedding
    assert body == 2 * (64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert (
        training_flops(model, seq_len=10, n_predicted=3)
        == 10 * (6 * body + 12 * 2 * 64 * 10) + 3 * 6 * 64 * 260
    )


def test_training_flops_count_frozen_weights_at_four_and_trained_ones_at_six():
    """Under LoRA the frozen base gets no weight gradient: 4 FLOPs per frozen weight and token, 6 per
    adapter weight; the tied, frozen LM head is 4 x hidden x vocab per predicted position."""
    base, _ = load_model("tiny-llama", seed=0)
    body = count_parameters(base) - 260 * 64
    model = add_lora(base, LoraParams(r=4, alpha=8, dropout=0.0, target_modules="all-linear"), seed=0)
    adapter = count_parameters(model, trainable_only=True)
    assert adapter == 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))  # layers x r x (in + out)
    assert (
        training_flops(model, seq_len=10, n_predicted=3)
        == 10 * (4 * body + 6 * adapter + 12 * 2 * 64 * 10) + 3 * 4 * 64 * 260
    )
