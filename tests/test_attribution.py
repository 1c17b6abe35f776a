"""Integrated gradients over rationale tokens, word aggregation, and the key-token loop into 03."""

import pytest

from kdlib import io
from kdlib.models import load_model
from kdlib.teacher.rationales import rule_traces
from kdlib.training.attribution import integrated_gradients, word_attributions
from kdlib.training.conditions import read_key_words


def test_word_attributions_sum_tokens_into_whitespace_words():
    rationale = "Mary went home."
    # tokens of "Q: Mary went home." from character 3: "Ma", "ry", " went", " ", "ho", "me."
    offsets = [(3, 5), (5, 7), (7, 12), (12, 13), (13, 15), (15, 18)]
    assert word_attributions(rationale, 3, offsets, [1.0, 2.0, -0.5, 0.5, 0.25, -0.25]) == [
        (0, "Mary", 3.0),
        (1, "went", -0.5),
        (2, "home.", 0.5),
    ]


@pytest.fixture(scope="module")
def attributions(generated_items):
    model, tokenizer = load_model("tiny-llama", seed=0)
    items = generated_items[:3]
    rationales = dict(zip(*rule_traces(items)[["item_id", "rationale"]].T.values, strict=True))
    words, tokens = integrated_gradients(
        model, tokenizer, "rationale_after_label", "tagged", items, rationales, n_steps=64
    )
    return model, tokenizer, items, rationales, words, tokens


def test_every_rationale_word_gets_an_attribution(attributions):
    _, _, items, rationales, words, tokens = attributions
    for item in items:
        rows = words[words["item_id"] == item.id]
        assert rows["word"].tolist() == rationales[item.id].split()
        assert rows["word_index"].tolist() == list(range(len(rows)))
        assert rows["attribution"].abs().sum() > 0
    assert words.groupby("item_id")["attribution"].sum().to_numpy() == pytest.approx(
        tokens.groupby("item_id")["attribution"].sum().to_numpy(), abs=1e-5
    )


def test_attributions_are_complete_against_the_answer_logprob(attributions):
    """IG completeness: the rationale tokens' attributions add up (to the convergence delta) to
    log P(answer | rationale) - log P(answer | rationale tokens padded)."""
    model, tokenizer, items, rationales, words, tokens = attributions
    totals = tokens.groupby("item_id", sort=False)["attribution"].sum()
    deltas = words.groupby("item_id", sort=False)["convergence_delta"].first()
    for item_id in totals.index:
        assert abs(deltas[item_id]) < 0.05 * max(1.0, abs(totals[item_id]))


def test_key_words_round_trip_into_the_training_condition(attributions, tmp_path):
    _, _, items, rationales, words, _ = attributions
    path = io.write_parquet(tmp_path / "attributions.parquet", words)
    key_words = read_key_words(path, top_k=2, fraction=None)
    for item in items:
        assert len(key_words[item.id]) == 2
        assert all(word in rationales[item.id].split() for word in key_words[item.id])
        top = words[words["item_id"] == item.id].sort_values("attribution", key=abs, ascending=False).head(2)
        assert set(key_words[item.id]) == set(top["word"])


def test_encoder_decoder_students_are_refused(generated_items):
    model, tokenizer = load_model("tiny-t5", seed=0)
    with pytest.raises(ValueError, match="causal student"):
        integrated_gradients(model, tokenizer, "rationale_after_label", "tagged", generated_items[:1], {})
