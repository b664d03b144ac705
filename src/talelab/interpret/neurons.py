"""`talelab interpret neurons`: the tokens that most activate each MLP neuron, the word classes of those tokens, and
the neurons most selective for one class.

A neuron's activation is the value it feeds the MLP's output projection (act(gate) * up for SwiGLU in talelab and
Llama, act(c_fc(x)) for GPT-2), read by a forward pre-hook on that projection. Texts stream through in batches and
every neuron keeps only its K best activations with their context windows, so memory does not grow with the data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from talelab.interpret.inputs import (Subject, batches, check_indices, check_positive, default_out, forward,
                                      load_subject, read_texts, token_label, token_pieces)
from talelab.interpret.neuron_report import neurons_html, neurons_markdown
from talelab.interpret.wordclasses import CLASSES, classify_tokens
from talelab.paths import TINYSTORIES_VALID

BEFORE, AFTER = 10, 4  # tokens of context kept on each side of a top activation
WINDOW = BEFORE + 1 + AFTER


def forward_with_activations(subject: Subject, ids: torch.Tensor, layers: list[int],
                             on_layer: Callable[[int, torch.Tensor], None]) -> None:
    """Run the model on `ids` and call on_layer(layer, activations (B, T, neurons)) for each of `layers`."""
    modules = subject.mlp_outputs()

    def hook(layer):
        return lambda module, args: on_layer(layer, args[0].float().cpu())

    handles = [modules[layer].register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        forward(subject, ids)
    finally:
        for handle in handles:
            handle.remove()


class TopActivations:
    """The K largest activations of each neuron of one layer, with each one's context window and (text, position)."""

    def __init__(self, neurons: int, k: int):
        self.k = k
        self.values = torch.full((neurons, k), float("-inf"))
        self.windows = torch.full((neurons, k, WINDOW), -1, dtype=torch.long)
        self.where = torch.full((neurons, k, 2), -1, dtype=torch.long)

    def add(self, activations: torch.Tensor, windows: torch.Tensor, where: torch.Tensor, valid: torch.Tensor):
        """activations (B, T, neurons); windows (B, T, WINDOW) token ids; where (B, T, 2); valid (B, T)."""
        flat = activations.masked_fill(~valid[..., None], float("-inf")).flatten(0, 1)  # (B*T, neurons)
        values, index = flat.topk(min(self.k, flat.shape[0]), dim=0)  # this batch's best k: (k, neurons) each
        values = torch.cat([self.values, values.T], dim=1)
        windows = torch.cat([self.windows, windows.flatten(0, 1)[index.T]], dim=1)
        where = torch.cat([self.where, where.flatten(0, 1)[index.T]], dim=1)
        self.values, keep = values.topk(self.k, dim=1)
        self.windows = windows.gather(1, keep[..., None].expand(-1, -1, WINDOW))
        self.where = where.gather(1, keep[..., None].expand(-1, -1, 2))


def context_windows(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, WINDOW): for each position the ids from BEFORE tokens before to AFTER after (-1 beyond the text)."""
    return F.pad(ids, (BEFORE, AFTER), value=-1).unfold(1, WINDOW, 1)


def run_neurons(model: str | os.PathLike, out: str | os.PathLike | None = None, data: str = TINYSTORIES_VALID,
                samples: int = 200, protocol: str = "documents", layers: list[int] | None = None, top: int = 10,
                rank: int = 20, batch_size: int = 8, data_root=None, progress: bool = True,
                device: str = "cpu") -> dict:
    """`talelab interpret neurons`: top-K activations of every neuron of the chosen layers with their word classes,
    and the most class-selective neurons; writes neurons.md, neurons.html and neurons.json into `out`."""
    check_positive(top=top, batch_size=batch_size)
    subject = load_subject(model, device)
    layers = check_indices("layer", layers, subject.n_layers)
    texts = read_texts(data, samples, protocol, data_root)
    best: dict[int, TopActivations] = {}
    base = Counter()  # word class of every token read: what a neuron's classes are compared with
    first = 0
    bar = tqdm(batches(subject, texts, batch_size), total=-(-len(texts) // batch_size), desc="neurons", unit="batch",
               disable=not progress)
    for ids, lengths in bar:
        B, T = ids.shape
        valid = (torch.arange(T) >= 1) & (torch.arange(T) < lengths[:, None])  # the beginning-of-story token is no text
        # (text index, position) of every token, so a top activation can be found again in the data
        where = torch.stack(torch.broadcast_tensors(torch.arange(first, first + B)[:, None], torch.arange(T)), -1)
        windows = context_windows(ids)

        def on_layer(layer, activations):
            if layer not in best:
                best[layer] = TopActivations(activations.shape[-1], top)
            best[layer].add(activations, windows, where, valid)

        forward_with_activations(subject, ids, layers, on_layer)
        for row, length in zip(ids, lengths.tolist()):
            base.update(c for _, c in classify_tokens(token_pieces(subject.tokenizer, row[:length].tolist()))[1:])
        first += B

    tokens = sum(base.values())
    base_rates = {c: round(base[c] / max(tokens, 1), 4) for c in CLASSES}
    neurons = [describe(subject, layer, n, best[layer], base_rates) for layer in layers
               for n in range(best[layer].values.shape[0])]
    # ties go to neurons with more distinct words: firing on many nouns is more a noun neuron than firing on one
    ranking = sorted((n for n in neurons if n["top_class"]),
                     key=lambda n: (-n["selectivity"], -n["distinct_words"], -n["mean_top"]))
    out = Path(out or default_out(model))
    report = {"model": str(model), "family": subject.family, "out": str(out), "texts": len(texts), "tokens": tokens,
              "top": top, "layers": layers, "context": {"before": BEFORE, "after": AFTER}, "base_rates": base_rates,
              "ranking": [{k: n[k] for k in ("layer", "neuron", "top_class", "share", "base_rate", "selectivity",
                                               "distinct_words", "mean_top")}
                          | {"top_tokens": top_words(n), "top": n["top"]}  # top: read without a second lookup
                          for n in ranking[:rank]],
              "neurons": neurons}
    out.mkdir(parents=True, exist_ok=True)
    (out / "neurons.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "neurons.md").write_text(neurons_markdown(report), encoding="utf-8")
    (out / "neurons.html").write_text(neurons_html(report), encoding="utf-8")
    return report


def describe(subject: Subject, layer: int, neuron: int, best: TopActivations, base_rates: dict) -> dict:
    """One neuron: its top activations (token, word, class, context) and its most over-represented word class."""
    entries = []
    for value, window, (text, position) in zip(best.values[neuron].tolist(), best.windows[neuron].tolist(),
                                              best.where[neuron].tolist()):
        if value == float("-inf"):  # fewer tokens in the data than K
            continue
        pieces = token_pieces(subject.tokenizer, window)
        word, cls = classify_tokens(pieces)[BEFORE]
        entries.append({"activation": round(value, 4), "token": token_label(subject.tokenizer, window[BEFORE],
                                                                             pieces[BEFORE]),
                        "word": word, "class": cls, "before": "".join(pieces[:BEFORE]), "after": "".join(
                            pieces[BEFORE + 1:]), "context": "".join(pieces), "text": text, "position": position})
    shares = Counter(e["class"] for e in entries)
    shares = {c: round(shares[c] / max(len(entries), 1), 4) for c in CLASSES}
    # selective: more of its top tokens in one class than that class's share of all text ("other" is no class)
    lift = {c: shares[c] - base_rates[c] for c in CLASSES if c != "other" and shares[c] > 0}
    top_class = max(lift, key=lift.get) if lift else None
    return {"layer": layer, "neuron": neuron, "top_class": top_class, "share": shares.get(top_class, 0.0),
            "base_rate": base_rates.get(top_class, 0.0), "selectivity": round(lift.get(top_class, 0.0), 4),
            "distinct_words": len({e["word"].lower() for e in entries}),
            "mean_top": round(sum(e["activation"] for e in entries) / max(len(entries), 1), 4),
            "class_shares": shares, "top": entries}


def top_words(neuron: dict) -> list[str]:
    """The distinct words of a neuron's top activations, strongest first."""
    return list(dict.fromkeys(e["word"] for e in neuron["top"]))
