"""Integrated gradients (Captum, layer IG on the input embeddings) over teacher rationale tokens.

For each training item the student reads its question, the teacher rationale and the answer opening,
and IG attributes the log-probability of the gold answer to the rationale tokens: the baseline replaces
only the rationale tokens by the pad token, so every other token's attribution is exactly zero. Token
attributions are summed into the rationale's whitespace words, which is the file (ATTRIBUTION_COLUMNS)
that the key_tokens_after_label condition reads; notebook 03 writes it before training those cells.

The rationale is placed before the answer even for a student trained with it after the label: in a
causal LM only that order lets the answer depend on the rationale's tokens.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import torch

from kdlib import io
from kdlib.cells import load_trained
from kdlib.data.schema import QAItem
from kdlib.likelihood import encode_pair
from kdlib.models import is_seq2seq, pad_token_id, student_prompt
from kdlib.progress import progress
from kdlib.traces.decomposition import answer_opening, format_rationale
from kdlib.training.conditions import ATTRIBUTION_COLUMNS, evaluation_prompt, pick_rationales


def _answer_logprob(model, first: int, answer: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """ids [batch, T] -> [batch]: summed log-probability of the `answer` tokens [A], the first of them
    predicted at position `first`."""
    logits = model(input_ids=ids).logits[:, first : first + len(answer)].float()
    return logits.log_softmax(-1).gather(2, answer.expand(len(ids), -1)[..., None]).sum((1, 2))


def word_attributions(rationale: str, span_start: int, offsets, token_scores) -> list[tuple[int, str, float]]:
    """Sum token scores into the rationale's whitespace words: (word index, word, attribution) per word.

    `offsets` are the tokens' (start, end) characters in the full text, the rationale starting at
    `span_start`. A word owns the whitespace before it, so every rationale token lands in a word; a token
    spanning two words counts for each.
    """
    words, position = [], 0
    for word in rationale.split():
        end = rationale.index(word, position) + len(word)
        words.append((span_start + position, span_start + end, word))
        position = end
    totals = [0.0] * len(words)
    for (start, end), score in zip(offsets, token_scores, strict=True):
        for i, (word_start, word_end, _) in enumerate(words):
            if start < word_end and end > word_start:
                totals[i] += float(score)
    return [(i, word, totals[i]) for i, (_, _, word) in enumerate(words)]


def integrated_gradients(
    model,
    tokenizer,
    transform: str,
    fmt: str,
    items: list[QAItem],
    rationales: dict[str, str],
    *,
    n_steps: int = 32,
    internal_batch_size: int = 8,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(word attributions: ATTRIBUTION_COLUMNS + convergence_delta, token attributions: item_id,
    token_index, token, attribution) for the items that have a rationale, under a causal student."""
    from captum.attr import LayerIntegratedGradients  # heavy: only key-token grids attribute

    if is_seq2seq(model):
        raise ValueError("integrated gradients over rationale tokens needs a causal student (decoder-only)")
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    model.eval()
    words, tokens = [], []
    for item in progress(
        [i for i in items if rationales.get(i.id)], desc="integrated gradients", unit="item"
    ):
        prompt = student_prompt(model, tokenizer, evaluation_prompt(transform, item))
        rationale = rationales[item.id].strip()
        block = format_rationale(rationale, fmt)
        context = prompt + block + answer_opening(fmt)
        context_ids, answer_ids = encode_pair(model, tokenizer, context, item.answer)
        context = context.rstrip()  # encode_pair moved trailing spaces into the answer
        span_start = len(prompt) + block.index(rationale)
        span_end = span_start + len(rationale)
        offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) != len(context_ids):
            raise ValueError(
                f"item {item.id}: the tokenizer's offsets do not line up with the prompt's tokens"
            )
        in_rationale = torch.tensor([start < span_end and end > span_start for start, end in offsets])
        input_ids = torch.tensor([context_ids + answer_ids[:-1]], device=device)
        baseline = input_ids.clone()
        baseline[0, : len(context_ids)][in_rationale.to(device)] = pad_id
        answer = torch.tensor(answer_ids, device=device)
        scorer = partial(_answer_logprob, model, len(context_ids) - 1, answer)
        explainer = LayerIntegratedGradients(scorer, model.get_input_embeddings())
        scores, delta = explainer.attribute(
            input_ids,
            baselines=baseline,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        token_scores = scores.sum(-1)[0, : len(context_ids)].detach().cpu()
        kept = [i for i in range(len(context_ids)) if in_rationale[i]]
        tokens += [
            (item.id, n, tokenizer.decode([context_ids[i]]), float(token_scores[i]))
            for n, i in enumerate(kept)
        ]
        words += [
            (item.id, index, word, score, float(delta))
            for index, word, score in word_attributions(
                rationale, span_start, [offsets[i] for i in kept], token_scores[kept].tolist()
            )
        ]
    word_frame = pd.DataFrame(words, columns=[*ATTRIBUTION_COLUMNS, "convergence_delta"])
    token_frame = pd.DataFrame(tokens, columns=["item_id", "token_index", "token", "attribution"])
    return word_frame, token_frame


def attribute_run(
    run, cells: pd.DataFrame, items: list[QAItem], traces: pd.DataFrame, *, device, seed, params
) -> dict:
    """IG under the first causal cell of `params.condition` (KeyTokenParams; `cells` are summary rows of
    trained cells), over `items` with that cell's rationales (its recipe and source, from traces.parquet).

    Writes run.attributions (words), run.token_attributions and, last, run.attribution_record naming
    what they came from; a record that matches (same cell params, IG settings and items) is reused.
    Returns the cell's summary row."""
    attributed = items[: params.n_items]
    for cell in cells[cells["condition"] == params.condition].to_dict(orient="records"):
        cell_dir = run.trained_cell(cell["cell"])
        model, tokenizer = load_trained(cell_dir, device=device, seed=seed)
        if is_seq2seq(model):
            continue
        meta = io.read_json(cell_dir / "meta.json")["params"]
        record = {
            "cell": cell["cell"],
            "cell_params": meta,
            "n_steps": params.n_steps,
            "internal_batch_size": params.internal_batch_size,
            "items": [item.id for item in attributed],
        }
        if run.attribution_record.exists() and io.read_json(run.attribution_record) == record:
            print(f"attributions of {cell['cell']} computed earlier: {run.attributions}")
            return cell
        spec = meta["condition"]
        rationales = pick_rationales(traces, spec["rationale_recipe"], spec["rationale_source"])
        words, tokens = integrated_gradients(
            model,
            tokenizer,
            cell["transform"],
            meta["trace_format"],
            attributed,
            rationales,
            n_steps=params.n_steps,
            internal_batch_size=params.internal_batch_size,
        )
        run.attribution_record.unlink(missing_ok=True)
        io.write_parquet(run.attributions, words)
        io.write_parquet(run.token_attributions, tokens)
        io.write_json(run.attribution_record, record)
        return cell
    raise ValueError(
        f"sft.key_tokens.condition {params.condition!r}: no trained causal (decoder-only) cell to attribute "
        "under; integrated gradients needs one"
    )
