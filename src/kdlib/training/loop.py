"""Student SFT: tokenisation and target-only loss masking shared by every condition, length-grouped batches,
a resumable training loop, and the grid runner (students x conditions x seeds) of notebook 03.

Causal LMs read prompt + target and learn only the target tokens (prompt labels are IGNORE_INDEX);
encoder-decoders read the prompt in the encoder and learn the target in the decoder. The loss is the
example-weighted mean cross-entropy over target tokens, normalised over the whole accumulation group.

Data-parallel runs (accelerate, DDP) spread the micro-batches of each planned step over the processes, so
one params file trains the same model on 1 or N processes: the effective batch is always
batch_size x grad_accum.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from kdlib.io import atomic_folder
from kdlib.models import encode_prompt, is_seq2seq, student_prompt
from kdlib.progress import progress
from kdlib.training.conditions import TextExample, target_token_ids

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenised example. Causal: `labels` is `input_ids` with IGNORE_INDEX on every prompt token.
    Encoder-decoder: `input_ids` is the prompt and `labels` the target alone."""

    item_id: str
    task: str
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0

    @property
    def n_target_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def length(self) -> int:
        """Padded width this example needs in a batch (what length grouping sorts by)."""
        return max(len(self.input_ids), len(self.labels))


def encode_example(model, tokenizer, example: TextExample, max_length: int) -> Example:
    """Tokenise one TextExample for `model`'s family; the target always ends with the EOS token."""
    prompt_ids = encode_prompt(model, tokenizer, student_prompt(model, tokenizer, example.prompt))
    target_ids = encode_target(tokenizer, example.target)
    return example_from_ids(example, prompt_ids, target_ids, seq2seq=is_seq2seq(model), max_length=max_length)


def encode_target(tokenizer, target: str) -> list[int]:
    """The ids a student learns for `target`: its tokens, then the EOS token."""
    return target_token_ids(tokenizer, target) + [tokenizer.eos_token_id]


def example_from_ids(
    example: TextExample, prompt_ids: list[int], target_ids: list[int], *, seq2seq: bool, max_length: int
) -> Example:
    """The Example of `example` from its tokenised prompt and target (EOS included); an error naming the
    item when either side exceeds `max_length`."""
    if seq2seq:
        input_ids, labels = prompt_ids, target_ids
    else:
        input_ids, labels = prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids
    if max(len(input_ids), len(labels)) > max_length:
        raise ValueError(
            f"item {example.item_id} ({example.task}): {len(input_ids)} input / {len(labels)} label tokens "
            f"exceed sft.max_length={max_length}"
        )
    return Example(example.item_id, example.task, input_ids, labels, example.weight)


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad: input_ids and attention_mask [batch, max_input], labels and weights [batch, max_label]
    (the same width for causal LMs); padding carries IGNORE_INDEX and weight 0."""
    n = len(examples)
    input_width = max(len(e.input_ids) for e in examples)
    label_width = max(len(e.labels) for e in examples)
    input_ids = torch.full((n, input_width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, input_width), dtype=torch.long)
    labels = torch.full((n, label_width), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros((n, label_width), dtype=torch.float32)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
        weights[row, : len(example.labels)] = example.weight
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": weights}


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only where a target token is predicted, with their labels and weights.

    Returns logits [batch, K, vocab], labels [batch, K], weights [batch, K]. A causal LM computes the
    LM head only at the K positions whose next token is a target in some row (logits_to_keep), so
    prompt tokens cost no vocabulary projection.
    """
    labels, weights = batch["labels"], batch["weights"]
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if is_seq2seq(core):
        decoder_input_ids = core.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
        ).logits
        return logits, labels, weights
    next_labels, next_weights = labels[:, 1:], weights[:, 1:]
    keep = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits
    return logits, next_labels[:, keep], next_weights[:, keep]


def weighted_loss_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of weight x cross-entropy (fp32); logits [B, K, V], labels/weights [B, K]."""
    losses = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return (losses * weights.flatten()).sum()


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within windows of 8 batches, then shuffle the batches: little padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def step_plan(lengths: list[int], batch_size: int, grad_accum: int, epochs: int, seed: int) -> list[dict]:
    """Every optimiser step of the run, fixed by the seed: {epoch, batches: [[example index, ...], ...]}.

    Fixing the plan up front is what lets an interrupted run resume with exactly the same batches.
    """
    rng = random.Random(seed)
    plan = []
    for epoch in range(epochs):
        batches = length_grouped_batches(lengths, batch_size, rng)
        for start in range(0, len(batches), grad_accum):
            plan.append(
                {
                    "epoch": epoch + min(start + grad_accum, len(batches)) / len(batches),
                    "batches": batches[start : start + grad_accum],
                }
            )
    return plan


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    bf16: bool
    seed: int
    compile: bool = False
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0: none
    max_grad_norm: float = 1.0


class Checkpoint:
    """The resumable state of one training run in a folder: trainable weights (safetensors), optimiser
    and scheduler state, torch RNG state and the log so far. Written atomically (io.atomic_folder)."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint

    def save(self, model, optimizer, scheduler, step: int, log_rows: list[dict]) -> None:
        trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        with atomic_folder(self.folder) as staging:
            save_file(trainable, staging / "trainable.safetensors")
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            torch.save(state, staging / "state.pt")
            progress = {"fingerprint": self.fingerprint, "step": step, "log": log_rows}
            (staging / "progress.json").write_text(json.dumps(progress))

    def progress(self) -> dict | None:
        """The saved {fingerprint, step, log} of this run, or None (no checkpoint, or another run's)."""
        path = self.folder / "progress.json"
        if not path.exists():
            return None
        progress = json.loads(path.read_text())
        if progress["fingerprint"] != self.fingerprint:
            log.warning("%s holds another run's checkpoint; starting afresh", self.folder)
            return None
        return progress

    def load(self, model, optimizer, scheduler) -> tuple[int, list[dict]]:
        """Restore into model/optimizer/scheduler; returns (steps done, log rows). (0, []) when there is
        no checkpoint of this run (another run's is ignored and later replaced)."""

        progress = self.progress()
        if progress is None:
            return 0, []
        trainable = load_file(self.folder / "trainable.safetensors")
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in trainable.items():
                parameters[name].copy_(tensor)
        state = torch.load(self.folder / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        return progress["step"], progress["log"]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def train(
    model,
    examples: list[Example],
    settings: TrainSettings,
    *,
    pad_token_id: int,
    checkpoint: Checkpoint | None = None,
    on_step: Callable[[dict], None] | None = None,
    desc: str = "train",
    accelerator=None,
) -> pd.DataFrame:
    """Train the trainable parameters of `model` on `examples` with AdamW and linear decay.

    Resumes from `checkpoint` when it holds this run's state, and saves it every
    `settings.checkpoint_every` steps. `on_step` sees each log row. With an `accelerate.Accelerator` of
    several processes, `model` is wrapped in DDP and process r runs micro-batches r, r+N, ... of every
    step; only the main process saves checkpoints. Returns the training log (the same on every process):
    one row per optimiser step (loss, learning rate, tokens, padded tokens, target tokens, seconds).
    """
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    device = accelerator.device if accelerator else next(model.parameters()).device
    processes, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    torch.manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    plan = step_plan(
        [e.length for e in examples], settings.batch_size, settings.grad_accum, settings.epochs, settings.seed
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / len(plan))
    done, rows = checkpoint.load(model, optimizer, scheduler) if checkpoint else (0, [])
    parallel = accelerator.prepare_model(model) if processes > 1 else model
    forward_model = torch.compile(parallel, dynamic=True) if settings.compile else parallel
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    seconds_before = rows[-1]["seconds"] if rows else 0.0
    totals = {k: rows[-1][k] if rows else 0 for k in ("tokens", "padded_tokens", "target_tokens")}
    seq2seq = is_seq2seq(model)
    model.train()
    started = time.perf_counter()
    bar = progress(total=len(plan), initial=done, desc=desc, unit="step", disable=rank != 0)
    for step in range(done, len(plan)):
        batches = [collate([examples[i] for i in ids], pad_token_id) for ids in plan[step]["batches"]]
        group_targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        # DDP averages gradients over processes, hence x processes; a process with no micro-batch this
        # step still joins the gradient all-reduce, with a zero-weighted copy of the first one.
        own = list(range(rank, len(batches), processes))
        scale = processes if own else 0
        own = own or [0]
        step_loss = 0.0
        for n, index in enumerate(own):
            batch = {k: v.to(device) for k, v in batches[index].items()}
            last = n == len(own) - 1
            with nullcontext() if last or processes == 1 else parallel.no_sync():
                with autocast:
                    logits, labels, weights = target_logits(forward_model, batch)
                loss_sum = weighted_loss_sum(logits, labels, weights)
                (loss_sum * scale / group_targets).backward()
            step_loss += loss_sum.item() / group_targets if scale else 0.0
        for batch in batches:
            target_count = int((batch["labels"] != IGNORE_INDEX).sum())
            totals["tokens"] += int(batch["attention_mask"].sum()) + (target_count if seq2seq else 0)
            totals["padded_tokens"] += batch["input_ids"].numel() + (
                batch["labels"].numel() if seq2seq else 0
            )
        totals["target_tokens"] += group_targets
        if processes > 1:
            step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), "sum"))
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = {
            "step": step + 1,
            "epoch": plan[step]["epoch"],
            "loss": step_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            **totals,
            "seconds": seconds_before + time.perf_counter() - started,
        }
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)  # redrawn at the next interval
        if checkpoint and settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0:
            if rank == 0:
                checkpoint.save(model, optimizer, scheduler, step + 1, rows)
            if accelerator:
                accelerator.wait_for_everyone()
        if on_step:
            on_step(row)
    bar.close()
    model.eval()
    return pd.DataFrame(rows)


def training_flops(model, seq_len: int, n_predicted: int) -> float:
    """Model FLOPs of one causal-LM training example (forward + backward).

    PaLM's accounting (Chowdhery et al. 2022, app. B), with frozen weights counted apart: per token and
    weight, 2 FLOPs forward, 2 for the gradient of its input and 2 for its own gradient, the last only when
    the weight is trained. So 6 x trained plus 4 x frozen non-embedding parameters per token (LoRA: 4 x the
    base plus 6 x the adapter; full fine-tuning: PaLM's 6 N), plus 12 x layers x hidden x seq_len per token
    for attention scores (no weights); the LM head (6 or 4 x hidden x vocab) is counted only at the
    `n_predicted` positions where kdlib computes logits.
    """
    config = model.config
    head_weight = model.get_output_embeddings().weight
    embeddings = {id(model.get_input_embeddings().weight), id(head_weight)}
    body = sum(
        (6 if p.requires_grad else 4) * p.numel() for p in model.parameters() if id(p) not in embeddings
    )
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    head = (6 if head_weight.requires_grad else 4) * config.hidden_size * config.vocab_size
    return seq_len * (body + attention) + n_predicted * head
