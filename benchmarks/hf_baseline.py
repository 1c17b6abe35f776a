"""HF Trainer on kdlib's tokenised examples: the baseline that benchmarks/train_throughput.py times kdlib's
trainer against and benchmarks/learning_parity.py checks its learning against.

Both variants train the given model on the given kdlib.training.loop.Example list with what
kdlib.training.train uses: AdamW (weight decay 0, betas 0.9/0.999, eps 1e-8), the peak learning rate
decayed linearly to 0 with no warm-up, gradient clipping at 1.0, the same batch size, gradient
accumulation and number of optimiser steps. The loss is HF's mean cross-entropy over the target tokens of
each step: the examples' prompt labels are IGNORE_INDEX, so the loss is completion-only, as TRL's
SFTTrainer computes it. Data order and dropout draws are HF's own.

- defaults: what a plain HF setup does: fp32, random order, transformers.DataCollatorForSeq2Seq.
- tuned: length-grouped batches (train_sampling_strategy="group_by_length"), kdlib's own collate (the same
  padding and masking as kdlib), bf16 autocast when `settings.bf16` (callers pass bf16 only where the
  device computes it natively: kdlib.models.native_bf16).

Neither uses dataloader workers (HF's default; collating is cheap) or pinned memory off CUDA.
"""

from __future__ import annotations

import tempfile
import time

from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from kdlib.training.loop import Example, TrainSettings, collate, step_plan

VARIANTS = ("defaults", "tuned")


def kdlib_collator(pad_token_id: int):
    """kdlib.training.loop.collate for HF Trainer's features ({input_ids, labels}), without the per-token
    weights HF's loss has no use for."""

    def collator(features: list[dict]) -> dict:
        batch = collate([Example("", "", f["input_ids"], f["labels"]) for f in features], pad_token_id)
        del batch["weights"]
        return batch

    return collator


def hf_train(model, tokenizer, examples: list[Example], settings: TrainSettings, *, variant: str) -> dict:
    """Train `model` on `examples` with transformers.Trainer, `variant` "defaults" or "tuned". Returns
    {seconds: of trainer.train(), steps: optimiser steps taken, final_loss: the last logged loss}; the
    steps are kdlib's for the same settings (step_plan)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown HF Trainer variant {variant!r}; choose from {VARIANTS}")
    weighted = next((e for e in examples if e.weight != 1.0), None)
    if weighted is not None:
        raise ValueError(
            f"item {weighted.item_id} ({weighted.task}) has loss weight {weighted.weight}: HF Trainer weighs "
            "every target token alike, so it trains only unweighted examples"
        )
    steps = len(
        step_plan(
            [e.length for e in examples],
            settings.batch_size,
            settings.grad_accum,
            settings.epochs,
            settings.seed,
        )
    )
    device = next(model.parameters()).device
    tuned = variant == "tuned"
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            max_steps=steps,
            learning_rate=settings.learning_rate,
            max_grad_norm=settings.max_grad_norm,
            seed=settings.seed,
            data_seed=settings.seed,
            label_names=["labels"],
            use_cpu=device.type == "cpu",
            bf16=tuned and settings.bf16,
            train_sampling_strategy="group_by_length" if tuned else "random",
            dataloader_num_workers=0,  # collating is cheap; workers would take cores from training
            dataloader_pin_memory=device.type == "cuda",
            report_to="none",
            save_strategy="no",
            logging_steps=max(1, steps // 10),
            disable_tqdm=False,
        )
        collator = (
            kdlib_collator(tokenizer.pad_token_id)
            if tuned
            else DataCollatorForSeq2Seq(tokenizer, padding=True)
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=features, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model.eval()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"seconds": seconds, "steps": trainer.state.global_step, "final_loss": losses[-1]}
