"""Label-first scoring vs generate-then-parse: items per second on the same model, items and batch size.

Label-first (kdlib.evaluation.scoring) runs one forward pass per answer choice; generate-then-parse
decodes a trace
and answer greedily (up to --max-new-tokens) and reads the answer (kdlib.evaluation.generation). Both ask the
question the way a student of --transform is asked. Prints the ratio measured in this run (target at
least 10x); nothing here is a timed assertion.

    .venv/bin/python benchmarks/label_first_scoring.py                       # SmolLM2-135M-Instruct, CPU
    .venv/bin/python benchmarks/label_first_scoring.py --transform correct_trace \
        --cell outputs/demo/sft/smollm2-135m-instruct/correct_trace/seed0
    .venv/bin/python benchmarks/label_first_scoring.py --dataset commonsenseqa --split dev
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kdlib.cells import load_trained
from kdlib.data import load_split
from kdlib.evaluation.generation import evaluate_outputs, generate_answers
from kdlib.evaluation.scoring import score_choices
from kdlib.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a base model (untrained student)")
    parser.add_argument(
        "--cell", help="a trained cell folder instead of --model (sft/<student>/<cond>/seed<k>)"
    )
    parser.add_argument("--transform", default="rationale_after_label", help="how the student is asked")
    parser.add_argument("--fmt", default="tagged", choices=["tagged", "plain"])
    parser.add_argument("--dataset", default="generated", help="generated, or a dataset with choices")
    parser.add_argument("--split", default="test")
    parser.add_argument("--items", type=int, default=32, help="how many, picked as a run with seed 0 would")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="notebook 04's default budget")
    args = parser.parse_args()

    items = load_split(args.dataset, args.split, args.items, seed=0, data_dir=None, options={})
    if args.cell:
        model, tokenizer = load_trained(Path(args.cell), device=torch.device("cpu"))
    else:
        model, tokenizer = load_model(args.model, device=torch.device("cpu"))
    print(f"{len(items)} items, {sum(len(i.choices) for i in items)} choices, batch size {args.batch_size}")

    start = time.perf_counter()
    scores = score_choices(model, tokenizer, args.transform, args.fmt, items, batch_size=args.batch_size)
    scoring_seconds = time.perf_counter() - start
    print(
        f"label-first:         {scoring_seconds:7.1f} s = {len(items) / scoring_seconds:6.2f} items/s; "
        f"acc {scores['acc'].mean():.3f}, acc_norm {scores['acc_norm'].mean():.3f}"
    )

    start = time.perf_counter()
    outputs = generate_answers(
        model,
        tokenizer,
        args.transform,
        items,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        desc="generate",
    )
    cell = {"student": "bench", "condition": args.transform, "seed": 0, "transform": args.transform}
    rows = evaluate_outputs(cell, items, outputs)
    generation_seconds = time.perf_counter() - start
    new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    print(
        f"generate-then-parse: {generation_seconds:7.1f} s = {len(items) / generation_seconds:6.2f} items/s; "
        f"accuracy {rows['answer_correct'].mean():.3f}, parse rate {rows['answer_parsed'].mean():.3f}, "
        f"{new_tokens / len(items):.0f} new tokens per item"
    )
    print(f"label-first / generate-then-parse throughput: {generation_seconds / scoring_seconds:.1f}x")


if __name__ == "__main__":
    main()
