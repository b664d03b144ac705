"""`talelab demo`: every stage once on the bundled TinyStories text, in about ten minutes on two CPU cores.

The model trains on a budget of tokens (the `demo` preset's), so the same seed gives the same model and the same
bits per byte on any machine; only the wall time, which the demo prints with the tokens/s reached, follows its speed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from talelab import paths
from talelab.config import PrepareConfig, SamplingConfig, TokenizerConfig, build_train_configs
from talelab.data.prepare import prepare
from talelab.data.shards import pretokenize
from talelab.devices import missing_compiler, pick_device
from talelab.errors import InputError
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.generate import generate_text
from talelab.models.convert import convert_llama2c
from talelab.models.storage import load_model
from talelab.publish import write_model_card
from talelab.tokenizer import train_tokenizer_from
from talelab.train.loop import train

DEMO_VOCAB = 2048
STORY_PROMPTS = ("Once upon a time", "One day, a little dog named", "Lily and Ben")


def stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def train_corpus(train_file, data_root, out: Path) -> PrepareConfig:
    """The cased train head, plus the publisher's lowercased 4 MB head recased when the data root has it: 2.3x the
    stories, which the 3M-parameter model needs more than steps (on the head alone it memorises by minute five)."""
    try:
        lowercase = paths.resolve_input(paths.TINYSTORIES_TRAIN_LOWERCASE, data_root)
    except InputError:  # hub users: TinyStories has no lowercased file; the head alone still trains
        print(f"({paths.TINYSTORIES_TRAIN_LOWERCASE} not found: training on {train_file.name} alone)")
        return PrepareConfig(source=str(train_file), out=str(out))
    return PrepareConfig(source=f"{train_file},{lowercase}", format="eot,lines", recase=True, out=str(out))


def prepare_demo_data(out: Path, train_file: Path, data_root=None, progress: bool = True) -> None:
    """Stages 1-3: the corpus cleaned and split into `out`/prepared, a BPE tokenizer in `out`/tokenizer, and the
    splits pretokenized. benchmarks/time_to_quality.py runs the same stages."""
    corpus = train_corpus(train_file, data_root, out / "prepared")
    stage(f"1/6 prepare: {'recase, ' if corpus.recase else ''}clean, deduplicate and split "
          f"{' + '.join(Path(s).name for s in corpus.source.split(','))}")
    prepared = prepare(corpus, data_root=data_root, progress=progress)
    print(f"kept {prepared['documents_out']:,} of {prepared['documents_in']:,} stories; report: "
          f"{out / 'prepared' / 'report.md'}")

    stage(f"2/6 tokenizer: byte-level BPE, {DEMO_VOCAB} tokens")
    tokenizer = train_tokenizer_from(TokenizerConfig(data=str(out / "prepared"), out=str(out / "tokenizer"),
                                                     kind="bpe", vocab_size=DEMO_VOCAB))
    stage("3/6 pretokenize")
    print(f"shards in {pretokenize(out / 'prepared', tokenizer, progress=progress)}")


def demo_train_overrides(out: Path, minutes: float | None = None) -> dict:
    """The `demo` preset's training fields that point at what prepare_demo_data wrote; `minutes` replaces the
    preset's token budget with a time budget (the model then follows the machine's speed)."""
    overrides = {"data": str(out / "prepared"), "tokenizer": str(out / "tokenizer"), "out": str(out / "model")}
    missing = missing_compiler(pick_device("auto"))
    if missing:  # the preset compiles; without a compiler the same recipe trains eagerly, more slowly
        print(f"({missing}. Training without torch.compile: the same recipe, about 1.4x slower.)")
        overrides["compile"] = False
    if minutes is not None:
        overrides.update(max_minutes=minutes, max_tokens=0, max_steps=10**9)
    return overrides


def stories260k(out: Path, data_root=None):
    """Karpathy's stories260K converted into `out`/stories260K and loaded: the bar a demo model is measured against.
    Returns load_model's (model, tokenizer, metadata)."""
    return load_model(convert_llama2c(paths.shared_file(paths.STORIES260K_MODEL, data_root),
                                      paths.shared_file(paths.STORIES260K_TOKENIZER, data_root), out / "stories260K"))


def run_demo(out: str = "runs/demo", data_root=None, minutes: float | None = None) -> dict:
    started = time.perf_counter()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # the demo's own scratch folder: each run starts clean
    train_file = paths.shared_file(paths.TINYSTORIES_TRAIN, data_root)
    valid_file = paths.shared_file(paths.TINYSTORIES_VALID, data_root)

    prepare_demo_data(out, train_file, data_root)

    model_config, train_config = build_train_configs("demo", overrides={"train": demo_train_overrides(out, minutes)})
    budget = f"{minutes:g} minutes" if minutes is not None else f"{train_config.max_tokens:,} tokens"
    stage(f"4/6 train the 'demo' preset on CPU: a budget of {budget}")
    trained = train(model_config, train_config)
    tokens = trained["step"] * train_config.batch_size * train_config.grad_accum * model_config.context_length
    print(f"trained {tokens:,} tokens ({trained['step']:,} steps) in {trained['elapsed_s'] / 60:.1f} minutes: "
          f"{tokens / trained['elapsed_s']:,.0f} tokens/s on this machine")

    stage(f"5/6 measure: bits per byte on {valid_file.name} (reference protocol of shared/README.md)")
    pieces = reference_pieces(valid_file)
    model, tokenizer, _ = load_model(out / "model")
    ours = score_documents(model, tokenizer, pieces)
    ref_model, ref_tokenizer, _ = stories260k(out, data_root)
    reference = score_documents(ref_model, ref_tokenizer, pieces)
    print(f"{'model':<28}{'parameters':>12}{'loss':>9}{'bits/byte':>11}")
    for name, n, r in (("talelab demo", model.num_parameters(), ours),
                       ("stories260K (llama2.c)", ref_model.num_parameters(), reference)):
        print(f"{name:<28}{n:>12,}{r['loss']:>9.3f}{r['bits_per_byte']:>11.3f}")
    print("(loss in nats per token of each model's own tokenizer; bits per byte compare across tokenizers)")
    write_model_card(out / "model", reproduce="make demo   # or: talelab demo", measured={
        "bits per byte, reference protocol": f"{ours['bits_per_byte']:.4f}",
        "stories260K (llama2.c), same protocol": f"{reference['bits_per_byte']:.4f}"})

    stage("6/6 three stories from the demo model")
    stories = []
    for i, prompt in enumerate(STORY_PROMPTS):
        print(f"\n--- story {i + 1} ---")
        sampling = SamplingConfig(prompt=prompt, max_new_tokens=model.config.context_length - 16, temperature=0.7,
                                  top_k=40, repetition_penalty=1.1, seed=1000 + i)
        stories.extend(generate_text(model, tokenizer, sampling, stream=True))

    summary = {"wall_time_s": round(time.perf_counter() - started, 1), "train": trained, "train_tokens": tokens,
               "train_tokens_per_s": round(tokens / trained["elapsed_s"]),
               "demo_bits_per_byte": ours["bits_per_byte"], "stories260K_bits_per_byte": reference["bits_per_byte"],
               "demo_eval": ours, "stories260K_eval": reference, "stories": stories,
               "model": dataclasses.asdict(model.config)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\ndemo finished in {summary['wall_time_s'] / 60:.1f} minutes; summary in {out / 'summary.json'}, "
          f"loss curve in {out / 'model' / 'loss.png'}")
    return summary
