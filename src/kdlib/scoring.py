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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kdlib.conditions import evaluation_prompt
from kdlib.data.schema import QAItem
from kdlib.decomposition import format_answer
from kdlib.models import cache_argument, encode_prompt, is_seq2seq, output_cache, pad_token_id, student_prompt
from kdlib.progress import progress


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


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids [B, T] of left-padded `rows`."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return input_ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def logits_forward(model, **inputs) -> tuple[torch.Tensor, object]:
    """(logits [B, T, V], the KV cache or None): what label-first scoring reads per position."""
    out = model(**inputs)
    return out.logits, output_cache(out)


def _causal_spans(model, contexts: list[list[int]], pairs: list[tuple[int, list[int]]], pad_id: int, forward):
    """`forward`'s values [n_tokens, ...] at the positions predicting each continuation token, per pair,
    with every context run once.

    `pairs` holds (index into `contexts`, continuation ids). The contexts' forward pass (left-padded)
    fills the KV cache and predicts each first continuation token; the cache rows are then gathered per
    pair and the continuations (minus their last token, right-padded) run on top of it.
    """
    device = next(model.parameters()).device
    input_ids, mask, positions = (t.to(device) for t in _left_padded(contexts, pad_id))
    values, cache = forward(
        model,
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    first = [values[row, -1:] for row, _ in pairs]
    width = max(len(c) for _, c in pairs) - 1
    if width == 0:
        return first
    rows = torch.tensor([row for row, _ in pairs], device=device)
    cache.reorder_cache(rows)
    follow = torch.full((len(pairs), width), pad_id, dtype=torch.long, device=device)
    follow_mask = torch.zeros_like(follow)
    for i, (_, continuation) in enumerate(pairs):
        follow[i, : len(continuation) - 1] = torch.tensor(continuation[:-1])
        follow_mask[i, : len(continuation) - 1] = 1
    lengths = mask.sum(1)[rows]
    values, _ = forward(
        model,
        input_ids=follow,
        attention_mask=torch.cat([mask[rows], follow_mask], dim=1),
        position_ids=lengths[:, None] + torch.arange(width, device=device),
        **{cache_argument(model): cache},
    )
    return [torch.cat([first[i], values[i, : len(c) - 1]]) for i, (_, c) in enumerate(pairs)]


def _seq2seq_spans(
    model, contexts: list[list[int]], pairs: list[tuple[int, list[int]]], pad_id: int, forward
):
    """As _causal_spans for an encoder-decoder: each context encoded once, every continuation decoded on
    its context's encoder states."""
    device = next(model.parameters()).device
    width = max(len(c) for c in contexts)
    input_ids = torch.tensor([c + [pad_id] * (width - len(c)) for c in contexts], device=device)
    mask = (
        torch.arange(width, device=device) < torch.tensor([len(c) for c in contexts], device=device)[:, None]
    ).long()
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    rows = torch.tensor([row for row, _ in pairs], device=device)
    label_width = max(len(c) for _, c in pairs)
    labels = torch.tensor([c + [-100] * (label_width - len(c)) for _, c in pairs], device=device)
    values, _ = forward(
        model,
        encoder_outputs=(encoded[rows],),
        attention_mask=mask[rows],
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels),
    )
    return [values[i, : len(c)] for i, (_, c) in enumerate(pairs)]


def continuation_spans(
    model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int, forward=logits_forward, desc: str
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(request index, `forward`'s values [n_tokens, ...] predicting each continuation token, the
    continuation ids [n_tokens]) for each (context, continuation) request, in batches.

    Requests sharing a context (the choices of one question) share its forward pass; `batch_size`
    distinct contexts run per batch, longest first.
    """
    pairs = [encode_pair(model, tokenizer, c, x) for c, x in requests]
    empty = [i for i, (_, x) in enumerate(pairs) if not x]
    if empty:
        raise ValueError(f"request {empty[0]}: continuation {requests[empty[0]][1]!r} adds no token")
    by_context: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(pairs):
        by_context.setdefault(tuple(context), []).append(index)
    contexts = sorted(by_context, key=len, reverse=True)
    pad_id = pad_token_id(tokenizer)
    spans = _seq2seq_spans if is_seq2seq(model) else _causal_spans
    model.eval()
    for start in progress(range(0, len(contexts), batch_size), desc=desc, unit="batch"):
        batch = contexts[start : start + batch_size]
        members = [(row, index) for row, context in enumerate(batch) for index in by_context[context]]
        values = spans(
            model, [list(c) for c in batch], [(row, pairs[i][1]) for row, i in members], pad_id, forward
        )
        for (_, index), span in zip(members, values, strict=True):
            yield index, span, torch.tensor(pairs[index][1], device=span.device)


@torch.inference_mode()
def iter_loglikelihoods(
    model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int, desc: str = "score"
) -> Iterator[tuple[int, Loglikelihood]]:
    """(request index, log P(continuation | context)) for each (context, continuation) request, batch by
    batch in continuation_spans's order (longest context first)."""
    for index, span, target in continuation_spans(
        model, tokenizer, requests, batch_size=batch_size, desc=desc
    ):
        logprobs = F.log_softmax(span.float(), dim=-1)
        total = logprobs.gather(1, target[:, None]).sum().item()
        yield index, Loglikelihood(total, bool((logprobs.argmax(-1) == target).all()))


def loglikelihoods(
    model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int, desc: str = "score"
) -> list[Loglikelihood]:
    """Log P(continuation | context) for each (context, continuation) request, in input order."""
    results: list[Loglikelihood | None] = [None] * len(requests)
    for index, result in iter_loglikelihoods(model, tokenizer, requests, batch_size=batch_size, desc=desc):
        results[index] = result
    return results


def answer_opening(fmt: str) -> str:
    """The text a target puts before the answer ("<answer>" or "Answer: ")."""
    marker = "\x00"
    return format_answer(marker, fmt).split(marker)[0]


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
