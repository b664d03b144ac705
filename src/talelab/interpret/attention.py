"""`talelab interpret attention`: per-head attention maps and what each head does, measured over many texts.

talelab's attention runs through scaled_dot_product_attention, which never returns its weights; a forward pre-hook
on each block's attention module takes its input and recomputes them exactly as the module does (fused qkv
projection, RoPE, grouped-query sharing, causal softmax). Hugging Face models return them with eager attention.

Scores, over every query position i >= 1 (position 0 is the beginning-of-story token) of every sample:
  distance correlation  how well distance alone predicts where the head looks: the Pearson correlation between each
                        weight a[i, j] (keys j >= 1) and the head's mean weight at the same distance i - j (the
                        correlation ratio). A head that always looks k tokens back scores 1, a head that follows
                        content scores near 0. The seed's rule: above 0.5 is positional, else semantic.
  previous token        mean a[i, i-1]
  first token           mean a[i, 0]: the attention sink on the beginning-of-story token
  duplicate token       mean total weight on earlier copies of the query's token, over queries that have one
  local window          mean total weight on the last `window` tokens (the query itself included)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from talelab.errors import InputError
from talelab.interpret.inputs import (Subject, batches, check_indices, check_positive, default_out, encode_texts,
                                      forward, load_subject, read_texts, token_label, token_pieces)
from talelab.models.transformer import Attention
from talelab.paths import TINYSTORIES_VALID
from talelab.plots import attention_heat_map, attention_overview

SCORES = ("distance_correlation", "previous_token", "first_token", "duplicate_token", "local_window")


def attention_weights(attn: Attention, x: torch.Tensor, rope) -> torch.Tensor:
    """The weights (B, n_heads, T, T) that `attn` applies to its input `x` (B, T, d_model) in a full forward."""
    T = x.shape[1]
    q, k, _ = attn.project(x, rope)  # exactly the queries and keys the module's forward uses
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)  # query head h reads kv head h // group
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.head_size)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)


def forward_with_attention(subject: Subject, ids: torch.Tensor, on_layer: Callable[[int, torch.Tensor], None]):
    """Run the model on `ids` and call on_layer(layer, weights (B, heads, T, T)) for every layer, in order."""
    if subject.family != "talelab":
        for layer, weights in enumerate(forward(subject, ids, output_attentions=True).attentions):
            on_layer(layer, weights.float().cpu())
        return

    def hook(layer):
        return lambda module, args: on_layer(layer, attention_weights(module, args[0], args[1]).cpu())

    handles = [block.attn.register_forward_pre_hook(hook(i)) for i, block in enumerate(subject.blocks())]
    try:
        forward(subject, ids)
    finally:
        for handle in handles:
            handle.remove()


def total(x: torch.Tensor, dims) -> torch.Tensor:
    """Sum in float64: attention maps stay float32, the running sums over many texts must not lose digits."""
    return x.sum(dim=dims, dtype=torch.float64)


class HeadStatistics:
    """Running sums behind the scores of every head of every layer; memory does not grow with the data."""

    def __init__(self, n_layers: int, n_heads: int, context: int, window: int):
        self.window = window

        def zeros(*shape):
            return torch.zeros(n_layers, *shape, dtype=torch.float64)

        self.sum_by_distance, self.count_by_distance = zeros(n_heads, context), zeros(context)
        self.sum, self.sum_sq, self.cells = zeros(n_heads), zeros(n_heads), zeros()
        self.previous, self.first, self.local, self.rows = zeros(n_heads), zeros(n_heads), zeros(n_heads), zeros()
        self.duplicate, self.duplicate_rows = zeros(n_heads), zeros()

    @torch.no_grad()
    def add(self, layer: int, weights: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> None:
        """Count one batch of one layer: weights (B, heads, T, T), ids (B, T) padded, lengths (B,)."""
        B, H, T, _ = weights.shape
        if T < 2:  # only the beginning-of-story token: no query to score
            return
        i = torch.arange(T)
        rows = (i >= 1) & (i < lengths[:, None])  # (B, T): real tokens after the beginning-of-story token
        # by_distance[b, h, i, d] = weights[b, h, i, i - d]: each row laid out by distance instead of key position
        key = (i[:, None] - i[None, :]).clamp(min=0)
        by_distance = weights.gather(-1, key.expand(B, H, T, T)) * (i[None, :] <= i[:, None])  # 0 beyond key 0
        cells = (rows[:, :, None] & (i[None, None, :] <= i[None, :, None] - 1)).float()  # keys j = i - d >= 1
        a = by_distance * cells[:, None]
        self.sum_by_distance[layer, :, :T] += total(a, (0, 2))
        self.count_by_distance[layer, :T] += total(cells, (0, 1))
        self.sum[layer] += total(a, (0, 2, 3))
        self.sum_sq[layer] += total(a.square(), (0, 2, 3))
        self.cells[layer] += cells.sum()
        row_weight = rows.float()[:, None]  # (B, 1, T)
        self.rows[layer] += rows.sum()
        self.previous[layer] += total(by_distance[..., 1] * row_weight, (0, 2))
        self.first[layer] += total(weights[..., 0] * row_weight, (0, 2))
        self.local[layer] += total(by_distance[..., :self.window].sum(-1) * row_weight, (0, 2))
        earlier = torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)
        same = (ids[:, :, None] == ids[:, None, :]) & earlier & rows[:, :, None]  # (B, T, T)
        self.duplicate[layer] += total(weights * same[:, None], (0, 2, 3))
        self.duplicate_rows[layer] += same.any(dim=-1).sum()

    def scores(self) -> list[list[dict]]:
        """scores[layer][head]: the five scores of the module docstring."""
        explained = (self.sum_by_distance.square() / self.count_by_distance[:, None].clamp(min=1)).sum(-1)
        mean_sq = self.sum.square() / self.cells[:, None].clamp(min=1)
        variance = self.sum_sq - mean_sq
        ratio = ((explained - mean_sq) / variance.clamp(min=1e-12)).clamp(0, 1).sqrt()
        # weights on keys >= 1 that never vary (a head that only looks at the first token): no distance pattern
        ratio = torch.where(variance > 1e-9 * self.cells[:, None], ratio, torch.zeros_like(ratio))

        def per_row(total, count):
            return (total / count[:, None].clamp(min=1)).tolist()

        columns = [ratio.tolist(), per_row(self.previous, self.rows), per_row(self.first, self.rows),
                   per_row(self.duplicate, self.duplicate_rows), per_row(self.local, self.rows)]
        return [[{name: round(column[layer][head], 4) for name, column in zip(SCORES, columns)}
                 for head in range(self.sum.shape[1])] for layer in range(self.sum.shape[0])]


def head_labels(scores: dict, positional_threshold: float = 0.5, role_threshold: float = 0.5) -> list[str]:
    """positional or semantic (the seed's distance-correlation rule), then every role whose score reaches the bar."""
    labels = ["positional" if scores["distance_correlation"] > positional_threshold else "semantic"]
    for role, score in (("previous-token", "previous_token"), ("first-token", "first_token"),
                        ("duplicate-token", "duplicate_token")):
        if scores[score] >= role_threshold:
            labels.append(role)
    if scores["local_window"] >= role_threshold and "previous-token" not in labels:  # spread over the window
        labels.append("local-window")
    return labels


def run_attention(model: str | os.PathLike, out: str | os.PathLike | None = None, text: str | None = None,
                  data: str = TINYSTORIES_VALID, samples: int = 100, protocol: str = "documents",
                  layers: list[int] | None = None, heads: list[int] | None = None, positional_threshold: float = 0.5,
                  role_threshold: float = 0.5, window: int = 4, map_tokens: int = 40, batch_size: int = 8,
                  data_root=None, progress: bool = True, device: str = "cpu") -> dict:
    """`talelab interpret attention`: heat maps of the first text, scores and labels of every chosen head over all
    texts; writes heads.md, heads.json, heads_overview.png and attention/layer{L}_head{H}.png into `out`."""
    check_positive(window=window, batch_size=batch_size, map_tokens=map_tokens)
    subject = load_subject(model, device)
    layers = check_indices("layer", layers, subject.n_layers)
    heads = check_indices("head", heads, subject.n_heads)
    if text is not None:
        if not text.strip():
            raise InputError("--text is empty: give a story beginning to draw and score")
        encode_texts(subject, [text], truncate=False)  # a text longer than the context fails before any work
    texts = [text] if text is not None else read_texts(data, samples, protocol, data_root)
    stats = HeadStatistics(subject.n_layers, subject.n_heads, subject.context_length, window)
    maps = {}  # (layer, head) -> the first text's weights, cut to `shown` tokens for a readable picture
    bar = tqdm(batches(subject, texts, batch_size), total=-(-len(texts) // batch_size), desc="attention",
               unit="batch", disable=not progress)
    for n, (ids, lengths) in enumerate(bar):
        if n == 0:
            shown = min(int(lengths[0]), map_tokens)
            first_ids = ids[0, :shown].tolist()

        def on_layer(layer, weights):  # called during this forward pass, so ids and lengths are this batch's
            stats.add(layer, weights, ids, lengths)
            if n == 0 and layer in layers:
                maps.update({(layer, h): weights[0, h, :shown, :shown].numpy().copy() for h in heads})

        forward_with_attention(subject, ids, on_layer)

    out = Path(out or default_out(model))
    (out / "attention").mkdir(parents=True, exist_ok=True)
    pieces = token_pieces(subject.tokenizer, first_ids)
    tokens = [token_label(subject.tokenizer, i, p) for i, p in zip(first_ids, pieces)]
    all_scores = stats.scores()
    table = [{"layer": layer, "head": head, "labels": head_labels(all_scores[layer][head], positional_threshold,
                                                                 role_threshold), **all_scores[layer][head]}
             for layer in layers for head in heads]
    for row in table:
        title = f"layer {row['layer']} head {row['head']}: {', '.join(row['labels'])}"
        attention_heat_map(maps[row["layer"], row["head"]], tokens, title,
                           out / "attention" / f"layer{row['layer']}_head{row['head']}.png")
    attention_overview(maps, {(r["layer"], r["head"]): r["labels"] for r in table}, out / "heads_overview.png")
    report = {"model": str(model), "family": subject.family, "out": str(out), "texts": len(texts),
              "tokens": int(stats.rows[0].item()), "heat_map_tokens": tokens,
              "settings": {"positional_threshold": positional_threshold, "role_threshold": role_threshold,
                           "window": window}, "heads": table}
    (out / "heads.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "heads.md").write_text(heads_markdown(report), encoding="utf-8")
    return report


def heads_markdown(report: dict) -> str:
    """The head-classification table with the scores behind each label and how they were measured."""
    s = report["settings"]
    lines = [
        f"# Attention heads of {report['model']}", "",
        f"{report['texts']} texts, {report['tokens']} query tokens (every token after the beginning-of-story token).",
        "", "| layer | head | labels | distance corr. | previous token | first token | duplicate token | "
        f"local ({s['window']}) |", "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["heads"]:
        lines.append(f"| {r['layer']} | {r['head']} | {', '.join(r['labels'])} | {r['distance_correlation']:.2f} | "
                     f"{r['previous_token']:.2f} | {r['first_token']:.2f} | {r['duplicate_token']:.2f} | "
                     f"{r['local_window']:.2f} |")
    lines += ["", "How the scores are measured (means over every query token i >= 1 of every text):", "",
              "- **distance corr.**: Pearson correlation between each weight a[i, j] (keys j >= 1) and the head's mean "
              "weight at the same distance i - j; 1 when distance alone decides where the head looks. "
              f"**positional** when above {s['positional_threshold']} (the seed's rule), else **semantic**.",
              "- **previous token**: a[i, i-1]. **first token**: a[i, 0], the attention sink on the "
              "beginning-of-story token. **duplicate token**: total weight on earlier copies of the query's token, "
              f"over queries that have one. **local**: total weight on the last {s['window']} tokens, the query "
              "included.",
              f"- A role label is given when its score reaches {s['role_threshold']}; local-window only for heads "
              "that are not previous-token heads.", ""]
    return "\n".join(lines)
