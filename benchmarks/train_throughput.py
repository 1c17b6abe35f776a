"""Training throughput: kdlib's training loop against HF Trainer with its defaults and tuned (same model,
data, steps), and each as a share of this machine's measured matmul peak.

All three train the same LoRA student on the same tokenised examples (the correct_trace condition on
generated items, prompt tokens masked) for one epoch of `--steps` x `--batch-size` examples, each in its
own subprocess so that peak memory is its own. HF Trainer runs twice (benchmarks/hf_baseline.py): with its
defaults (fp32, random order, DataCollatorForSeq2Seq) and tuned (length-grouped batches, kdlib's collate,
bf16 where the device computes it natively). kdlib and the tuned HF Trainer train in bf16 only where
kdlib.models.native_bf16 says the CPU has it (AVX512-BF16 or AMX), else in fp32: emulated bf16 is ~25x
slower; the output says which.

Prints real (non-padding) training tokens/s of each, the ratios and peak memory; then the matmul peak of
this machine (torch.matmul on two --matmul-size square matrices, fp32 and bf16: 2 n^3 FLOPs per product)
and each trainer's achieved model FLOP/s as a share of the peak of the dtype it trained in: the CPU's
"MFU". Model FLOPs per kdlib.training.training_flops: per real token 6 x trained and 4 x frozen
non-embedding weights (under LoRA the frozen base gets no weight gradient: 4 N + 6 x adapter, not
full fine-tuning's 6 N), attention scores, and the LM head at target positions only. Nothing here is a
timed assertion.

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
import time

import torch
from hf_baseline import hf_train

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
GPU_MATMUL_SIZE = 8192  # large enough for a GPU's tensor cores to reach their matmul peak


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


def settings_for(args, bf16: bool) -> TrainSettings:
    return TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        grad_accum=1,
        learning_rate=1e-4,
        bf16=bf16,
        seed=0,
        compile=args.compile,
    )


def run_trainer(args) -> dict:
    """Train the LoRA student with kdlib or one HF Trainer variant: tokens, steps, seconds, model FLOPs."""
    model, tokenizer = lora_student(args.model)
    examples = examples_for(model, tokenizer, args.steps * args.batch_size, args.max_length)
    bf16 = args.child != "hf_defaults" and native_bf16(torch.device("cpu"))
    settings = settings_for(args, bf16)
    flops = sum(training_flops(model, len(e.input_ids), e.n_target_tokens) for e in examples)
    if args.child == "kdlib":
        start = time.perf_counter()
        log = train(model, examples, settings, pad_token_id=tokenizer.pad_token_id, desc="kdlib")
        seconds = time.perf_counter() - start
        steps, tokens = len(log), int(log["tokens"].iloc[-1])
    else:
        result = hf_train(model, tokenizer, examples, settings, variant=args.child.removeprefix("hf_"))
        seconds, steps, tokens = result["seconds"], result["steps"], sum(len(e.input_ids) for e in examples)
    return {"steps": steps, "tokens": tokens, "seconds": seconds, "flops": flops, "bf16": bf16}


def matmul_peak(dtype: torch.dtype, n: int, device: torch.device, min_seconds: float = 2.0) -> float:
    """FLOP/s of torch.matmul on two random [n, n] matrices of `dtype`: one warm-up product, then products
    until `min_seconds` have passed (at least one: emulated bf16 ran at ~1.2 GFLOP/s on a 2-core EPYC, ~15 s
    per product at n = 2048), 2 n^3 FLOPs each."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.matmul(a, b)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < min_seconds:
        torch.matmul(a, b, out=out)
        synchronize()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def run_mfu(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda")
    config = LlamaConfig(**CONFIGS[args.config], max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    _, tokenizer = load_model("tiny-llama")  # byte-level text; token ids stay below any real vocab
    examples = examples_for(model, tokenizer, args.steps * args.batch_size, 4096)
    settings = settings_for(args, bf16=True)
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
        "measured_peak_tflops": matmul_peak(torch.bfloat16, GPU_MATMUL_SIZE, device) / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


TRAINERS = {  # child name -> what the row says
    "hf_defaults": "HF Trainer, defaults (random order, DataCollatorForSeq2Seq)",
    "hf_tuned": "HF Trainer, tuned (group_by_length, kdlib's collate)",
    "kdlib": "kdlib (length-grouped, LM head at target positions only)",
}


def child(args) -> None:
    result = run_mfu(args) if args.child == "mfu" else run_trainer(args)
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
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul peak probe")
    parser.add_argument(
        "--mfu", action="store_true", help="also measure MFU on a random-init real config (CUDA)"
    )
    parser.add_argument("--config", default="smollm2-360m", choices=sorted(CONFIGS))
    parser.add_argument("--child", choices=[*TRAINERS, "mfu"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    def measure(which: str) -> dict:
        command = [sys.executable, __file__, "--child", which, *sys.argv[1:]]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    cpu = torch.device("cpu")
    peaks = {d: matmul_peak(getattr(torch, d), args.matmul_size, cpu) for d in ("float32", "bfloat16")}
    results = {which: measure(which) for which in TRAINERS}
    native = "native" if native_bf16(cpu) else "emulated here: kdlib and tuned HF Trainer train in fp32"
    print(
        f"matmul peak (torch.matmul, {args.matmul_size} x {args.matmul_size}, {torch.get_num_threads()} "
        f"threads): fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s "
        f"(bf16 {native})"
    )
    for which, r in results.items():
        dtype, name = ("bfloat16", "bf16") if r["bf16"] else ("float32", "fp32")
        achieved = r["flops"] / r["seconds"]
        print(
            f"{TRAINERS[which]}, {name}: {r['tokens']} tokens, {r['steps']} steps in {r['seconds']:.1f} s = "
            f"{r['tokens'] / r['seconds']:.1f} tokens/s; peak RSS {r['peak_rss_gib']:.2f} GiB; "
            f"{achieved / 1e9:.2f} model GFLOP/s = {achieved / peaks[dtype]:.1%} of the {name} matmul peak"
        )
    speed = {which: r["tokens"] / r["seconds"] for which, r in results.items()}
    for baseline in ("hf_defaults", "hf_tuned"):
        memory = results["kdlib"]["peak_rss_gib"] / results[baseline]["peak_rss_gib"]
        print(
            f"kdlib / {TRAINERS[baseline].split(' (')[0]}: {speed['kdlib'] / speed[baseline]:.2f}x training "
            f"tokens/s, peak RSS {memory:.2f}"
        )
    if args.mfu:
        if not torch.cuda.is_available():
            print("--mfu needs a CUDA device; skipped")
            return
        r = measure("mfu")
        published = f"{r['mfu']:.1%} of its published dense bf16 peak" if r["mfu"] else "no published peak"
        print(
            f"MFU {r['config']} ({r['parameters'] / 1e6:.0f}M params, random init, full fine-tuning) on "
            f"{r['gpu']}: {r['achieved_tflops']:.1f} TFLOP/s = {published}, "
            f"{r['achieved_tflops'] / r['measured_peak_tflops']:.1%} of the measured bf16 matmul peak "
            f"({r['measured_peak_tflops']:.0f} TFLOP/s at n = {GPU_MATMUL_SIZE}); peak memory "
            f"{r['peak_memory_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
