"""Every `talelab` command as one row of a table: the dataclass its flags and YAML come from, the function that
runs it, its help. The settings of commands that are not a single stage's config are declared here too.

Each handler takes the resolved config and the data root, prints what a person reads, and returns the directory
it wrote (where the CLI saves the config.yaml that repeats it) or None. Handlers import their stage when they run:
importing every stage here would load torch, transformers and trl for `talelab --help`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from talelab.config import (DEVICES, TRAINING_DTYPES, WEIGHT_DTYPES, DecodeConfig, EvalConfig, FinetuneConfig,
                            ModelConfig, PreferenceConfig, PrefsConfig, PrepareConfig, SamplingConfig, ServeConfig,
                            TagClassifierConfig, TokenizerConfig, TrainConfig, TrainRun, TrialsConfig)
from talelab.errors import TalelabError
from talelab.paths import TINYSTORIES_VALID
from talelab.presets import FINETUNE_PRESETS, PRESETS
from talelab.settings import Layer, Settings, option, overrides, require, section

MODEL_HELP = ("talelab model or run directory, Hugging Face model directory or hub id, or PEFT adapter directory")
GRID_HELP = ("every combination of key=v1,v2 lists, e.g. 'd_model=128,256 n_layers=8,12'; grids joined by ';' add up "
             "('d_model=128 n_layers=8; d_model=512 n_layers=12'); 'family=transformer,compressor' compares families")


@dataclass
class DemoRun(Settings):
    out: str = option("runs/demo", "demo run directory (replaced on each run)")
    minutes: float = option(0.0, "train for this many minutes instead of the demo preset's token budget (the model "
                            "then depends on the machine's speed; 0: the token budget)")


@dataclass
class PretokenizeRun(Settings):
    data: str = option("", "prepared data directory", required=True)
    tokenizer: str = option("", "tokenizer directory or file", required=True)


@dataclass
class SweepRun(Settings):
    presets: list[str] = option([], f"presets to compare ({', '.join(PRESETS)})", positional="*")
    grid: str = option("", "config grid: " + GRID_HELP)
    base_preset: str = option("", "preset the grid's values override")
    budget: str = option("", "per run: time ('5m', '90s') or tokens ('200k', '2M')", required=True)
    data: str = option("", "prepared data directory", required=True)
    tokenizer: str = option("", "tokenizer directory or file", required=True)
    out: str = option("runs/sweep", "sweep directory (re-run to resume)")
    device: str = option("auto", "cuda when present, else cpu", DEVICES)
    dtype: str = option("auto", "auto: bfloat16 on CUDA, float32 on CPU", TRAINING_DTYPES)
    model: dict = overrides(ModelConfig, "model (every run; a --grid value wins)")
    train: dict = overrides(TrainConfig, "training (every run; a --grid value wins; the budget sets the steps)",
                            skip=("data", "tokenizer", "out", "device", "dtype", "max_steps", "max_minutes",
                                  "max_tokens", "schedule_steps", "epochs", "progress"))
    eval_suites: str = option("", "evaluate every finished run with these comma-separated `talelab eval` suites "
                              "(e.g. 'probes,diversity,judge'; empty: none) into RUN/eval, and add the reports' "
                              "headline figures to the results as columns")
    axis_metrics: list[str] = option(["val_loss"], "results columns (eval figures such as 'probes.accuracy.factual' "
                                     "too) drawn against each --grid key that takes several values (axis_KEY.png)")
    # eval's settings share names with sweep's own (--data, --batch-size, --seed, --device): their flags take the
    # prefix 'eval_' (--eval-data, --eval-temperature), as a section's prefix does; in YAML they nest under 'eval'
    eval: dict = overrides(EvalConfig, "evaluation of every run (with --eval-suites; its device: --device unless "
                           "--eval-device)", skip=("model", "suite", "out", "progress"), prefix="eval_")


@dataclass
class MemoryRun(Settings):
    presets: list[str] = option([], f"presets to measure ({', '.join(PRESETS)})", positional="*")
    grid: str = option("", "configurations to measure, as sweep's --grid: " + GRID_HELP)
    base_preset: str = option("", "preset the grid's values override")
    batch_sizes: str = option("2,4,8,16,32", "comma-separated batch sizes to measure")
    vocab_size: int = option(2048, "vocabulary size of the models")
    device: str = option("cpu", "where to measure", DEVICES)
    dtype: str = option("auto", "auto: bfloat16 on CUDA, float32 on CPU", TRAINING_DTYPES)
    memory_limit_gb: float = option(0.0, "cap each measurement's address space (CPU) or GPU memory (CUDA), so 'oom' "
                                    "appears where it would not fit")
    out: str = option("runs/memory", "folder for memory.md and memory.csv")
    model: dict = overrides(ModelConfig, "model (every configuration; a --grid value wins)", skip=("vocab_size",))

    def check(self):
        sizes = self.batch_sizes.replace(",", " ").split()
        require("memory", [(bool(sizes) and all(s.isdigit() and int(s) > 0 for s in sizes),
                            f"--batch-sizes {self.batch_sizes!r}: expected comma-separated positive integers")])

    @property
    def sizes(self) -> list[int]:
        return [int(s) for s in self.batch_sizes.replace(",", " ").split()]


@dataclass
class GenerateRun(Settings):
    model: str = option("", MODEL_HELP, required=True)
    chat: bool = option(False, "instruct models: send --prompt as a user message through the model's chat template "
                        "and print the answer alone")
    decode: DecodeConfig = section(DecodeConfig, "decoding")
    sampling: SamplingConfig = section(SamplingConfig, "sampling")


@dataclass
class LossRun(Settings):
    """`talelab eval loss`: the likelihood figures alone, as JSON."""

    model: str = option("", MODEL_HELP, required=True)
    text: str = option("data/tinystories/valid-head.txt", "validation text (path or under the data root)")
    protocol: str = option("reference", "reference (blank-line pieces 2..301, shared/README.md) or documents (every "
                           "document of --text)", ("reference", "documents"))
    batch_size: int = option(16, "documents scored together")
    decode: DecodeConfig = section(DecodeConfig, "decoding")


@dataclass
class ConvertRun(Settings):
    source: str = option("", "llama2c: import a .bin; hf: export a Hugging Face directory (Llama for RoPE/RMSNorm/"
                         "SwiGLU models, GPT-2 for pre-norm LayerNorm/GELU models with learned or sinusoidal "
                         "positions); to-llama2c: export a .bin that llama2.c's run.c decodes; gguf: export a .gguf "
                         "file llama.cpp runs (Llama-shaped models)", ("llama2c", "hf", "to-llama2c", "gguf"),
                         required=True, positional="?")
    model: str = option("", "llama2.c .bin (import) or talelab model/run directory (export)", required=True)
    tokenizer: str = option("", "llama2.c tokenizer .bin (import)")
    out: str = option("", "output directory (a .bin file for to-llama2c, a .gguf file for gguf)", required=True)


@dataclass
class InterpretInputs(Settings):
    """What both `interpret` commands read: which model, which texts, which layers, where to write."""

    model: str = option("", "talelab model or run directory, or a Hugging Face model directory of type llama or gpt2 "
                        "(with its tokenizer)", required=True)
    data: str = option(TINYSTORIES_VALID, "prepared directory (its val.jsonl), text or JSONL file, or a path under "
                       "the data root")
    samples: int = option(100, "texts to read from --data, each cut to the model's context (0: all)")
    protocol: str = option("documents", "documents: the texts of --data in order; reference: the pieces of the "
                           "bits-per-byte protocol (blank-line pieces 2..301 of valid-head.txt)",
                           ("documents", "reference"))
    layers: list[int] | None = option(None, "layer indices to study (default: all)")
    batch_size: int = option(8, "texts per forward pass")
    out: str = option("", "report directory (empty: runs/interpret/<model name>)")
    progress: bool = option(True, "show a progress bar over batches")
    device: str = option("auto", "cuda when present, else cpu; the scores add up on the CPU either way", DEVICES)


@dataclass
class AttentionRun(InterpretInputs):
    text: str = option("", "one text to draw and score instead of --data (must fit the model's context)")
    heads: list[int] | None = option(None, "head indices to study (default: all)")
    positional_threshold: float = option(0.5, "a head whose distance correlation is above this is positional, else "
                                         "semantic (the seed's rule)")
    role_threshold: float = option(0.5, "score a head needs for a role label (previous-token, first-token, "
                                   "duplicate-token, local-window)")
    window: int = option(4, "local window: the last this many tokens, the query included")
    map_tokens: int = option(40, "heat maps show the first this many tokens of the first text, for readable labels "
                             "(scores use every token)")


@dataclass
class NeuronsRun(InterpretInputs):
    samples: int = option(200, "texts to read from --data, each cut to the model's context (0: all)")
    top: int = option(10, "activations kept per neuron")
    rank: int = option(20, "neurons in the selectivity ranking")


@dataclass
class EmbeddingsRun(Settings):
    model: str = option("", "talelab model or run directory (any family), or a Hugging Face model directory or hub "
                        "id (with its tokenizer)", required=True)
    words: str = option("", "comma-separated words whose nearest tokens to list, e.g. 'doctor,happy,ball' (a word of "
                        "several tokens: its first token)", required=True)
    top: int = option(10, "nearest tokens listed per word")
    out: str = option("", "report directory (empty: runs/interpret/<model name>)")
    device: str = option("auto", "cuda when present, else cpu", DEVICES)


@dataclass
class ServeRun(Settings):
    model: list[str] = option([], "a model or run directory to serve under NAME, as NAME=PATH (repeat for several)",
                              repeat=True)
    serve: ServeConfig = section(ServeConfig, "serving")
    decode: DecodeConfig = section(DecodeConfig, "decoding")


@dataclass
class CompareRun(Settings):
    reports: list[str] = option([], "report.json files (or report directories) from `talelab eval`", required=True,
                                positional="*")
    out: str = option("runs/compare", "folder for compare.md and compare.csv")


@dataclass
class MergeRun(Settings):
    adapter: str = option("", "LoRA adapter directory with adapter_config.json (e.g. the adapter/ folder `talelab dpo` "
                          "writes)", required=True)
    out: str = option("", "directory for the merged model and its tokenizer", required=True)
    dtype: str = option("float32", "precision of the merged weights", WEIGHT_DTYPES)


@dataclass
class RecipeRun(Settings):
    recipe: str = option("", "recipe name (recipes/NAME.yaml: lora-tagged-stories, poetry-dapt-instruct, "
                         "small-models-from-scratch, tinyllama-sft-dpo, transformer-limits) or a recipe file",
                         required=True, positional="?")
    scale: str = option("cpu", "smoke: a few steps per stage (CI); cpu: the study end to end on the data root in "
                        "15-30 minutes on 2 cores, with stand-ins; full: the study's own models, data and sizes "
                        "(a GPU and the Hub)", ("smoke", "cpu", "full"))
    out: str = option("", "output folder (default: runs/recipes/RECIPE-SCALE); run again to resume")
    dry_run: bool = option(False, "check every stage's config against its command and print the commands; run "
                           "nothing", saved=False)
    stages: list[str] = option([], "run only these stages (finished ones are still skipped)")


@dataclass
class PushRun(Settings):
    directory: str = option("", "run, model, export, merge or adapter directory", required=True, positional="?")
    repo: str = option("", "Hub repository, owner/name (created when missing)", required=True)
    private: bool = option(False, "create the repository private")
    revision: str = option("main", "branch to commit to (created when missing)")
    endpoint: str = option("", "Hub address (default: $HF_ENDPOINT, else https://huggingface.co)")
    token_env: str = option("HF_TOKEN", "NAME of the environment variable holding the Hub token (never the token "
                            "itself on the command line); unset: huggingface_hub's saved login")
    license: str = option("mit", "license in the model card's metadata, when push writes the card")


def run_demo(config: DemoRun, data_root) -> Path:
    from talelab.demo import run_demo

    run_demo(out=config.out, data_root=data_root, minutes=config.minutes or None)
    return Path(config.out)


def run_prepare(config: PrepareConfig, data_root) -> Path:
    from talelab.data.prepare import prepare

    print(json.dumps(prepare(config, data_root=data_root), indent=2))
    return Path(config.out)


def run_tokenizer(config: TokenizerConfig, data_root) -> Path:
    from talelab.tokenizer import train_tokenizer_from

    tokenizer = train_tokenizer_from(config)
    print(f"{config.kind} tokenizer with {tokenizer.vocab_size} tokens written to {config.out}")
    return Path(config.out)


def run_pretokenize(config: PretokenizeRun, data_root) -> None:
    from talelab.data.shards import pretokenize
    from talelab.tokenizer import load_tokenizer

    print(f"shards in {pretokenize(config.data, load_tokenizer(config.tokenizer))}")  # inside --data: no config.yaml


def resume_base(given: dict) -> Layer | None:
    """`talelab train --out RUN --resume` alone (no preset, no --config) continues RUN as it was saved."""
    from talelab.train.checkpoint import saved_configuration

    if not given.get("resume"):
        return None
    run_dir = Path(given.get("train", {}).get("out", TrainConfig.out))
    return f"{run_dir} (saved configuration)", saved_configuration(run_dir)


def run_train(config: TrainRun, data_root) -> Path | None:
    from talelab.train.loop import train

    summary = train(config.model, config.train, resume=config.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one summary and one saved config
        return None
    print(json.dumps(summary, indent=2))
    return with_card(Path(config.train.out), "train")


def run_sweep(config: SweepRun, data_root) -> Path:
    from talelab.experiments.sweep import sweep

    common = {"data": config.data, "tokenizer": config.tokenizer, "device": config.device, "dtype": config.dtype}
    sweep(config.presets, config.grid or None, config.budget, config.out, common,
          base_preset=config.base_preset or None, every_run={**config.model, **config.train},
          eval_suites=config.eval_suites, eval_settings=config.eval, data_root=data_root,
          axis_metrics=config.axis_metrics)
    print(f"results in {config.out}/results.md")
    return Path(config.out)


def run_memory(config: MemoryRun, data_root) -> Path:
    from talelab.experiments.memory import memory_table

    memory_table(config.presets, config.sizes, config.vocab_size, config.device, config.dtype, config.out,
                 config.memory_limit_gb, grid=config.grid or None, base_preset=config.base_preset or None,
                 every_run=config.model)
    print((Path(config.out) / "memory.md").read_text(encoding="utf-8"))
    return Path(config.out)


def run_generate(config: GenerateRun, data_root) -> None:
    from talelab.generate import generate, generate_text, load_decoder

    model, tokenizer, _ = load_decoder(config.model, config.decode)
    sampling = config.sampling
    if config.chat:  # the answer alone: the rendered template is the model's business, not the reader's
        prompt = tokenizer.chat_prompt([{"role": "user", "content": sampling.prompt}])
        answers = generate(model, tokenizer.encode(prompt, bos=True), sampling, tokenizer.eos_id)
        for i, answer in enumerate(answers):
            print(("" if len(answers) == 1 else f"--- answer {i + 1} ---\n") + tokenizer.decode(answer).strip())
        return
    for i, story in enumerate(generate_text(model, tokenizer, sampling, stream=sampling.num_samples == 1)):
        if sampling.num_samples > 1:
            print(f"--- story {i + 1} ---\n{story}\n")


def run_eval(config: EvalConfig, data_root) -> Path:
    from talelab.evaluate.report import failures, headline_markdown, run_eval

    report = run_eval(config, data_root=data_root)
    print(headline_markdown(report))
    print(f"written {report['out']}: report.md, report.json and the charts")
    if failures(report):
        raise TalelabError(f"eval: failed sections: {'; '.join(failures(report))} (the rest of the report is in "
                           f"{report['out']})")
    return Path(report["out"])


def run_loss(config: LossRun, data_root) -> None:
    from talelab.evaluate.likelihood import evaluate_file

    print(json.dumps(evaluate_file(config.model, config.text, data_root=data_root, protocol=config.protocol,
                                   batch_size=config.batch_size, decode=config.decode), indent=2))


def run_convert(config: ConvertRun, data_root) -> Path | None:
    from talelab.models.convert import convert_hf, convert_llama2c, export_llama2c
    from talelab.models.llamacpp import export_gguf
    from talelab.models.storage import load_model

    if config.source == "llama2c":
        out = convert_llama2c(config.model, config.tokenizer or None, config.out, data_root=data_root)
    elif config.source == "to-llama2c":
        out = export_llama2c(load_model(config.model)[0], config.out)
    elif config.source == "gguf":
        out = export_gguf(*load_model(config.model)[:2], config.out, name=Path(config.model).resolve().name)
    else:
        out = convert_hf(config.model, config.out)
    print(f"written {out}")
    return with_card(Path(out), "convert") if Path(out).is_dir() else None  # a .bin or .gguf: a file alone


def run_attention(config: AttentionRun, data_root) -> Path:
    from talelab.interpret.attention import heads_markdown, run_attention

    inputs = {k: v for k, v in asdict(config).items() if k != "text"}
    report = run_attention(**{**inputs, "out": config.out or None}, text=config.text or None, data_root=data_root)
    print(heads_markdown(report))
    print(f"written {report['out']}: heads.md, heads.json, heads_overview.png, attention/layer*_head*.png")
    return Path(report["out"])


def run_neurons(config: NeuronsRun, data_root) -> Path:
    from talelab.interpret.neuron_report import ranking_markdown
    from talelab.interpret.neurons import run_neurons

    report = run_neurons(**{**asdict(config), "out": config.out or None}, data_root=data_root)
    print(ranking_markdown(report))
    print(f"written {report['out']}: neurons.md, neurons.html, neurons.json")
    return Path(report["out"])


def run_embeddings(config: EmbeddingsRun, data_root) -> Path:
    from talelab.interpret.embeddings import embeddings_markdown, run_embeddings

    report = run_embeddings(config.model, config.words, config.out or None, top=config.top, device=config.device)
    print(embeddings_markdown(report))
    print(f"written {report['out']}: embeddings.md, embeddings.json")
    return Path(report["out"])


def run_serve(config: ServeRun, data_root) -> None:
    from talelab.serve.app import run_server

    run_server(config.model, config.serve, config.decode)


def run_compare(config: CompareRun, data_root) -> Path:
    from talelab.evaluate.compare import compare_reports

    print(compare_reports(config.reports, config.out), end="")
    print(f"written {config.out}/compare.md and compare.csv")
    return Path(config.out)


def run_tags(config: TagClassifierConfig, data_root) -> Path:
    from talelab.evaluate.tags import classifier_markdown, train_tag_classifier

    print(classifier_markdown(train_tag_classifier(config, data_root=data_root)))
    print(f"written {config.out}: classifier.json, report.md, report.json, f1.png")
    return Path(config.out)


def run_finetune(config: FinetuneConfig, data_root) -> Path:
    from talelab.finetune.sft import finetune

    summary = finetune(config, data_root=data_root)
    shown = {k: v for k, v in summary.items() if k not in ("config", "adherence")}
    print(json.dumps({**shown, **({"adherence": summary["adherence"]} if "adherence" in summary else {})}, indent=2,
                     default=str))
    return with_card(Path(config.out), "finetune")


def run_trials(config: TrialsConfig, data_root) -> Path:
    from talelab.finetune.trials import trials

    trials(config, data_root=data_root)
    print(f"results in {config.out}/results.md")
    return Path(config.out)


def run_dpo(config: PreferenceConfig, data_root) -> Path:
    from talelab.finetune.dpo import run_dpo

    summary = run_dpo(config, data_root=data_root)
    print(json.dumps({k: summary[k] for k in ("out", "train_pairs", "heldout_pairs", "steps", "heldout_before",
                                              "heldout_after", "wall_seconds")}, indent=2))
    return with_card(Path(config.out), "dpo")


def run_prefs(config: PrefsConfig, data_root) -> None:
    from talelab.finetune.prefs import build_pairs

    print(json.dumps(build_pairs(config, data_root=data_root), indent=2))  # writes one file: no config.yaml beside


def run_merge(config: MergeRun, data_root) -> Path:
    from talelab.finetune.merge import merge_adapter

    print(json.dumps(merge_adapter(config.adapter, config.out, dtype=config.dtype), indent=2))
    return with_card(Path(config.out), "merge")


def run_push(config: PushRun, data_root) -> None:
    from talelab.publish import push

    print(push(config.directory, config.repo, private=config.private, revision=config.revision,
               endpoint=config.endpoint, token_env=config.token_env, license=config.license))  # writes no directory


def run_recipe(config: RecipeRun, data_root) -> None:
    from talelab.recipe.book import load_recipe
    from talelab.recipe.runner import run_recipe as run_stages

    recipe = load_recipe(config.recipe)
    out = config.out or f"runs/recipes/{recipe.name}-{config.scale}"
    run_stages(recipe, config.scale, out, data_root, dry_run=config.dry_run, stages=config.stages)  # its own configs


def with_card(out: Path, command: str) -> Path:
    """Give the model that `out` holds its model card, then hand `out` back (the CLI saves config.yaml there, which
    the card's reproduce line names)."""
    from talelab.publish import model_directory, write_model_card

    directory = model_directory(out)
    if directory is not None:  # silently: what these commands print is JSON a script may read
        write_model_card(directory, command)
    return out


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable
    help: str
    presets: dict | None = None  # named starting values for --preset
    preset_section: str = ""  # where a preset's values go in the config ('' = the top level)
    base: Callable | None = None  # a first layer under the preset, from the flags given (train's --resume)


COMMANDS: dict[str, Command] = {
    "demo": Command(DemoRun, run_demo, "prepare, tokenize, train, measure and sample on the bundled TinyStories text"),
    "prepare": Command(PrepareConfig, run_prepare, "read, clean, deduplicate and split a corpus; writes a cleaning "
                       "report"),
    "tokenizer train": Command(TokenizerConfig, run_tokenizer, "train a byte-level BPE or word-level tokenizer "
                               "(tokenizer.json)"),
    "pretokenize": Command(PretokenizeRun, run_pretokenize, "encode a prepared directory into token shards"),
    "train": Command(TrainRun, run_train, "train a model from scratch (preset, YAML config, flag overrides)",
                     presets=PRESETS, base=resume_base),
    "sweep": Command(SweepRun, run_sweep, "train several presets or a grid under one budget; table and plots"),
    "memory": Command(MemoryRun, run_memory, "peak training memory per model and batch size ('oom' where it fails): "
                      "presets and/or a grid, as sweep takes them"),
    "generate": Command(GenerateRun, run_generate, "write stories with a trained model"),
    "eval": Command(EvalConfig, run_eval, "evaluate a model (likelihood, completion, diversity, memorization, "
                    "quality, tags, probes, judge, decoding sweeps): report.md, report.json and PNG charts"),
    "eval loss": Command(LossRun, run_loss, "the likelihood figures alone (loss, perplexity, bits per byte) as JSON"),
    "convert": Command(ConvertRun, run_convert, "import / export llama2.c checkpoints, export Hugging Face Llama "
                       "or GPT-2 directories"),
    "interpret attention": Command(AttentionRun, run_attention, "attention heat maps; heads classified positional or "
                                   "semantic and by role (previous-token, first-token, duplicate-token, "
                                   "local-window)"),
    "interpret neurons": Command(NeuronsRun, run_neurons, "top activating tokens of every MLP neuron with context "
                                 "and word classes; the most class-selective neurons"),
    "interpret embeddings": Command(EmbeddingsRun, run_embeddings, "the tokens nearest to given words in the "
                                    "model's input embedding, by cosine similarity"),
    "serve": Command(ServeRun, run_serve, "an OpenAI-compatible API and the story playground page "
                     "(http://HOST:PORT/)"),
    "compare": Command(CompareRun, run_compare, "the headline figures of several `talelab eval` reports side by "
                       "side"),
    "tags train": Command(TagClassifierConfig, run_tags, "train a tag classifier (TF-IDF + logistic regression) on "
                          "labelled TinyStories all_data records; precision / recall / F1 on held-out labels"),
    "finetune": Command(FinetuneConfig, run_finetune, "LoRA or full fine-tuning (trl SFT) of a Hugging Face or "
                        "talelab model on tagged stories, plain text or instructions; resumable",
                        presets=FINETUNE_PRESETS),
    "trials": Command(TrialsConfig, run_trials, "a grid of LoRA configurations: results.md/.csv (trainable %, "
                      "losses, perplexity, BLEU, wall time); finished trials are not redone",
                      presets=FINETUNE_PRESETS, preset_section="finetune"),
    "dpo": Command(PreferenceConfig, run_dpo, "align a model with preference pairs: trl DPO with LoRA, the reference "
                   "being the base with the adapter disabled; held-out reward accuracy and margins; resumable"),
    "prefs build": Command(PrefsConfig, run_prefs, "story pairs: prompt = a story's beginning, chosen = its real "
                           "continuation, rejected = that continuation shuffled or the model's own sample"),
    "push": Command(PushRun, run_push, "upload a model directory (with its model card) to the Hugging Face Hub"),
    "recipe run": Command(RecipeRun, run_recipe, "reproduce a study (recipes/): its stages as talelab commands in "
                          "order, resumable, ending in report.md with the study's tables side by side"),
    "merge": Command(MergeRun, run_merge, "fold a LoRA adapter into its base: a standalone Hugging Face directory"),
}
