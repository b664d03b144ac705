"""Recurrent language models (tanh RNN, LSTM, GRU): the baselines the seed projects compared transformers with.

They train, generate and evaluate through the same code as the transformer: `forward(idx, targets, cache, start)`
returns (logits, loss), and generation carries the hidden state in a cache object instead of keys and values.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from talelab.config import ModelConfig
from talelab.models.transformer import (check_fits_context, with_vocabulary, cross_entropy,
                                        count_parameters)

LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentState:
    """The hidden state of every layer, (n_layers, B, hidden) (an LSTM also has its cell state)."""

    def __init__(self, state=None):
        self.state = state

    def reorder(self, index: torch.Tensor, filled: int | None = None) -> None:
        """Keep the batch rows named by `index` (beam search, copies of one prompt); `filled` does not apply."""
        if isinstance(self.state, tuple):
            self.state = tuple(s.index_select(1, index) for s in self.state)
        elif self.state is not None:
            self.state = self.state.index_select(1, index)

    @staticmethod
    def row(state, r: int):
        """Row r of a state, keeping its batch dimension."""
        return tuple(s[:, r:r + 1] for s in state) if isinstance(state, tuple) else state[:, r:r + 1]

    @staticmethod
    def stack(rows: list):
        """One state from per-row states (the inverse of `row`)."""
        if isinstance(rows[0], tuple):
            return tuple(torch.cat(parts, dim=1) for parts in zip(*rows))
        return torch.cat(rows, dim=1)


class RecurrentLM(nn.Module):
    """Embedding, stacked recurrent layers, dropout, projection to the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = with_vocabulary(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        extra = {"nonlinearity": "tanh"} if config.family == "rnn" else {}
        self.rnn = LAYERS[config.family](config.d_model, config.hidden_size, num_layers=config.n_layers,
                                         dropout=config.dropout if config.n_layers > 1 else 0.0, batch_first=True,
                                         **extra)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return count_parameters(self, exclude_embeddings)

    def new_cache(self, batch_size: int, device, dtype, length: int | None = None) -> RecurrentState:
        return RecurrentState()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: RecurrentState | None = None,
                start: int = 0, positions: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy over targets that are not -1.

        A left-padded batch (generate_batch) passes `key_mask` (B, start + T), True where a slot holds a real token:
        a chunk of several tokens then runs row by row over its real tokens only, so padding never reaches a hidden
        state (its logits are 0); one-token steps, where every row's token is real, run as one batch."""
        T = idx.shape[1]
        check_fits_context(self.config, start + T, positions)
        if key_mask is not None and T > 1:
            return self.masked_chunk(idx, cache, start, key_mask), None
        out, state = self.rnn(self.drop(self.embed(idx)), cache.state if cache is not None else None)
        if cache is not None:
            cache.state = state
        logits = self.lm_head(self.drop(out))
        if targets is None:
            return logits, None
        return logits, cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def masked_chunk(self, idx: torch.Tensor, cache: RecurrentState, start: int, key_mask: torch.Tensor):
        """Each row's real tokens through the layers from that row's own state; logits at padding are 0."""
        B, T = idx.shape
        real = key_mask[:, start:start + T]
        logits = torch.zeros(B, T, self.config.vocab_size, device=idx.device, dtype=self.lm_head.weight.dtype)
        states = []
        for r in range(B):
            state = None if cache is None or cache.state is None else RecurrentState.row(cache.state, r)
            if bool(real[r].any()):
                out, state = self.rnn(self.embed(idx[r:r + 1, real[r]]), state)
                logits[r, real[r]] = self.lm_head(out[0])
            states.append(state if state is not None else self.zero_state(idx.device))
        if cache is not None:
            cache.state = RecurrentState.stack(states)
        return logits

    def zero_state(self, device):
        """The state before any token, for one row (what nn.RNN & co. start from when given None)."""
        zeros = torch.zeros(self.config.n_layers, 1, self.config.hidden_size, device=device,
                            dtype=self.lm_head.weight.dtype)
        return (zeros, zeros.clone()) if self.config.family == "lstm" else zeros
