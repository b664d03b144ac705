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

INIT_STD = 0.02  # GPT-2's initial size of every weight matrix and embedding


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (context_length, head_size), halves repeated as in rotate-half RoPE."""
    exponents = torch.arange(0, config.head_size, 2, dtype=torch.float32) / config.head_size
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    angles = torch.outer(torch.arange(config.context_length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def sinusoidal_table(config: ModelConfig) -> torch.Tensor:
    """The fixed position signal of Vaswani et al., shape (context_length, d_model), at the size of the token
    embeddings as initialised (per-entry RMS INIT_STD).

    At amplitude 1 (RMS 0.71, 35 times the embeddings) position drowned the tokens: ts-1m on the study's word corpus
    stayed at the unigram loss for its whole budget (5.63 after 100 steps, and still at amplitude 0.15, against
    rope's 3.51); at the embeddings' size it reached 3.73. Vaswani et al. scale the embeddings up by sqrt(d_model)
    instead, which an output layer tied to them cannot share, and GPT-2's export keeps the table as it is here."""
    position = torch.arange(config.context_length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, config.d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / config.d_model))
    table = torch.zeros(config.context_length, config.d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table * (INIT_STD * math.sqrt(2))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


# Rows per cross-entropy chunk. A module constant, not a class attribute: torch.compile mis-traces an
# autograd.Function whose forward reads its own class (the backward of a cached graph failed on a garbage view shape).
CROSS_ENTROPY_ROWS = 256


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over targets that are not -1; the gradient (softmax minus one-hot) is made in the forward.

    The vocabulary projection dominates small models. Autograd's log_softmax + nll_loss writes, zero-fills and
    re-reads several (tokens, vocab) tensors; this works through a few hundred rows at a time while they sit in
    cache and keeps only the finished gradient, in the logits' dtype. About 1.2x faster in fp32 and 2x in bf16 on CPU.
    (Smaller, 1 MiB chunks through one fused log_softmax measured the same eagerly and 6-12 % slower compiled.)
    fp16 logits keep their gradient in fp32 until backward has multiplied in the loss scale: divided by the token
    count and not yet scaled, most of it lies below fp16's smallest subnormal (6e-8) and would flush to zero where
    GradScaler cannot protect it, and the scaler's 65,536 itself overflows fp16.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != -1
        safe = targets.clamp(min=0).unsqueeze(1)
        count = valid.sum().clamp(min=1)
        want_grad = ctx.needs_input_grad[0]
        grad_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype  # bf16 has fp32's range
        grad = torch.empty_like(logits, dtype=grad_dtype) if want_grad else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        # one fp32 chunk reused: a fresh 4 MiB tensor per chunk cost page faults, and together with writing the
        # gradient through `out=` (scaled and cast in one pass) this took the bf16 small-shape loss from 72 to 60 ms
        scratch = torch.empty(min(CROSS_ENTROPY_ROWS, logits.shape[0]), logits.shape[1], dtype=torch.float32,
                              device=logits.device)
        for i in range(0, logits.shape[0], CROSS_ENTROPY_ROWS):
            rows = slice(i, i + CROSS_ENTROPY_ROWS)
            chunk = logits[rows]
            x = scratch[:chunk.shape[0]]
            x.copy_(chunk)  # (chunk, vocab) in fp32, ours to overwrite
            x.sub_(x.amax(dim=1, keepdim=True)).exp_()
            sums = x.sum(dim=1, keepdim=True)
            target_prob = x.gather(1, safe[rows]) / sums
            total += -(target_prob.squeeze(1).log() * valid[rows]).sum()
            if want_grad:
                x.div_(sums).scatter_add_(1, safe[rows], -torch.ones_like(target_prob))
                torch.mul(x, (valid[rows] / count).unsqueeze(1), out=grad[rows])
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        # A loss taken as it is (no loss scale, no accumulation) multiplies by one: skip that pass over the whole
        # (tokens, vocab) gradient. Reading the factor is free on the CPU; elsewhere, or while compiling, where it
        # would wait for the device or break the graph, the multiply always runs.
        if grad_loss.device.type != "cpu" or torch.compiler.is_compiling() or grad_loss.item() != 1.0:
            grad.mul_(grad_loss.to(grad.dtype))  # in place, before the cast: fp16 gets its loss scale in fp32
        return grad.to(ctx.logits_dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
    """Mean cross-entropy of (tokens, vocab) logits over targets that are not -1: chunked on the CPU, where it is
    faster (ChunkedCrossEntropy); one fused kernel in fp32 elsewhere (`fused`), where the chunk loop would launch
    thousands of small kernels a step. The fp32 copy's gradient reaches 16-bit logits already multiplied by the loss
    scale."""
    if fused is None:
        fused = logits.device.type != "cpu"
    if not fused:
        return ChunkedCrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=-1)


class KVCache:
    """Preallocated keys and values for every layer: (B, n_kv_heads, context_length, head_size) each."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype, length: int | None = None):
        # `length` may exceed the context when left-padded rows share the cache (see Transformer.forward)
        shape = (batch_size, config.n_kv_heads, length or config.context_length, config.head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]

    def reorder(self, index: torch.Tensor, filled: int | None = None) -> None:
        """Keep the batch rows named by `index` (beam search picks which hypotheses survive).

        With `filled` (positions written so far) and as many rows as before, rows are permuted in place over the
        filled positions only: a beam step then copies what it uses, not the whole preallocated context, and the
        tensors a compiled decode step sees stay the same. Only the rows that take another row's history are
        written, one copy each; when a row is both read and overwritten, every row is gathered first. (Beam steps
        that move no row: 68 % on the random weights of benchmarks/decode.py, 16 % on stories260K, where 66 %
        overwrite a source.)"""
        if filled is not None and index.numel() == self.keys[0].size(0):
            moves = {row: source for row, source in enumerate(index.tolist()) if row != source}
            overwrites_a_source = any(source in moves for source in moves.values())
            for t in (*self.keys, *self.values):
                if overwrites_a_source:
                    t[:, :, :filled] = t[:, :, :filled].index_select(0, index)
                    continue
                for row, source in moves.items():
                    t[row, :, :filled] = t[source, :, :filled]
            return
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def place(self, rows: torch.Tensor, other: KVCache) -> None:
        """Copy every row of `other` (all its positions) into this cache's rows `rows`: new rows join a batch."""
        length = other.keys[0].size(2)
        for mine, theirs in zip((*self.keys, *self.values), (*other.keys, *other.values)):
            mine[rows, :, :length] = theirs


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_size = config.n_heads, config.n_kv_heads, config.head_size
        # one matmul for queries, keys and values: fewer, larger kernels are faster on CPU and GPU alike
        qkv_width = (config.n_heads + 2 * config.n_kv_heads) * config.head_size
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=config.bias)
        self.out = nn.Linear(config.n_heads * config.head_size, config.d_model, bias=config.bias)
        self.dropout = config.dropout if config.attention_dropout < 0 else config.attention_dropout
        self.use_rope = config.positions == "rope"

    def project(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, n_heads, T, head_size), keys and values (B, n_kv_heads, T, head_size), RoPE applied."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_size)
        qk, v = qkv.split([self.n_heads + self.n_kv_heads, self.n_kv_heads], dim=2)
        if self.use_rope:  # rotate queries and keys in one go: half the elementwise kernels
            cos, sin = (t.to(qk.dtype).unsqueeze(-2) for t in rope)  # ([B,] T, 1, head_size); autocast: qk is bf16
            qk = qk * cos + rotate_half(qk) * sin
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, rope, cache: KVCache | None, layer: int, start: int | torch.Tensor,
                mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        q, k, v = self.project(x, rope)
        causal = mask is None
        if cache is not None and isinstance(start, torch.Tensor):  # one token per row, each at its own slot
            rows = torch.arange(B, device=x.device)
            cache.keys[layer][rows, :, start] = k[:, :, 0]
            cache.values[layer][rows, :, start] = v[:, :, 0]
            span = mask.size(-1)  # the slots the longest row has filled: no attention over the empty rest
            k, v = cache.keys[layer][:B, :, :span], cache.values[layer][:B, :, :span]
        elif cache is not None:
            cache.keys[layer][:, :, start:start + T] = k
            cache.values[layer][:, :, start:start + T] = v
            k, v = cache.keys[layer][:, :, :start + T], cache.values[layer][:, :, :start + T]
            if mask is None and T == 1:
                causal = False  # one new token sees every cached position
            elif mask is None and start > 0:
                causal = False  # a chunk after a prefix: causal within the chunk, open to the prefix
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # with a mask, grouped keys go to the fused kernels only when repeated to every head (some CUDA releases fall
        # back to the math kernel for masked GQA); on the CPU the kernel takes them grouped
        y = attend(q, k, v, mask, causal, self.dropout if self.training else 0.0,
                   expand_kv=mask is not None and q.device.type == "cuda")
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
           dropout_p: float, expand_kv: bool = False) -> torch.Tensor:
    """Scaled dot-product attention of (B, heads, T, size) queries over (B, kv heads, S, size) keys and values, each
    kv head serving the query heads of its group; `expand_kv` repeats them to every query head first."""
    groups = q.size(1) // k.size(1)
    if expand_kv and groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if trains_faster_in_fp32(q, k):
        with torch.autocast("cpu", enabled=False):  # autocast would cast them straight back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal,
                                               dropout_p=dropout_p, enable_gqa=k.size(1) != q.size(1))
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
                                          enable_gqa=k.size(1) != q.size(1))


def trains_faster_in_fp32(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether CPU attention that will be backpropagated runs faster in fp32 than in bf16: torch's CPU flash kernel
    differentiates bf16 at small head sizes about twice as slowly as fp32, so a bf16 training step spent a third of
    its time there. Measured, forward + backward, 2 threads of an AMX CPU (bf16 / fp32 ms): head size 32 at 256
    positions 66 / 42 (batch 32, 4 heads), 8 at 512 157 / 85, 48 at 512 104 / 91; bf16 wins from head size 64
    (8 x 8 x 512: 99 / 113) and at 1,024 positions (head size 32: 174 / 196). The forward alone is faster in bf16."""
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and q.requires_grad
            and q.size(-1) < 64 and k.size(-2) <= 512)


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

    def forward(self, x, rope, cache, layer, start, mask=None):
        if self.pre_norm:
            x = x + self.drop(self.attn(self.attn_norm(x), rope, cache, layer, start, mask))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        x = self.attn_norm(x + self.drop(self.attn(x, rope, cache, layer, start, mask)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


def with_vocabulary(config: ModelConfig) -> ModelConfig:
    """`config`, once checked that it has its vocabulary from the tokenizer, which every family needs to be built."""
    if config.vocab_size <= 0:
        raise MismatchError("model config: vocab_size must be set (from the tokenizer) before building a model")
    return config


def check_fits_context(config: ModelConfig, length: int, positions: torch.Tensor | None = None) -> None:
    """MismatchError for a sequence longer than the context: `length` tokens, or with `positions` (each row's own
    positions, left-padded batches) the largest of them + 1. Positions are read back only from the CPU: elsewhere
    that would wait for the device each step, and batched decoding clamps them itself."""
    if positions is not None:
        if positions.device.type != "cpu":
            return
        length = int(positions.max()) + 1
    if length > config.context_length:
        raise MismatchError(f"sequence of {length} tokens exceeds the model's context_length {config.context_length}")


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Parameters of any talelab model; without embeddings: minus the input table and an untied output one."""
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= model.embed.weight.numel()
        if not model.config.tie_embeddings:
            n -= model.lm_head.weight.numel()
    return n


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = with_vocabulary(config)
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
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return count_parameters(self, exclude_embeddings)

    def new_cache(self, batch_size: int, device, dtype, length: int | None = None) -> KVCache:
        return KVCache(self.config, batch_size, device, dtype, length)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                start: int | torch.Tensor = 0, positions: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy over targets that are not -1.

        `start` is the cache slot of idx[:, 0]. Left-padded batches of different lengths pass `positions` (B, T),
        each row's own token positions, and `key_mask` (B, start + T), True where a cache slot holds a real token.
        Rows at different places (continuous batching, talelab.decoding_batch.DecodingBatch) pass one token each,
        `start` as a tensor (B,) of each row's own slot for it (by default also its position), and `key_mask` (B, S):
        the slots each row's token sees, its own included; the cache may hold more rows, which are left alone.
        """
        B, T = idx.shape
        per_row = isinstance(start, torch.Tensor)
        if per_row:  # rows stay within the context by their limits (generate.start): no check reads the slots back
            positions = start[:, None] if positions is None else positions
        else:
            check_fits_context(self.config, start + T, positions)
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)  # (T,), shared by every row
        x = self.embed(idx)  # (B, T, d_model)
        rope = None
        if self.config.positions == "learned":
            x = x + self.pos_embed(positions)
        elif self.config.positions == "sinusoidal":
            x = x + self.pos_table[positions]
        else:
            rope = (self.rope_cos[positions], self.rope_sin[positions])
        mask = None
        if per_row:
            mask = key_mask[:, None, None, :]  # (B, 1, 1, S): the same for every head
        elif key_mask is not None:
            slots = torch.arange(start + T, device=idx.device)
            queries = torch.arange(start, start + T, device=idx.device)[:, None]
            # causal, real keys only; every query also sees itself, so padding rows never softmax over nothing
            mask = ((slots <= queries) & key_mask[:, None, :]) | (slots == queries)  # (B, T, start + T)
            mask = mask[:, None]  # (B, 1, T, start + T): the same for every head
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer, start, mask)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        return logits, cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
