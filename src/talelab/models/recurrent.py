"""Recurrent language models (tanh RNN, LSTM, GRU): the baselines the seed projects compared transformers with.

They train, generate and evaluate through the same code as the transformer: `forward(idx, targets, cache, start)`
returns (logits, loss), and generation carries the hidden state in a cache object instead of keys and values.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from talelab.config import ModelConfig
from talelab.errors import ConfigError
from talelab.models.transformer import (check_fits_context, check_vocabulary_set, cross_entropy,
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


class RecurrentLM(nn.Module):
    """Embedding, stacked recurrent layers, dropout, projection to the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_vocabulary_set(config)
        self.config = config
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
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy over targets that are not -1."""
        if key_mask is not None:  # a padding token would flow into the hidden state
            raise ConfigError("recurrent models cannot decode left-padded batches; generate one prompt at a time")
        check_fits_context(self.config, start + idx.shape[1])
        out, state = self.rnn(self.drop(self.embed(idx)), cache.state if cache is not None else None)
        if cache is not None:
            cache.state = state
        logits = self.lm_head(self.drop(out))
        if targets is None:
            return logits, None
        return logits, cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
