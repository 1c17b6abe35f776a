"""Training throughput: kdlib's training loop against HF Trainer with its defaults (same model, data, steps).

Both train the same LoRA student on the same tokenised examples (the correct_trace condition on generated
items, prompt tokens masked) for one epoch of `--steps` x `--batch-size` examples, each in its own
subprocess so that peak memory is its own. Prints real (non-padding) training tokens/s of each, the ratio
and peak memory. Nothing here is a timed assertion.

On a CUDA machine `--mfu` also trains a random-init model of a real config (full fine-tuning) with kdlib and
reports model FLOPs utilisation against the GPU's dense bf16 peak.

    .venv/bin/python benchmarks/train_throughput.py                          # SmolLM2-135M-Instruct, CPU
    .venv/bin/python benchmarks/train_throughput.py --model tiny-llama --steps 4
    python benchmarks/train_throughput.py --mfu --config smollm2-360m       # GPU machine
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch

from kdlib.config import LoraParams
from kdlib.data.generated import generate_items
from kdlib.models import load_model, native_bf16
from kdlib.traces.decomposition import decompose, steps_by_item
from kdlib.training.conditions import ItemTraces, TransformSettings, condition_examples
from kdlib.training.grid import add_lora
from kdlib.training.loop import TrainSettings, encode_example, train, training_flops

# Real configs for random-init MFU runs (no hub access needed): Llama-style dimensions as published.
CONFIGS = {
    "smollm2-360m": dict(
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def examples_for(model, tokenizer, n: int, max_length: int):
    items = generate_items(n, seed=0, split="train")
    steps = steps_by_item(decompose(items, "tagged", [], seed=0))
    traces = {i: ItemTraces(steps=s) for i, s in steps.items()}
    texts, _ = condition_examples("correct_trace", items, traces, TransformSettings(fmt="tagged", seed=0))
    return [encode_example(model, tokenizer, t, max_length) for t in texts]


def lora_student(name: str):
    model, tokenizer = load_model(name, seed=0)
    lora = LoraParams(r=16, alpha=32, dropout=0.0)
    return add_lora(model, lora, seed=0), tokenizer


def run_kdlib(args) -> dict:
    model, tokenizer = lora_student(args.model)
    examples = examples_for(model, tokenizer, args.steps * args.batch_size, args.max_length)
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        grad_accum=1,
        learning_rate=1e-4,
        bf16=native_bf16(torch.device("cpu")),
        seed=0,
        compile=args.compile,
    )
    start = time.perf_counter()
    log = train(model, examples, settings, pad_token_id=tokenizer.pad_token_id, desc="kdlib")
    seconds = time.perf_counter() - start
    return {"steps": len(log), "tokens": int(log["tokens"].iloc[-1]), "seconds": seconds}


def run_hf_trainer(args) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = lora_student(args.model)
    examples = examples_for(model, tokenizer, args.steps * args.batch_size, args.max_length)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output_dir,
                per_device_train_batch_size=args.batch_size,
                max_steps=args.steps,
                learning_rate=1e-4,
                report_to=[],
                save_strategy="no",
                logging_steps=args.steps,
                disable_tqdm=False,
            ),
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"steps": args.steps, "tokens": sum(len(e.input_ids) for e in examples), "seconds": seconds}


def run_mfu(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda")
    config = LlamaConfig(**CONFIGS[args.config], max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    _, tokenizer = load_model("tiny-llama")  # byte-level text; token ids stay below any real vocab
    examples = examples_for(model, tokenizer, args.steps * args.batch_size, 4096)
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        grad_accum=1,
        learning_rate=1e-4,
        bf16=True,
        seed=0,
        compile=args.compile,
    )
    warmup = examples[: args.batch_size * 2]
    train(model, warmup, settings, pad_token_id=tokenizer.pad_token_id, desc="warm-up")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    log = train(model, examples, settings, pad_token_id=tokenizer.pad_token_id, desc=f"mfu {args.config}")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    flops = sum(training_flops(model, len(e.input_ids), e.n_target_tokens) for e in examples)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    return {
        "gpu": gpu,
        "config": args.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": int(log["tokens"].iloc[-1]),
        "seconds": seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def child(args) -> None:
    result = {"kdlib": run_kdlib, "hf_trainer": run_hf_trainer, "mfu": run_mfu}[args.child](args)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="torch.compile kdlib's forward pass")
    parser.add_argument(
        "--mfu", action="store_true", help="also measure MFU on a random-init real config (CUDA)"
    )
    parser.add_argument("--config", default="smollm2-360m", choices=sorted(CONFIGS))
    parser.add_argument("--child", choices=["kdlib", "hf_trainer", "mfu"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    def measure(which: str) -> dict:
        command = [sys.executable, __file__, "--child", which, *sys.argv[1:]]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    results = {which: measure(which) for which in ("hf_trainer", "kdlib")}
    for which, r in results.items():
        print(
            f"{which:>10}: {r['tokens']} tokens, {r['steps']} steps in {r['seconds']:.1f} s = "
            f"{r['tokens'] / r['seconds']:.1f} tokens/s; peak RSS {r['peak_rss_gib']:.2f} GiB"
        )
    ratio = (results["kdlib"]["tokens"] / results["kdlib"]["seconds"]) / (
        results["hf_trainer"]["tokens"] / results["hf_trainer"]["seconds"]
    )
    print(f"kdlib / HF Trainer training tokens/s: {ratio:.2f}x (target >= 2.0x on CPU)")
    memory = results["kdlib"]["peak_rss_gib"] / results["hf_trainer"]["peak_rss_gib"]
    print(f"peak RSS kdlib / HF Trainer: {memory:.2f}")
    if args.mfu:
        if not torch.cuda.is_available():
            print("--mfu needs a CUDA device; skipped")
            return
        r = measure("mfu")
        print(
            f"MFU {r['config']} ({r['parameters'] / 1e6:.0f}M params, random init, full fine-tuning) on "
            f"{r['gpu']}: {r['achieved_tflops']:.1f} TFLOP/s = {r['mfu']:.1%} of dense bf16 peak; "
            f"peak memory {r['peak_memory_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
