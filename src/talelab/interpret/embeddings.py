"""`talelab interpret embeddings`: the tokens nearest to given words in a model's input embedding, by cosine.

A word is looked up as it appears inside a sentence, after another word ("a doctor": GPT-2's "Ġdoctor", llama2.c's
"▁do" "c" "t" "or"), since that is how most words of a story are tokenized. A word of several tokens is represented
by its first token that is more than a space, and the report says so; a word the tokenizer can only write as its
unknown token (a word-level vocabulary without it) is named as missing. Neighbours are the rows of the input
embedding (talelab's `embed` in every family, transformers' `get_input_embeddings()`) with the highest cosine to
the word's row, the word's own token left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from talelab.errors import ConfigError
from talelab.interpret.inputs import check_positive, default_out, load_studied_model, token_label, token_pieces
from talelab.models.hf import HFCausalLM
from talelab.tokenizer import Tokenizer

CONTEXT = "a"  # the word before a looked-up word, so that it is tokenized as inside a sentence


def input_embedding(model: torch.nn.Module, name: str) -> torch.Tensor:
    """(vocab, d) rows of the model's input embedding, as float32 on the CPU."""
    if isinstance(model, HFCausalLM):
        try:
            table = model.transformers_model.get_input_embeddings()
        except NotImplementedError:
            table = None
    else:
        table = getattr(model, "embed", None)
    if not isinstance(table, torch.nn.Embedding):
        raise ConfigError(f"{name}: the model has no input embedding table to compare tokens in")
    return table.weight.detach().float().cpu()


def word_tokens(tokenizer: Tokenizer, word: str) -> list[int]:
    """The ids of `word` as it is tokenized inside a sentence (after CONTEXT and a space)."""
    before = tokenizer.encode(CONTEXT)
    ids = tokenizer.encode(f"{CONTEXT} {word}")
    # a tokenizer whose pieces cross the space would not start with the context's ids: then the word alone
    return ids[len(before):] if ids[:len(before)] == before else tokenizer.encode(word)


def readable(tokenizer: Tokenizer, token_id: int) -> str:
    """The text a token adds inside a sentence (' doctor'), or its vocabulary entry when that text is empty."""
    context = tokenizer.encode(CONTEXT)
    return token_label(tokenizer, token_id, token_pieces(tokenizer, [*context, token_id])[-1])


def describe_word(tokenizer: Tokenizer, word: str, unit: torch.Tensor, top: int) -> dict:
    """The word's token and its `top` nearest tokens [(token, cosine)], or why there is none."""
    ids = word_tokens(tokenizer, word)
    unknown = tokenizer.backend.token_to_id(tokenizer.unk_token) if tokenizer.unk_token else None
    if not ids or unknown in ids:
        return {"word": word, "missing": f"'{word}' is not in the vocabulary (the tokenizer writes it as "
                                         f"{tokenizer.unk_token or 'nothing'})"}
    pieces = [readable(tokenizer, i) for i in ids]
    first = next((n for n, piece in enumerate(pieces) if piece.strip()), 0)  # a lone space token says nothing
    cosines = unit @ unit[ids[first]]  # (vocab,)
    cosines[ids[first]] = float("-inf")  # the token itself
    values, nearest = cosines.topk(min(top, len(cosines) - 1))
    entry = {"word": word, "token": pieces[first], "token_id": ids[first], "tokens": pieces,
             "neighbours": [(readable(tokenizer, i), round(v, 4)) for i, v in zip(nearest.tolist(), values.tolist())]}
    if len(ids) > 1:
        entry["note"] = (f"'{word}' is {len(ids)} tokens ({' '.join(map(quoted, pieces))}): its token "
                         f"{quoted(pieces[first])} is used")
    return entry


def run_embeddings(model: str | os.PathLike, words: str | list[str], out: str | os.PathLike | None = None,
                   top: int = 10, device: str = "cpu") -> dict:
    """`talelab interpret embeddings`: the `top` nearest tokens of each word (a list, or comma-separated); writes
    embeddings.md and embeddings.json into `out`."""
    check_positive(top=top)
    words = [w.strip() for w in (words.split(",") if isinstance(words, str) else words) if w.strip()]
    if not words:
        raise ConfigError("--words: name at least one word, e.g. --words doctor,happy,ball")
    loaded, tokenizer = load_studied_model(model, device)
    unit = F.normalize(input_embedding(loaded, str(model)), dim=-1)  # rows of length 1: a product is a cosine
    family = loaded.config.model_type if isinstance(loaded, HFCausalLM) else f"talelab {loaded.config.family}"
    out = Path(out) if out else default_out(model)
    report = {"model": str(model), "family": family, "out": str(out), "top": top, "vocab_size": len(unit),
              "words": [describe_word(tokenizer, word, unit, top) for word in words]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "embeddings.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "embeddings.md").write_text(embeddings_markdown(report), encoding="utf-8")
    return report


def embeddings_markdown(report: dict) -> str:
    """A table of neighbours per word, with a line for each word of several tokens or missing."""
    lines = [f"# Nearest tokens in the input embedding: {Path(report['model']).name}", "",
             f"Model `{report['model']}` ({report['family']}, {report['vocab_size']:,} tokens). Cosine similarity of "
             f"the input embedding rows; the {report['top']} nearest tokens of each word, its own token left out.", ""]
    for entry in report["words"]:
        if "missing" in entry:
            lines += [f"## {entry['word']}", "", entry["missing"], ""]
            continue
        lines += [f"## {entry['word']} (token {quoted(entry['token'])})", ""]
        if "note" in entry:
            lines += [entry["note"], ""]
        lines += ["| rank | token | cosine |", "|---:|---|---:|"]
        lines += [f"| {rank} | {quoted(token)} | {cosine:.4f} |"
                  for rank, (token, cosine) in enumerate(entry["neighbours"], 1)]
        lines.append("")
    return "\n".join(lines)


def quoted(token: str) -> str:
    """A token in quotes, so that a leading space shows (" doctor" and "doctor" are two tokens), its pipes escaped
    for a markdown table."""
    return json.dumps(token, ensure_ascii=False).replace("|", "\\|")
