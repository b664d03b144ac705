"""Batched continuations for every evaluation, and the completion protocol: give the model the beginning of a
held-out story, let it write the rest, and compare that with the true ending by ROUGE and TF-IDF cosine.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from talelab.config import SamplingConfig
from talelab.data.clean import repair_mojibake
from talelab.data.sentences import split_sentences
from talelab.data.sources import iter_texts, validation_file
from talelab.decoding_batch import generate_batch
from talelab.errors import ConfigError, InputError
from talelab.evaluate.overlap import ROUGE_TYPES, rouge, tfidf_cosines
from talelab.generate import generate
from talelab.plots import score_histogram

Complete = Callable[[list[str], "SamplingConfig | None"], list[str]]
COMPLETION_METRICS = (*ROUGE_TYPES, "tfidf_cosine")  # each generated ending against the true one


def continuation_text(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text the new tokens add after the prompt, as the whole story prints it (leading space included)."""
    head, whole = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids + new_ids)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)


def fit_prompt(ids: list[int], context: int, max_new_tokens: int) -> list[int]:
    """bos + prompt tokens, cut from the left so that at least min(max_new_tokens, context / 2) tokens fit after."""
    room = max(1, min(max_new_tokens, context // 2))
    keep = context - room
    return ids if len(ids) <= keep else [ids[0], *ids[len(ids) - keep + 1:]]


def completer(model, tokenizer, base: SamplingConfig, batch_size: int = 16, progress: bool = False) -> Complete:
    """`complete(prompts, config=None)`: the continuation text of each prompt (prompt not included).

    Prompts decode together in batches of `batch_size` (talelab.decoding_batch.generate_batch); row i draws with seed
    `config.seed + i`, so samples from one prompt differ and a fixed seed gives the same stories in any batch.
    Beam search is not batched and runs prompt by prompt.
    """
    context = model.config.context_length

    def complete(prompts: list[str], config: SamplingConfig | None = None) -> list[str]:
        config = config or base
        encoded = [fit_prompt(tokenizer.encode(p, bos=True), context, config.max_new_tokens) for p in prompts]
        rows = [dataclasses.replace(config, num_samples=1, seed=config.seed + i if config.seed >= 0 else -1)
                for i in range(len(prompts))]
        texts = []
        step = 1 if config.num_beams > 1 else batch_size
        bar = tqdm(total=len(prompts), desc="generate", unit="story", leave=False, disable=not progress)
        for start in range(0, len(prompts), step):
            chunk, settings = encoded[start:start + step], rows[start:start + step]
            if config.num_beams > 1:
                new = generate(model, chunk[0], settings[0], tokenizer.eos_id)[:1]
            else:
                new = [row.tokens for row in generate_batch(model, chunk, settings, tokenizer.eos_id)]
            texts += [continuation_text(tokenizer, p, ids) for p, ids in zip(chunk, new)]
            bar.update(len(chunk))
        bar.close()
        return texts

    return complete


def held_out_texts(data: str, count: int, min_words: int, data_root=None, sample: str = "first",
                   seed: int = 0) -> list[str]:
    """`count` held-out texts of at least `min_words` words, in source order: the first ones, or (sample "random")
    a uniform draw from all of them, reproducible for a seed >= 0 (-1: a fresh draw). The source (a prepared
    directory's val.jsonl, a JSONL file or a text file, <|endoftext|> or blank-line separated) is streamed once and
    never held whole; mojibake is repaired as `talelab prepare` does."""
    if sample not in ("first", "random"):
        raise ConfigError(f"--completion-sample {sample!r}: choose first or random")
    path = validation_file(data)
    seen = 0

    def long_enough(texts):
        nonlocal seen
        for text in texts:
            seen += 1
            if len(text.split()) >= min_words:
                yield text

    candidates = long_enough(iter_texts(path, data_root=data_root))
    if sample == "first":
        kept = list(itertools.islice(candidates, count))
    else:
        kept = reservoir_sample(candidates, count, random.Random(seed if seed >= 0 else None))
    if not kept:
        raise InputError(f"{path}: no held-out text of at least {min_words} words ({seen} texts read); give "
                         f"longer stories or lower --min-words")
    return [repair_mojibake(t) for t in kept]


def reservoir_sample(items: Iterable, count: int, rng: random.Random) -> list:
    """`count` items drawn uniformly without replacement in one pass (Algorithm R), in the order they came; memory
    holds the `count` kept items only."""
    kept = []  # (position, item)
    for position, item in enumerate(items):
        if position < count:
            kept.append((position, item))
            continue
        slot = rng.randrange(position + 1)  # item `position` stays with probability count / (position + 1)
        if slot < count:
            kept[slot] = (position, item)
    return [item for _, item in sorted(kept, key=lambda pair: pair[0])]


def cut(text: str, fraction: float, unit: str) -> tuple[str, str]:
    """(beginning, true ending): the first `fraction` of the words (whitespace-separated, rounded) or of the
    sentences (talelab's splitter), keeping at least one unit on each side."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--fraction {fraction}: must be between 0 and 1")
    if unit == "sentences":
        parts = split_sentences(text)
        if len(parts) < 2:
            # one sentence cannot be cut by sentences: fall back to words for this text
            return cut(text, fraction, "words")
        n = min(max(1, round(fraction * len(parts))), len(parts) - 1)
        return " ".join(parts[:n]), " " + " ".join(parts[n:])
    if unit != "words":
        raise ConfigError(f"--cut {unit!r}: choose words or sentences")
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) < 2:
        raise InputError(f"cannot cut a text of {len(ends)} word(s) into a beginning and an ending: {text[:60]!r}")
    n = min(max(1, round(fraction * len(ends))), len(ends) - 1)
    return text[:ends[n - 1]], text[ends[n - 1]:]  # beginning + ending is the text, whitespace and all


def completion_section(complete: Complete, texts: list[str], fraction: float, unit: str, out_dir: Path,
                       examples: int = 3, source: str = "") -> dict:
    """The completion protocol: ROUGE-1/2/L F1 and TF-IDF cosine (overlap.tfidf_cosines, fitted on this run's true
    and generated endings) of each generated ending against the true one, their means and population standard
    deviations, a ROUGE-2 histogram (completion_rouge2.png) and a few side-by-side examples."""
    pairs = [cut(t, fraction, unit) for t in texts]
    endings = complete([beginning for beginning, _ in pairs])
    scores = [rouge(generated, true) for generated, (_, true) in zip(endings, pairs)]
    for s, cosine in zip(scores, tfidf_cosines(endings, [true for _, true in pairs])):
        s["tfidf_cosine"] = cosine
    figures = mean_and_sd(scores, COMPLETION_METRICS)
    score_histogram({"": [s["rouge2"] for s in scores]}, out_dir / "completion_rouge2.png",
                    "ROUGE-2 F1 of generated vs true ending", "texts",
                    f"completion protocol: {len(texts)} held-out texts, first {fraction:.0%} of the {unit} given")
    where = f" ({source})" if source else ""
    lines = [f"{len(texts)} held-out texts{where}; the model is given the first {fraction:.0%} of the {unit} (after "
             f"its beginning-of-story token) and writes the rest; its ending is compared with the true one.", "",
             "| metric | mean | SD | median |", "|---|---:|---:|---:|"]
    for name in COMPLETION_METRICS:
        label = "TF-IDF cosine" if name == "tfidf_cosine" else f"{name} F1"
        lines.append(f"| {label} | {figures[f'{name}_mean']:.4f} | {figures[f'{name}_sd']:.4f} | "
                     f"{statistics.median(s[name] for s in scores):.4f} |")
    lines += ["", "SD: population standard deviation over the texts. TF-IDF cosine: scikit-learn's TfidfVectorizer "
              "(default settings) fitted on this run's true and generated endings, cosine of each pair.", "",
              "![ROUGE-2 histogram](completion_rouge2.png)", ""]
    for (beginning, true), generated, s in list(zip(pairs, endings, scores))[:examples]:
        lines += [f"**Beginning:** {quote(beginning)}", "", f"**True ending:** {quote(true)}", "",
                  f"**Model's ending** (ROUGE-2 {s['rouge2']:.3f}, cosine {s['tfidf_cosine']:.3f}): "
                  f"{quote(generated)}", ""]
    return {"texts": len(texts), "fraction": fraction, "unit": unit, **figures, "headline": dict(figures),
            "items": [{"beginning": b, "true_ending": t, "generated": g, **s}
                      for (b, t), g, s in zip(pairs, endings, scores)],
            "markdown": "\n".join(lines), "charts": ["completion_rouge2.png"]}


def mean_and_sd(scores: list[dict], names: tuple[str, ...]) -> dict[str, float]:
    """{name_mean, name_sd} of each named score over the texts; SD is the population standard deviation (divided
    by n, as numpy's std), as talelab's corpus statistics report it."""
    figures = {}
    for name in names:
        values = [s[name] for s in scores]
        figures[f"{name}_mean"], figures[f"{name}_sd"] = statistics.fmean(values), statistics.pstdev(values)
    return figures


def quote(text: str, limit: int = 600) -> str:
    """One paragraph of markdown: line breaks flattened, long texts clipped."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + " …"
