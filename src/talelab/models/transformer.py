"""A decoder-only transformer, one file, every switch the seed experiments and llama2.c need.

Positions (rope | sinusoidal | learned), norms (rmsnorm | layernorm, pre or post), activations (swiglu | gelu | relu),
grouped-query attention through scaled_dot_product_attention, tied embeddings, and a static KV cache whose outputs
equal the full forward pass. RoPE uses the rotate-half layout of Hugging Face Llama, so export needs no permutation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from talelab.config import ModelConfig
from talelab.errors import MismatchError


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (context_length, head_size), halves repeated as in rotate-half RoPE."""
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_size, 2, dtype=torch.float32) / config.head_size))
    angles = torch.outer(torch.arange(config.context_length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def sinusoidal_table(config: ModelConfig) -> torch.Tensor:
    """The fixed position signal of Vaswani et al., shape (context_length, d_model)."""
    position = torch.arange(config.context_length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, config.d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / config.d_model))
    table = torch.zeros(config.context_length, config.d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class KVCache:
    """Preallocated keys and values for every layer: (B, n_kv_heads, context_length, head_size) each."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype):
        shape = (batch_size, config.n_kv_heads, config.context_length, config.head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows named by `index` (beam search picks which hypotheses survive)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_size = config.n_heads, config.n_kv_heads, config.head_size
        # one matmul for queries, keys and values: fewer, larger kernels are faster on CPU and GPU alike
        self.qkv = nn.Linear(config.d_model, (config.n_heads + 2 * config.n_kv_heads) * config.head_size, bias=config.bias)
        self.out = nn.Linear(config.n_heads * config.head_size, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.use_rope = config.positions == "rope"

    def forward(self, x, rope, cache: KVCache | None, layer: int, start: int):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_size, self.n_kv_heads * self.head_size, self.n_kv_heads * self.head_size], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, n_heads, T, head_size)
        k = k.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, n_kv_heads, T, head_size)
        v = v.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)
        if self.use_rope:
            cos, sin = (t.to(q.dtype) for t in rope)  # under autocast q is bf16 while the tables stay fp32
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        mask, causal = None, True
        if cache is not None:
            cache.keys[layer][:, :, start:start + T] = k
            cache.values[layer][:, :, start:start + T] = v
            k, v = cache.keys[layer][:, :, :start + T], cache.values[layer][:, :, :start + T]
            if T == 1:
                causal = False  # one new token sees every cached position
            elif start > 0:
                causal = False  # a chunk after a prefix: causal within the chunk, open to the prefix
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.activation == "swiglu"
        # swiglu's gate and up projections share one matmul: rows [0, d_ff) gate, [d_ff, 2 d_ff) up
        self.up = nn.Linear(config.d_model, config.d_ff * (2 if self.gated else 1), bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.act = {"swiglu": F.silu, "gelu": F.gelu, "relu": F.relu}[config.activation]

    def forward(self, x):
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config)
        self.mlp = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)
        self.pre_norm = config.norm_position == "pre"

    def forward(self, x, rope, cache, layer, start):
        if self.pre_norm:
            x = x + self.drop(self.attn(self.attn_norm(x), rope, cache, layer, start))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        x = self.attn_norm(x + self.drop(self.attn(x, rope, cache, layer, start)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise MismatchError("model config: vocab_size must be set (from the tokenizer) before building a model")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.pos_embed = nn.Embedding(config.context_length, config.d_model)
        elif config.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config), persistent=False)
        else:
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        # post-norm blocks already end in a norm; pre-norm needs one before the output projection
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                start: int = 0):
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy over targets that are not -1."""
        B, T = idx.shape
        if start + T > self.config.context_length:
            raise MismatchError(f"sequence of {start + T} tokens exceeds the model's context_length "
                                f"{self.config.context_length}")
        x = self.embed(idx)  # (B, T, d_model)
        rope = None
        if self.config.positions == "learned":
            x = x + self.pos_embed.weight[start:start + T]
        elif self.config.positions == "sinusoidal":
            x = x + self.pos_table[start:start + T]
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer, start)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
