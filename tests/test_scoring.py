"""Label-first scoring against lm-evaluation-harness, batch-size independence and acc/acc_norm."""

import numpy as np
import pytest

from kdlib.evaluation.scoring import choice_requests, score_choices
from kdlib.likelihood import loglikelihoods
from kdlib.models import load_model
from kdlib.traces.decomposition import answer_opening


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-t5"])
def tiny(request):
    return load_model(request.param, seed=0)


def test_answer_opening_is_what_targets_put_before_the_answer():
    assert answer_opening("tagged") == "<answer>" and answer_opening("plain") == "Answer: "


@pytest.mark.parametrize("fmt", ["tagged", "plain"])
def test_loglikelihoods_and_accuracies_follow_lm_evaluation_harness(tiny, generated_items, fmt):
    """Same model, same (context, continuation) requests: lm-eval's HFLM gives the same summed
    log-probabilities and greedy flags, so acc (argmax) and acc_norm (argmax of logprob / characters,
    as in lm-eval's multiple_choice process_results) agree item by item."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    items = generated_items[:6]
    requests = [r for item in items for r in choice_requests(model, tokenizer, "no_trace", fmt, item)]
    backend = "seq2seq" if model.config.is_encoder_decoder else "causal"
    harness = HFLM(pretrained=model, tokenizer=tokenizer, backend=backend, batch_size=5)
    expected = harness.loglikelihood(
        [Instance("loglikelihood", {}, request, i) for i, request in enumerate(requests)]
    )
    ours = loglikelihoods(model, tokenizer, requests, batch_size=5)
    assert [o.logprob for o in ours] == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert [o.is_greedy for o in ours] == [e[1] for e in expected]
    scored = score_choices(model, tokenizer, "no_trace", fmt, items, batch_size=5)
    start = 0
    for item, row in zip(items, scored.itertuples(), strict=True):
        lls = np.array([e[0] for e in expected[start : start + len(item.choices)]])
        start += len(item.choices)
        lengths = np.array([float(len(c)) for c in item.choices])
        assert row.acc == (np.argmax(lls) == item.answer_index)
        assert row.acc_norm == (np.argmax(lls / lengths) == item.answer_index)


def test_scores_do_not_depend_on_batch_size(tiny, generated_items):
    model, tokenizer = tiny
    items = generated_items[:7]
    one = score_choices(model, tokenizer, "rationale_after_label", "tagged", items, batch_size=1)
    many = score_choices(model, tokenizer, "rationale_after_label", "tagged", items, batch_size=9)
    assert one["predicted_index"].tolist() == many["predicted_index"].tolist()
    np.testing.assert_allclose(
        np.concatenate(one["choice_logprobs"].tolist()),
        np.concatenate(many["choice_logprobs"].tolist()),
        atol=1e-4,
    )


def test_items_without_choices_are_an_error(tiny, generated_items):
    model, tokenizer = tiny
    open_item = generated_items[0].__class__(**{**generated_items[0].__dict__, "choices": []})
    with pytest.raises(ValueError, match=f"item {open_item.id} has none"):
        score_choices(model, tokenizer, "no_trace", "tagged", [open_item], batch_size=2)
