"""What the interpret commands read: a model (talelab, or a Hugging Face causal LM or a LoRA adapter over one, all
through models.storage.load_model; attention and neurons need a talelab transformer or a Llama / GPT-2), its
tokenizer, and texts encoded as beginning-of-story token + tokens, a padded batch at a time.

Hugging Face models are used as they are, through forward hooks and `output_attentions`; nothing is copied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import torch

from talelab.data.sources import read_documents, validation_file
from talelab.devices import pick_device
from talelab.errors import ConfigError, InputError, MismatchError
from talelab.evaluate.likelihood import reference_pieces
from talelab.models.hf import HFCausalLM, looks_like_hub_id
from talelab.models.storage import load_model, read_config
from talelab.paths import resolve_input
from talelab.tokenizer import Tokenizer

# Hugging Face model types whose attention weights (eager attention) and MLP activations we know how to reach:
# model_type -> (attribute path of the list of blocks, module in a block whose input is the MLP activation).
HF_FAMILIES = {"llama": ("model.layers", "mlp.down_proj"), "gpt2": ("transformer.h", "mlp.c_proj")}
SUPPORTED = "talelab transformers and Hugging Face causal LMs of type " + " or ".join(HF_FAMILIES)


@dataclass
class Subject:
    """A model under study and what the interpret commands need to know about it."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    family: str  # "talelab" or a key of HF_FAMILIES
    n_layers: int
    n_heads: int
    context_length: int

    def blocks(self) -> list[torch.nn.Module]:
        if self.family == "talelab":
            return list(self.model.blocks)
        return list(attrgetter(HF_FAMILIES[self.family][0])(self.model))

    def mlp_outputs(self) -> list[torch.nn.Module]:
        """Per layer, the projection whose input is the MLP's activation (one value per neuron)."""
        name = "mlp.down" if self.family == "talelab" else HF_FAMILIES[self.family][1]
        return [attrgetter(name)(block) for block in self.blocks()]


def load_studied_model(path: str | os.PathLike, device: str = "cpu", **hf_options) \
        -> tuple[torch.nn.Module, Tokenizer]:
    """The model and tokenizer of a talelab model or run directory, or of a Hugging Face model directory or hub id
    (or a LoRA adapter over one), on `device` (auto: CUDA when present); `hf_options` go to load_model."""
    if not Path(path).is_dir() and not looks_like_hub_id(path):
        raise InputError(f"{Path(path)}: no such model directory")
    model, tokenizer, _ = load_model(path, device=pick_device(device), **hf_options)
    return model, tokenizer


def load_subject(path: str | os.PathLike, device: str = "cpu") -> Subject:
    """A talelab transformer (model or run directory), or a Hugging Face model directory or hub id (or a LoRA
    adapter over one) of a supported type, on `device` (auto: CUDA when present). What the hooks collect comes back
    to the CPU, where the scores add up."""
    directory = Path(path)
    raw = read_config(directory) if (directory / "config.json").is_file() else {}
    check_hf_family(directory, raw.get("model_type"))  # before any weights load
    # eager attention: the fused kernels (sdpa, flash) never materialise the weights that output_attentions returns
    model, tokenizer = load_studied_model(path, device, attn_implementation="eager")
    if isinstance(model, HFCausalLM):
        check_hf_family(directory, model.config.model_type)  # an adapter's base
        hf = model.transformers_model  # hooks and output_attentions need transformers' own modules and outputs
        c = hf.config  # GPT-2's n_layer, n_head answer to these names too
        return Subject(hf, tokenizer, model.config.model_type, c.num_hidden_layers, c.num_attention_heads,
                       model.config.context_length)
    c = model.config
    if c.family != "transformer":
        raise ConfigError(f"{directory}: a talelab {c.family} model has no attention heads or MLP neurons to "
                          f"study; supported: {SUPPORTED}")
    return Subject(model, tokenizer, "talelab", c.n_layers, c.n_heads, c.context_length)


def check_hf_family(directory: Path, model_type: str | None) -> None:
    if model_type is not None and model_type not in HF_FAMILIES:
        raise ConfigError(f"{directory}: model type '{model_type}' is not supported (its attention weights and MLP "
                          f"activations are not reachable here); supported: {SUPPORTED}")


def default_out(model: str | os.PathLike) -> Path:
    """Where reports go unless --out says otherwise: runs/interpret/<model directory name>."""
    return Path("runs") / "interpret" / Path(model).resolve().name


def check_positive(**values: int) -> None:
    """A one-line error naming the first option that is not a positive number."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least 1")


def check_indices(what: str, chosen: list[int] | None, count: int) -> list[int]:
    """The chosen layer or head indices (all when none are chosen); a one-line error for one out of range."""
    if not chosen:
        return list(range(count))
    for index in chosen:
        if not 0 <= index < count:
            raise ConfigError(f"{what} {index} is out of range: the model has {count} {what}s (0 to {count - 1})")
    return sorted(set(chosen))


def read_texts(data: str, samples: int, protocol: str = "documents", data_root=None) -> list[str]:
    """The first `samples` documents (0: all) of a prepared directory's val.jsonl, or of a text/JSONL file
    (a path, or relative to the data root); protocol 'reference' takes the pieces of the bits-per-byte protocol."""
    if protocol not in ("documents", "reference"):
        raise ConfigError(f"protocol '{protocol}': choose documents or reference")
    if samples < 0:
        raise ConfigError(f"--samples {samples}: give a number of texts, or 0 for all")
    path = validation_file(data)
    if protocol == "reference":
        texts = reference_pieces(resolve_input(path, data_root))
    else:
        texts = read_documents(path, data_root=data_root)
    return texts[:samples] if samples > 0 else texts


def encode_texts(subject: Subject, texts: list[str], truncate: bool = True) -> list[list[int]]:
    """Beginning-of-story token + tokens for each text, cut to the context (or an error when `truncate` is off)."""
    encoded = [[subject.tokenizer.bos_id, *ids] for ids in subject.tokenizer.encode_batch(texts)]
    for ids in encoded:
        if len(ids) > subject.context_length and not truncate:
            raise MismatchError(f"the text is {len(ids)} tokens long with the beginning-of-story token, more than the "
                                f"model's context of {subject.context_length}; shorten it")
    return [ids[:subject.context_length] for ids in encoded]


def batches(subject: Subject, texts: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, lengths) per batch of texts, encoded (and cut to the context) only when their batch comes: ids
    right-padded with -1, which causal attention never lets a real token see."""
    for i in range(0, len(texts), batch_size):
        chunk = encode_texts(subject, texts[i:i + batch_size])
        ids = torch.full((len(chunk), max(map(len, chunk))), -1, dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
        yield ids, torch.tensor([len(seq) for seq in chunk])


@torch.no_grad()
def forward(subject: Subject, ids: torch.Tensor, **kwargs):
    """Run the model on padded ids (padding read as token 0) and return its raw output."""
    inputs = ids.clamp(min=0).to(next(subject.model.parameters()).device)
    if subject.family == "talelab":
        return subject.model(inputs)
    return subject.model(input_ids=inputs, use_cache=False, **kwargs)


def token_pieces(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, as printed after the tokens before it (a story's first word has no leading space); the
    pieces concatenate to the decoded text. Padding (-1) and special tokens give ''."""
    stream = tokenizer.stream()
    return [stream.push(i) if i >= 0 else "" for i in ids]


def token_label(tokenizer: Tokenizer, token_id: int, piece: str) -> str:
    """A readable label: the piece with line breaks shown as \\n, or the raw token when its text is empty."""
    if not piece:
        return tokenizer.backend.id_to_token(token_id) or str(token_id)
    return piece.replace("\n", "\\n")
