"""Logit and tuned lens: the output layer is the model, the lenses match the tuned-lens package, the tuned
lens fits held-out states better than the logit lens, and emergence layers."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kdlib.evaluation.lens import (
    TunedLens,
    Unembedding,
    emergence,
    final_norm,
    lens_ranks,
    lens_requests,
    lens_training_states,
    residual_forward,
    train_tuned_lens,
)
from kdlib.evaluation.scoring import choice_requests, score_choices
from kdlib.likelihood import loglikelihoods
from kdlib.models import load_model


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-t5"])
def tiny(request):
    return load_model(request.param, seed=0)


def _with_open_item(items):
    """The items, plus the first one asked as an open question (no choices)."""
    return [*items, dataclasses.replace(items[0], id=items[0].id + "-open", choices=[])]


def test_output_layer_is_the_model_and_untrained_tuned_lens_is_the_logit_lens(tiny, generated_items):
    model, tokenizer = tiny
    items = _with_open_item(generated_items[:4])
    lenses = {"logit": None, "tuned": TunedLens.for_model(model)}
    ranks = lens_ranks(model, tokenizer, "no_trace", "tagged", items, lenses, batch_size=3)
    n_layers = model.config.num_hidden_layers
    assert sorted(ranks["layer"].unique()) == list(range(n_layers + 1))
    assert len(ranks) == len(items) * 2 * (n_layers + 1)
    logit, tuned = (ranks[ranks["lens"] == name].reset_index(drop=True) for name in ("logit", "tuned"))
    pd.testing.assert_frame_equal(logit.drop(columns="lens"), tuned.drop(columns="lens"))

    output = logit[logit["layer"] == n_layers].set_index("item_id")
    assert np.allclose(output["kl_to_final"], 0.0, atol=1e-6)
    requests = [r for item in items for r in lens_requests(model, tokenizer, "no_trace", "tagged", item)]
    expected = iter(loglikelihoods(model, tokenizer, requests, batch_size=3))
    for item in items:
        answers = [next(expected).logprob for _ in item.choices or [item.answer]]
        gold = item.answer_index if item.choices else 0
        assert output.loc[item.id, "gold_logprob"] == pytest.approx(answers[gold], abs=1e-4)
    closed, open_item = items[:-1], items[-1]
    scored = score_choices(model, tokenizer, "no_trace", "tagged", closed, batch_size=3).set_index("item_id")
    assert output.loc[[item.id for item in closed], "gold_top"].tolist() == scored["acc"].tolist()
    assert output.loc[open_item.id, "gold_top"] == (output.loc[open_item.id, "gold_rank"] == 0)
    assert np.isnan(output.loc[open_item.id, "gold_choice_rank"])


def test_lens_ranks_do_not_depend_on_batch_size(tiny, generated_items):
    model, tokenizer = tiny
    items = _with_open_item(generated_items[:5])
    lenses = {"logit": None}
    one = lens_ranks(model, tokenizer, "rationale_after_label", "plain", items, lenses, batch_size=1)
    many = lens_ranks(model, tokenizer, "rationale_after_label", "plain", items, lenses, batch_size=8)
    pd.testing.assert_frame_equal(one, many, atol=1e-4)


def test_unembedding_reproduces_gemma3_logits_with_soft_cap():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=5.0,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    assert (
        sum(p.numel() for p in model.parameters()) == 93_568
    )  # 300x64 embedding (tied) + 2 x 37,152 per layer + 64 final norm
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    states, _ = residual_forward(model, input_ids=ids)
    assert states.shape == (1, 5, 3, 64)
    logits = Unembedding(model)(states[:, :, -1])
    assert logits.abs().max() <= 5.0
    torch.testing.assert_close(logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_lenses_match_the_tuned_lens_package(generated_items):
    """kdlib's logit lens and tuned lens (with the same translator weights) give the logits of
    tuned-lens 0.2.0's LogitLens and TunedLens on a Llama model, layer by layer."""
    import tuned_lens.nn as reference

    model, tokenizer = load_model("tiny-llama", seed=0)
    model.eval()
    context, answer = choice_requests(model, tokenizer, "no_trace", "tagged", generated_items[0])[0]
    ids = tokenizer(context + answer, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states, _ = residual_forward(model, input_ids=ids)
        ours = TunedLens.for_model(model)
        torch.manual_seed(1)
        for translator in ours.translators:
            nn.init.normal_(translator.weight, std=0.05)
            nn.init.normal_(translator.bias, std=0.05)
        theirs = reference.TunedLens.from_model(model)
        theirs.layer_translators.load_state_dict(ours.translators.state_dict())
        logit_lens, unembed = reference.LogitLens.from_model(model), Unembedding(model)
        flat = states[0]  # [T, L+1, D]
        translated = ours(flat)
        for layer in range(model.config.num_hidden_layers):
            torch.testing.assert_close(unembed(flat[:, layer]), logit_lens(flat[:, layer], layer))
            torch.testing.assert_close(unembed(translated[:, layer]), theirs(flat[:, layer], layer))


def test_tuned_lens_fits_held_out_states_better_than_the_logit_lens(generated_items):
    model, tokenizer = load_model("tiny-llama", seed=0)
    model.eval()
    train, held_out = generated_items[:12], generated_items[12:18]
    states = lens_training_states(model, tokenizer, "no_trace", "tagged", train, batch_size=4)
    assert states.ndim == 3 and states.shape[1:] == (3, 64)
    lens, history = train_tuned_lens(
        model, states, steps=60, positions_per_step=64, learning_rate=3e-3, seed=0
    )
    assert history["kl"].iloc[-5:].mean() < 0.5 * history["kl"].iloc[:5].mean()
    ranks = lens_ranks(
        model, tokenizer, "no_trace", "tagged", held_out, {"logit": None, "tuned": lens}, batch_size=4
    )
    kl = ranks[ranks["layer"] < 2].groupby("lens")["kl_to_final"].mean()
    assert kl["tuned"] < 0.5 * kl["logit"]


def test_emergence_is_the_first_layer_from_which_gold_stays_top():
    tops = {"a": [False, True, False, True, True], "b": [True] * 5, "c": [True, True, True, True, False]}
    ranks = pd.DataFrame(
        [
            {
                "cell": "x",
                "lens": "logit",
                "item_id": item,
                "layer": layer,
                "depth": layer / 4,
                "gold_top": top,
            }
            for item, flags in tops.items()
            for layer, top in enumerate(flags)
        ]
    ).sample(frac=1.0, random_state=0)
    found = emergence(ranks, ["cell", "lens"]).set_index("item_id")
    assert found.loc["a", "emergence_layer"] == 3 and found.loc["a", "emergence_depth"] == 0.75
    assert found.loc["b", "emergence_layer"] == 0
    assert np.isnan(found.loc["c", "emergence_layer"])


def test_unknown_architecture_is_a_clear_error():
    class NoNorm(nn.Module):
        def get_decoder(self):
            return nn.Module()

    with pytest.raises(ValueError, match="final norm of NoNorm"):
        final_norm(NoNorm())
