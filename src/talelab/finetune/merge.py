"""`talelab merge`: fold a LoRA adapter into its base model and save a standalone Hugging Face directory.

The merged directory loads with `transformers.AutoModelForCausalLM` alone (no peft), carries the tokenizer the
adapter was trained with, and works wherever a Hugging Face model is accepted (`talelab dpo --base`, generation,
evaluation, serving).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from talelab.atomic import atomic_directory
from talelab.errors import InputError
from talelab.finetune.base import load_finetuned
from talelab.models.hf import read_adapter_config as read_hf_adapter_config

PROVENANCE_FILE = "talelab-merge.json"


def read_adapter_config(adapter: Path) -> dict:
    """The adapter's peft config; `--adapter` must name an existing directory."""
    if not adapter.is_dir():
        raise InputError(f"--adapter {adapter}: no such directory")
    return read_hf_adapter_config(adapter)


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32") -> dict:
    """Merge `adapter` into its base (peft merge_and_unload) and write model + tokenizer to `out` atomically."""
    adapter = Path(adapter)
    config = read_adapter_config(adapter)
    model, tokenizer = load_finetuned(adapter, dtype=dtype)
    merged = model.merge_and_unload()  # W + (alpha / r) * B @ A, GPT-2's Conv1D (fan_in_fan_out) included
    merged.config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    targets = config.get("target_modules")  # a list of names, or one regular expression
    provenance = {"adapter": str(adapter.resolve()), "base": config["base_model_name_or_path"],
                  "rank": config.get("r"), "alpha": config.get("lora_alpha"),
                  "target_modules": sorted(targets) if isinstance(targets, list) else targets, "dtype": dtype}
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return {"out": str(out), **provenance}
