"""Importers of published teacher outputs, on the real files in the shared data folder."""

from __future__ import annotations

import json
import shutil

import pytest

from kdlib.data.registry import load_items
from kdlib.teacher import importers
from kdlib.teacher.rationales import TRACE_COLUMNS
from tests.helpers import DATA_DIR, needs_data

pytestmark = needs_data("distilling_step_by_step", "hendriks_llm_distillation", "commonsenseqa")


@pytest.fixture(scope="module")
def cqa_train():
    return importers.palm_cot("cqa", "train")


def test_palm_cqa_rows_line_up_with_inputs_and_parse(cqa_train):
    assert list(cqa_train.columns) == TRACE_COLUMNS
    assert len(cqa_train) == 9741
    row = cqa_train.iloc[1]  # the README's example: PaLM says "train station", gold is "bridge"
    assert row["rationale"].startswith("The answer must be a place where a bum would live.")
    assert "Q:" not in row["completion"] and "So the answer is" not in row["rationale"]
    assert row[["parsed_label", "gold_label", "label_correct"]].tolist() == ["train station", "bridge", False]
    assert set(cqa_train["model"]) == {"PaLM-540B"} and set(cqa_train["label_source"]) == {"parsed"}
    # The data README counts 7,234 agreements by exact, case-sensitive string match; labels here are
    # matched to a choice case-insensitively ("(e) French government." is "french government").
    assert int(cqa_train["label_correct"].sum()) == 7334
    unparsed = cqa_train[cqa_train["parsed_label"].isna()]
    assert len(unparsed) == 318
    assert unparsed["completion"].str.contains(r"answer is (?:either )?\(\w\) [^.]* or \(\w\)").sum() >= 250


def test_palm_ids_match_the_commonsenseqa_loader(cqa_train):
    items = load_items("commonsenseqa", "train", limit=50)
    assert {item.id for item in items} <= set(cqa_train["item_id"])
    by_id = cqa_train.set_index("item_id")
    assert all(by_id.loc[item.id, "gold_label"] == item.answer for item in items)


def test_palm_svamp_and_anli_labels():
    svamp = importers.palm_cot("svamp", "test")
    assert len(svamp) == 200 and svamp["label_correct"].sum() == 155
    first = svamp.iloc[0]  # "(10 * 45)" against gold "( 10.0 * 45.0 )": equal values
    assert (first["parsed_label"], first["label_correct"]) == ("(10 * 45)", True)
    anli = importers.palm_cot("anli1", "valid")
    assert len(anli) == 1000 and set(anli["parsed_label"].dropna()) <= set(importers.ANLI_LABELS)
    assert "Premise:" not in anli.iloc[0]["completion"]


def test_palm_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="inputs exist for"):
        importers.palm_cot("anli1", "train")
    root = tmp_path / "distilling_step_by_step" / "datasets" / "cqa"
    shutil.copytree(DATA_DIR / "distilling_step_by_step" / "datasets" / "cqa", root)
    (root / "llm" / "test_CoT_1.json").unlink()
    message = r"test_CoT_\*\.json: 1000 completions for 1221 rows of .*cqa_test.json"
    with pytest.raises(ValueError, match=message):
        importers.palm_cot("cqa", "test", data_dir=tmp_path)
    lines = (root / "cqa_train.json").read_text().splitlines()
    (root / "cqa_train.json").write_text("\n".join([lines[0], "{not json", *lines[2:]]))
    with pytest.raises(ValueError, match=r"cqa_train.json line 2: not valid JSON"):
        importers.palm_cot("cqa", "train", data_dir=tmp_path)
    (root / "cqa_train.json").write_text(json.dumps({"id": "x", "question": "q"}) + "\n")
    with pytest.raises(ValueError):
        importers.palm_cot("cqa", "train", data_dir=tmp_path)


def test_hendriks_llama_sets_and_counterfactuals():
    rows = importers.hendriks("llama", "test", ["positive", "negative", "revised", "counterfactual"])
    assert list(rows.columns) == TRACE_COLUMNS
    counts = rows.groupby("recipe").size().to_dict()
    assert counts == {"positive": 1221, "negative": 1221, "revised": 1221, "counterfactual": 5 * 1221}
    assert set(rows["label_source"]) == {"conditioned"}
    positive = rows[rows["recipe"] == "positive"]
    assert positive["label_correct"].all()
    assert set(positive["prompt_id"]) == {"hendriks/few_shot_positive_rationale"}
    cf = rows[rows["recipe"] == "counterfactual"]
    # one rationale per choice; it argues for gold exactly when that choice reads as the gold answer
    # (6 test questions list the gold answer twice, e.g. in another case)
    per_item = cf.groupby("item_id")["label_correct"].sum()
    assert (per_item >= 1).all() and per_item.sum() == 1227
    one = cf[cf["item_id"] == cf["item_id"].iloc[0]]
    assert sorted(one["target_label"]) == sorted(set(one["target_label"])) and len(one) == 5


def test_hendriks_qwen_has_positive_only():
    rows = importers.hendriks("qwen", "test")
    assert len(rows) == 1221 and set(rows["model"]) == {"Qwen3-30B-A3B-Instruct-2507"}
    with pytest.raises(ValueError, match="column 'few_shot_negative_rationale' missing"):
        importers.hendriks("qwen", "test", ["negative"])
    with pytest.raises(ValueError, match="choose from"):
        importers.hendriks("gpt", "test")


@pytest.mark.slow
def test_notebook_01_on_commonsenseqa_generates_and_imports(tmp_path):
    """Notebook 01 on real CSQA items: tiny-model rationalize + counterfactual rationales, PaLM CoT and
    Hendriks imports matched to the run's items by id, leaking rows dropped."""
    import subprocess
    import sys

    import pandas as pd
    import yaml

    from kdlib.paths import REPO_ROOT

    params = {
        "common": {"run_name": "csqa", "device": "cpu"},
        "teacher_traces": {
            "dataset": {"name": "commonsenseqa", "train_split": "train", "eval_split": "dev", "n_train": 6,
                        "n_eval": 2},
            "teacher": {"model": "tiny-llama"},
            "generation": {"recipes": ["rationalize", "counterfactual"], "n_items": 2, "n_shots": 0,
                           "max_new_tokens": 4},
            "imports": [{"source": "palm_cot", "dataset": "cqa", "split": "train"},
                        {"source": "hendriks", "teacher": "llama", "split": "train",
                         "kinds": ["positive", "revised", "counterfactual"]}],
            "filters": {"drop_leaking": True},
            "cache_path": str(tmp_path / "cache.sqlite"),
        },
    }  # fmt: skip
    path = tmp_path / "csqa.yaml"
    path.write_text(yaml.safe_dump(params))
    command = [
        sys.executable,
        "-m",
        "kdlib",
        "run",
        str(path),
        "--only",
        "01",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    stage = tmp_path / "run" / "teacher_traces"
    report = pd.read_csv(stage / "filter_report.csv").set_index(["source", "recipe"])
    rows_in = report["rows_in"].to_dict()
    assert rows_in[("llm", "rationalize")] == 2 and rows_in[("llm", "counterfactual")] == 2 * 4
    assert rows_in[("palm_cot", "cot_label_last")] == 6  # every CSQA train item has a PaLM rationale
    assert rows_in[("hendriks", "positive")] == 6 and rows_in[("hendriks", "counterfactual")] == 6 * 5
    assert ("rule", "rule") not in rows_in  # CSQA has no gold supporting facts to write rationales from
    kept = pd.read_parquet(stage / "traces.parquet")
    assert not kept["leaks_label"].any()
    dropped = report[["dropped_unparseable", "dropped_duplicate", "dropped_leaking"]].sum()
    assert dropped.sum() == report["rows_in"].sum() - len(kept) and dropped["dropped_leaking"] > 0
    assert report.loc["llm", "dropped_unparseable"].sum() > 0  # the tiny teacher writes empty chat replies
