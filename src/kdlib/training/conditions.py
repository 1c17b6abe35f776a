"""Training conditions of the three studies, as data transforms.

A condition turns one training item and its traces into `TextExample`s: (task, prompt, target, weight)
texts. Every condition shares one prompt builder and one answer format, and kdlib.training.loop tokenises
and masks every example the same way, so cells differ only in what the transform put in the target.

* Wadhwa et al. 2024: `no_trace` (label only), the teacher's rationale before or after the label, the
  rationale's words shuffled after the label, random words of the same length after the label, and
  only the key words (top integrated-gradients attributions, notebook 03) after the label. kdlib adds a
  placeholder control: after the label, as many filler tokens as the rationale has tokens there (the
  rationale's length without its content).
* Hendriks et al. 2025 / distilling step-by-step: `multitask` ([predict] -> answer, weight alpha;
  [explain] -> rationale, weight beta), `counterfactual` (a rationale written for a wrong choice, then
  that choice) and `multitask_counterfactual`; the rationale set (original or revised) is a spec field.
* Bhambri et al. 2025: `correct_trace` / `incorrect_trace`, the decomposed traces of notebook 02.

Words (whitespace-separated) are the unit of shuffling, random traces and key tokens, so one condition
means the same text for every student tokenizer. The placeholder control alone counts tokens, so its text
is written per student (TransformSettings.filler).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from kdlib import io
from kdlib.data.schema import QAItem
from kdlib.teacher.rationales import LETTERS
from kdlib.traces.decomposition import (
    CORRECT,
    Steps,
    format_answer,
    format_rationale,
    format_target,
    join_target,
)

PREDICT, EXPLAIN, COUNTERFACTUAL = "predict", "explain", "counterfactual"
ATTRIBUTION_COLUMNS = ("item_id", "word_index", "word", "attribution")
FILLER_WORDS = (" x", "x")  # the placeholder's filler where the student's unk token cannot be one


@dataclass(frozen=True)
class TextExample:
    """One training example before tokenisation: `prompt` is the user turn, `target` what is learnt."""

    item_id: str
    task: str
    prompt: str
    target: str
    weight: float = 1.0


@dataclass(frozen=True)
class ItemTraces:
    """Everything a transform may use for one item (None / empty where the run has none)."""

    rationale: str | None = None
    steps: dict[str, Steps] = field(default_factory=dict)
    counterfactuals: tuple[tuple[str, str], ...] = ()  # (wrong choice, rationale arguing for it)
    key_words: tuple[str, ...] | None = None


def target_token_ids(tokenizer, text: str) -> list[int]:
    """A target text's token ids as the student learns them (kdlib.training.loop appends the EOS)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Filler:
    """The placeholder's filler for one student: `text` encodes to the one token `token_id`, k copies of
    it to k such tokens; `encode` is the student's target tokenisation (text -> ids)."""

    text: str
    token_id: int
    encode: Callable[[str], list[int]]


def student_filler(tokenizer) -> Filler:
    """The tokenizer's unk token, else the first of FILLER_WORDS, that encodes to one token other than
    EOS, BOS and pad and whose copies encode to as many tokens."""
    encode = partial(target_token_ids, tokenizer)
    reserved = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id}
    candidates = ([tokenizer.unk_token] if tokenizer.unk_token else []) + list(FILLER_WORDS)
    for text in candidates:
        ids = encode(text)
        if len(ids) == 1 and ids[0] not in reserved and all(encode(text * k) == ids * k for k in (2, 3, 16)):
            return Filler(text, ids[0], encode)
    raise ValueError(
        f"placeholder_after_label: no filler token for the tokenizer {tokenizer.name_or_path!r}: none of "
        f"{candidates} encodes to one token (not EOS, BOS or pad) whose copies encode token by token"
    )


@dataclass(frozen=True)
class TransformSettings:
    """Settings shared by every transform of one cell."""

    fmt: str
    seed: int
    incorrect_perturbation: str = "both"
    alpha: float = 1.0
    beta: float = 1.0
    random_vocabulary: tuple[str, ...] = ()
    counterfactuals_per_item: int | None = None  # None: every wrong choice with a rationale
    filler: Filler | None = None  # the student's, for placeholder_after_label


def student_question(item: QAItem) -> str:
    """The user turn every condition shares: numbered context facts, the question, lettered choices."""
    parts = []
    if item.context:
        parts.append("Facts:\n" + "\n".join(f"{i + 1}. {fact}" for i, fact in enumerate(item.context)))
    parts.append(f"Question: {item.question}")
    if item.choices:
        parts.append("Choices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(item.choices)))
    return "\n".join(parts)


def task_prompt(task: str, item: QAItem, argued_answer: str | None = None) -> str:
    """The user turn of one task: the plain question, or with a [predict] / [explain] /
    [counterfactual] tag (the last names the answer to argue for)."""
    question = student_question(item)
    if task == COUNTERFACTUAL:
        return f"[{COUNTERFACTUAL}] Explain the answer: {argued_answer}\n{question}"
    return f"[{task}]\n{question}" if task in (PREDICT, EXPLAIN) else question


def item_rng(settings: TransformSettings, item: QAItem, purpose: str) -> random.Random:
    """A generator seeded by (seed, item, purpose): the same words whatever the item order."""
    digest = hashlib.sha256(f"{settings.seed}:{item.id}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffled_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def random_words(n: int, vocabulary: tuple[str, ...], rng: random.Random) -> str:
    if not vocabulary:
        raise ValueError("random_rationale_after_label needs a vocabulary (the training rationales' words)")
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def label_then(item: QAItem, reasoning: str, settings: TransformSettings) -> str:
    """The answer, then `reasoning`: the Wadhwa et al. label-first target."""
    fmt = settings.fmt
    return join_target(fmt, format_answer(item.answer, fmt), format_rationale(reasoning, fmt))


def placeholder_after_label(item: QAItem, rationale: str, settings: TransformSettings) -> str:
    """The answer, then n filler tokens: n is what the rationale adds to rationale_after_label's target
    under the student's tokenizer (its tokens less the frame's: answer and tags), so both targets have
    the same number of tokens."""
    filler = settings.filler
    if filler is None:
        raise ValueError("placeholder_after_label needs the student's filler (TransformSettings.filler)")
    n_target = len(filler.encode(label_then(item, rationale, settings)))
    n = n_target - (len(filler.encode(label_then(item, filler.text, settings))) - 1)
    target = label_then(item, filler.text * n, settings)
    ids = filler.encode(target)
    run = [filler.token_id] * n
    if n < 1 or len(ids) != n_target or not any(ids[i : i + n] == run for i in range(len(ids) - n + 1)):
        raise ValueError(
            f"item {item.id}: {n} copies of the filler {filler.text!r} after the answer do not encode to "
            f"{n} filler tokens in a target of {n_target} tokens, as its rationale_after_label target has"
        )
    return target


def _answer_only(item, traces, s):
    return [TextExample(item.id, PREDICT, task_prompt(None, item), format_answer(item.answer, s.fmt))]


def _single(task_target: Callable[[QAItem, ItemTraces, TransformSettings], str | None]):
    """A transform with one plain-question example whose target `task_target` writes (None: no example)."""

    def build(item, traces, s):
        target = task_target(item, traces, s)
        return [] if target is None else [TextExample(item.id, PREDICT, task_prompt(None, item), target)]

    return build


def _rationale_first(item, traces, s):
    return join_target(s.fmt, format_rationale(traces.rationale, s.fmt), format_answer(item.answer, s.fmt))


def _multitask(item, traces, s):
    return [
        TextExample(item.id, PREDICT, task_prompt(PREDICT, item), format_answer(item.answer, s.fmt), s.alpha),
        TextExample(
            item.id, EXPLAIN, task_prompt(EXPLAIN, item), format_rationale(traces.rationale, s.fmt), s.beta
        ),
    ]


def _counterfactual(item, traces, s):
    pairs = list(traces.counterfactuals)
    if s.counterfactuals_per_item is not None and len(pairs) > s.counterfactuals_per_item:
        pairs = item_rng(s, item, "counterfactual").sample(pairs, s.counterfactuals_per_item)
    return [
        TextExample(
            item.id,
            COUNTERFACTUAL,
            task_prompt(COUNTERFACTUAL, item, choice),
            join_target(s.fmt, format_rationale(rationale, s.fmt), format_answer(choice, s.fmt)),
        )
        for choice, rationale in pairs
    ]


def _decomposed(variant_of: Callable[[TransformSettings], str]):
    def target(item, traces, s):
        steps = traces.steps.get(variant_of(s))
        return None if steps is None else format_target(steps, item, item.answer, s.fmt)

    return target


@dataclass(frozen=True)
class Transform:
    study: str
    summary: str
    needs: frozenset[str]  # of: rationale, steps, counterfactuals, key_words
    build: Callable[[QAItem, ItemTraces, TransformSettings], list[TextExample]]
    predict_task: str | None = None  # the prompt tag a trained student is asked with at evaluation
    needs_filler: bool = False  # its texts depend on the student's tokenizer (TransformSettings.filler)


TRANSFORMS: dict[str, Transform] = {
    "no_trace": Transform("all", "the answer alone", frozenset(), _answer_only),
    "rationale_before_label": Transform(
        "wadhwa2024",
        "teacher rationale, then the answer",
        frozenset({"rationale"}),
        _single(_rationale_first),
    ),
    "rationale_after_label": Transform(
        "wadhwa2024",
        "the answer, then the teacher rationale",
        frozenset({"rationale"}),
        _single(lambda item, t, s: label_then(item, t.rationale, s)),
    ),
    "shuffled_rationale_after_label": Transform(
        "wadhwa2024",
        "the answer, then the rationale's words in a seeded random order",
        frozenset({"rationale"}),
        _single(
            lambda item, t, s: label_then(item, shuffled_words(t.rationale, item_rng(s, item, "shuffle")), s)
        ),
    ),
    "random_rationale_after_label": Transform(
        "wadhwa2024",
        "the answer, then as many random words (from the training rationales) as the rationale has",
        frozenset({"rationale"}),
        _single(
            lambda item, t, s: label_then(
                item,
                random_words(len(t.rationale.split()), s.random_vocabulary, item_rng(s, item, "random")),
                s,
            )
        ),
    ),
    "key_tokens_after_label": Transform(
        "wadhwa2024",
        "the answer, then only the rationale's top-attributed words, in their order",
        frozenset({"key_words"}),
        _single(lambda item, t, s: label_then(item, " ".join(t.key_words), s)),
    ),
    "placeholder_after_label": Transform(
        "wadhwa2024",
        "the answer, then one filler token of the student's vocabulary, as many as the rationale has tokens",
        frozenset({"rationale"}),
        _single(lambda item, t, s: placeholder_after_label(item, t.rationale, s)),
        needs_filler=True,
    ),
    "multitask": Transform(
        "hendriks2025",
        "[predict] -> answer (weight alpha) and [explain] -> rationale (weight beta)",
        frozenset({"rationale"}),
        _multitask,
        predict_task=PREDICT,
    ),
    "counterfactual": Transform(
        "hendriks2025",
        "answer only, plus [counterfactual] examples: a rationale for a wrong choice, then that choice",
        frozenset({"counterfactuals"}),
        lambda item, t, s: _answer_only(item, t, s) + _counterfactual(item, t, s),
    ),
    "multitask_counterfactual": Transform(
        "hendriks2025",
        "multitask plus the counterfactual examples",
        frozenset({"rationale", "counterfactuals"}),
        lambda item, t, s: _multitask(item, t, s) + _counterfactual(item, t, s),
        predict_task=PREDICT,
    ),
    "correct_trace": Transform(
        "bhambri2025",
        "gold classification + retrieval trace, then the answer",
        frozenset({"steps"}),
        _single(_decomposed(lambda s: CORRECT)),
    ),
    "incorrect_trace": Transform(
        "bhambri2025",
        "perturbed trace (see sft.incorrect_perturbation), then the gold answer",
        frozenset({"steps"}),
        _single(_decomposed(lambda s: s.incorrect_perturbation)),
    ),
}

CHECKABLE_TRACE_TRANSFORMS = frozenset(name for name, t in TRANSFORMS.items() if "steps" in t.needs)


def evaluation_prompt(transform: str, item: QAItem) -> str:
    """The user turn a student trained under `transform` is asked at evaluation."""
    return task_prompt(TRANSFORMS[transform].predict_task, item)


def condition_examples(
    transform: str, items: list[QAItem], traces: dict[str, ItemTraces], settings: TransformSettings
) -> tuple[list[TextExample], list[str]]:
    """Examples of one condition and the ids of items it had to skip (no trace of the kind it needs)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown condition transform {transform!r}; choose from {sorted(TRANSFORMS)}")
    spec = TRANSFORMS[transform]
    examples, skipped = [], []
    for item in items:
        item_traces = traces.get(item.id, ItemTraces())
        if not _has(item_traces, spec.needs):
            skipped.append(item.id)
            continue
        examples += spec.build(item, item_traces, settings)
    return examples, skipped


def _has(traces: ItemTraces, needs: frozenset[str]) -> bool:
    checks = {
        "rationale": bool(traces.rationale and traces.rationale.strip()),
        "steps": bool(traces.steps),
        "counterfactuals": bool(traces.counterfactuals),
        "key_words": bool(traces.key_words),
    }
    return all(checks[need] for need in needs)


def _nonempty_rows(traces: pd.DataFrame, recipe: str, source: str | None) -> pd.DataFrame:
    """Rows of `recipe` (and `source`, if given) whose rationale is not blank."""
    rows = traces[(traces["recipe"] == recipe) & (traces["rationale"].str.strip() != "")]
    return rows if source is None else rows[rows["source"] == source]


def pick_rationales(traces: pd.DataFrame, recipe: str, source: str | None = None) -> dict[str, str]:
    """item id -> one rationale of `recipe` (and `source`, if given): label-correct rows first, then the
    lowest sample number. Rationales that state their label keep it (see filters in notebook 01)."""
    rows = _nonempty_rows(traces, recipe, source)
    rows = rows.sort_values(
        ["item_id", "label_correct", "sample"], ascending=[True, False, True], kind="stable"
    )
    rows = rows.drop_duplicates("item_id")
    return dict(zip(rows["item_id"], rows["rationale"], strict=True))


def pick_counterfactuals(
    traces: pd.DataFrame, recipe: str = "counterfactual", source: str | None = None
) -> dict[str, tuple[tuple[str, str], ...]]:
    """item id -> (wrong choice, rationale) pairs of `recipe` rows whose conditioning label is not gold."""
    rows = _nonempty_rows(traces, recipe, source)
    rows = rows[~rows["label_correct"].astype(bool)].sort_values(["item_id", "sample"], kind="stable")
    rows = rows.drop_duplicates(["item_id", "target_label"])
    pairs: dict[str, list[tuple[str, str]]] = {}
    for item_id, label, rationale in zip(
        rows["item_id"], rows["target_label"], rows["rationale"], strict=True
    ):
        pairs.setdefault(item_id, []).append((label, rationale))
    return {item_id: tuple(p) for item_id, p in pairs.items()}


def read_key_words(
    path: str | Path, *, top_k: int | None, fraction: float | None
) -> dict[str, tuple[str, ...]]:
    """item id -> the rationale words with the highest |attribution|, kept in rationale order.

    `path` is an attributions parquet with ATTRIBUTION_COLUMNS (one row per rationale word); keep
    `top_k` words, or ceil(`fraction` x words) (at least one).
    """
    frame = io.read_parquet(path, produced_by="03_sft (integrated gradients)")
    missing = [c for c in ATTRIBUTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} missing; an attributions file has {list(ATTRIBUTION_COLUMNS)}"
        )
    if (top_k is None) == (fraction is None):
        raise ValueError("key tokens: set exactly one of top_k and fraction")
    kept = {}
    for item_id, words in frame.groupby("item_id", sort=False):
        n = top_k if top_k is not None else max(1, math.ceil(fraction * len(words)))
        top = words.reindex(words["attribution"].abs().sort_values(ascending=False, kind="stable").index)
        kept[str(item_id)] = tuple(top.head(n).sort_values("word_index")["word"].astype(str))
    return kept
