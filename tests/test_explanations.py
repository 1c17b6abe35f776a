"""Explanation quality: what each condition explains, the judge rubric and its cache, rating sheets and
forms, their import with row-level errors, and judge-human agreement."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from kdlib.evaluation.explanations import (
    DIMENSIONS,
    SHEET_COLUMNS,
    agreement,
    explain_cell,
    explanation_prompt,
    explanation_text,
    judge_explanations,
    judge_messages,
    rating_form,
    rating_mass,
    rating_means,
    rating_sheet,
    read_judgement,
    read_rating,
    read_ratings,
    weighted_kappa,
)
from kdlib.models import load_model
from kdlib.teacher.backends import Backend, Decoding, TransformersBackend
from kdlib.teacher.cache import GenerationCache


class ScriptedJudge(Backend):
    """A judge that rates by explanation length (longer: higher), so ratings are known in advance. Asked
    for one dimension, it replies with that rating minus the dimension's position (at least 1)."""

    kind = "scripted"

    def identity(self):
        return {"kind": self.kind, "model": "scripted-judge"}

    def _stream(self, requests, decoding):
        for index, request in enumerate(requests):
            explanation = re.search(r"Explanation: (.*)\n\nRate", request.messages[-1][1], re.S).group(1)
            rating = min(5, 1 + len(explanation.split()) // 3)
            asked = re.search(r"Rate the explanation on (\w+) from", request.messages[-1][1])
            if asked:
                yield [(index, f"Rating: {max(1, rating - list(DIMENSIONS).index(asked.group(1)))}.")]
            else:
                yield [(index, "\n".join(f"{name.title()}: {rating}" for name in DIMENSIONS))]


def _explanations(items, texts):
    return pd.DataFrame(
        [
            {
                "student": "s",
                "condition": "multitask",
                "seed": 0,
                "transform": "multitask",
                "explanation_id": f"s/multitask/0/{item.id}",
                "item_id": item.id,
                "answer": item.answer,
                "explanation": text,
                "source": "explain task",
            }
            for item, text in zip(items, texts, strict=True)
        ]
    )


@pytest.mark.parametrize(
    ("output", "fmt", "expected"),
    [
        ("<think>Cats purr.</think><answer>cat</answer>", "tagged", "Cats purr."),
        ("<answer>cat</answer><think>Cats  purr.\n</think>", "tagged", "Cats purr."),
        ("<think>unclosed thought <answer>cat", "tagged", "unclosed thought"),
        ("<answer>cat</answer>", "tagged", None),
        ("Cats purr. <answer>cat</answer>", "tagged", "Cats purr."),
        ("Cats purr.\nAnswer: cat", "plain", "Cats purr."),
        ("Answer: cat\nCats purr.", "plain", "Cats purr."),
        ("Answer: cat", "plain", None),
    ],
)
def test_explanation_text(output, fmt, expected):
    assert explanation_text(output, fmt) == expected


def test_each_condition_is_asked_for_its_explanation_its_own_way(generated_items):
    item = generated_items[0]
    assert explanation_prompt("multitask", item, "x").startswith("[explain]\n")
    assert explanation_prompt("multitask_counterfactual", item, None).startswith("[explain]\n")
    assert explanation_prompt("counterfactual", item, "kitchen").startswith(
        "[counterfactual] Explain the answer: kitchen\n"
    )
    assert explanation_prompt("counterfactual", item, None) is None
    assert explanation_prompt("rationale_after_label", item, "x") is None


@pytest.mark.parametrize("transform", ["multitask", "counterfactual", "rationale_after_label"])
def test_explain_cell_asks_or_reads_explanations(generated_items, transform, monkeypatch):
    """Asked explanations go through the student's generate call (recorded here, since an untrained tiny
    model writes nothing readable); the others are read from the greedy outputs."""
    import kdlib.evaluation.explanations

    asked = []

    def generate(model, tokenizer, prompts, **settings):
        asked.extend(prompts)
        return [f"<think>reason {i}</think><answer>x</answer>" for i in range(len(prompts))]

    monkeypatch.setattr(kdlib.evaluation.explanations, "generate_texts", generate)
    model, tokenizer = load_model("tiny-llama", seed=0)
    items = generated_items[:3]
    cell = {"student": "tiny-llama", "condition": transform, "seed": 0, "transform": transform}
    predictions = pd.DataFrame(
        {
            "item_id": [item.id for item in items],
            "read_answer": [items[0].answer, None, items[2].choices[0]],
            "output": ["<answer>a</answer><think>first reason</think>", "<answer>?</answer>", "no tags here"],
        }
    )
    frame = explain_cell(
        model, tokenizer, cell, "tagged", items, predictions, max_new_tokens=6, batch_size=2, desc="t"
    )
    assert (frame["explanation_id"] == [f"tiny-llama/{transform}/0/{i}" for i in frame["item_id"]]).all()
    if transform == "rationale_after_label":  # read from the greedy outputs; the second has none
        assert not asked and frame["explanation"].tolist() == ["first reason", "no tags here"]
        assert set(frame["source"]) == {"greedy output"}
    elif transform == "counterfactual":  # item 1 has no readable answer to explain
        assert len(asked) == 2 and f"Explain the answer: {items[2].choices[0]}" in asked[1]
        assert frame["item_id"].tolist() == [items[0].id, items[2].id]
        assert frame["explanation"].tolist() == ["reason 0", "reason 1"]
        assert set(frame["source"]) == {"counterfactual task"}
    else:
        assert len(asked) == 3 and all("[explain]" in prompt for prompt in asked)
        assert set(frame["source"]) == {"explain task"} and frame["item_id"].tolist() == [i.id for i in items]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "plausibility: 4\nunderstandability: 5\ncompleteness: 3\nsatisfaction: 4\ncontrastiveness: 2",
            [4, 5, 3, 4, 2],
        ),
        ("Plausibility - 4. Understandability = 2; COMPLETENESS: 1", [4, 2, 1, math.nan, math.nan]),
        ("plausibility: 9\nunderstandability: 0\ncompleteness: five", [math.nan] * 5),
        ("", [math.nan] * 5),
        (
            "plausibility: 1-5\nunderstandability: 1 - 5\ncompleteness: 4/5\nsatisfaction: 3.",
            [math.nan, math.nan, 4, 3, math.nan],
        ),
        ("plausibility: 4.5\nunderstandability: 2", [math.nan, 2, math.nan, math.nan, math.nan]),
    ],
)
def test_read_judgement(reply, expected):
    np.testing.assert_equal(list(read_judgement(reply).values()), expected)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("4", 4),
        (" Rating: 3.\nThe explanation is short.", 3),
        ("4/5", 4),
        ("I would give it 2 out of 5", 2),
        ("1-5", math.nan),
        ("1 – 5: 4", math.nan),
        ("3.5", math.nan),
        ("0", math.nan),
        ("12", math.nan),
        ("five", math.nan),
        ("", math.nan),
    ],
)
def test_read_rating(reply, expected):
    np.testing.assert_equal(read_rating(reply), expected)


def test_judge_rubric_names_every_dimension_and_the_answer(generated_items):
    messages = judge_messages(generated_items[0], "kitchen", "Because.")
    text = messages[-1]["content"]
    assert all(f"{name}:" in text for name in DIMENSIONS) and "Answer: kitchen" in text
    assert "Explanation: Because." in text


def test_per_dimension_rubric_asks_one_dimension_for_one_number(generated_items):
    text = judge_messages(generated_items[0], "kitchen", "Because.", "contrastiveness")[-1]["content"]
    assert f"contrastiveness: {DIMENSIONS['contrastiveness']}" in text and "one whole number" in text
    assert not any(name in text for name in DIMENSIONS if name != "contrastiveness")
    assert "Answer: kitchen" in text and "Explanation: Because." in text


def test_judge_ratings_are_cached(tmp_path, generated_items):
    items = generated_items[:4]
    explained = _explanations(items, ["a", "one two three four", "a b c d e f g", "x " * 20])
    by_id = {item.id: item for item in items}
    judge = ScriptedJudge()
    with GenerationCache(tmp_path / "cache.sqlite") as cache:
        first = judge_explanations(explained, by_id, judge, cache, Decoding(max_new_tokens=48))
        again = judge_explanations(explained, by_id, judge, cache, Decoding(max_new_tokens=48))
    assert judge.calls == 4 and cache.stats.hits == 4
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 4 * len(DIMENSIONS) and set(first["rater"]) == {"judge:scripted-judge"}
    plausibility = first[first["dimension"] == "plausibility"]["rating"].tolist()
    assert plausibility == [1.0, 2.0, 3.0, 5.0]


def test_per_dimension_judge_asks_each_dimension_once(tmp_path, generated_items):
    items = generated_items[:2]
    explained = _explanations(items, ["a b c d e f g h i", "x " * 20])  # length ratings 4 and 5
    by_id = {item.id: item for item in items}
    judge = ScriptedJudge()
    with GenerationCache(tmp_path / "cache.sqlite") as cache:
        rated = judge_explanations(
            explained, by_id, judge, cache, Decoding(max_new_tokens=4), "per_dimension"
        )
        again = judge_explanations(
            explained, by_id, judge, cache, Decoding(max_new_tokens=4), "per_dimension"
        )
    assert judge.calls == 2 * len(DIMENSIONS) and cache.stats.hits == 2 * len(DIMENSIONS)
    pd.testing.assert_frame_equal(rated, again)
    wide = rated.pivot(index="explanation_id", columns="dimension", values="rating")[list(DIMENSIONS)]
    assert wide.to_numpy().tolist() == [[4, 3, 2, 1, 1], [5, 4, 3, 2, 1]]
    assert rated["judge_output"].tolist()[:3] == ["Rating: 4.", "Rating: 3.", "Rating: 2."]
    with pytest.raises(ValueError, match="unknown judge mode 'pairwise'"):
        judge_explanations(explained, by_id, judge, cache, Decoding(max_new_tokens=4), "pairwise")


def test_rating_probabilities_judge_rates_every_dimension(tmp_path, generated_items):
    items = generated_items[:3]
    explained = _explanations(items, ["short", "a longer reason", "x " * 12])
    by_id = {item.id: item for item in items}
    judge = TransformersBackend("tiny-llama", device="cpu", dtype="float32", batch_size=4)
    decoding = Decoding(max_new_tokens=4)
    with GenerationCache(tmp_path / "cache.sqlite") as cache:
        rated = judge_explanations(explained, by_id, judge, cache, decoding, "rating_probabilities")
        again = judge_explanations(explained, by_id, judge, cache, decoding, "rating_probabilities")
        with pytest.raises(ValueError, match="scripted backend cannot score reply choices"):
            judge_explanations(explained, by_id, ScriptedJudge(), cache, decoding, "rating_probabilities")
    assert judge.calls == 3 * len(DIMENSIONS) and cache.stats.hits == 3 * len(DIMENSIONS)
    pd.testing.assert_frame_equal(rated, again)
    assert len(rated) == 3 * len(DIMENSIONS) and rated["rating"].between(1, 5).all()
    first = json.loads(rated["judge_output"].iloc[0])
    assert list(first["probabilities"]) == ["1", "2", "3", "4", "5"]
    assert rated["rating"].iloc[0] == pytest.approx(
        sum(int(r) * p for r, p in first["probabilities"].items())
    )
    assert 0 < rating_mass(rated) <= 1 and rated["judge_output"].nunique() > 1


def test_rating_sheet_is_blind_and_seeded(generated_items):
    items = generated_items[:6]
    explained = _explanations(items, [f"reason {i}" for i in range(6)])
    by_id = {item.id: item for item in items}
    sheet = rating_sheet(explained, by_id, seed=0)
    assert list(sheet.columns) == SHEET_COLUMNS
    assert sorted(sheet["explanation_id"]) == sorted(explained["explanation_id"])
    assert sheet["explanation_id"].tolist() != explained["explanation_id"].tolist()
    assert sheet.equals(rating_sheet(explained, by_id, seed=0))
    assert not {"condition", "student", "transform"} & set(sheet.columns)


def test_rating_form_is_self_contained_and_escaped(generated_items):
    items = generated_items[:2]
    explained = _explanations(items, ["<script>alert(1)</script>", "fine"])
    sheet = rating_sheet(explained, {item.id: item for item in items}, seed=0)
    form = rating_form(sheet)
    assert "<script>alert(1)</script>" not in form and "&lt;script&gt;alert(1)&lt;/script&gt;" in form
    assert "http://" not in form and "https://" not in form
    for index, explanation_id in enumerate(sheet["explanation_id"]):
        assert f'data-id="{explanation_id}"' in form
        for name in DIMENSIONS:
            assert form.count(f'name="r{index}-{name}"') == 5
    assert '["rater", "explanation_id", "plausibility"' in form


def test_filled_sheets_round_trip_and_bad_rows_name_file_and_row(tmp_path, generated_items):
    items = generated_items[:3]
    explained = _explanations(items, ["a", "b", "c"])
    known = set(explained["explanation_id"])
    sheet = rating_sheet(explained, {item.id: item for item in items}, seed=0)
    sheet["plausibility"] = ["4", "", "2"]
    sheet["contrastiveness"] = ["1", "5", "3"]
    path = tmp_path / "alice.csv"
    sheet.to_csv(path, index=False)
    ratings = read_ratings(path, known)
    assert len(ratings) == 5 and set(ratings["rater"]) == {"alice"}
    assert ratings["rating"].tolist() == [4, 1, 5, 2, 3]

    for column, value, message in [
        ("plausibility", "7", r"row 3, column plausibility: rating '7'"),
        ("completeness", "4.5", r"row 3, column completeness: rating '4.5'"),
        ("explanation_id", "nope", r"row 3: unknown explanation_id 'nope'"),
    ]:
        bad = sheet.copy()
        bad.loc[1, column] = value
        bad.to_csv(path, index=False)
        with pytest.raises(ValueError, match=rf"alice.csv, {message}"):
            read_ratings(path, known)
    sheet.drop(columns="satisfaction").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"alice.csv: missing column\(s\) \['satisfaction'\]"):
        read_ratings(path, known)


def test_weighted_kappa_matches_statsmodels():
    from statsmodels.stats.inter_rater import cohens_kappa

    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 200)
    b = np.clip(a + rng.integers(-1, 2, 200), 1, 5)
    table = pd.crosstab(a, b).reindex(index=range(1, 6), columns=range(1, 6), fill_value=0).to_numpy()
    expected = cohens_kappa(table, wt="quadratic").kappa
    assert weighted_kappa(a, b) == pytest.approx(expected)
    assert weighted_kappa(a, a) == pytest.approx(1.0)


def test_agreement_between_judge_and_humans():
    ids = [f"e{i}" for i in range(30)]
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 6, len(ids))

    def long(rater, scores):
        return pd.DataFrame(
            [
                {"explanation_id": e, "rater": rater, "dimension": name, "rating": float(s)}
                for e, s in zip(ids, scores, strict=True)
                for name in DIMENSIONS
            ]
        )

    judge = long("judge:m", truth)
    same = agreement(judge, pd.concat([long("ann", truth), long("bob", truth)]))
    assert (same["n"] == 30).all() and (same["raters"] == 2).all()
    assert np.allclose(same["spearman_rho"], 1) and np.allclose(same["weighted_kappa"], 1)
    assert np.allclose(same["mean_abs_difference"], 0) and np.allclose(same["human_pairwise_kappa"], 1)
    noisy = agreement(judge, long("ann", rng.integers(1, 6, len(ids))))
    assert (noisy["spearman_rho"] < 0.9).all() and noisy["human_pairwise_kappa"].isna().all()
    expected = long("judge:m", truth - 0.4)  # rating_probabilities: fractional ratings, rounded for kappa
    assert np.allclose(agreement(expected, long("ann", truth))["weighted_kappa"], 1)


def test_rating_means_per_cell_and_rater_kind(generated_items):
    items = generated_items[:4]
    explained = _explanations(items, ["a", "b", "c", "d"])
    judge = pd.DataFrame(
        [
            {"explanation_id": e, "rater": "judge:m", "dimension": "plausibility", "rating": r}
            for e, r in zip(explained["explanation_id"], [2.0, 4.0, math.nan, 3.0], strict=True)
        ]
    )
    human = judge.assign(rater="ann", rating=[5, 5, 5, 5])
    means = rating_means(pd.concat([judge, human]), explained).set_index("rater_kind")
    assert means.loc["judge", "n"] == 3 and means.loc["judge", "mean"] == pytest.approx(3.0)
    assert means.loc["judge", "ci_low"] < 3.0 < means.loc["judge", "ci_high"]
    assert means.loc["human", "mean"] == 5.0


def test_assess_explanations_judges_exports_imports_and_compares(tmp_path, generated_items):
    """Notebook 04's path with a local judge (tiny-llama): the sheet it exports, filled by a rater, is
    imported on the next pass, which finds every judge call in the cache and reports agreement."""
    from kdlib.config import ExplanationParams
    from kdlib.evaluation.explanations import assess_explanations

    items = generated_items[:5]
    explained = _explanations(items, [f"reason number {i}" for i in range(5)])
    judge = {"backend": "transformers", "model": "tiny-llama", "batch_size": 2}
    settings = {"judge": judge, "cache_path": str(tmp_path / "judge.sqlite"), "max_new_tokens": 8}
    first = assess_explanations(explained, items, ExplanationParams(**settings), device="cpu", seed=0)
    assert first["judge_calls"] == {"hits": 0, "misses": 5} and first["agreement"] is None
    assert len(first["judge_ratings"]) == 5 * len(DIMENSIONS) and first["human_ratings"].empty
    sheet = first["sheet"]
    for offset, name in enumerate(DIMENSIONS):
        sheet[name] = [str(1 + (i + offset) % 5) for i in range(len(sheet))]
    sheet.to_csv(tmp_path / "rater-1.csv", index=False)
    rated = ExplanationParams(**settings, human_ratings=[str(tmp_path / "rater-1.csv")])
    second = assess_explanations(explained, items, rated, device="cpu", seed=0)
    assert second["judge_calls"] == {"hits": 5, "misses": 0}
    assert len(second["human_ratings"]) == 5 * len(DIMENSIONS)
    assert second["agreement"]["dimension"].tolist() == list(DIMENSIONS)
    assert (second["agreement"]["raters"] == 1).all()
    human_means = second["scores"][second["scores"]["rater_kind"] == "human"]
    assert len(human_means) == len(DIMENSIONS) and human_means["n"].eq(5).all()


def test_missing_rating_file_is_a_params_error(tmp_path):
    from pydantic import ValidationError

    from kdlib.config import ExplanationParams

    with pytest.raises(ValidationError, match="rating file"):
        ExplanationParams(human_ratings=[str(tmp_path / "absent.csv")])
