"""talelab from Python (a notebook, a script): the stages of the command line as functions, and a loaded model.

    import talelab
    model = talelab.load("runs/demo/model")
    model.generate("Once upon a time", temperature=0.8, max_new_tokens=100)
    model.score(["Once upon a time, ..."])          # loss (nats per token) and bits per byte

Keyword names are the command's flags with underscores (`talelab train --n-layers 8` is `n_layers=8`); they are
checked and typed exactly as flags and YAML are (talelab.settings.resolve), and each call runs the code of its
command, with the same defaults, and saves the same config.yaml beside what it writes. `help(talelab.config.X)` or
`talelab COMMAND --help` lists a stage's settings.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from talelab.cli import resolve_command
from talelab.commands import COMMANDS, with_card
from talelab.config import DecodeConfig, SamplingConfig
from talelab.data.prepare import prepare as prepare_corpus
from talelab.errors import ConfigError
from talelab.evaluate.likelihood import score_documents
from talelab.evaluate.report import run_eval
from talelab.generate import generate_text, load_decoder
from talelab.settings import flags_of, resolve, save_config
from talelab.tokenizer import Tokenizer, train_tokenizer_from
from talelab.train.loop import train as train_model


class Model:
    """A model and its tokenizer, loaded once, ready to write stories (`generate`) and measure texts (`score`)."""

    def __init__(self, path: str | os.PathLike, decode: DecodeConfig):
        self.path, self.decode = str(path), decode
        self.module, self.tokenizer, self.config = load_decoder(path, decode)  # torch module, Tokenizer, raw config

    def __repr__(self) -> str:
        return f"talelab.Model({self.path!r}, {sum(p.numel() for p in self.module.parameters()):,} parameters)"

    def generate(self, prompt: str | None = None, *, stream: bool = False, **sampling) -> str | list[str]:
        """The story (prompt included) after `prompt` (default "Once upon a time"), or a list when num_samples > 1.

        Keywords are SamplingConfig's: max_new_tokens, temperature (0: greedy), top_k, top_p, repetition_penalty,
        num_beams, beam_sample, length_penalty, num_samples, seed (-1: a fresh one), stop_at_eos; the same settings
        and seed give the story `talelab generate` prints. `stream` prints the first story as it is written."""
        values = sampling if prompt is None else {**sampling, "prompt": prompt}
        given = known(flag_destinations(SamplingConfig), values, "Model.generate")
        config = resolve(SamplingConfig, [("Model.generate", given)])
        stories = generate_text(self.module, self.tokenizer, config, stream=stream)
        return stories[0] if config.num_samples == 1 else stories

    def score(self, texts: str | list[str], batch_size: int = 16) -> dict:
        """Each text scored on its own (beginning-of-story token, then its tokens), as `talelab eval loss` scores
        documents: loss (nats per token), perplexity and bits_per_byte over them all, with the sums behind them."""
        return score_documents(self.module, self.tokenizer, [texts] if isinstance(texts, str) else list(texts),
                               batch_size=batch_size)


def load(path: str | os.PathLike, **decode) -> Model:
    """A talelab model or run directory (its latest checkpoint), Hugging Face model directory or hub id, or PEFT
    adapter directory, as every command loads one. Keywords are DecodeConfig's: device ("auto", "cpu", "cuda"),
    dtype ("auto", "float32", "bfloat16", "int8"), compile."""
    given = known(flag_destinations(DecodeConfig), decode, "talelab.load")
    return Model(path, resolve(DecodeConfig, [("talelab.load", given)]))


def prepare(*, data_root: str | None = None, config: str | None = None, **settings) -> dict:
    """`talelab prepare`: read, clean, deduplicate and split a corpus into `out` (train/val/test.jsonl, report.md);
    returns the summary it prints. Keywords: source, out, format, max_documents, recase, ... (PrepareConfig);
    `config` is a YAML file read as --config; `data_root` is --data-root. In a script, call it under
    `if __name__ == "__main__":`: its worker processes import the script that started them."""
    prepared = configured("prepare", settings, config)
    summary = prepare_corpus(prepared, data_root=data_root)
    save_config(prepared, prepared.out)
    return summary


def train_tokenizer(*, config: str | None = None, **settings) -> Tokenizer:
    """`talelab tokenizer train`: a BPE or word-level tokenizer trained on `data`, saved in `out`, and returned.
    Keywords: data, out, kind ("bpe", "words"), vocab_size, ... (TokenizerConfig)."""
    tokenizer_config = configured("tokenizer train", settings, config)
    tokenizer = train_tokenizer_from(tokenizer_config)
    save_config(tokenizer_config, tokenizer_config.out)
    return tokenizer


def train(preset: str | None = None, *, config: str | None = None, **settings) -> dict:
    """`talelab train`: train a model from scratch into `out`; returns the summary train prints (steps, losses,
    val_bpb, tokens/s, run_dir, checkpoint). Values come as the command's do, later winning: the preset ("tiny",
    "demo", "ts-1m", ... talelab.presets), then the YAML `config`, then the keywords, model and training settings
    side by side (data, tokenizer, out, max_steps, lr, n_layers, d_model, device, ...; ModelConfig, TrainConfig);
    resume=True continues the run in `out`."""
    run = configured("train", settings, config, preset)
    summary = train_model(run.model, run.train, resume=run.resume)
    save_config(run, run.train.out)
    with_card(Path(run.train.out), "train")  # the model card the command writes
    return summary


def evaluate(model: str | os.PathLike | Model, *, data_root: str | None = None, config: str | None = None,
             **settings) -> dict:
    """`talelab eval`: the evaluation report of `model` (a path, or a loaded Model's path) in `out` (default
    runs/eval/<model name>); returns report.json's content with "out". Keywords: suite ("likelihood,diversity",
    "default", "all"), samples, text, data, temperature, top_p, seed, judge_base_url, ... (EvalConfig). A section
    that fails is kept as {"status": "failed", "error": ...} in report["sections"]; the others still run."""
    path = model.path if isinstance(model, Model) else os.fspath(model)
    eval_config = configured("eval", {**settings, "model": path}, config)
    report = run_eval(eval_config, data_root=data_root)
    save_config(eval_config, report["out"])
    return report


def configured(command: str, settings: dict, config: str | None, preset: str | None = None):
    """The config `talelab COMMAND` resolves from these flags (named with underscores), --config and --preset."""
    flags = flag_destinations(COMMANDS[command].config)
    given = {flags[name]: value for name, value in known(flags, settings, f"talelab {command}").items()}
    return resolve_command(command, COMMANDS[command], argparse.Namespace(config=config, preset=preset, **given))


def flag_destinations(cls) -> dict[str, str]:
    """Each flag of `cls` named with underscores -> where talelab.cli puts its value: a section's fields are flat
    flags (after the section's prefix) whose values nest under the section ('top_k' -> 'sampling.top_k')."""
    return {flag.name: flag.destination for flag in flags_of(cls)}


def known(names: Iterable[str], values: dict, where: str) -> dict:
    """`values`, once every key is one of `names`; else a ConfigError naming every unknown key."""
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keyword{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(names))})")
    return values
