"""Trained cells of the grid (student x condition x seed): the keys that name one, the folder its weights
are in, the digest that changes when it is trained again, and loading it for evaluation. Notebook 03
writes cells (kdlib.training.grid); 04's evaluation, lens and attribution read them through here.
RunLayout (kdlib.paths) gives every cell's folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from kdlib import io
from kdlib.models import import_peft, load_model, peft_checkpointing_probe_quiet

CELL_KEYS = ("student", "condition", "seed")  # what names one cell of the training grid


def weights_folder(finetune: str) -> str:
    return "model" if finetune == "full" else "adapter"


def trained_digest(cell_dir: Path) -> str:
    """sha256 of a finished cell's meta.json: it changes whenever the cell is trained again."""
    return hashlib.sha256(
        io.require(Path(cell_dir) / "meta.json", produced_by="03_sft").read_bytes()
    ).hexdigest()


def load_trained(cell_dir: Path, *, device: torch.device, seed: int = 0):
    """The student of one finished cell in eval mode: the base with its adapter merged in (a plain model,
    as fast as the base), or the fully fine-tuned model. Weights load from safetensors only."""
    meta = io.read_json(io.require(cell_dir / "meta.json", produced_by="03_sft"))
    student, finetune = meta["params"]["student"], meta["params"]["training"]["finetune"]
    trust = meta["params"].get("trust_remote_code", False)
    if finetune == "full":
        model, tokenizer = load_model(
            str(cell_dir / "model"), device=device, seed=seed, trust_remote_code=trust
        )
    else:
        adapter = io.require(cell_dir / "adapter" / "adapter_model.safetensors", produced_by="03_sft")
        base, tokenizer = load_model(student, device=device, seed=seed, trust_remote_code=trust)
        with peft_checkpointing_probe_quiet():
            model = import_peft().PeftModel.from_pretrained(base, adapter.parent).merge_and_unload()
    model.eval()
    return model, tokenizer
