"""Publishing a model: the model card every model directory gets, and `talelab push` to the Hugging Face Hub.

The card is the README.md the Hub shows: YAML metadata (license, library, datasets, base model for adapters and
merges) and what talelab measured about the model (bits per byte, the evaluation headline where a report exists,
parameters, training data, tokens, time, hardware), with the command that reproduces it. It is written from what
the directory holds, so `talelab push` can write it again for a directory made before cards existed.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from talelab.atomic import write_text_atomic
from talelab.errors import InputError, TalelabError
from talelab.evaluate.report import default_out
from talelab.models.hf import ADAPTER_CONFIG, is_adapter_dir, is_hf_dir
from talelab.models.storage import CONFIG_FILE, LATEST_POINTER, WEIGHTS_FILE, read_config, resolve_model_dir
from talelab.settings import CONFIG_FILE as SAVED_CONFIG

CARD_FILE = "README.md"
MERGE_PROVENANCE = "talelab-merge.json"  # finetune/merge.py writes it; read here without importing peft
# Files of the shared layout (or their public originals) -> the Hub dataset a card names.
DATASETS = {"data/tinystories/": "roneneldan/TinyStories", "TinyStories": "roneneldan/TinyStories",
            "data/instruct/dolly": "databricks/databricks-dolly-15k", "data/instruct/alpaca": "tatsu-lab/alpaca",
            "data/preference/hh-rlhf": "Anthropic/hh-rlhf", "ultrafeedback": "HuggingFaceH4/ultrafeedback_binarized"}


@dataclass
class Card:
    """What a card says: metadata for the Hub, then the tables of the page."""

    name: str
    summary: str
    library: str
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    measured: dict[str, str] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)
    reproduce: str | None = None


def model_directory(out: str | os.PathLike) -> Path | None:
    """The directory under `out` that holds a model (itself, or the adapter/ a DPO run writes), or None."""
    for candidate in (Path(out), Path(out) / "adapter"):
        if (candidate / LATEST_POINTER).is_file() or (candidate / WEIGHTS_FILE).is_file() \
                or is_adapter_dir(candidate) or is_hf_dir(candidate):
            return candidate
    return None


def hardware() -> str:
    """The machine writing the card: the one that just trained or converted the model."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def datasets_named(*texts: str) -> list[str]:
    """The Hub datasets whose shared-layout paths (or names) appear in `texts` (configs, reports)."""
    joined = "\n".join(texts)
    return sorted({dataset for marker, dataset in DATASETS.items() if marker in joined})


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def training_sources(directory: Path, train: dict) -> str:
    """The text of the configs behind a run: its own, and the prepared data's (which names the corpus files)."""
    data = Path(train.get("data", ""))
    return "\n".join([read_text(directory / SAVED_CONFIG), read_text(data / SAVED_CONFIG),
                      read_text(data / "report.json"), json.dumps(train)])


def last_metrics(directory: Path) -> tuple[dict, dict]:
    """The last training record and the last validation record of a run's metrics.jsonl (empty when absent)."""
    train_record, val_record = {}, {}
    for line in read_text(directory / "metrics.jsonl").splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            val_record = record
        elif "loss" in record:
            train_record = record
    return train_record, val_record


def talelab_card(directory: Path) -> Card:
    """A talelab model or run directory: its config, checkpoint step and metrics."""
    saved = read_config(resolve_model_dir(directory))
    model, train, parameters = saved["model"], saved.get("train") or {}, saved.get("parameters", 0)
    shape = f"{model['n_layers']} layers, width {model['d_model']}, context {model['context_length']}"
    card = Card(name=directory.resolve().name, library="talelab",
                summary=f"A {model['family']} language model ({parameters:,} parameters; {shape}; vocabulary "
                        f"{model['vocab_size']:,}) trained from scratch with talelab.")
    if not train:  # imported (llama2.c), not trained here
        card.summary = f"A {model['family']} language model ({parameters:,} parameters; {shape}) in talelab's format."
        return card
    card.datasets = datasets_named(training_sources(directory, train))
    last, val = last_metrics(directory)
    if val:
        card.measured["bits per byte, held-out split of the training data"] = f"{val['val_bpb']:.4f}"
        card.measured["loss, held-out split (nats per token)"] = f"{val['val_loss']:.4f}"
    tokens = saved.get("step", 0) * train["batch_size"] * train.get("grad_accum", 1) * model["context_length"]
    card.training = {"data": train["data"], "tokens": f"{tokens:,}", "steps": f"{saved.get('step', 0):,}",
                     "precision": train.get("dtype", "")}
    if last.get("elapsed_s"):
        card.training["time"] = f"{last['elapsed_s'] / 60:.1f} minutes ({last.get('tokens_per_s', 0):,.0f} tokens/s)"
    return card


def hugging_face_card(directory: Path) -> Card:
    """A Hugging Face model directory (an export or a merge) or a PEFT adapter directory."""
    name = directory.resolve().name
    if is_adapter_dir(directory):
        adapter = json.loads(read_text(directory / ADAPTER_CONFIG))
        base = adapter.get("base_model_name_or_path")
        return Card(name=name, library="peft", base_model=base,
                    summary=f"A LoRA adapter (rank {adapter.get('r')}, alpha {adapter.get('lora_alpha')}) for {base}, "
                            f"fine-tuned with talelab.",
                    datasets=datasets_named(read_text(directory / SAVED_CONFIG),
                                            read_text(directory.parent / SAVED_CONFIG)))
    config = json.loads(read_text(directory / CONFIG_FILE))
    merge = json.loads(read_text(directory / MERGE_PROVENANCE) or "{}")
    parameters = stored_parameters(directory)
    return Card(name=name, library="transformers", base_model=merge.get("base"),
                summary=f"A {config['model_type']} causal language model ({parameters:,} parameters) written by "
                        f"talelab" + (f": the LoRA adapter {Path(merge['adapter']).name} (rank {merge['rank']}) "
                                      f"merged into {merge['base']}." if merge else "."))


def stored_parameters(directory: Path) -> int:
    """Parameters in a directory's safetensors files, counted from their headers (no weight is loaded)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def evaluation_figures(directory: Path) -> dict[str, str]:
    """The headline of `talelab eval`'s report for this model, where one exists (its default place, or eval/)."""
    for place in (directory / "eval", default_out(directory)):
        report = place / "report.json"
        if report.is_file():
            headline = json.loads(read_text(report)).get("headline", {})
            return {f"{name} (talelab eval)": f"{value:.4f}" if isinstance(value, float) else str(value)
                    for name, value in headline.items()}
    return {}


def build_card(directory: Path, command: str | None = None, measured: dict[str, str] | None = None,
               reproduce: str | None = None) -> Card:
    hugging_face = is_adapter_dir(directory) or is_hf_dir(directory)
    card = hugging_face_card(directory) if hugging_face else talelab_card(directory)
    card.measured = {**(measured or {}), **card.measured, **evaluation_figures(directory)}
    card.training["written on"] = hardware()
    if command:  # the CLI saves the resolved config.yaml into the directory the command wrote
        card.reproduce = f"talelab {command} --config {SAVED_CONFIG}"
    card.reproduce = reproduce or card.reproduce
    return card


def card_markdown(card: Card, license: str = "mit") -> str:
    metadata = {"license": license, "library_name": card.library, "pipeline_tag": "text-generation",
                "tags": ["talelab", "text-generation", "story-generation"]}
    if card.datasets:
        metadata["datasets"] = card.datasets
    if card.base_model:
        metadata["base_model"] = card.base_model
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in metadata.items())  # JSON values are YAML
    lines = ["---", front, "---", "", f"# {card.name}", "", card.summary, ""]
    for title, table in (("Measured", card.measured), ("Training", card.training)):
        if table:
            lines += [f"## {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in table.items()] + [""]
    if card.measured:
        lines += ["Bits per byte count every UTF-8 byte of the text, so models with different tokenizers compare; "
                  "the reference protocol is shared/README.md's (valid-head.txt pieces 2-301, each after the "
                  "beginning-of-story token), on which Karpathy's stories260K scores 0.975.", ""]
    if card.reproduce:
        lines += ["## Reproduce", "", "```bash", card.reproduce, "```", ""]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, command: str | None = None,
                     measured: dict[str, str] | None = None, license: str = "mit", reproduce: str | None = None) \
        -> Path:
    """Write (or rewrite) `directory`/README.md from what the directory holds, plus `measured` figures; returns its
    path. `command` names the talelab command whose saved config.yaml repeats the run; `reproduce` says it in full."""
    directory = Path(directory)
    if model_directory(directory) != directory:
        raise InputError(f"{directory}: not a model directory (a talelab run or model, a Hugging Face model or a "
                         f"PEFT adapter)")
    path = directory / CARD_FILE
    write_text_atomic(path, card_markdown(build_card(directory, command, measured, reproduce), license))
    return path


def upload_list(directory: Path) -> list[tuple[str, Path]]:
    """(path in the repo, local file) for a push: the model's files and its card, config and metrics; a run
    directory's latest checkpoint goes to the top level without its optimizer state or older checkpoints."""
    files = {}
    weights = resolve_model_dir(directory) if (directory / LATEST_POINTER).is_file() else directory
    for source in (weights, directory):
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix != ".pt" and path.name != LATEST_POINTER:
                files[path.name] = path  # a file of the directory itself wins over the checkpoint's
    config = directory.parent / SAVED_CONFIG  # an adapter/ inside a DPO run: the run's config reproduces it
    if SAVED_CONFIG not in files and config.is_file():
        files[SAVED_CONFIG] = config
    return sorted(files.items())


def push(directory: str | os.PathLike, repo: str, private: bool = False, revision: str = "main",
         endpoint: str = "", token_env: str = "HF_TOKEN", license: str = "mit") -> str:
    """Upload a model directory to the Hub repo `repo` (created if missing) as one commit; returns its URL.
    The directory gets its model card first if it has none."""
    from huggingface_hub import CommitOperationAdd, HfApi  # deferred: only a push talks to the Hub
    from huggingface_hub.errors import HfHubHTTPError

    given = Path(directory)
    found = model_directory(given) if given.is_dir() else None
    if found is None:
        raise InputError(f"{given}: no model to push (a talelab run or model, a Hugging Face model or a PEFT adapter)")
    if not (found / CARD_FILE).is_file():
        write_model_card(found, license=license)
    api = HfApi(endpoint=endpoint or None, token=os.environ.get(token_env) or None)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in upload_list(found)]
    try:
        api.create_repo(repo, private=private or None, exist_ok=True)  # None: the account's default
        if revision != "main":
            api.create_branch(repo, branch=revision, exist_ok=True)
        commit = api.create_commit(repo, operations=operations, revision=revision,
                                   commit_message=f"Upload {found.resolve().name} with talelab")
    except (HfHubHTTPError, OSError, ValueError) as e:  # a refused token or card, missing rights, no network
        raise TalelabError(f"push to {repo}: {str(e).splitlines()[0]}") from None
    return commit.commit_url
