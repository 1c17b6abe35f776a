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

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdlib.conditions import evaluation_prompt
from kdlib.data.schema import QAItem
from kdlib.decomposition import format_answer
from kdlib.models import encode_prompt, is_seq2seq, student_prompt


@dataclass(frozen=True)
class Loglikelihood:
    """Summed log-probability of a continuation, and whether greedy decoding would produce it."""

    logprob: float
    is_greedy: bool


def encode_pair(model, tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by lm-evaluation-harness's rule: a causal LM's continuation is
    what encoding context + continuation adds after the context's tokens; an encoder-decoder encodes the
    context for its encoder and the continuation alone for its decoder."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode_prompt(model, tokenizer, context)
    if is_seq2seq(model):
        return context_ids, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = encode_prompt(model, tokenizer, context + continuation)
    return context_ids, whole[len(context_ids) :]


def _causal_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Left-padded inputs (context + continuation minus its last token) [B, T], the attention mask and
    position ids [B, T], and K = the longest continuation: its tokens are predicted at the last K
    positions of every row."""
    rows = [(c + x)[:-1] for c, x in pairs]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return input_ids, mask, positions, max(len(x) for _, x in pairs)


@torch.inference_mode()
def loglikelihoods(
    model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int, desc: str = "score"
) -> list[Loglikelihood]:
    """Log P(continuation | context) for each (context, continuation) request, in input order.

    Requests are batched longest first; a causal LM computes logits only at the continuation positions.
    """
    pairs = [encode_pair(model, tokenizer, c, x) for c, x in requests]
    empty = [i for i, (_, x) in enumerate(pairs) if not x]
    if empty:
        raise ValueError(f"request {empty[0]}: continuation {requests[empty[0]][1]!r} adds no token")
    device = next(model.parameters()).device
    seq2seq = is_seq2seq(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[Loglikelihood | None] = [None] * len(pairs)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = [pairs[i] for i in order[start : start + batch_size]]
        if seq2seq:
            encoded = tokenizer.pad({"input_ids": [c for c, _ in batch]}, return_tensors="pt").to(device)
            width = max(len(x) for _, x in batch)
            labels = torch.tensor([x + [-100] * (width - len(x)) for _, x in batch], device=device)
            decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = model(**encoded, decoder_input_ids=decoder_input_ids).logits
            spans = [logits[i, : len(x)] for i, (_, x) in enumerate(batch)]
        else:
            input_ids, mask, positions, keep = _causal_batch(batch, pad_id)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            ).logits
            spans = [logits[i, keep - len(x) :] for i, (_, x) in enumerate(batch)]
        for index, span, (_, continuation) in zip(
            order[start : start + batch_size], spans, batch, strict=True
        ):
            logprobs = F.log_softmax(span.float(), dim=-1)
            target = torch.tensor(continuation, device=logprobs.device)
            total = logprobs.gather(1, target[:, None]).sum().item()
            results[index] = Loglikelihood(total, bool((logprobs.argmax(-1) == target).all()))
    return results


def answer_opening(fmt: str) -> str:
    """The text a target puts before the answer ("<answer>" or "Answer: ")."""
    marker = "\x00"
    return format_answer(marker, fmt).split(marker)[0]


def choice_requests(model, tokenizer, transform: str, fmt: str, item: QAItem) -> list[tuple[str, str]]:
    """(context, choice) per choice of `item`: the evaluation prompt, then the answer opening."""
    context = student_prompt(model, tokenizer, evaluation_prompt(transform, item)) + answer_opening(fmt)
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
