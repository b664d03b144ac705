"""Training tokens/s: talelab's training step against a plain eager PyTorch reference, measured side by side.

Shape (issue 2): d_model 128, 4 layers, 4 heads, context 256, batch 32, vocab 4096, 2 threads. The reference is
the loop a user would write from nanoGPT: LayerNorm, fused qkv, SDPA, GELU MLP, AdamW, fp32. talelab runs its own
`train_step` (the one `talelab train` uses, gradient clipping included) in fp32 and with bf16 autocast, both on
the reference's GPT-2 architecture (learned positions, LayerNorm, GELU, biases) and on talelab's default Llama
architecture (RoPE, RMSNorm, SwiGLU), whose extra elementwise kernels cost time on a CPU. Rounds alternate so
that machine noise hits every contender alike; the figure is the median over rounds.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from talelab.config import ModelConfig, TrainConfig
from talelab.models.transformer import Transformer
from talelab.train.loop import autocast_context, train_step
from talelab.train.optim import make_optimizer

D_MODEL, LAYERS, HEADS, CONTEXT, BATCH, VOCAB = 128, 4, 4, 256, 32, 4096


class ReferenceBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(ReferenceBlock(D_MODEL, HEADS) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def reference_contender():
    model = ReferenceGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# the reference's own architecture, so that the ratio measures the training step rather than the model
GPT2_ARCHITECTURE = dict(positions="learned", norm="layernorm", activation="gelu", bias=True)


def talelab_contender(dtype: str, **architecture):
    config = TrainConfig(dtype=dtype, batch_size=BATCH, grad_clip=1.0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS,
                                    context_length=CONTEXT, **architecture)).train()
    device = torch.device("cpu")
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    autocast = autocast_context(device, dtype)

    def step(x, y):
        train_step(model, model, optimizer, scaler, autocast, config, lambda: (x, y))

    return step


def tokens_per_second(step, batches, steps: int) -> float:
    step(*batches[0])  # warm-up: allocator, kernels, optimizer state
    started = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    return BATCH * CONTEXT * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per contender per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [(torch.randint(0, VOCAB, (BATCH, CONTEXT)), torch.randint(0, VOCAB, (BATCH, CONTEXT)))
               for _ in range(4)]
    contenders = {"reference eager fp32": reference_contender(),
                  "talelab fp32, gpt2 arch": talelab_contender("float32", **GPT2_ARCHITECTURE),
                  "talelab bf16, gpt2 arch": talelab_contender("bfloat16", **GPT2_ARCHITECTURE),
                  "talelab fp32, llama arch": talelab_contender("float32"),
                  "talelab bf16, llama arch": talelab_contender("bfloat16")}
    results = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, step in contenders.items():
            results[name].append(tokens_per_second(step, batches, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items()), flush=True)
    base = statistics.median(results["reference eager fp32"])
    print(f"\nshape d_model {D_MODEL}, {LAYERS} layers, {HEADS} heads, context {CONTEXT}, batch {BATCH}, "
          f"vocab {VOCAB}, "
          f"{args.threads} threads; median of {args.rounds} rounds x {args.steps} steps")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<26}{median:>10,.0f} tokens/s   ratio {median / base:.2f}x")


if __name__ == "__main__":
    main()
