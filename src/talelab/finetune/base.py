"""The model a fine-tune starts from: a Hugging Face directory or hub id, or a talelab model exported to one.

Also the LoRA configuration (named target-module presets per architecture, checked against the model) and the
trainable-parameter summary every fine-tuning command prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.pytorch_utils import Conv1D

from talelab.config import LoraConfig as LoraSettings  # peft has a LoraConfig too
from talelab.errors import ConfigError, InputError
from talelab.models.convert import export_hf
from talelab.models.hf import TOKENIZER_FILES, has_tokenizer_files, is_adapter_dir, read_adapter_config
from talelab.models.storage import WEIGHTS_FILE, load_model, resolve_model_dir
from talelab.paths import data_root as find_data_root
from talelab.tracking import NO_TRACKER, Tracker

# LoRA target modules per architecture (model.config.model_type), as the seeds used them.
TARGET_PRESETS = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
TARGET_PRESETS.update({kind: TARGET_PRESETS["llama"] for kind in ("mistral", "qwen2", "qwen3", "gemma", "phi3")})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAD_TOKEN = "<|pad|>"
EXPORT_SUFFIX = ".hf-export"  # a talelab model's Hugging Face form is cached beside it under this name
EXPORT_STAMP = "talelab-source.json"


def is_talelab_model(directory: Path) -> bool:
    """A talelab model directory (config.json with a 'model' section) or a run directory (a 'latest' file)."""
    if (directory / "latest").is_file():
        return True
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        return "model" in json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def export_talelab(directory: Path) -> Path:
    """The Hugging Face Llama form of a talelab model or run directory, exported once into `<dir>.hf-export`.

    The export is redone when the source's newest checkpoint (its name, size and modification time) changes.
    """
    source = resolve_model_dir(directory)
    weights = (source / WEIGHTS_FILE).stat()
    stamp = {"source": str(source.resolve()), "size": weights.st_size, "mtime_ns": weights.st_mtime_ns}
    target = directory.parent / (directory.name + EXPORT_SUFFIX)
    stamp_file = target / EXPORT_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
        return target
    model, tokenizer, _ = load_model(source)
    export_hf(model, tokenizer, target)
    stamp_file.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return target


def resolve_base(base: str | os.PathLike, data_root=None) -> str:
    """A local Hugging Face directory (talelab models exported first) or, when no such path exists, a hub id."""
    path = Path(base).expanduser()
    if not path.exists():
        root = find_data_root(data_root)
        if root is not None and (root / path).exists():
            path = root / path
    if not path.exists():
        if str(base).startswith((".", "/", "~")) or str(base).count("/") > 1:
            raise InputError(f"--base {base}: no such directory (and not a hub id such as 'distilgpt2')")
        return str(base)  # a hub id: transformers downloads it (or finds it in the cache)
    if not path.is_dir():
        raise InputError(f"--base {path}: not a directory (give a Hugging Face model directory, a talelab model or "
                         f"run directory, or a hub id)")
    if is_talelab_model(path):
        return str(export_talelab(path).resolve())
    if is_adapter_dir(path):
        return str(path.resolve())  # a LoRA adapter: load_base merges it into its base
    if not (path / "config.json").is_file():
        raise InputError(f"--base {path}: no config.json (not a Hugging Face or talelab model directory)")
    return str(path.resolve())  # absolute: an adapter records it as its base


def load_tokenizer_of(source: str):
    """The tokenizer saved with a model, or a one-line InputError naming the directory that lacks one."""
    if Path(source).is_dir() and not has_tokenizer_files(Path(source)):
        raise InputError(f"{source}: no tokenizer in the model directory (expected one of {', '.join(TOKENIZER_FILES)};"
                         f" save the tokenizer beside the model)")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise InputError(f"{source}: cannot load its tokenizer ({' '.join(str(e).split())[:200]})") from None


def ensure_pad_token(model, tokenizer) -> str:
    """Give the tokenizer a pad token that is not EOS, so EOS stays a learned target; say what was done.

    Padding never reaches the loss either way (trl pads labels with -100), but GPT-2's habit of pad = EOS makes
    generation code and attention masks treat a real EOS as padding. An existing unknown token serves when there is
    one; otherwise a new pad token is added and the embeddings grow by one row.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError(f"{tokenizer.name_or_path}: the tokenizer has no EOS token (set eos_token in its "
                         f"tokenizer_config.json)")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        action = f"pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) kept"
    elif tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos:
        tokenizer.pad_token = tokenizer.unk_token
        action = f"pad token = unknown token {tokenizer.unk_token!r} (id {tokenizer.pad_token_id}), never in the loss"
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        model.resize_token_embeddings(len(tokenizer))
        action = f"added pad token {PAD_TOKEN!r} (id {tokenizer.pad_token_id}); embeddings resized to {len(tokenizer)}"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = eos
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = eos
    return action


def load_base(base: str, data_root=None, dtype: str = "float32", log=None):
    """(model, tokenizer) of a Hugging Face directory, hub id, or talelab model/run directory, with pad != EOS.

    `log` (optional) receives one line saying where the model came from and how padding was arranged.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    source = resolve_base(base, data_root)
    if is_adapter_dir(Path(source)):  # continue from a fine-tune (e.g. instruction SFT after DAPT)
        model, tokenizer = load_finetuned(source, dtype)
        model = model.merge_and_unload()
    else:
        tokenizer = load_tokenizer_of(source)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
        except (OSError, ValueError) as e:
            raise InputError(f"--base {base}: cannot load a causal language model "
                             f"({' '.join(str(e).split())[:200]})") from None
    action = ensure_pad_token(model, tokenizer)
    if log is not None:
        exported = f" (exported from the talelab model {base})" if source.endswith(EXPORT_SUFFIX) else ""
        log(f"base: {source}{exported}; {action}")
    return model, tokenizer


def context_length(model) -> int | None:
    """The longest sequence the model's position embeddings allow (None when the config does not say)."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def module_names(model) -> list[str]:
    """The short names of the layers LoRA can wrap (linear, GPT-2's Conv1D, embeddings), sorted."""
    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(part.startswith("lora_") or part == "base_layer" for part in parts):
            continue  # the inside of a layer peft already wrapped
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, Conv1D)) or hasattr(module, "base_layer"):
            names.add(parts[-1])
    return sorted(names)


def target_modules_for(model, target_modules: list[str] | str = "auto") -> list[str]:
    """The module names to adapt: the architecture's preset ('auto' or a preset name), or the names given."""
    model_type = getattr(model.config, "model_type", "")
    if isinstance(target_modules, str):
        if target_modules == "auto":
            if model_type not in TARGET_PRESETS:
                raise ConfigError(f"target_modules=auto: no preset for model type '{model_type}' (name the modules: "
                                  f"{', '.join(module_names(model))})")
            target_modules = TARGET_PRESETS[model_type]
        elif target_modules in TARGET_PRESETS:
            target_modules = TARGET_PRESETS[target_modules]
        else:
            target_modules = [m for m in target_modules.replace(",", " ").split() if m]
    valid = module_names(model)
    unknown = [m for m in target_modules if m not in valid]
    if unknown or not target_modules:
        raise ConfigError(f"target_modules: {', '.join(unknown) or '(none)'} not in this {model_type or 'model'} "
                          f"(valid: {', '.join(valid)})")
    return list(target_modules)


def lora_config(model, lora: LoraSettings):
    """A peft LoraConfig for a causal LM, its target modules checked against the model."""
    return LoraConfig(r=lora.rank, lora_alpha=lora.effective_alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                      bias="none", target_modules=target_modules_for(model, lora.target_modules),
                      fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")  # GPT-2's Conv1D is (in, out)


def trainable_summary(model) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, trainable percentage); LoRA weights count in both."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total, 100.0 * trainable / max(total, 1)


def format_trainable(model) -> str:
    """The trainable-parameter line every fine-tuning command prints."""
    trainable, total, percent = trainable_summary(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"


def load_finetuned(directory: str | os.PathLike, dtype: str = "float32"):
    """(model, tokenizer) of a `talelab finetune` output: a full model directory, or a LoRA adapter on its base."""
    directory = Path(directory)
    tokenizer = load_tokenizer_of(str(directory))
    if not is_adapter_dir(directory):
        return AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype]), tokenizer
    base = read_adapter_config(directory)["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(resolve_base(base), dtype=DTYPES[dtype])
    if model.get_input_embeddings().num_embeddings != len(tokenizer):  # a pad token was added while fine-tuning
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(model, directory), tokenizer


def precision_flags(dtype: str) -> dict:
    """Trainer's bf16/fp16 flags for a compute dtype: mixed precision where the hardware supports it. Without a GPU,
    Trainer accepts bf16 only when told it runs on the CPU (else it stops with a ValueError)."""
    cuda = torch.cuda.is_available()
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "float32"
    if dtype == "float16" and not cuda:
        raise ConfigError("dtype=float16 needs a GPU (use bfloat16 or float32 on CPU)")
    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16", "use_cpu": not cuda}


class MetricsLog(TrainerCallback):
    """Appends every logged record (training steps and evaluations) to metrics.jsonl as it happens, and gives it to
    the `--report-to` tracker (which transformers' own integrations would name and place differently)."""

    def __init__(self, path: Path, tracker: Tracker = NO_TRACKER):
        self.path, self.tracker = path, tracker
        path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"step": state.global_step, **(logs or {})}  # the trainer's logs carry the epoch
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if state.is_world_process_zero:
            self.tracker.log(record)


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The step of a Trainer checkpoint folder (checkpoint-N)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])
