"""Label-first scoring: rank each answer choice by the student's log-probability right after the prompt.

No generation: one forward pass per (context, choice) pair, in batches. The context is the question the
student was trained on, asked the way its condition asks it, followed by the answer opening
("<answer>" or "Answer:"), so a student trained with the trace after the label is scored exactly where
it states the label. Definitions follow lm-evaluation-harness (`multiple_choice` tasks): the
continuation's tokens are what the whole text adds to the context's tokens (trailing context spaces
move to the continuation); `acc` is the argmax of the summed log-probabilities and `acc_norm` the argmax
after dividing each by its choice's length in characters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdlib.data.schema import QAItem
from kdlib.likelihood import loglikelihoods
from kdlib.models import student_prompt
from kdlib.traces.decomposition import answer_opening
from kdlib.training.conditions import evaluation_prompt


def answer_context(model, tokenizer, transform: str, fmt: str, item: QAItem) -> str:
    """What precedes the answer: the evaluation prompt of `transform`, then the answer opening."""
    return student_prompt(model, tokenizer, evaluation_prompt(transform, item)) + answer_opening(fmt)


def choice_requests(model, tokenizer, transform: str, fmt: str, item: QAItem) -> list[tuple[str, str]]:
    """(answer_context, choice) per choice of `item`."""
    context = answer_context(model, tokenizer, transform, fmt, item)
    return [(context, choice) for choice in item.choices]


def score_choices(
    model, tokenizer, transform: str, fmt: str, items: list[QAItem], *, batch_size: int, desc: str = "score"
) -> pd.DataFrame:
    """Per item with choices: gold index, the acc and acc_norm predictions and their correctness, and the
    per-choice log-probabilities. Items without choices are an error (label-first needs a closed set)."""
    open_items = [item.id for item in items if not item.choices]
    if open_items:
        raise ValueError(f"label-first scoring needs answer choices; item {open_items[0]} has none")
    requests = [r for item in items for r in choice_requests(model, tokenizer, transform, fmt, item)]
    scored = iter(loglikelihoods(model, tokenizer, requests, batch_size=batch_size, desc=desc))
    rows = []
    for item in items:
        results = [next(scored) for _ in item.choices]
        logprobs = np.array([r.logprob for r in results])
        lengths = np.array([float(len(c)) for c in item.choices])
        predicted, predicted_norm = int(np.argmax(logprobs)), int(np.argmax(logprobs / lengths))
        rows.append(
            {
                "item_id": item.id,
                "gold_index": item.answer_index,
                "predicted_index": predicted,
                "predicted_index_norm": predicted_norm,
                "acc": predicted == item.answer_index,
                "acc_norm": predicted_norm == item.answer_index,
                "gold_is_greedy": results[item.answer_index].is_greedy,
                "choice_logprobs": logprobs.tolist(),
            }
        )
    return pd.DataFrame(rows)
