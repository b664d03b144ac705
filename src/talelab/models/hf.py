"""Hugging Face causal LMs (a directory, a hub id, or a PEFT LoRA adapter over one) behind talelab's model interface.

talelab's decoding, scoring and serving call `model(idx, targets, cache, start, positions, key_mask)` and read
`model.config.context_length` / `vocab_size`. `HFCausalLM` translates those calls to transformers' own:
the cache becomes a `DynamicCache` (past_key_values), per-row positions become `position_ids`, the key mask becomes
the 2-D `attention_mask`. Nothing is copied: the wrapped transformers model (a `PeftModel`, unmerged, for adapters)
does the work. The tokenizer is transformers' fast tokenizer, its `tokenizers` backend wrapped as a talelab
`Tokenizer`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from talelab.errors import InputError, MismatchError
from talelab.models.transformer import check_fits_context
from talelab.tokenizer import Tokenizer, _guess_kind, load_tokenizer
from talelab.tokenizer.bpe import END_OF_TEXT

ADAPTER_CONFIG = "adapter_config.json"
# what AutoTokenizer reads from a local directory; with none of these there is no tokenizer to load
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")


@dataclass
class HFModelConfig:
    """What talelab reads of a model's config, for a Hugging Face model."""

    context_length: int
    vocab_size: int
    model_type: str
    source: str  # the directory or hub id it was loaded from
    adapter: str | None = None  # the LoRA adapter directory, if any
    family: str = "hf"


@functools.cache  # made once, on first use: transformers is imported only when a Hugging Face model loads
def new_cache_class():
    """DynamicCache with talelab's `reorder(index)` (beam search keeps, and prefill copies, rows by index)."""
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import DynamicCache

    class HFCache(DynamicCache):
        def reorder(self, index: torch.Tensor, filled: int | None = None) -> None:
            self.reorder_cache(index)  # index_select on every layer: also grows one row into many

    return HFCache


class HFCausalLM(nn.Module):
    """A transformers causal LM (or PeftModel) answering talelab's forward(idx, targets, cache, start, positions,
    key_mask) -> (logits, loss)."""

    def __init__(self, causal_lm: nn.Module, config: HFModelConfig):
        super().__init__()
        self.hf = causal_lm
        self.config = config
        self._cache_class = new_cache_class()

    @property
    def transformers_model(self) -> nn.Module:
        """The transformers model itself; an adapter's LoRA layers sit inside it (peft injects them in place)."""
        return self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.hf.parameters())
        if exclude_embeddings:
            model = self.transformers_model
            tables = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(),
                                                               model.get_output_embeddings()) if m is not None}
            n -= sum(tables.values())  # a tied output layer shares the input table: counted once
        return n

    def new_cache(self, batch_size: int, device, dtype, length: int | None = None):
        """An empty cache; it grows as tokens arrive, so batch size, dtype and length need no preallocation."""
        return self._cache_class(config=self.transformers_model.config)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None, start: int = 0,
                positions: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy over targets that are not -1.

        As talelab's Transformer: `start` is the cache slot of idx[:, 0], `positions` (B, T) each row's own token
        positions, `key_mask` (B, start + T) True where a slot holds a real token (left padding is False).
        """
        B, T = idx.shape
        if cache is not None and cache.get_seq_length() != start:
            # a DynamicCache only appends: talelab's callers always continue where the cache ends
            raise MismatchError(f"cache holds {cache.get_seq_length()} positions but the tokens start at {start}")
        check_fits_context(self.config, start + T, positions)
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device).expand(B, T)
        out = self.hf(input_ids=idx, position_ids=positions,
                      attention_mask=key_mask.long() if key_mask is not None else None,
                      past_key_values=cache, use_cache=cache is not None)
        logits = out.logits
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def is_hf_dir(path: Path) -> bool:
    """A directory whose config.json has a `model_type` (what transformers' Auto classes dispatch on)."""
    try:
        return "model_type" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_hub_id(path: str | os.PathLike) -> bool:
    """`gpt2` or `owner/name` that is no local path: a model to fetch from the Hugging Face hub.

    A missing `runs/my-model` whose `runs/` exists is a mistyped local path, not a hub id.
    """
    text = str(path)
    return not Path(text).exists() and HUB_ID.fullmatch(text) is not None and not Path(text.split("/")[0]).is_dir()


def has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def load_hf_tokenizer(source: str | os.PathLike, model_config=None) -> Tokenizer:
    """transformers' fast tokenizer of `source` as a talelab Tokenizer (its `tokenizers` backend, bos and eos)."""
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import AutoTokenizer

    if Path(source).is_dir() and not has_tokenizer_files(Path(source)):
        raise InputError(f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer beside "
                         f"the model (tokenizer.save_pretrained)")
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise InputError(f"{source}: the tokenizer does not load ({str(e).splitlines()[0]})") from None
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{source}: {type(hf_tokenizer).__name__} has no fast (tokenizers) form; talelab needs one "
                         f"(save a tokenizer.json)")
    vocab = backend.get_vocab(with_added_tokens=True)
    eos = hf_tokenizer.eos_token_id
    if eos is None and model_config is not None:
        eos = model_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
    if eos is None:
        raise InputError(f"{source}: the tokenizer names no eos_token (set it in tokenizer_config.json)")
    bos = hf_tokenizer.bos_token_id
    if bos is None and model_config is not None:
        bos = model_config.bos_token_id
    if bos is None:
        # GPT-2-style models have no distinct beginning token: text follows <|endoftext|>, as in their pretraining
        bos = vocab.get(END_OF_TEXT, eos)
    kind = hf_tokenizer.init_kwargs.get("talelab_kind") or _guess_kind(backend)
    template = hf_tokenizer.chat_template if isinstance(hf_tokenizer.chat_template, str) else None
    return Tokenizer(backend, bos_id=int(bos), eos_id=int(eos), kind=kind, chat_template=template)


def context_length_of(config) -> int:
    """Positions the model was built for (Llama's max_position_embeddings; GPT-2's n_positions answers to it)."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise InputError(f"{config.name_or_path}: its config gives no maximum length (max_position_embeddings)")


def read_adapter_config(directory: Path) -> dict:
    """A LoRA adapter's peft config, or a one-line InputError naming what is missing."""
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise InputError(f"{directory}: no {ADAPTER_CONFIG} (not a LoRA adapter directory; `talelab finetune` and "
                         f"`talelab dpo` write theirs to <out>/adapter)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or not config.get("base_model_name_or_path"):
        raise InputError(f"{path}: no 'base_model_name_or_path' (the base model this adapter belongs to)")
    return config


def adapter_base(directory: Path, name: str) -> str:
    """The adapter's base: a path as given, else relative to the adapter directory, else a hub id."""
    if Path(name).exists():
        return name
    beside = directory / name
    if beside.exists():
        return str(beside)
    if looks_like_hub_id(name):
        return name
    raise InputError(f"{directory / ADAPTER_CONFIG}: base model '{name}' is neither a directory nor a hub id")


def load_hf_config(source: str):
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        where = "not a Hugging Face model" if Path(source).is_dir() else "no such directory, nor a hub model"
        raise InputError(f"{source}: {where} ({str(e).splitlines()[0]})") from None


def load_causal_lm(source: str, device, dtype, attn_implementation: str | None) -> nn.Module:
    # deferred: transformers takes seconds to import; talelab's own models never need it
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load would interleave with talelab's own output
    try:
        # safetensors only, as everywhere in talelab: a pickled checkpoint can run code when loaded
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{source}: not a loadable Hugging Face causal LM ({str(e).splitlines()[0]})") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def load_hf_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  attn_implementation: str | None = None,
                  tokenizer_path: str | os.PathLike | None = None) -> tuple[HFCausalLM, Tokenizer, dict]:
    """A Hugging Face causal LM directory or hub id, or a LoRA adapter directory over one: (model, tokenizer, raw
    config), the raw config being config.json's fields (+ `adapter_config` for an adapter)."""
    directory = Path(path)
    adapter = read_adapter_config(directory) if is_adapter_dir(directory) else None
    source = adapter_base(directory, adapter["base_model_name_or_path"]) if adapter else str(path)
    if tokenizer_path is not None:
        tokenizer_source = tokenizer_path
    elif adapter and has_tokenizer_files(directory):
        tokenizer_source = directory  # fine-tuning may have added tokens (a pad): the adapter's own tokenizer
    else:
        tokenizer_source = source
    config = load_hf_config(source)
    # the tokenizer first: a missing one is reported before minutes of weight loading
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = load_hf_tokenizer(tokenizer_source, config)
    model = load_causal_lm(source, device, dtype, attn_implementation)
    rows = model.get_input_embeddings().weight.shape[0]
    if adapter and tokenizer.vocab_size > rows:
        model.resize_token_embeddings(tokenizer.vocab_size)  # as fine-tuning did before training the adapter
        rows = tokenizer.vocab_size
    if tokenizer.vocab_size > rows:
        raise MismatchError(f"{tokenizer_source}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                            f"vocabulary is {rows}")
    causal_lm = model
    if adapter:
        # deferred: only LoRA adapters need peft (and it loads transformers)
        from peft import PeftModel

        try:
            causal_lm = PeftModel.from_pretrained(model, str(directory)).to(device).eval()
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(f"{directory}: the adapter does not load onto {source} "
                             f"({str(e).splitlines()[0]})") from None
    info = HFModelConfig(context_length=context_length_of(config), vocab_size=rows, model_type=config.model_type,
                         source=source, adapter=str(directory) if adapter else None)
    raw = config.to_dict()
    if adapter:
        raw["adapter_config"] = adapter
    return HFCausalLM(causal_lm, info).eval(), tokenizer, raw
