"""The compressor model (a seed project's memory-efficient design): attention over token pairs, not tokens.

An encoder reads the tokens two at a time and emits one vector per pair; a causal transformer runs over those
pair vectors (half the sequence length: a quarter of the attention memory); a small decoder predicts each token
from the pairs before it, plus, for the second token of a pair, the first one:

    pairs     p_k = W [e_2k ; e_2k+1]                       (encoder)
    context   h_0 = start, h_k = Transformer(p_0 .. p_k-1)  (summarises tokens < 2k)
    token 2k    from h_k
    token 2k+1  from h_k + U e_2k                           (decoder)

It trains, generates and is measured through the same interface as the other families. Generation recomputes the
pair sequence at each step (no KV cache), which is fine at the sizes this model is meant for.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from talelab.config import ModelConfig
from talelab.errors import ConfigError
from talelab.models.transformer import (Block, check_fits_context, with_vocabulary, count_parameters,
                                        cross_entropy, make_norm, rope_tables)


class TokenHistory:
    """What the compressor 'caches' while generating: the tokens so far, as one (B, L) tensor, or for a left-padded
    batch each row's real tokens on their own."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None
        self.rows: list[torch.Tensor] | None = None

    def reorder(self, index: torch.Tensor, filled: int | None = None) -> None:
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, index)
        if self.rows is not None:
            self.rows = [self.rows[i] for i in index.tolist()]


class CompressorLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        with_vocabulary(config)
        if config.positions != "rope":
            raise ConfigError("compressor: positions must be rope (pair positions are rotated, not embedded)")
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.encode_pair = nn.Linear(2 * d, d, bias=config.bias)
        self.start = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)
        self.second_token = nn.Sequential(nn.Linear(2 * d, d, bias=config.bias), nn.GELU())
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # pair positions: a sequence of context_length tokens has context_length / 2 + 1 context vectors
        cos, sin = rope_tables(ModelConfig(**{**vars(config), "context_length": config.context_length // 2 + 2}))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return count_parameters(self, exclude_embeddings)

    def new_cache(self, batch_size: int, device, dtype, length: int | None = None) -> TokenHistory:
        return TokenHistory()

    def predictions(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) where position t predicts token t + 1 from tokens 0..t."""
        B, T = idx.shape
        e = self.embed(F.pad(idx, (0, T % 2)))  # an odd length gets a dummy last token; its pair is never read
        pairs = self.encode_pair(e.view(B, -1, 2 * e.size(-1)))  # (B, T/2, d)
        h = torch.cat([self.start.expand(B, 1, -1), pairs], dim=1)  # h_0 = start: nothing read yet
        rope = (self.rope_cos[:h.size(1)], self.rope_sin[:h.size(1)])
        for layer, block in enumerate(self.blocks):
            h = block(h, rope, None, layer, 0)
        h = self.norm(h)  # (B, T/2 + 1, d): h_k summarises tokens < 2k
        first = e[:, 0::2]  # e_2k: what the second token of pair k may also see
        second = self.second_token(torch.cat([h[:, :first.size(1)], first], dim=-1))  # predicts token 2k + 1
        # position t predicts token t + 1: t = 2k comes from `second` (token 2k+1), t = 2k+1 from h_{k+1}
        out = torch.stack([second, h[:, 1:first.size(1) + 1]], dim=2).view(B, -1, h.size(-1))[:, :T]
        return self.lm_head(out)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: TokenHistory | None = None,
                start: int = 0, positions: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        check_fits_context(self.config, start + idx.shape[1], positions)
        if cache is not None and (key_mask is not None or cache.rows is not None):
            return self.decode_rows(idx, cache, start, key_mask), None
        if cache is not None:  # generation: append the new tokens and read the whole story again
            cache.tokens = idx if cache.tokens is None else torch.cat([cache.tokens, idx], dim=1)
            logits = self.predictions(cache.tokens)[:, -idx.shape[1]:]
        else:
            logits = self.predictions(idx)
        if targets is None:
            return logits, None
        return logits, cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def decode_rows(self, idx: torch.Tensor, cache: TokenHistory, start: int, key_mask: torch.Tensor | None):
        """A left-padded batch (generate_batch): each row keeps its real tokens (key_mask True) on its own and is
        read again alone, so no pair ever holds another row's padding; logits at padding are 0."""
        B, T = idx.shape
        if cache.rows is None:
            cache.rows = [idx.new_zeros(0)] * B if cache.tokens is None else list(cache.tokens)
            cache.tokens = None
        real = key_mask[:, start:start + T] if key_mask is not None else torch.ones_like(idx, dtype=torch.bool)
        logits = torch.zeros(B, T, self.config.vocab_size, device=idx.device, dtype=self.lm_head.weight.dtype)
        for r in range(B):
            new = idx[r, real[r]]
            # a row that has ended rides along while others write on, and may pass the context (its logits are
            # never read): keeping its last context_length tokens keeps the pairs within the position tables
            cache.rows[r] = torch.cat([cache.rows[r], new])[-self.config.context_length:]
            if len(new):
                logits[r, real[r]] = self.predictions(cache.rows[r][None])[0, -len(new):]
        return logits
