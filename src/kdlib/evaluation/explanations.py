"""Explanation quality on the five dimensions of Hendriks et al. (2025): an LLM judge, rating sheets for
human raters, and agreement between the two.

Each trained cell that can explain its answer gives one explanation per held-out item:
- students trained with an [explain] task (multitask conditions) answer that task;
- counterfactual students are asked "[counterfactual] Explain the answer: <the answer they predicted>";
- rationale and trace conditions wrote one in their greedy output, before or after the label.
no_trace students give none. Every explanation is rated from 1 (very poor) to 5 (excellent) on
plausibility, understandability, completeness, satisfaction and contrastiveness, as in the paper's human
study. The judge is any teacher backend (kdlib.teacher.backends), its calls cached like the teacher's. It
rates all five dimensions in one reply, one dimension per call, or (a local transformers judge) gives its
probability of each rating, whose expectation is the rating (G-Eval's probability-weighted score).
Human raters get a blind sheet (CSV, and a self-contained HTML form that saves the same CSV): shuffled,
no condition names. Filled sheets are read back, checked row by row, and compared with the judge.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
from scipy import stats

from kdlib.cells import CELL_KEYS
from kdlib.config import JudgeMode
from kdlib.data.schema import QAItem
from kdlib.models import generate_texts, student_prompt
from kdlib.paths import resolve_repo_path
from kdlib.stage_writer import StageWriter
from kdlib.stats import RATING_SCALE as SCALE
from kdlib.stats import t_interval
from kdlib.teacher.backends import Backend, Decoding, Request
from kdlib.teacher.cache import GenerationCache, generate_cached
from kdlib.teacher.recipes import item_block
from kdlib.teacher.stage import make_backend
from kdlib.traces.decomposition import ANSWER_LINE, ANSWER_TAG
from kdlib.training.conditions import COUNTERFACTUAL, EXPLAIN, TRANSFORMS, task_prompt

DIMENSIONS: dict[str, str] = {
    "plausibility": "The explanation is convincing: a reader would believe that the answer follows from it.",
    "understandability": "The explanation is clear and easy to follow.",
    "completeness": "The explanation gives everything needed to reach the answer; no step is missing.",
    "satisfaction": "Overall, the explanation is a satisfying justification of the answer.",
    "contrastiveness": "The explanation says why this answer is right rather than the other choices.",
}
JUDGE_MODES = get_args(JudgeMode)
RATINGS = tuple(str(value) for value in range(SCALE[0], SCALE[1] + 1))
SHEET_COLUMNS = ["explanation_id", "question", "choices", "answer", "explanation", *DIMENSIONS, "comment"]
EXPLANATION_COLUMNS = [
    *CELL_KEYS,
    "transform",
    "explanation_id",
    "item_id",
    "answer",
    "explanation",
    "source",
]

_THINK = re.compile(r"<think>(.*?)(?:</think>|<answer>|$)", re.S)


def explanation_text(output: str, fmt: str) -> str | None:
    """The explanation in a student output: the <think> content (tagged format, when present), else
    everything besides the answer tag or line; None when nothing is left."""
    match = _THINK.search(output) if fmt == "tagged" else None
    text = match.group(1) if match else ANSWER_LINE.sub(" ", ANSWER_TAG.sub(" ", output))
    text = " ".join(text.split())
    return text or None


def explanation_task(transform: str) -> str | None:
    """The task a student of `transform` is asked to explain its answer with, or None when its greedy
    output holds the explanation (or it gives none)."""
    if TRANSFORMS[transform].predict_task is not None:  # trained with task tags: ask the [explain] task
        return EXPLAIN
    return COUNTERFACTUAL if transform == "counterfactual" else None


def explanation_prompt(transform: str, item: QAItem, predicted_answer: str | None) -> str | None:
    """The user turn that asks a student of `transform` to explain, or None when its greedy output holds
    the explanation (or it gives none, or a counterfactual student has no answer to argue for)."""
    task = explanation_task(transform)
    if task is None or (task == COUNTERFACTUAL and predicted_answer is None):
        return None
    return task_prompt(task, item, predicted_answer)


def gives_explanations(transform: str) -> bool:
    """Whether students of `transform` give an explanation to rate (all but no_trace)."""
    return transform != "no_trace"


def explain_cell(
    model, tokenizer, cell: dict, fmt: str, items: list[QAItem], predictions: pd.DataFrame, **generation
) -> pd.DataFrame:
    """EXPLANATION_COLUMNS rows for one cell on `items`: asked through explanation_prompt where the
    transform has one, else read from the cell's greedy `predictions`. Items without an explanation (or
    without a readable answer to explain) are left out. `generation`: max_new_tokens, batch_size, desc."""
    transform = cell["transform"]
    by_item = predictions.set_index("item_id")
    prompts, asked, rows = [], [], []
    for item in items:
        predicted = by_item.loc[item.id, "read_answer"]
        predicted = None if pd.isna(predicted) else predicted
        prompt = explanation_prompt(transform, item, predicted)
        if prompt is not None:
            prompts.append(student_prompt(model, tokenizer, prompt))
            asked.append((item, predicted))
        elif transform != "counterfactual":
            output = by_item.loc[item.id, "output"]
            rows.append((item, predicted, explanation_text(output, fmt), "greedy output"))
    source = "counterfactual task" if transform == "counterfactual" else "explain task"
    outputs = generate_texts(model, tokenizer, prompts, **generation) if prompts else []
    rows += [
        (item, predicted, explanation_text(output, fmt), source)
        for (item, predicted), output in zip(asked, outputs, strict=True)
    ]
    tags = {key: cell[key] for key in (*CELL_KEYS, "transform")}
    cell_id = "/".join(str(cell[k]) for k in CELL_KEYS)
    frame = pd.DataFrame(
        [
            {
                **tags,
                "explanation_id": f"{cell_id}/{item.id}",
                "item_id": item.id,
                "answer": predicted,
                "explanation": text,
                "source": source,
            }
            for item, predicted, text, source in rows
            if text is not None
        ],
        columns=EXPLANATION_COLUMNS,
    )
    order = {item.id: i for i, item in enumerate(items)}
    return frame.sort_values("item_id", key=lambda ids: ids.map(order)).reset_index(drop=True)


def judge_messages(
    item: QAItem, answer: str | None, explanation: str, dimension: str | None = None
) -> list[dict[str, str]]:
    """The rubric conversation for one explanation: every dimension in one reply (judge mode "joint"), or
    only `dimension`, answered with one number (the other JUDGE_MODES)."""
    names = list(DIMENSIONS) if dimension is None else [dimension]
    rubric = "\n".join(f"- {name}: {DIMENSIONS[name]}" for name in names)
    scale = f"from {SCALE[0]} (very poor) to {SCALE[1]} (excellent)"
    if dimension is None:
        reply_form = "\n".join(f"{name}: <{SCALE[0]}-{SCALE[1]}>" for name in names)
        ask = f"on each dimension {scale}:\n{rubric}"
        reply = f"Reply with exactly these {len(names)} lines and nothing else:\n{reply_form}"
    else:
        ask = f"on {dimension} {scale}:\n{rubric}"
        reply = f"Reply with one whole number from {SCALE[0]} to {SCALE[1]} and nothing else."
    return [
        {
            "role": "system",
            "content": "You rate explanations of answers to questions. Judge only the explanation's quality "
            "as a justification of the given answer.",
        },
        {
            "role": "user",
            "content": f"{item_block(item)}\nAnswer: {answer if answer is not None else '(none given)'}\n"
            f"Explanation: {explanation}\n\nRate the explanation {ask}\n\n{reply}",
        },
    ]


_NUMBER = r"\d+(?:\.\d+)?(?:\s*[-–]\s*\d+)?"  # a whole number, a decimal, or a range such as "1-5"


def read_judgement(text: str) -> dict[str, float]:
    """The judge's rating per dimension in a joint reply (NaN where it gave none, one outside the scale
    or not whole, or only echoed the scale, as in "plausibility: 1-5")."""
    return {name: _rating(re.search(rf"{name}\W{{0,3}}\s*({_NUMBER})", text, re.I)) for name in DIMENSIONS}


def read_rating(text: str) -> float:
    """The rating in a per-dimension reply: its first number, NaN when that is outside the scale, not
    whole, an echoed scale ("1-5") or missing."""
    return _rating(re.search(f"({_NUMBER})", text))


def expected_rating(reply: str) -> float:
    """The rating in a choice_reply over RATINGS: the mean rating under its probabilities."""
    probabilities = json.loads(reply)["probabilities"]
    return sum(int(rating) * probability for rating, probability in probabilities.items())


def rating_mass(ratings: pd.DataFrame) -> float:
    """Mean probability (before renormalising) that the judge replied with a rating, over the
    rating_probabilities rows of judge_explanations; how far its ratings are its own choice."""
    return float(np.mean([json.loads(reply)["mass"] for reply in ratings["judge_output"]]))


def describe_judge(params, ratings: pd.DataFrame) -> str:
    """One sentence on the judge of ExplanationParams `params` and how well it kept to its reply
    (judge_explanations rows): explanations and dimensions rated, the readable share, and for
    rating_probabilities its rating_mass."""
    judge = params.judge
    text = (
        f"Judge `{judge.model}` ({judge.backend}), mode `{params.judge_mode}`: "
        f"{ratings['explanation_id'].nunique()} explanations x {ratings['dimension'].nunique()} dimensions, "
        f"{ratings['rating'].notna().mean():.0%} of the ratings readable"
    )
    if params.judge_mode == "rating_probabilities":
        text += (
            f"; its mean probability of replying with a rating at all is {rating_mass(ratings):.1%}, "
            "the rest being renormalised away"
        )
    return text


def write_assessment(out: StageWriter, run, assessed: dict) -> None:
    """Hand assess_explanations' tables to notebook 04's StageWriter `out` (run: the RunLayout)."""
    out.table(run.judge_ratings, assessed["judge_ratings"])
    out.table(run.explanation_scores, assessed["scores"], title="Explanation ratings")
    out.table(run.rating_sheet, assessed["sheet"])
    out.text(run.rating_form, assessed["form"])
    if assessed["agreement"] is not None:
        out.table(run.human_ratings, assessed["human_ratings"])
        out.table(run.rating_agreement, assessed["agreement"])


def describe_assessment(params, assessed: dict) -> str:
    """What notebook 04 says of an assess_explanations result: the judge calls made and cached, the
    judge (describe_judge), and where human ratings stand."""
    calls = assessed["judge_calls"]
    lines = [
        f"judge: {calls['misses']} new calls, {calls['hits']} cached",
        describe_judge(params, assessed["judge_ratings"]),
    ]
    if assessed["agreement"] is None:
        lines.append(
            "no human ratings yet: fill evaluation/rating_sheet.csv or rating_form.html, list the files "
            "under evaluation.explanations.human_ratings, and rerun this notebook"
        )
    return "\n".join(lines)


def _rating(match: re.Match | None) -> float:
    """The matched number as a rating, NaN unless it is a whole number on SCALE."""
    number = match.group(1) if match else ""
    return float(number) if number.isdigit() and SCALE[0] <= int(number) <= SCALE[1] else math.nan


def judge_explanations(
    explanations: pd.DataFrame,
    items: dict[str, QAItem],
    backend: Backend,
    cache: GenerationCache,
    decoding: Decoding,
    mode: str = "joint",
) -> pd.DataFrame:
    """Long ratings (explanation_id, rater, dimension, rating) from the judge, plus the raw reply each
    rating was read from (`judge_output`); rater is "judge:<model>". `mode` (JUDGE_MODES, see
    ExplanationParams.judge_mode): one call per explanation ("joint"), or one per explanation and
    dimension. Calls go through `cache`."""
    if mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode {mode!r}; valid: {', '.join(JUDGE_MODES)}")
    if mode == "rating_probabilities":
        decoding = replace(decoding, choices=RATINGS)
    rows = list(explanations.itertuples())
    asked = [None] if mode == "joint" else list(DIMENSIONS)
    requests = [
        Request.of(judge_messages(items[row.item_id], row.answer, row.explanation, dimension))
        for row in rows
        for dimension in asked
    ]
    replies = generate_cached(backend, cache, requests, decoding)
    rater = f"judge:{backend.identity().get('model', backend.kind)}"
    ratings = []
    for index, row in enumerate(rows):
        own = replies[index * len(asked) : (index + 1) * len(asked)]
        if mode == "joint":
            read = [(name, rating, own[0]) for name, rating in read_judgement(own[0]).items()]
        else:
            reader = expected_rating if mode == "rating_probabilities" else read_rating
            read = [(name, reader(reply), reply) for name, reply in zip(DIMENSIONS, own, strict=True)]
        ratings += [
            {
                "explanation_id": row.explanation_id,
                "rater": rater,
                "dimension": name,
                "rating": rating,
                "judge_output": reply,
            }
            for name, rating, reply in read
        ]
    return pd.DataFrame(ratings, columns=["explanation_id", "rater", "dimension", "rating", "judge_output"])


def rate_explanations(
    explanations: pd.DataFrame, items: dict[str, QAItem], params, *, device: str, seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """judge_explanations with the judge of ExplanationParams `params` (greedy), through its cache.
    Returns the ratings and the cache's hit / miss counts."""
    backend = make_backend(params.judge, device=device, seed=seed)
    decoding = Decoding(max_new_tokens=params.max_new_tokens, seed=seed)
    try:
        with GenerationCache(params.cache_path) as cache:
            ratings = judge_explanations(explanations, items, backend, cache, decoding, params.judge_mode)
            return ratings, cache.stats.as_dict()
    finally:
        backend.close()


def rating_sheet(explanations: pd.DataFrame, items: dict[str, QAItem], seed: int) -> pd.DataFrame:
    """The blind sheet (SHEET_COLUMNS): explanations in a seeded random order, no cell names, one empty
    column per dimension and one for comments."""
    shuffled = explanations.sample(frac=1.0, random_state=seed)
    return pd.DataFrame(
        [
            {
                "explanation_id": row.explanation_id,
                "question": items[row.item_id].question,
                "choices": " | ".join(items[row.item_id].choices),
                "answer": "" if pd.isna(row.answer) else row.answer,
                "explanation": row.explanation,
                **dict.fromkeys(DIMENSIONS, ""),
                "comment": "",
            }
            for row in shuffled.itertuples()
        ],
        columns=SHEET_COLUMNS,
    )


def rating_form(sheet: pd.DataFrame) -> str:
    """A self-contained HTML form for `sheet`: one 1-5 radio row per dimension and explanation; its
    button saves the ratings as a CSV with the sheet's columns (plus rater), read by read_ratings."""
    definitions = "".join(f"<li><b>{name}</b>: {html.escape(text)}</li>" for name, text in DIMENSIONS.items())
    blocks = []
    for index, row in enumerate(sheet.itertuples()):
        scales = "".join(
            f"<tr><td>{name}</td>"
            + "".join(
                f'<td><label><input type="radio" name="r{index}-{name}" value="{value}">{value}</label></td>'
                for value in range(SCALE[0], SCALE[1] + 1)
            )
            + "</tr>"
            for name in DIMENSIONS
        )
        blocks.append(
            f'<section data-id="{html.escape(row.explanation_id)}"><h3>{index + 1}.</h3>'
            f"<p><b>Question:</b> {html.escape(row.question)}</p>"
            f"<p><b>Choices:</b> {html.escape(row.choices)}</p>"
            f"<p><b>Answer:</b> {html.escape(row.answer)}</p>"
            f"<p><b>Explanation:</b> {html.escape(row.explanation)}</p>"
            f"<table>{scales}</table>"
            f'<p>Comment: <input type="text" name="c{index}" size="80"></p></section>'
        )
    columns = json.dumps(["rater", "explanation_id", *DIMENSIONS, "comment"])
    dimensions = json.dumps(list(DIMENSIONS))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Rate explanations</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}section{{border-top:1px solid #ccc}}
td{{padding:0 .6em}}</style></head><body>
<h1>Rate the explanations</h1>
<p>Rate each explanation from {SCALE[0]} (very poor) to {SCALE[1]} (excellent) on:</p><ul>{definitions}</ul>
<p>Your name or rater id: <input type="text" id="rater"></p>
{"".join(blocks)}
<p><button id="save">Save ratings as CSV</button></p>
<script>
const COLUMNS = {columns}, DIMENSIONS = {dimensions};
const quote = v => '"' + String(v).replaceAll('"', '""') + '"';
document.getElementById("save").onclick = () => {{
  const rater = document.getElementById("rater").value.trim();
  if (!rater) {{ alert("Please enter your name or rater id first."); return; }}
  const lines = [COLUMNS.join(",")];
  document.querySelectorAll("section").forEach((section, i) => {{
    const picked = DIMENSIONS.map(d => {{
      const input = section.querySelector(`input[name="r${{i}}-${{d}}"]:checked`);
      return input ? input.value : "";
    }});
    const comment = section.querySelector(`input[name="c${{i}}"]`).value;
    lines.push([rater, section.dataset.id, ...picked, comment].map(quote).join(","));
  }});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  link.download = "ratings-" + rater.replace(/[^A-Za-z0-9_-]/g, "_") + ".csv";
  link.click();
}};
</script></body></html>
"""


def read_ratings(path: str | Path, known_ids: set[str]) -> pd.DataFrame:
    """Long human ratings (explanation_id, rater, dimension, rating) from one filled sheet or form CSV.
    The rater is the `rater` column, else the file name. Blank cells are unrated; anything else that is
    not a whole number on the scale, or an unknown explanation id, is an error naming file and row."""
    path = Path(path)
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the ratings CSV ({error})") from error
    missing = [c for c in ("explanation_id", *DIMENSIONS) if c not in sheet.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    rows = []
    for line, record in enumerate(sheet.to_dict(orient="records"), start=2):  # line 1 is the header
        if record["explanation_id"] not in known_ids:
            raise ValueError(f"{path}, row {line}: unknown explanation_id {record['explanation_id']!r}")
        rater = record.get("rater") or path.stem
        for name in DIMENSIONS:
            value = record[name].strip()
            if not value:
                continue
            if not value.isdigit() or not SCALE[0] <= int(value) <= SCALE[1]:
                raise ValueError(
                    f"{path}, row {line}, column {name}: rating {value!r} is not a whole number "
                    f"from {SCALE[0]} to {SCALE[1]}"
                )
            rating = {"explanation_id": record["explanation_id"], "rater": rater, "dimension": name}
            rows.append({**rating, "rating": int(value)})
    return pd.DataFrame(rows, columns=["explanation_id", "rater", "dimension", "rating"])


def weighted_kappa(a: np.ndarray, b: np.ndarray, levels: int = SCALE[1] - SCALE[0] + 1) -> float:
    """Cohen's kappa with quadratic weights between two raters' integer ratings on SCALE."""
    a, b = np.asarray(a, dtype=int) - SCALE[0], np.asarray(b, dtype=int) - SCALE[0]
    observed = np.zeros((levels, levels))
    np.add.at(observed, (a, b), 1)
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    grid = np.arange(levels)
    weights = (grid[:, None] - grid[None, :]) ** 2 / (levels - 1) ** 2
    denominator = (weights * expected).sum()
    return math.nan if denominator == 0 else 1.0 - (weights * observed).sum() / denominator


def agreement(judge: pd.DataFrame, human: pd.DataFrame) -> pd.DataFrame:
    """Per dimension: the explanations rated by both, Spearman's rho (and p) between the judge and the
    mean human rating, the mean absolute difference, quadratic-weighted kappa between the rounded judge
    rating (an expected rating is fractional) and the rounded human median, and, with two or more
    raters, the humans' mean pairwise weighted kappa."""
    rows = []
    for name in DIMENSIONS:
        judged = judge[(judge["dimension"] == name)].dropna(subset=["rating"]).set_index("explanation_id")
        rated = human[human["dimension"] == name]
        by_item = rated.groupby("explanation_id")["rating"]
        both = judged.index.intersection(by_item.mean().index)
        judge_scores, human_mean = judged.loc[both, "rating"], by_item.mean().loc[both]
        human_median = np.floor(by_item.median().loc[both] + 0.5)
        wide = rated.pivot_table(index="explanation_id", columns="rater", values="rating")
        pairwise = [
            weighted_kappa(pair[first], pair[second])
            for i, first in enumerate(wide.columns)
            for second in wide.columns[i + 1 :]
            if len(pair := wide[[first, second]].dropna()) >= 2
        ]
        rho, p_value = stats.spearmanr(judge_scores, human_mean) if len(both) >= 3 else (math.nan, math.nan)
        rows.append(
            {
                "dimension": name,
                "n": len(both),
                "raters": rated["rater"].nunique(),
                "spearman_rho": rho,
                "spearman_p": p_value,
                "mean_abs_difference": (judge_scores - human_mean).abs().mean() if len(both) else math.nan,
                "weighted_kappa": weighted_kappa(np.floor(judge_scores + 0.5), human_median)
                if len(both) >= 2
                else math.nan,
                "human_pairwise_kappa": float(np.mean(pairwise)) if pairwise else math.nan,
            }
        )
    return pd.DataFrame(rows)


def rating_means(ratings: pd.DataFrame, explanations: pd.DataFrame) -> pd.DataFrame:
    """Per cell, rater kind (judge / human) and dimension: n, mean rating and its 95% t interval."""
    merged = ratings.merge(explanations[[*CELL_KEYS, "explanation_id"]], on="explanation_id")
    merged = merged.assign(rater_kind=np.where(merged["rater"].str.startswith("judge:"), "judge", "human"))
    rows = []
    rated = merged.dropna(subset=["rating"])
    for keys, group in rated.groupby([*CELL_KEYS, "rater_kind", "dimension"], sort=False):
        values = group["rating"].to_numpy(dtype=float)
        low, high = t_interval(values, bounds=SCALE)
        rows.append(
            {
                **dict(zip([*CELL_KEYS, "rater_kind", "dimension"], keys, strict=True)),
                "n": len(values),
                "mean": values.mean(),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(
        rows, columns=[*CELL_KEYS, "rater_kind", "dimension", "n", "mean", "ci_low", "ci_high"]
    )


def read_human_ratings(paths: list[str], known_ids: set[str]) -> pd.DataFrame:
    """read_ratings of every filled sheet in `paths` (relative to the repository root), stacked."""
    frames = [read_ratings(resolve_repo_path(path), known_ids) for path in paths]
    columns = ["explanation_id", "rater", "dimension", "rating"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def assess_explanations(
    explanations: pd.DataFrame, items: list[QAItem], params, *, device: str, seed: int
) -> dict:
    """Everything notebook 04 shows and writes about `explanations` under ExplanationParams `params`:
    "judge_ratings" and "judge_calls" (cache hits / misses), "human_ratings" (from params.human_ratings),
    "scores" (rating_means over both), "agreement" (None without human ratings), and the blind rating
    "sheet" with its HTML "form"."""
    by_id = {item.id: item for item in items}
    judge, calls = rate_explanations(explanations, by_id, params, device=device, seed=seed)
    human = read_human_ratings(params.human_ratings, set(explanations["explanation_id"]))
    sheet = rating_sheet(explanations, by_id, seed=seed)
    return {
        "judge_ratings": judge,
        "judge_calls": calls,
        "human_ratings": human,
        "scores": rating_means(pd.concat([judge, human], ignore_index=True), explanations),
        "agreement": None if human.empty else agreement(judge, human),
        "sheet": sheet,
        "form": rating_form(sheet),
    }
