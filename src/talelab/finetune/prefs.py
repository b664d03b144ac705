"""`talelab prefs build`: story preference pairs for users without preference data.

Each story is cut after a fraction of its sentences: the prompt is that beginning, `chosen` is the real rest of the
story, `rejected` is either the same rest with its sentences shuffled (a pure coherence contrast: same words, same
length) or the model's own continuation of the prompt. All three are sentences joined by single spaces, so no side of
a pair differs from the other by layout (paragraph breaks) alone. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from talelab.atomic import atomic_file
from talelab.config import PrefsConfig, SamplingConfig
from talelab.data.sentences import shuffle_sentences, split_sentences
from talelab.data.sources import iter_texts
from talelab.decoding_batch import generate_batch
from talelab.errors import InputError
from talelab.models.storage import load_model
from talelab.paths import resolve_input

END_MARKS = ('.', '!', '?', '"', '”', "'", "’")


def read_stories(data: str, split: str, text_field: str, data_root=None) -> Iterator[str]:
    """Stories of a prepared directory (its `split`.jsonl), or of a text or JSONL file, streamed."""
    path = resolve_input(data, data_root)
    if path.is_dir():
        path = path / f"{split}.jsonl"
        if not path.is_file():
            raise InputError(f"{path}: missing (a prepared directory holds train.jsonl, val.jsonl and test.jsonl)")
    return iter_texts(path, text_field=text_field, data_root=data_root)


def cut_story(story: str, prompt_fraction: float, min_continuation: int) -> tuple[str, str] | None:
    """(prompt, continuation with a leading space) at a sentence boundary, or None when the rest is too short."""
    sentences = split_sentences(story)
    cut = max(1, round(len(sentences) * prompt_fraction))
    if len(sentences) - cut < min_continuation:
        return None
    return " ".join(sentences[:cut]), " " + " ".join(sentences[cut:])


def build_pairs(config: PrefsConfig, data_root=None) -> dict:
    """Write config.out (JSONL of prompt/chosen/rejected) and return a summary of what was made and skipped."""
    # Streamed, and read only until --max-pairs stories have been cut: a split of 2M stories is never in memory
    kept, read, too_short = [], 0, 0
    for story in read_stories(config.data, config.split, config.text_field, data_root):
        read += 1
        cut = cut_story(story, config.prompt_fraction, config.min_continuation_sentences)
        if cut is None:
            too_short += 1
            continue
        kept.append(cut)
        if config.max_pairs and len(kept) >= config.max_pairs:
            break
    if not kept:
        raise InputError(f"{config.data}: no story keeps {config.min_continuation_sentences} or more sentences after "
                         f"its prompt; lower --min-continuation-sentences or --prompt-fraction")
    prompts = [prompt for prompt, _ in kept]
    if config.rejected == "shuffle":
        rejected = [" " + shuffle_sentences(rest.strip(), torch.Generator().manual_seed(config.seed + i))
                    for i, (_, rest) in enumerate(kept)]
    else:
        rejected = sample_continuations(config, prompts, [rest for _, rest in kept])
    rows = [{"prompt": p, "chosen": c, "rejected": r} for (p, c), r in zip(kept, rejected)
            if r.strip() and r != c]  # a one-sentence re-split or an empty sample would teach nothing
    out = Path(config.out)
    with atomic_file(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"out": str(out), "pairs": len(rows), "stories": read, "rejected": config.rejected,
            "skipped_too_short": too_short, "skipped_no_contrast": len(kept) - len(rows)}


def sample_continuations(config: PrefsConfig, prompts: list[str], references: list[str]) -> list[str]:
    """The model's own continuation of each prompt (flattened like the real one), about as long as the real one."""
    return [" " + " ".join(complete_sentences(text)) for text in sample_texts(config, prompts, references)]


def complete_sentences(text: str) -> list[str]:
    """The sentences of a sample, without a last one cut off by the length limit (unless it is the only one)."""
    sentences = split_sentences(text)
    if len(sentences) > 1 and not sentences[-1].endswith(END_MARKS):
        sentences = sentences[:-1]
    return sentences


def token_budget(config: PrefsConfig, reference_tokens: int) -> int:
    return config.max_new_tokens or reference_tokens + 8  # a little slack: the sample should end on its own terms


def sample_texts(config: PrefsConfig, prompts: list[str], references: list[str]) -> list[str]:
    """Continuations of any model load_model takes (talelab, Hugging Face, adapter), batched through generate_batch;
    story i is sampled with seed + i, so the batching does not change it."""
    model, tokenizer, _ = load_model(config.model)
    texts = []
    bar = tqdm(total=len(prompts), desc="sampling rejected continuations", unit="story", disable=not config.progress)
    for start in range(0, len(prompts), config.batch_size):
        batch = range(start, min(start + config.batch_size, len(prompts)))
        prompt_ids = tokenizer.encode_batch([prompts[i] for i in batch], bos=True)
        lengths = [len(ids) for ids in tokenizer.encode_batch([references[i] for i in batch])]
        configs = [SamplingConfig(max_new_tokens=token_budget(config, n), temperature=config.temperature,
                                  top_p=config.top_p, seed=config.seed + i) for i, n in zip(batch, lengths)]
        texts.extend(tokenizer.decode(made.tokens) for made in generate_batch(model, prompt_ids, configs,
                                                                              tokenizer.eos_id))
        bar.update(len(batch))
    bar.close()
    return texts
