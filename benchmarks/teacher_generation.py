"""Teacher generation benchmark: batched vs one-at-a-time throughput, and a cached rerun vs the first run.

Same model, same prompts (cot_label_last recipe on generated items), greedy decoding. Prints ratios
measured in this run; nothing here is a timed assertion.

    .venv/bin/python benchmarks/teacher_generation.py                 # SmolLM2-135M-Instruct, CPU
    .venv/bin/python benchmarks/teacher_generation.py --model tiny-llama --prompts 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kdlib.data.generated import generate_items
from kdlib.teacher.backends import Decoding, Request, TransformersBackend
from kdlib.teacher.cache import GenerationCache, generate_cached
from kdlib.teacher.recipes import cot_label_last_messages, exemplars_from_items


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()

    items = generate_items(args.prompts + 2, seed=0, split="train")
    exemplars = exemplars_from_items(items[:2])
    requests = [Request.of(cot_label_last_messages(item, exemplars)) for item in items[2:]]
    decoding = Decoding(max_new_tokens=args.max_new_tokens)

    def backend(batch_size: int) -> TransformersBackend:
        return TransformersBackend(args.model, device="cpu", dtype=args.dtype, batch_size=batch_size)

    # Throughput: load once per backend, outside the timed region.
    results = {}
    for label, batch_size in (("one-at-a-time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        gen = backend(batch_size)
        model, tokenizer = gen._model()
        start = time.perf_counter()
        texts = [text for chunk in gen.stream(requests, decoding) for _, text in chunk]
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        results[label] = tokens / seconds
        print(f"{label:>16}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} generated tokens/s")
    single, batched = results.values()
    print(f"batched / one-at-a-time throughput: {batched / single:.2f}x")

    # Cache: a cold first run (model load + generation + writes) against a rerun with the same params.
    with tempfile.TemporaryDirectory() as tmp:
        timings = []
        for _ in range(2):
            gen = backend(args.batch_size)
            start = time.perf_counter()
            with GenerationCache(Path(tmp) / "cache.sqlite") as cache:
                generate_cached(gen, cache, requests, decoding)
            timings.append(time.perf_counter() - start)
            print(f"{'first run' if len(timings) == 1 else 'cached rerun':>16}: {timings[-1]:.3f} s, "
                  f"{gen.calls} model calls")  # fmt: skip
    print(f"first run / cached rerun wall time: {timings[0] / timings[1]:.0f}x")


if __name__ == "__main__":
    main()
