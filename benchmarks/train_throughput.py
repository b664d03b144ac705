"""Training tokens/s: talelab's training step against a plain eager PyTorch reference, measured side by side.

Shapes: `small` (issue 2 and issue 8's goal 1): d_model 128, 4 layers, 4 heads, context 256, batch 32, vocab 4096;
`15m` (llama2.c's 15M shape): d_model 288, 6 layers, 6 heads, context 256, batch 8, vocab 32000; `demo` (the
`demo` preset's step): d_model 192, 6 layers, 6 heads, context 256, batch 16, vocab 2048. 2 threads.
The reference is the loop a user would write from nanoGPT: LayerNorm, fused qkv, SDPA, GELU MLP, AdamW, fp32.
talelab runs its own `train_step` (the one `talelab train` uses, gradient clipping included) in fp32 and with bf16
autocast, both on the reference's GPT-2 architecture (learned positions, LayerNorm, GELU, biases) and on talelab's
default Llama architecture (RoPE, RMSNorm, SwiGLU), whose extra elementwise kernels cost time on a CPU. Rounds
alternate so that machine noise hits every contender alike; the figure is the median over rounds.

    python benchmarks/train_throughput.py [--shape small|15m|demo] [--rounds 5] [--steps 6]
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
from talelab.devices import autocast_context
from talelab.train.distributed import compile_for_training
from talelab.train.loop import train_step
from talelab.train.optim import make_optimizers

SHAPES = {"small": dict(d_model=128, layers=4, heads=4, context=256, batch=32, vocab=4096),
          "15m": dict(d_model=288, layers=6, heads=6, context=256, batch=8, vocab=32000),
          "demo": dict(d_model=192, layers=6, heads=6, context=256, batch=16, vocab=2048)}


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
    def __init__(self, d_model: int, layers: int, heads: int, context: int, vocab: int, **_):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(ReferenceBlock(d_model, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_contender(shape: dict):
    model = ReferenceGPT(**shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# the reference's own architecture, so that the ratio measures the training step rather than the model
GPT2_ARCHITECTURE = dict(positions="learned", norm="layernorm", activation="gelu", bias=True)


def talelab_contender(shape: dict, dtype: str, compile: bool = False, **architecture):
    config = TrainConfig(dtype=dtype, batch_size=shape["batch"], grad_clip=1.0, compile=compile)
    model = Transformer(ModelConfig(vocab_size=shape["vocab"], d_model=shape["d_model"], n_layers=shape["layers"],
                                    n_heads=shape["heads"], context_length=shape["context"], **architecture)).train()
    device = torch.device("cpu")
    optimizers = make_optimizers(model, config, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    autocast = autocast_context(device, dtype)

    forward = compile_for_training(model) if compile else model  # as `talelab train --compile` does

    def step(x, y):
        train_step(forward, model, optimizers, scaler, autocast, config, lambda: (x, y))

    return step


def tokens_per_second(step, batches, steps: int) -> float:
    step(*batches[0])  # warm-up: allocator, kernels, optimizer state
    started = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    return batches[0][0].numel() * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per contender per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    size = (shape["batch"], shape["context"])
    batches = [(torch.randint(0, shape["vocab"], size), torch.randint(0, shape["vocab"], size)) for _ in range(4)]
    contenders = {"reference eager fp32": reference_contender(shape),
                  "talelab fp32, gpt2 arch": talelab_contender(shape, "float32", **GPT2_ARCHITECTURE),
                  "talelab bf16, gpt2 arch": talelab_contender(shape, "bfloat16", **GPT2_ARCHITECTURE),
                  "talelab fp32, llama arch": talelab_contender(shape, "float32"),
                  "talelab bf16, llama arch": talelab_contender(shape, "bfloat16"),
                  "talelab bf16 compiled, gpt2 arch": talelab_contender(shape, "bfloat16", True, **GPT2_ARCHITECTURE),
                  "talelab bf16 compiled, llama arch": talelab_contender(shape, "bfloat16", True)}
    results = {name: [] for name in contenders}
    for step in contenders.values():  # untimed: the reference's first round ran at a quarter of its speed
        tokens_per_second(step, batches, 2)
    for r in range(args.rounds):
        for name, step in contenders.items():
            results[name].append(tokens_per_second(step, batches, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items()), flush=True)
    reference = results["reference eager fp32"]
    print(f"\nshape {args.shape}: " + ", ".join(f"{k} {v}" for k, v in shape.items())
          + f"; {args.threads} threads; median of {args.rounds} rounds x {args.steps} steps; ratio: the median of "
          f"each round's ratio to that round's reference (a shared machine's speed drifts between rounds)")
    for name, values in results.items():
        ratio = statistics.median(v / base for v, base in zip(values, reference))
        print(f"{name:<34}{statistics.median(values):>10,.0f} tokens/s   ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
