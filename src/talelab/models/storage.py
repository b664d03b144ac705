"""A model on disk: model.safetensors + config.json + tokenizer.json, written atomically, loaded with checks.

A run directory points at its newest checkpoint with a one-line `latest` file, so anything that loads a model
accepts either a model directory or a run directory. `load_model` also takes Hugging Face causal LM directories, hub
ids and PEFT adapter directories (models/hf.py), so every command that uses a model works on them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model as load_safetensors_into, save_model as save_safetensors

from talelab.config import ModelConfig
from talelab.settings import resolve
from talelab.errors import InputError, MismatchError
from talelab.models import build_model, hf
from talelab.models.transformer import Transformer
from talelab.tokenizer import Tokenizer, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST_POINTER = "latest"


def save_model(directory: str | os.PathLike, model: Transformer, tokenizer: Tokenizer,
               extra: dict | None = None) -> None:
    """Write weights, config and tokenizer into an existing directory (callers wrap this in atomic_directory)."""
    directory = Path(directory)
    # save_model (not save_file) because tied embeddings share storage, which save_file refuses
    save_safetensors(model, str(directory / WEIGHTS_FILE))
    config = {"model": dataclasses.asdict(model.config), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(directory)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory itself, or the checkpoint a run directory's `latest` file names."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model or run directory")
    pointer = path / LATEST_POINTER
    if pointer.is_file():
        path = path / pointer.read_text(encoding="utf-8").strip()
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise InputError(f"{path}: not a model directory (expected a talelab model: {CONFIG_FILE} with a 'model' "
                         f"section and {WEIGHTS_FILE}; a run directory with a '{LATEST_POINTER}' file; a Hugging Face "
                         f"model: {CONFIG_FILE} with 'model_type'; or a PEFT adapter: adapter_config.json)")
    return path


def read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def load_weights(model: Transformer, path: Path) -> None:
    """Load safetensors weights, naming the first tensor whose shape differs from the model's."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: unreadable safetensors file ({e})") from None
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise MismatchError(f"{path}: tensor '{name}' does not exist in this model shape")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise MismatchError(f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the model expects "
                                f"{tuple(expected[name].shape)} (checkpoint from another model shape)")
    try:  # safetensors' loader knows which names tied weights were saved under
        load_safetensors_into(model, str(path), strict=True)
    except RuntimeError as e:
        raise MismatchError(f"{path}: {str(e).splitlines()[0]} (checkpoint from another model shape)") from None


def check_vocabulary(config: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise MismatchError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                            f"{config.vocab_size}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               tokenizer_path: str | os.PathLike | None = None,
               **hf_options) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """The model, its tokenizer (or the one given) and the raw config of a talelab model or run directory, a Hugging
    Face causal LM directory (or hub id), or a PEFT adapter directory; `hf_options` (dtype, attn_implementation)
    apply to Hugging Face models only."""
    given = Path(path)
    if given.is_dir() and not (given / LATEST_POINTER).is_file() and (hf.is_adapter_dir(given) or hf.is_hf_dir(given)):
        return hf.load_hf_model(given, device, tokenizer_path=tokenizer_path, **hf_options)
    if not given.exists() and hf.looks_like_hub_id(path):
        return hf.load_hf_model(str(path), device, tokenizer_path=tokenizer_path, **hf_options)
    directory = resolve_model_dir(path)
    raw = read_config(directory)
    if "model" not in raw:
        raise InputError(f"{directory / CONFIG_FILE}: no 'model' section")
    config = resolve(ModelConfig, [(str(directory / CONFIG_FILE), raw["model"])])
    tokenizer = load_tokenizer(tokenizer_path or directory)
    check_vocabulary(config, tokenizer, str(tokenizer_path or directory))
    model = build_model(config)
    load_weights(model, directory / WEIGHTS_FILE)
    return model.to(device).eval(), tokenizer, raw
