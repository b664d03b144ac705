"""Loss, perplexity and bits per byte of whole documents, and the reference protocol of shared/README.md.

Bits per byte divide the summed negative log-likelihood (in bits) by the UTF-8 bytes of the text, so models with
different tokenizers are comparable. Each document is scored on its own: beginning-of-story token, then its
tokens; a document longer than the context is scored in overlapping windows so every token is predicted once
with at least half a context of history.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from talelab.config import DecodeConfig
from talelab.data.sources import read_documents
from talelab.errors import InputError
from talelab.generate import load_decoder
from talelab.paths import resolve_input
from talelab.train.metrics import mean_perplexity

REFERENCE_PIECES = 300


def reference_pieces(path: str | Path) -> list[str]:
    """The protocol's texts: split on blank lines, strip, drop empties, drop the first, keep the next 300."""
    text = Path(path).read_text(encoding="utf-8")
    pieces = [p.strip() for p in text.split("\n\n")]
    pieces = [p for p in pieces if p]
    if len(pieces) < 2:
        raise InputError(f"{path}: fewer than two blank-line separated pieces")
    return pieces[1:1 + REFERENCE_PIECES]


def windows_of(ids: list[int], context: int) -> list[tuple[list[int], int]]:
    """(window, index of its first scored target) covering every target of `ids` exactly once."""
    if len(ids) <= context + 1:
        return [(ids, 0)]
    stride = context // 2
    out, scored = [(ids[:context + 1], 0)], context  # targets 0..context-1 of the first window
    while scored < len(ids) - 1:
        end = min(len(ids), scored + 1 + stride)
        start = end - context - 1
        out.append((ids[start:end], scored - start))
        scored = end - 1
    return out


@torch.no_grad()
def next_token_logits(model, rows: list[list[int]], device) -> torch.Tensor:
    """One forward pass over token rows of any lengths, right-padded (a causal model's real tokens never see the
    padding after them): logits (rows, longest - 1, vocab), position t of a row predicting its token t + 1."""
    width = max(len(ids) for ids in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    for j, ids in enumerate(rows):
        inputs[j, :len(ids) - 1] = torch.tensor(ids[:-1])
    logits, _ = model(inputs.to(device))
    return logits


def score_documents(model, tokenizer, documents: list[str], batch_size: int = 16, device=None) -> dict:
    """Summed NLL (nats), token and byte counts, and the derived loss, perplexities and bits per byte.

    Two perplexities: `perplexity` is exp(loss), the loss being the mean over every scored token (each token weighs
    the same); `mean_document_perplexity` is the mean over documents of exp(the document's own mean loss) (each
    document weighs the same), as papers that average per-story or per-batch perplexities report it."""
    device = device or next(model.parameters()).device
    context = model.config.context_length
    rows = []  # (tokens, first scored target index, document index)
    unk_id = tokenizer.backend.token_to_id(tokenizer.unk_token) if tokenizer.unk_token else None
    unknown = 0
    for d, ids in enumerate(tokenizer.encode_batch(documents)):
        rows.extend((window, first, d) for window, first in windows_of([tokenizer.bos_id, *ids], context))
        unknown += ids.count(unk_id) if unk_id is not None else 0
    rows.sort(key=lambda r: len(r[0]))  # similar lengths per batch: less padding
    was_training = model.training
    model.eval()
    nll, tokens = [0.0] * len(documents), [0] * len(documents)  # per document
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        logits = next_token_logits(model, [ids for ids, _, _ in batch], device)
        targets = torch.full(logits.shape[:2], -1, dtype=torch.long)
        for j, (ids, first, _) in enumerate(batch):
            targets[j, first:len(ids) - 1] = torch.tensor(ids[1 + first:])
        targets = targets.to(device)
        per_row = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-1, reduction="none").sum(1)
        for (ids, first, d), row_nll in zip(batch, per_row.tolist()):
            nll[d] += row_nll
            tokens[d] += len(ids) - 1 - first
    model.train(was_training)
    num_bytes = sum(len(d.encode("utf-8")) for d in documents)
    total_nll, total_tokens = sum(nll), sum(tokens)
    loss = total_nll / max(total_tokens, 1)
    result = {"documents": len(documents), "tokens": total_tokens, "bytes": num_bytes, "nll_nats": total_nll,
              "loss": loss, "perplexity": math.exp(loss), "mean_document_perplexity": mean_perplexity(nll, tokens),
              "bits_per_byte": total_nll / math.log(2) / max(num_bytes, 1),
              "bytes_per_token": num_bytes / max(total_tokens, 1)}
    if unknown:  # an <unk> stands for a whole word the model never has to spell: the figure flatters it
        result["unknown_tokens"] = unknown
        result["note"] = (f"{unknown} tokens were {tokenizer.unk_token}: a lossy tokenizer's bits per byte are a lower "
                          f"bound, not comparable with byte-level tokenizers")
    return result


def evaluate_file(model_path: str, text: str, data_root=None, protocol: str = "reference",
                  batch_size: int = 16, decode: DecodeConfig = DecodeConfig()) -> dict:
    """`talelab eval loss`: score a model on a text file, by the reference protocol or over all its documents."""
    path, documents = validation_documents(text, protocol, data_root)
    model, tokenizer, _ = load_decoder(model_path, decode)
    return {"model": str(model_path), "text": str(path), "protocol": protocol,
            **score_documents(model, tokenizer, documents, batch_size=batch_size)}


def validation_documents(text: str, protocol: str = "reference", data_root=None) -> tuple[Path, list[str]]:
    """The file `text` names (a path or under the data root) and its documents: the reference protocol's pieces, or
    every document (split as `talelab prepare` splits them)."""
    path = resolve_input(text, data_root)
    return path, reference_pieces(path) if protocol == "reference" else read_documents(str(path))
