"""A model on disk: model.safetensors + config.json + tokenizer.json, written atomically, loaded with checks.

A run directory points at its newest checkpoint with a one-line `latest` file, so anything that loads a model
accepts either a model directory or a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model as load_safetensors_into, save_model as save_safetensors

from talelab.config import ModelConfig, dataclass_from_dict
from talelab.errors import InputError, MismatchError
from talelab.models.transformer import Transformer
from talelab.tokenizer import Tokenizer, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST_POINTER = "latest"


def fsync_tree(directory: Path) -> None:
    """Flush every file and then the directory entries, so a rename that follows publishes complete data."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


@contextmanager
def atomic_directory(final: str | os.PathLike):
    """Yield a hidden temporary directory; on success publish it as `final` (replacing an older one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_tree(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_directory(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_model(directory: str | os.PathLike, model: Transformer, tokenizer: Tokenizer, extra: dict | None = None) -> None:
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
        raise InputError(f"{path}: not a talelab model (expected {CONFIG_FILE} and {WEIGHTS_FILE}, or a run directory "
                         f"with a '{LATEST_POINTER}' file)")
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
               tokenizer_path: str | os.PathLike | None = None) -> tuple[Transformer, Tokenizer, dict]:
    """The model, its tokenizer (or the one given) and the raw config of a model or run directory."""
    directory = resolve_model_dir(path)
    raw = read_config(directory)
    if "model" not in raw:
        raise InputError(f"{directory / CONFIG_FILE}: no 'model' section")
    config = dataclass_from_dict(ModelConfig, raw["model"], where=str(directory / CONFIG_FILE))
    tokenizer = load_tokenizer(tokenizer_path or directory)
    check_vocabulary(config, tokenizer, str(tokenizer_path or directory))
    model = Transformer(config)
    load_weights(model, directory / WEIGHTS_FILE)
    return model.to(device).eval(), tokenizer, raw
