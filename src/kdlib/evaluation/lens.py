"""Logit lens and tuned lens: at which layer of a student the gold answer becomes top-ranked.

The residual stream is read after the embeddings and after each of the L layers (L + 1 states; the
last one is what the final norm receives) and decoded by the student's own unembedding: final norm,
output embedding, T5's tied-embedding scale, Gemma's logit soft cap. The logit lens (nostalgebraist,
2020) decodes every state as it is. The tuned lens (Belrose et al., 2023) first maps state l < L through
an affine translator h + A_l h + b_l, zero-initialised so that it starts as the logit lens, trained to
minimise KL(final distribution || lens distribution); the last state is read as is, so both lenses end at
the model's own output.

Both are read where label-first scoring (kdlib.evaluation.scoring) reads the student: the positions predicting
the answer tokens after the evaluation prompt and the answer opening. An item's gold answer is
top-ranked at a layer when its choice has the highest summed lens log-probability among the choices
(items with choices) or its first token ranks first in the vocabulary (open items). The emergence layer
of an item is the first layer from which the gold answer stays top-ranked up to the output.

kdlib implements the tuned lens itself rather than use the tuned-lens package (0.2.0): that package
recognises only Llama, GPT-2, GPT-NeoX, OPT and BLOOM-type models (not Gemma 3 or T5), and its training
loop is a command-line script. tests/test_lens.py checks kdlib's lenses against the package's on Llama.
"""

from __future__ import annotations

import math
import shutil
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kdlib import io
from kdlib.cells import CELL_KEYS, load_trained, trained_digest
from kdlib.data.schema import QAItem, items_digest
from kdlib.evaluation.scoring import answer_context
from kdlib.likelihood import continuation_spans
from kdlib.models import is_seq2seq, output_cache
from kdlib.progress import progress
from kdlib.stage_writer import StageWriter

FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm")
LENS_ROW_COLUMNS = [
    "item_id",
    "lens",
    "layer",
    "depth",
    "gold_rank",
    "gold_logprob",
    "gold_choice_rank",
    "gold_top",
    "kl_to_final",
]


def final_norm(model) -> nn.Module:
    """The norm applied to the last residual state before the output embedding."""
    decoder = model.get_decoder()
    for name in FINAL_NORM_NAMES:
        if isinstance(getattr(decoder, name, None), nn.Module):
            return getattr(decoder, name)
    raise ValueError(
        f"lens: cannot find the final norm of {type(model).__name__} "
        f"(looked for decoder attributes {', '.join(FINAL_NORM_NAMES)})"
    )


class Unembedding(nn.Module):
    """The student's map from a residual state [..., D] to logits [..., V], frozen."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        self.norm, self.head = final_norm(model), model.get_output_embeddings()
        tied_t5 = config.model_type in ("t5", "mt5", "umt5") and config.tie_word_embeddings
        self.scale = config.d_model**-0.5 if tied_t5 else 1.0
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.norm(hidden) * self.scale)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def residual_forward(model, **inputs) -> tuple[torch.Tensor, object]:
    """(residual states [B, T, L+1, D], the KV cache or None): a forward pass that also keeps the last
    state before the final norm (transformers reports it after the norm)."""
    captured = []
    hook = final_norm(model).register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        out = model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    hidden = out.decoder_hidden_states if is_seq2seq(model) else out.hidden_states
    return torch.stack([*hidden[:-1], captured[-1]], dim=2), output_cache(out)


class TunedLens(nn.Module):
    """Affine translators for residual states 0..L-1: h + A_l h + b_l, zero-initialised (the logit lens)."""

    def __init__(self, n_layers: int, hidden_size: int):
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(n_layers))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)

    @classmethod
    def for_model(cls, model) -> TunedLens:
        config = model.config.get_text_config()
        n_layers = getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
        hidden_size = getattr(config, "hidden_size", None) or config.d_model
        device = next(model.parameters()).device
        return cls(n_layers, hidden_size).to(device)

    def translate(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """States of one layer [..., D] as the lens reads them; the last layer passes unchanged."""
        if layer == len(self.translators):
            return states
        return states + self.translators[layer](states)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """[N, L+1, D] -> [N, L+1, D]."""
        return torch.stack([self.translate(states[:, layer], layer) for layer in range(states.shape[1])], 1)


def lens_logprobs(unembed: Unembedding, states: torch.Tensor, lens: TunedLens | None) -> torch.Tensor:
    """Log-probabilities [N, L+1, V] of residual states [N, L+1, D] under the logit lens (None) or `lens`."""
    translated = states if lens is None else lens(states)
    return F.log_softmax(unembed(translated.to(unembed.head.weight.dtype)).float(), dim=-1)


def _kl_to_final(logprobs: torch.Tensor) -> torch.Tensor:
    """KL(last layer || layer l) in nats per position, [N, L+1], from log-probabilities [N, L+1, V]."""
    final = logprobs[:, -1:]
    return (final.exp() * (final - logprobs)).sum(-1)


def lens_requests(model, tokenizer, transform: str, fmt: str, item: QAItem) -> list[tuple[str, str]]:
    """(answer_context, continuation) read by the lenses: every choice (items with choices) or the gold
    answer (open items)."""
    context = answer_context(model, tokenizer, transform, fmt, item)
    return [(context, answer) for answer in (item.choices or [item.answer])]


@torch.inference_mode()
def lens_ranks(
    model,
    tokenizer,
    transform: str,
    fmt: str,
    items: list[QAItem],
    lenses: dict[str, TunedLens | None],
    *,
    batch_size: int,
    desc: str = "lens",
) -> pd.DataFrame:
    """One row per item, lens and layer (LENS_ROW_COLUMNS): the gold first token's vocabulary rank
    (0 = top), the gold continuation's summed log-probability, the gold choice's rank among the choices
    (NaN for open items), whether gold is top-ranked, and the mean KL to the output over the gold tokens."""
    unembed = Unembedding(model)
    requests, owners = [], []
    for item in items:
        for answer_index, request in enumerate(lens_requests(model, tokenizer, transform, fmt, item)):
            requests.append(request)
            owners.append((item, answer_index))
    n_states = None
    per_item: dict[str, dict[str, dict]] = {}  # item -> lens -> answer index / gold_rank / kl -> [L+1]
    spans = continuation_spans(
        model, tokenizer, requests, batch_size=batch_size, forward=residual_forward, desc=desc
    )
    for index, states, target in spans:
        item, answer_index = owners[index]
        is_gold = not item.choices or answer_index == item.answer_index
        n_states = states.shape[1]
        record = per_item.setdefault(item.id, {})
        states = states.float()
        for name, lens in lenses.items():
            logprobs = lens_logprobs(unembed, states, lens)
            target_logprobs = logprobs.gather(2, target[:, None, None].expand(-1, n_states, 1))[..., 0]
            record.setdefault(name, {})[answer_index] = target_logprobs.sum(0).cpu().numpy()
            if is_gold:
                first = logprobs[0]
                rank = (first > first.gather(1, target[:1, None].expand(n_states, 1))).sum(-1)
                record[name]["gold_rank"] = rank.cpu().numpy()
                record[name]["kl"] = _kl_to_final(logprobs).mean(0).cpu().numpy()
    rows = []
    for item in items:
        for name in lenses:
            record = per_item[item.id][name]
            gold = item.answer_index if item.choices else 0
            if item.choices:
                choice_logprobs = np.stack([record[i] for i in range(len(item.choices))])  # [C, L+1]
                choice_rank = (choice_logprobs > choice_logprobs[gold]).sum(0)
            for layer in range(n_states):
                vocab_rank = int(record["gold_rank"][layer])
                rank = int(choice_rank[layer]) if item.choices else math.nan
                rows.append(
                    {
                        "item_id": item.id,
                        "lens": name,
                        "layer": layer,
                        "depth": layer / (n_states - 1),
                        "gold_rank": vocab_rank,
                        "gold_logprob": float(record[gold][layer]),
                        "gold_choice_rank": rank,
                        "gold_top": (rank == 0) if item.choices else vocab_rank == 0,
                        "kl_to_final": float(record["kl"][layer]),
                    }
                )
    return pd.DataFrame(rows, columns=LENS_ROW_COLUMNS)


@torch.inference_mode()
def lens_training_states(
    model, tokenizer, transform: str, fmt: str, items: list[QAItem], *, batch_size: int
) -> torch.Tensor:
    """Residual states [N, L+1, D] (float32) at every position the lenses read on `items`."""
    requests = [r for item in items for r in lens_requests(model, tokenizer, transform, fmt, item)]
    spans = continuation_spans(
        model, tokenizer, requests, batch_size=batch_size, forward=residual_forward, desc="lens states"
    )
    return torch.cat([states.float() for _, states, _ in spans])


def train_tuned_lens(
    model, states: torch.Tensor, *, steps: int, positions_per_step: int, learning_rate: float, seed: int
) -> tuple[TunedLens, pd.DataFrame]:
    """A tuned lens for `model` fitted on residual states [N, L+1, D]: Adam on the KL from the output
    distribution, averaged over layers 0..L-1 and over `positions_per_step` positions drawn per step.
    Returns the lens and its loss per step (nats)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lens = TunedLens.for_model(model)
    unembed = Unembedding(model).requires_grad_(False)
    states = states.to(next(lens.parameters()).device)
    n_layers = len(lens.translators)
    optimiser = torch.optim.Adam(lens.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in progress(range(steps), desc="tuned lens", unit="step"):
        batch = states[
            torch.randint(len(states), (min(positions_per_step, len(states)),), generator=generator)
        ]
        with torch.no_grad():
            final = F.log_softmax(unembed(batch[:, -1]).float(), dim=-1)
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        for layer in range(n_layers):  # one backward per layer keeps one [P, V] logit block alive
            logprobs = F.log_softmax(unembed(lens.translate(batch[:, layer], layer)).float(), dim=-1)
            loss = F.kl_div(logprobs, final, log_target=True, reduction="batchmean") / n_layers
            loss.backward()
            total += loss.item()
        optimiser.step()
        history.append({"step": step, "kl": total})
    lens.eval().requires_grad_(False)
    return lens, pd.DataFrame(history)


def emergence(ranks: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per item (and `keys`, e.g. cell and lens): the first layer (and depth) from which gold stays
    top-ranked to the output; NaN where gold is not top-ranked at the output."""
    rows = []
    for group_keys, group in ranks.groupby([*keys, "item_id"], sort=False):
        group = group.sort_values("layer")
        top = group["gold_top"].to_numpy(dtype=bool)
        layers, depths = group["layer"].to_numpy(), group["depth"].to_numpy()
        staying = np.flatnonzero(~top)
        first = 0 if len(staying) == 0 else staying[-1] + 1
        emerged = first < len(top)
        rows.append(
            {
                **dict(zip([*keys, "item_id"], group_keys, strict=True)),
                "emergence_layer": float(layers[first]) if emerged else math.nan,
                "emergence_depth": float(depths[first]) if emerged else math.nan,
            }
        )
    return pd.DataFrame(rows)


def lens_summary(ranks: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys`, lens and layer: the share of items with gold top-ranked, the median vocabulary rank
    of the gold first token, and the mean KL to the output (nats)."""
    return (
        ranks.groupby([*keys, "lens", "layer", "depth"], sort=False)
        .agg(
            n=("item_id", "size"),
            gold_top_rate=("gold_top", "mean"),
            median_gold_rank=("gold_rank", "median"),
            kl_to_final=("kl_to_final", "mean"),
        )
        .reset_index()
    )


def lens_cell(
    cell_dir, cell: dict, train_items: list[QAItem], eval_items: list[QAItem], *, device, seed, params
):
    """Both lenses for one trained cell (a row of sft/summary.csv) under LensParams `params`:
    {"ranks": lens_ranks on `eval_items`, "training": the tuned lens's loss per step (or None),
    "tuned_lens": the fitted TunedLens (or None)}, frames tagged with the cell's keys."""
    model, tokenizer = load_trained(cell_dir, device=device, seed=seed)
    fmt = io.read_json(cell_dir / "meta.json")["params"]["trace_format"]
    transform, tags = cell["transform"], {key: cell[key] for key in (*CELL_KEYS, "transform")}
    lenses: dict[str, TunedLens | None] = {"logit": None}
    training = None
    if params.tuned:
        states = lens_training_states(
            model, tokenizer, transform, fmt, train_items[: params.train_items], batch_size=params.batch_size
        )
        lenses["tuned"], training = train_tuned_lens(
            model,
            states,
            steps=params.steps,
            positions_per_step=params.positions_per_step,
            learning_rate=params.learning_rate,
            seed=seed,
        )
        training = training.assign(positions=len(states), **tags)
    label = "/".join(str(cell[k]) for k in CELL_KEYS)
    ranks = lens_ranks(
        model,
        tokenizer,
        transform,
        fmt,
        eval_items,
        lenses,
        batch_size=params.batch_size,
        desc=f"{label} lens",
    )
    return {"ranks": ranks.assign(**tags), "training": training, "tuned_lens": lenses.get("tuned")}


def lens_key(cell_dir, train_items, eval_items, *, seed: int, params) -> dict:
    """What one cell's lens frames depend on: the trained cell, both item lists, the seed, LensParams."""
    return {
        "trained_cell": trained_digest(cell_dir),
        "train_items": items_digest(train_items[: params.train_items]) if params.tuned else None,
        "eval_items": items_digest(eval_items),
        "seed": seed,
        "lens": params.model_dump(),
    }


def lens_cells(run, cells: pd.DataFrame, train_items, eval_items, *, device, seed: int, params) -> dict:
    """lens_cell for every row of sft/summary.csv of `run` (a RunLayout); each tuned lens is saved to
    run.tuned_lens(cell). Returns {"ranks", "training"} frames, stacked. Each cell's frames are kept under
    run.evaluated_cell(cell, "lens") and reused while lens_key is unchanged and its tuned lens exists."""

    def compute(cell: dict) -> dict:
        found = lens_cell(
            run.trained_cell(cell["cell"]),
            cell,
            train_items,
            eval_items,
            device=device,
            seed=seed,
            params=params,
        )
        if found["tuned_lens"] is not None:
            with io.atomic_path(run.tuned_lens(cell["cell"])) as tmp:
                save_file(found["tuned_lens"].state_dict(), tmp)
        return {"ranks": found["ranks"], "training": found["training"]}

    ranks, training = [], []
    for cell in cells.to_dict(orient="records"):
        folder = run.evaluated_cell(cell["cell"], "lens")
        if params.tuned and not run.tuned_lens(cell["cell"]).exists():
            shutil.rmtree(folder, ignore_errors=True)  # its tuned lens file is gone: fit it again
        key = lens_key(run.trained_cell(cell["cell"]), train_items, eval_items, seed=seed, params=params)
        frames, _ = io.stored_frames(folder, key, partial(compute, cell))
        ranks.append(frames["ranks"])
        if frames["training"] is not None:
            training.append(frames["training"])
    return {
        "ranks": pd.concat(ranks, ignore_index=True),
        "training": pd.concat(training, ignore_index=True) if training else pd.DataFrame(),
    }


def write_lens_tables(
    out: StageWriter, run, cells: pd.DataFrame, train_items, eval_items, *, device, seed: int, params
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """lens_cells for notebook 04, its tables handed to `out` (ranks, per-layer summary, emergence, and
    the tuned lenses' training); returns (lens_summary, emergence_summary) over the grid's cells."""
    lens = lens_cells(run, cells, train_items, eval_items, device=device, seed=seed, params=params)
    layer_summary = out.table(run.lens_summary, lens_summary(lens["ranks"], list(CELL_KEYS)))
    emergence = emergence_summary(lens["ranks"], list(CELL_KEYS))
    out.table(run.lens_emergence, emergence, title="Where the answer emerges (lens)")
    out.table(run.lens_ranks, lens["ranks"])
    if params.tuned:
        out.table(run.lens_training, lens["training"])
        out.produced("tuned_lens/")
    return layer_summary, emergence


def emergence_summary(ranks: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys` and lens: items, the share whose gold answer is top-ranked at the output, and the mean
    and median emergence layer and depth (0 = embeddings, 1 = output) over those items."""
    per_item = emergence(ranks, [*keys, "lens"])
    return (
        per_item.groupby([*keys, "lens"], sort=False)
        .agg(
            n=("item_id", "size"),
            top_at_output=("emergence_layer", lambda layers: layers.notna().mean()),
            mean_emergence_layer=("emergence_layer", "mean"),
            median_emergence_layer=("emergence_layer", "median"),
            mean_emergence_depth=("emergence_depth", "mean"),
        )
        .reset_index()
    )
