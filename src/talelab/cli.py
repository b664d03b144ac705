"""The `talelab` command: parses arguments, calls one function per command, prints. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from talelab.config import (PRESETS, ModelConfig, PrepareConfig, SamplingConfig, ServeConfig, TokenizerConfig,
                            TrainConfig, build_train_configs, check_choices)
from talelab.errors import ConfigError, TalelabError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other talelab error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, skip: tuple = ()) -> None:
    """One flag per field, documented by the field's help; unset flags stay absent so presets and YAML win."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in ("bool", bool):
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            group.add_argument(flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                               choices=f.metadata.get("choices"), help=help_text, metavar=kind.__name__.upper())


def given(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def build(cls, args: argparse.Namespace, **fixed):
    config = cls(**{**given(args, cls), **fixed})
    check_choices(config)
    return config


def cmd_prepare(args) -> int:
    from talelab.data.prepare import prepare

    summary = prepare(build(PrepareConfig, args), data_root=args.data_root)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_tokenizer_train(args) -> int:
    from talelab.tokenizer import train_tokenizer_from

    config = build(TokenizerConfig, args)
    tokenizer = train_tokenizer_from(config)
    print(f"{config.kind} tokenizer with {tokenizer.vocab_size} tokens written to {config.out}")
    return 0


def cmd_pretokenize(args) -> int:
    from talelab.data.shards import pretokenize
    from talelab.tokenizer import load_tokenizer

    print(f"shards in {pretokenize(args.data, load_tokenizer(args.tokenizer))}")
    return 0


def cmd_train(args) -> int:
    from talelab.train.loop import train

    base = None
    if args.resume and not args.preset and not args.config:  # `--out RUN --resume` alone continues RUN as it was
        from pathlib import Path

        from talelab.train.checkpoint import saved_configuration

        run_dir = Path(given(args, TrainConfig).get("out", TrainConfig.out))
        base = (f"{run_dir} (saved configuration)", saved_configuration(run_dir))
    model_config, train_config = build_train_configs(
        args.preset, args.config, {"model": given(args, ModelConfig), "train": given(args, TrainConfig)}, base)
    summary = train(model_config, train_config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(json.dumps(summary, indent=2))
    return 0


def cmd_generate(args) -> int:
    from talelab.generate import generate_text
    from talelab.models.storage import load_model

    model, tokenizer, _ = load_model(args.model, device=args.device)
    config = build(SamplingConfig, args)
    for i, story in enumerate(generate_text(model, tokenizer, config, stream=config.num_samples == 1)):
        if config.num_samples > 1:
            print(f"--- story {i + 1} ---\n{story}\n")
    return 0


def cmd_eval_loss(args) -> int:
    from talelab.evaluate.likelihood import evaluate_file

    report = evaluate_file(args.model, args.text, data_root=args.data_root, protocol=args.protocol,
                           batch_size=args.batch_size)
    print(json.dumps(report, indent=2))
    return 0


def cmd_convert(args) -> int:
    from talelab.models.convert import convert_hf, convert_llama2c

    if args.source == "llama2c":
        out = convert_llama2c(args.model, args.tokenizer, args.out, data_root=args.data_root)
    else:
        out = convert_hf(args.model, args.out)
    print(f"written {out}")
    return 0


def cmd_serve(args) -> int:
    from talelab.serve.app import run_server

    run_server(args.model, build(ServeConfig, args), device=args.device)
    return 0


def cmd_sweep(args) -> int:
    from talelab.experiments.sweep import sweep

    common = {"data": args.data, "tokenizer": args.tokenizer, "device": args.device, "dtype": args.dtype}
    sweep(args.presets, args.grid, args.budget, args.out, common, base_preset=args.base_preset)
    print(f"results in {args.out}/results.md")
    return 0


def cmd_memory(args) -> int:
    from talelab.experiments.memory import memory_table

    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers") from None
    memory_table(args.presets, batch_sizes, args.vocab_size, args.device, args.dtype, args.out, args.memory_limit_gb)
    print((Path(args.out) / "memory.md").read_text(encoding="utf-8"))
    return 0


def cmd_demo(args) -> int:
    from talelab.demo import run_demo

    run_demo(out=args.out, data_root=args.data_root, minutes=args.minutes)
    return 0


def cmd_interpret_attention(args) -> int:
    from talelab.interpret.attention import heads_markdown, run_attention

    report = run_attention(args.model, args.out, text=args.text, data=args.data, samples=args.samples,
                           protocol=args.protocol, layers=args.layers, heads=args.heads,
                           positional_threshold=args.positional_threshold, role_threshold=args.role_threshold,
                           window=args.window, map_tokens=args.map_tokens, batch_size=args.batch_size,
                           data_root=args.data_root, progress=args.progress)
    print(heads_markdown(report))
    print(f"written {report['out']}: heads.md, heads.json, heads_overview.png, attention/layer*_head*.png")
    return 0


def cmd_interpret_neurons(args) -> int:
    from talelab.interpret.neuron_report import ranking_markdown
    from talelab.interpret.neurons import run_neurons

    report = run_neurons(args.model, args.out, data=args.data, samples=args.samples, protocol=args.protocol,
                         layers=args.layers, top=args.top, rank=args.rank, batch_size=args.batch_size,
                         data_root=args.data_root, progress=args.progress)
    print(ranking_markdown(report))
    print(f"written {report['out']}: neurons.md, neurons.html, neurons.json")
    return 0


def add_interpret_inputs(parser: argparse.ArgumentParser, samples: int) -> None:
    """The options both `interpret` commands share: which model, which texts, which layers, where to write."""
    parser.add_argument("--model", required=True, help="talelab model or run directory, or a Hugging Face model "
                        "directory of type llama or gpt2 (with its tokenizer)")
    parser.add_argument("--samples", type=int, default=samples, help=f"texts to read from --data, each cut to the "
                        f"model's context (0: all; default: {samples})")
    parser.add_argument("--protocol", choices=["documents", "reference"], default="documents",
                        help="documents: the texts of --data in order; reference: the pieces of the bits-per-byte "
                        "protocol (blank-line pieces 2..301 of valid-head.txt)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices to study (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: 8)")
    parser.add_argument("--out", default=None, help="report directory (default: runs/interpret/<model name>)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over batches")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="talelab", description="Build a small story-writing language model end to end.")
    p.add_argument("--data-root", default=None, help="folder with the shared data layout (default: $TALELAB_DATA, "
                   "then ../shared beside the checkout, then the Hugging Face hub)")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="prepare, tokenize, train, measure and sample on the bundled TinyStories text")
    demo.add_argument("--out", default="runs/demo", help="demo run directory (replaced on each run)")
    demo.add_argument("--minutes", type=float, default=None, help="training time (default: the demo preset's)")
    demo.set_defaults(run=cmd_demo)

    prep = sub.add_parser("prepare", help="read, clean, deduplicate and split a corpus; writes a cleaning report")
    add_dataclass_flags(prep, PrepareConfig, "prepare")
    prep.set_defaults(run=cmd_prepare)

    tok = sub.add_parser("tokenizer", help="tokenizer commands").add_subparsers(dest="tokenizer_command", required=True)
    tok_train = tok.add_parser("train", help="train a byte-level BPE or word-level tokenizer (tokenizer.json)")
    add_dataclass_flags(tok_train, TokenizerConfig, "tokenizer")
    tok_train.set_defaults(run=cmd_tokenizer_train)

    pre = sub.add_parser("pretokenize", help="encode a prepared directory into token shards")
    pre.add_argument("--data", required=True, help="prepared data directory")
    pre.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    pre.set_defaults(run=cmd_pretokenize)

    tr = sub.add_parser("train", help="train a transformer from scratch (preset, YAML config, flag overrides)")
    tr.add_argument("--preset", default=None, help=f"named starting configuration: {', '.join(PRESETS)}")
    tr.add_argument("--config", default=None, help="YAML file with 'model:' and 'train:' sections")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_dataclass_flags(tr, ModelConfig, "model")
    add_dataclass_flags(tr, TrainConfig, "training")
    tr.set_defaults(run=cmd_train)

    sw = sub.add_parser("sweep", help="train several presets or a grid under one budget; table and plots")
    sw.add_argument("presets", nargs="*", help=f"presets to compare ({', '.join(PRESETS)})")
    sw.add_argument("--grid", default=None, help="config grid, e.g. 'd_model=128,256 n_layers=8,12 n_heads=2,4,8'")
    sw.add_argument("--base-preset", default=None, help="preset the grid's values override")
    sw.add_argument("--budget", required=True, help="per run: time ('5m', '90s') or tokens ('200k', '2M')")
    sw.add_argument("--data", required=True, help="prepared data directory")
    sw.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    sw.add_argument("--out", default="runs/sweep", help="sweep directory (re-run to resume)")
    sw.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sw.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sw.set_defaults(run=cmd_sweep)

    mem = sub.add_parser("memory", help="peak training memory per preset and batch size ('oom' where it fails)")
    mem.add_argument("presets", nargs="+", help=f"presets to measure ({', '.join(PRESETS)})")
    mem.add_argument("--batch-sizes", default="2,4,8,16,32", help="comma-separated batch sizes")
    mem.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size of the models")
    mem.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    mem.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    mem.add_argument("--memory-limit-gb", type=float, default=0.0,
                     help="cap each measurement's address space (CPU), so 'oom' appears where it would not fit")
    mem.add_argument("--out", default="runs/memory", help="folder for memory.md and memory.csv")
    mem.set_defaults(run=cmd_memory)

    gen = sub.add_parser("generate", help="write stories with a trained model")
    gen.add_argument("--model", required=True, help="model or run directory")
    gen.add_argument("--device", default="cpu", help="cpu or cuda")
    add_dataclass_flags(gen, SamplingConfig, "sampling")
    gen.set_defaults(run=cmd_generate)

    ev = sub.add_parser("eval", help="evaluation commands").add_subparsers(dest="eval_command", required=True)
    loss = ev.add_parser("loss", help="loss, perplexity and bits per byte of a model on a text file")
    loss.add_argument("--model", required=True, help="model or run directory")
    loss.add_argument("--text", default="data/tinystories/valid-head.txt",
                      help="text file (path or relative to the data root); documents split as `talelab prepare` does")
    loss.add_argument("--protocol", choices=["reference", "documents"], default="reference",
                      help="reference: blank-line pieces 2..301 (shared/README.md); documents: every document")
    loss.add_argument("--batch-size", type=int, default=16)
    loss.set_defaults(run=cmd_eval_loss)

    conv = sub.add_parser("convert", help="import llama2.c checkpoints, export Hugging Face Llama directories")
    conv.add_argument("source", choices=["llama2c", "hf"], help="llama2c: import a .bin; hf: export a talelab model")
    conv.add_argument("--model", required=True, help="llama2.c .bin (import) or talelab model/run directory (export)")
    conv.add_argument("--tokenizer", default=None, help="llama2.c tokenizer .bin (import)")
    conv.add_argument("--out", required=True, help="output directory")
    conv.set_defaults(run=cmd_convert)

    interp = sub.add_parser("interpret", help="what attention heads and MLP neurons do (talelab, HF llama/gpt2)")
    interp = interp.add_subparsers(dest="interpret_command", required=True)
    data_help = ("prepared directory (its val.jsonl), text or JSONL file, or a path under the data root "
                 "(default: data/tinystories/valid-head.txt)")
    att = interp.add_parser("attention", help="attention heat maps; heads classified positional or semantic and by "
                            "role (previous-token, first-token, duplicate-token, local-window)")
    add_interpret_inputs(att, samples=100)
    source = att.add_mutually_exclusive_group()
    source.add_argument("--text", default=None, help="one text to draw and score (must fit the model's context)")
    source.add_argument("--data", default="data/tinystories/valid-head.txt", help=data_help)
    att.add_argument("--heads", type=int, nargs="+", default=None, help="head indices to study (default: all)")
    att.add_argument("--positional-threshold", type=float, default=0.5, help="a head whose distance correlation is "
                     "above this is positional, else semantic (default: 0.5, the seed's rule)")
    att.add_argument("--role-threshold", type=float, default=0.5, help="score a head needs for a role label "
                     "(previous-token, first-token, duplicate-token, local-window; default: 0.5)")
    att.add_argument("--window", type=int, default=4, help="local window: the last this many tokens, the query "
                     "included (default: 4)")
    att.add_argument("--map-tokens", type=int, default=40, help="heat maps show the first this many tokens of the "
                     "first text, for readable labels (scores use every token; default: 40)")
    att.set_defaults(run=cmd_interpret_attention)

    neu = interp.add_parser("neurons", help="top activating tokens of every MLP neuron with context and word classes; "
                            "the most class-selective neurons")
    add_interpret_inputs(neu, samples=200)
    neu.add_argument("--data", default="data/tinystories/valid-head.txt", help=data_help)
    neu.add_argument("--top", type=int, default=10, help="activations kept per neuron (default: 10)")
    neu.add_argument("--rank", type=int, default=20, help="neurons in the selectivity ranking (default: 20)")
    neu.set_defaults(run=cmd_interpret_neurons)

    srv = sub.add_parser("serve", help="an OpenAI-compatible API and the story playground page (http://HOST:PORT/)")
    srv.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                     help="a model or run directory to serve under NAME (repeat for several)")
    srv.add_argument("--device", default="cpu", help="cpu or cuda")
    add_dataclass_flags(srv, ServeConfig, "serving")
    srv.set_defaults(run=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help and usage errors: argparse has printed its message
        return int(e.code or 0)
    try:
        return args.run(args)
    except TalelabError as e:
        print(f"talelab: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permissions: the user's to fix, not a bug to trace
        print(f"talelab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("talelab: interrupted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
