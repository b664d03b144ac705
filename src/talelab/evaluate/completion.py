"""Batched continuations for every evaluation, and the completion protocol: give the model the beginning of a
held-out story, let it write the rest, and compare that with the true ending by ROUGE.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from talelab.config import SamplingConfig
from talelab.data.clean import repair_mojibake
from talelab.data.sentences import split_sentences
from talelab.data.sources import read_documents
from talelab.errors import ConfigError, InputError
from talelab.evaluate.overlap import ROUGE_TYPES, rouge
from talelab.generate import generate, generate_batch
from talelab.plots import score_histogram

Complete = Callable[[list[str], "SamplingConfig | None"], list[str]]


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

    Prompts decode together in batches of `batch_size` (talelab.generate.generate_batch); row i draws with seed
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


def held_out_texts(data: str, count: int, min_words: int, data_root=None) -> list[str]:
    """The first `count` held-out texts of at least `min_words` words: a prepared directory's val.jsonl, a JSONL
    file or a text file (<|endoftext|> or blank-line separated); mojibake repaired as `talelab prepare` does."""
    path = Path(data)
    if path.is_dir():
        path = path / "val.jsonl"
        if not path.is_file():
            raise InputError(f"{data}: a directory without val.jsonl (expected a prepared directory or a file)")
    texts = read_documents(path, data_root=data_root)
    kept = [t for t in texts if len(t.split()) >= min_words][:count]
    if not kept:
        raise InputError(f"{path}: no held-out text of at least {min_words} words ({len(texts)} texts read); give "
                         f"longer stories or lower --min-words")
    return [repair_mojibake(t) for t in kept]


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
    """The completion protocol: ROUGE-1/2/L F1 of each generated ending against the true one, a ROUGE-2
    histogram (completion_rouge2.png) and a few side-by-side examples."""
    pairs = [cut(t, fraction, unit) for t in texts]
    endings = complete([beginning for beginning, _ in pairs])
    scores = [rouge(generated, true) for generated, (_, true) in zip(endings, pairs)]
    means = {name: sum(s[name] for s in scores) / len(scores) for name in ROUGE_TYPES}
    score_histogram({"": [s["rouge2"] for s in scores]}, out_dir / "completion_rouge2.png",
                    "ROUGE-2 F1 of generated vs true ending", "texts",
                    f"completion protocol: {len(texts)} held-out texts, first {fraction:.0%} of the {unit} given")
    where = f" ({source})" if source else ""
    lines = [f"{len(texts)} held-out texts{where}; the model is given the first {fraction:.0%} of the {unit} (after "
             f"its beginning-of-story token) and writes the rest; its ending is compared with the true one.", "",
             "| metric | mean F1 | median F1 |", "|---|---:|---:|"]
    for name in ROUGE_TYPES:
        lines.append(f"| {name} | {means[name]:.4f} | {statistics.median(s[name] for s in scores):.4f} |")
    lines += ["", "![ROUGE-2 histogram](completion_rouge2.png)", ""]
    for (beginning, true), generated, s in list(zip(pairs, endings, scores))[:examples]:
        lines += [f"**Beginning:** {quote(beginning)}", "", f"**True ending:** {quote(true)}", "",
                  f"**Model's ending** (ROUGE-2 {s['rouge2']:.3f}): {quote(generated)}", ""]
    return {"texts": len(texts), "fraction": fraction, "unit": unit, **{f"{k}_mean": v for k, v in means.items()},
            "headline": {f"{k}_mean": v for k, v in means.items()},
            "items": [{"beginning": b, "true_ending": t, "generated": g, **s}
                      for (b, t), g, s in zip(pairs, endings, scores)],
            "markdown": "\n".join(lines), "charts": ["completion_rouge2.png"]}


def quote(text: str, limit: int = 600) -> str:
    """One paragraph of markdown: line breaks flattened, long texts clipped."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + " …"
