"""The `talelab` command: parses arguments, calls one function per command, prints. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from talelab.config import (DEVICES, FINETUNE_PRESETS, PRESETS, TRAINING_DTYPES, DecodeConfig, EvalConfig,
                            FinetuneConfig, JudgeConfig, ModelConfig, PreferenceConfig, PrefsConfig, PrepareConfig,
                            SamplingConfig, ServeConfig, TagClassifierConfig, TokenizerConfig, TrainConfig,
                            TrialsConfig, build_train_configs, check_choices)
from talelab.errors import ConfigError, TalelabError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other talelab error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, skip: tuple = (), prefix: str = "") -> None:
    """One flag per field, documented by the field's help; unset flags stay absent so presets and YAML win.
    `prefix` (e.g. 'judge_') keeps two configs with a field of the same name apart on one command line."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        # argparse %-formats help strings, so a literal percent sign in a field's help must be doubled
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%")
        name = prefix + f.name
        if f.type in ("bool", bool):
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            group.add_argument(flag(name), dest=name, type=kind, default=argparse.SUPPRESS,
                               choices=f.metadata.get("choices"), help=help_text, metavar=kind.__name__.upper())


def given(args: argparse.Namespace, cls, prefix: str = "") -> dict:
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls) if hasattr(args, prefix + f.name)}


def build(cls, args: argparse.Namespace, prefix: str = "", **fixed):
    config = cls(**{**given(args, cls, prefix), **fixed})
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
    from talelab.generate import generate_text, load_decoder

    model, tokenizer, _ = load_decoder(args.model, build(DecodeConfig, args))
    config = build(SamplingConfig, args)
    for i, story in enumerate(generate_text(model, tokenizer, config, stream=config.num_samples == 1)):
        if config.num_samples > 1:
            print(f"--- story {i + 1} ---\n{story}\n")
    return 0


def cmd_eval(args) -> int:
    from talelab.evaluate.report import failures, headline_markdown, parse_suites, run_eval

    config = build(EvalConfig, args)
    if args.model == "loss" and args.model_flag:  # `eval loss --model M`: the likelihood figures alone, as JSON
        from talelab.evaluate.likelihood import evaluate_file

        print(json.dumps(evaluate_file(args.model_flag, config.text, data_root=args.data_root,
                                       protocol=config.protocol, batch_size=config.batch_size,
                                       decode=build(DecodeConfig, args)), indent=2))
        return 0
    model = args.model_flag or args.model
    if not model or (model == "loss" and not Path(model).exists()):
        raise ConfigError("eval: name the model to evaluate (talelab eval MODEL, or talelab eval loss --model MODEL)")
    judge = build(JudgeConfig, args, prefix="judge_") if "judge" in parse_suites(config.suite) else None
    report = run_eval(model, config, judge=judge, data_root=args.data_root, decode=build(DecodeConfig, args))
    print(headline_markdown(report))
    print(f"written {report['out']}: report.md, report.json and the charts")
    if failures(report):
        raise TalelabError(f"eval: failed sections: {'; '.join(failures(report))} (the rest of the report is in "
                           f"{report['out']})")
    return 0


def cmd_convert(args) -> int:
    from talelab.models.convert import convert_hf, convert_llama2c, export_llama2c
    from talelab.models.storage import load_model

    if args.source == "llama2c":
        out = convert_llama2c(args.model, args.tokenizer, args.out, data_root=args.data_root)
    elif args.source == "to-llama2c":
        out = export_llama2c(load_model(args.model)[0], args.out)
    else:
        out = convert_hf(args.model, args.out)
    print(f"written {out}")
    return 0


def cmd_serve(args) -> int:
    from talelab.serve.app import run_server

    run_server(args.model, build(ServeConfig, args), build(DecodeConfig, args))
    return 0


def cmd_sweep(args) -> int:
    from talelab.experiments.sweep import sweep

    common = {"data": args.data, "tokenizer": args.tokenizer, "device": args.device, "dtype": args.dtype}
    every_run = {k: v for k, v in {**given(args, ModelConfig), **given(args, TrainConfig)}.items()
                 if k not in common and k != "out"}  # the sweep's own flags are not per-run settings
    sweep(args.presets, args.grid, args.budget, args.out, common, base_preset=args.base_preset, every_run=every_run)
    print(f"results in {args.out}/results.md")
    return 0


def cmd_memory(args) -> int:
    from talelab.experiments.memory import memory_table

    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers") from None
    memory_table(args.presets, batch_sizes, args.vocab_size, args.device, args.dtype, args.out, args.memory_limit_gb,
                 grid=args.grid, base_preset=args.base_preset)
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
                           data_root=args.data_root, progress=args.progress, device=args.device)
    print(heads_markdown(report))
    print(f"written {report['out']}: heads.md, heads.json, heads_overview.png, attention/layer*_head*.png")
    return 0


def cmd_interpret_neurons(args) -> int:
    from talelab.interpret.neuron_report import ranking_markdown
    from talelab.interpret.neurons import run_neurons

    report = run_neurons(args.model, args.out, data=args.data, samples=args.samples, protocol=args.protocol,
                         layers=args.layers, top=args.top, rank=args.rank, batch_size=args.batch_size,
                         data_root=args.data_root, progress=args.progress, device=args.device)
    print(ranking_markdown(report))
    print(f"written {report['out']}: neurons.md, neurons.html, neurons.json")
    return 0


def cmd_compare(args) -> int:
    from talelab.evaluate.compare import compare_reports

    print(compare_reports(args.reports, args.out), end="")
    print(f"written {args.out}/compare.md and compare.csv")
    return 0


def cmd_tags_train(args) -> int:
    from talelab.evaluate.tags import classifier_markdown, train_tag_classifier

    config = build(TagClassifierConfig, args)
    print(classifier_markdown(train_tag_classifier(config, data_root=args.data_root)))
    print(f"written {config.out}: classifier.json, report.md, report.json, f1.png")
    return 0


def cmd_finetune(args) -> int:
    from talelab.finetune.sft import build_finetune_config, finetune

    summary = finetune(build_finetune_config(args.preset, given(args, FinetuneConfig)), data_root=args.data_root)
    shown = {k: v for k, v in summary.items() if k not in ("config", "adherence")}
    print(json.dumps({**shown, **({"adherence": summary["adherence"]} if "adherence" in summary else {})}, indent=2,
                     default=str))
    return 0


def cmd_trials(args) -> int:
    from talelab.finetune.sft import build_finetune_config
    from talelab.finetune.trials import trials

    grid = build(TrialsConfig, args)
    common = dataclasses.asdict(build_finetune_config(args.preset, given(args, FinetuneConfig)))
    trials(grid.grid, grid.out, common, data_root=args.data_root)
    print(f"results in {grid.out}/results.md")
    return 0


def cmd_dpo(args) -> int:
    from talelab.finetune.dpo import run_dpo

    summary = run_dpo(build(PreferenceConfig, args), data_root=args.data_root, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("out", "train_pairs", "heldout_pairs", "steps", "heldout_before",
                                              "heldout_after", "wall_seconds")}, indent=2))
    return 0


def cmd_prefs_build(args) -> int:
    from talelab.finetune.prefs import build_pairs

    print(json.dumps(build_pairs(build(PrefsConfig, args), data_root=args.data_root), indent=2))
    return 0


def cmd_merge(args) -> int:
    from talelab.finetune.merge import merge_adapter

    print(json.dumps(merge_adapter(args.adapter, args.out, dtype=args.dtype), indent=2))
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
    parser.add_argument("--device", default="auto", choices=DEVICES, help="cuda when present, else cpu (default: "
                        "auto); the scores add up on the CPU either way")


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
    sw.add_argument("--grid", default=None, help="config grid: every combination, e.g. 'd_model=128,256 n_layers=8,12 "
                    "n_heads=2,4,8'; grids joined by ';' add up ('d_model=128 n_layers=8; d_model=512 n_layers=12')")
    sw.add_argument("--base-preset", default=None, help="preset the grid's values override")
    sw.add_argument("--budget", required=True, help="per run: time ('5m', '90s') or tokens ('200k', '2M')")
    sw.add_argument("--data", required=True, help="prepared data directory")
    sw.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    sw.add_argument("--out", default="runs/sweep", help="sweep directory (re-run to resume)")
    sw.add_argument("--device", default="auto", choices=DEVICES)
    sw.add_argument("--dtype", default="auto", choices=TRAINING_DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    add_dataclass_flags(sw, ModelConfig, "model (every run; a --grid value wins)")
    add_dataclass_flags(sw, TrainConfig, "training (every run; a --grid value wins; the budget sets the steps)",
                        skip=("data", "tokenizer", "out", "device", "dtype", "max_steps", "max_minutes",
                              "schedule_steps", "epochs", "progress"))
    sw.set_defaults(run=cmd_sweep)

    mem = sub.add_parser("memory", help="peak training memory per model and batch size ('oom' where it fails): "
                         "presets and/or a grid, as sweep takes them")
    mem.add_argument("presets", nargs="*", help=f"presets to measure ({', '.join(PRESETS)})")
    mem.add_argument("--grid", default=None, help="configurations to measure, as sweep's --grid: e.g. "
                     "'family=transformer,compressor' or 'd_model=128,256 n_layers=4,8'")
    mem.add_argument("--base-preset", default=None, help="preset the grid's values override")
    mem.add_argument("--batch-sizes", default="2,4,8,16,32", help="comma-separated batch sizes")
    mem.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size of the models")
    mem.add_argument("--device", default="cpu", choices=DEVICES)
    mem.add_argument("--dtype", default="auto", choices=TRAINING_DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    mem.add_argument("--memory-limit-gb", type=float, default=0.0,
                     help="cap each measurement's address space (CPU) or GPU memory (CUDA), so 'oom' appears where it "
                     "would not fit")
    mem.add_argument("--out", default="runs/memory", help="folder for memory.md and memory.csv")
    mem.set_defaults(run=cmd_memory)

    gen = sub.add_parser("generate", help="write stories with a trained model")
    gen.add_argument("--model", required=True, help="talelab model or run directory, Hugging Face model directory or "
                     "hub id, or PEFT adapter directory")
    add_dataclass_flags(gen, DecodeConfig, "decoding")
    add_dataclass_flags(gen, SamplingConfig, "sampling")
    gen.set_defaults(run=cmd_generate)

    ev = sub.add_parser("eval", help="evaluate a model (likelihood, completion, diversity, memorization, quality, "
                        "tags, probes, judge, decoding sweeps): report.md, report.json and PNG charts",
                        description="talelab eval MODEL [--suite ...] writes a report; talelab eval loss --model "
                        "MODEL [--text T] prints only the likelihood figures as JSON.")
    ev.add_argument("model", nargs="?", default=None, help="talelab model or run directory, Hugging Face model "
                    "directory or PEFT adapter directory (or 'loss' with --model: likelihood figures only)")
    ev.add_argument("--model", dest="model_flag", default=None, help="the model, for `talelab eval loss --model M`")
    add_dataclass_flags(ev, EvalConfig, "evaluation")
    add_dataclass_flags(ev, DecodeConfig, "decoding (the model under evaluation)")
    add_dataclass_flags(ev, JudgeConfig, "judge (suite 'judge')", prefix="judge_")
    ev.set_defaults(run=cmd_eval)

    conv = sub.add_parser("convert", help="import / export llama2.c checkpoints, export Hugging Face Llama directories")
    conv.add_argument("source", choices=["llama2c", "hf", "to-llama2c"], help="llama2c: import a .bin; hf: export a "
                      "Hugging Face Llama directory; to-llama2c: export a .bin that llama2.c's run.c decodes")
    conv.add_argument("--model", required=True, help="llama2.c .bin (import) or talelab model/run directory (export)")
    conv.add_argument("--tokenizer", default=None, help="llama2.c tokenizer .bin (import)")
    conv.add_argument("--out", required=True, help="output directory (or .bin file for to-llama2c)")
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
    add_dataclass_flags(srv, ServeConfig, "serving")
    add_dataclass_flags(srv, DecodeConfig, "decoding")
    srv.set_defaults(run=cmd_serve)
    cmp = sub.add_parser("compare", help="the headline figures of several `talelab eval` reports side by side")
    cmp.add_argument("reports", nargs="+", help="report.json files (or report directories) from `talelab eval`")
    cmp.add_argument("--out", default="runs/compare", help="folder for compare.md and compare.csv")
    cmp.set_defaults(run=cmd_compare)
    tags = sub.add_parser("tags", help="TinyStories features (Dialogue, BadEnding, ...)")
    tags = tags.add_subparsers(dest="tags_command", required=True)
    tags_train = tags.add_parser("train", help="train a tag classifier (TF-IDF + logistic regression) on labelled "
                                 "TinyStories all_data records; precision / recall / F1 on held-out labels")
    add_dataclass_flags(tags_train, TagClassifierConfig, "tag classifier")
    tags_train.set_defaults(run=cmd_tags_train)
    ft = sub.add_parser("finetune", help="LoRA or full fine-tuning (trl SFT) of a Hugging Face or talelab model on "
                        "tagged stories, plain text or instructions; resumable")
    ft.add_argument("--preset", default=None, help=f"named recipe: {', '.join(FINETUNE_PRESETS)}")
    add_dataclass_flags(ft, FinetuneConfig, "fine-tuning")
    ft.set_defaults(run=cmd_finetune)
    trl = sub.add_parser("trials", help="a grid of LoRA configurations: results.md/.csv (trainable %%, losses, "
                         "perplexity, BLEU, wall time); finished trials are not redone")
    trl.add_argument("--preset", default=None, help=f"named recipe the grid varies: {', '.join(FINETUNE_PRESETS)}")
    add_dataclass_flags(trl, TrialsConfig, "trials")
    add_dataclass_flags(trl, FinetuneConfig, "fine-tuning (every trial)", skip=("out", "resume", "stop_at_step"))
    trl.set_defaults(run=cmd_trials)
    dpo = sub.add_parser("dpo", help="align a model with preference pairs: trl DPO with LoRA, the reference being the "
                         "base with the adapter disabled; held-out reward accuracy and margins; resumable")
    dpo.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_dataclass_flags(dpo, PreferenceConfig, "DPO")
    dpo.set_defaults(run=cmd_dpo)
    prefs = sub.add_parser("prefs", help="preference pairs for DPO")
    prefs = prefs.add_subparsers(dest="prefs_command", required=True)
    prefs_build = prefs.add_parser("build", help="story pairs: prompt = a story's beginning, chosen = its real "
                                   "continuation, rejected = that continuation shuffled or the model's own sample")
    add_dataclass_flags(prefs_build, PrefsConfig, "pairs")
    prefs_build.set_defaults(run=cmd_prefs_build)
    merge = sub.add_parser("merge", help="fold a LoRA adapter into its base: a standalone Hugging Face directory")
    merge.add_argument("--adapter", required=True, help="LoRA adapter directory with adapter_config.json (e.g. the "
                       "adapter/ folder `talelab dpo` writes)")
    merge.add_argument("--out", required=True, help="directory for the merged model and its tokenizer")
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="precision of the merged weights (default: float32)")
    merge.set_defaults(run=cmd_merge)
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
    except BrokenPipeError:  # before OSError, its base class: output piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # disk full, permissions: the user's to fix, not a bug to trace
        print(f"talelab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("talelab: interrupted; outputs are published only when complete, so the last one written (checkpoint, "
              "prepared corpus, report) is intact", file=sys.stderr)
        return 130
