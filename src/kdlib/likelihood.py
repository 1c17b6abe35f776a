"""Log-likelihoods of continuations under a model, with each context run once: what label-first scoring
(kdlib.evaluation.scoring), the lenses and a teacher backend's reply choices read. Definitions follow
lm-evaluation-harness (`multiple_choice` tasks): the continuation's tokens are what the whole text adds
to the context's tokens (trailing context spaces move to the continuation)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdlib.models import cache_argument, encode_prompt, is_seq2seq, output_cache, pad_token_id
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
