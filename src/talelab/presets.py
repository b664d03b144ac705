"""Named starting configurations, as plain tables a newcomer can read: values that a YAML file (`--config`) and
flags then override (talelab.settings.resolve)."""

from __future__ import annotations

from typing import Any



def seed_row(model: dict, lr: float, step_size: int, gamma: float) -> dict[str, dict[str, Any]]:
    """A row of seed 002's tables: batch 64, AdamW defaults, StepLR from the first step, untied biased output."""
    return {"model": dict(tie_embeddings=False, bias=True, **model),
            "train": dict(lr=lr, schedule="step", step_size=step_size, gamma=gamma, batch_size=64, warmup_steps=0,
                          weight_decay=0.01)}


def seed_transformer(d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float, positions: str,
                     norm_position: str) -> dict:
    return dict(d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=d_ff, dropout=dropout, positions=positions,
                norm_position=norm_position, activation="gelu", norm="layernorm")


def seed_recurrent(family: str, d_model: int, n_layers: int, hidden_size: int) -> dict:
    return dict(family=family, d_model=d_model, n_layers=n_layers, hidden_size=hidden_size, dropout=0.1005)


# Presets: overrides of ModelConfig ("model") and TrainConfig ("train"). The llama2.c shapes are Karpathy's
# TinyStories models (dim / layers / heads / kv heads / context); their vocabulary comes from the tokenizer.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # seconds on one core: for tests
        "model": dict(d_model=32, n_layers=2, n_heads=4, context_length=64),
        "train": dict(max_steps=20, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=10, eval_batches=2,
                      checkpoint_interval=10),
    },
    # the CPU run of `talelab demo`: a budget of tokens, not minutes, so every machine trains the same model.
    # 1,800 steps of 16 x 256 tokens, compiled, in the time the earlier 1,200 eager steps took: fp32 attention
    # backward and compile made a step 1.5-1.6x faster (benchmarks/RESULTS.md, issue 19's "Goal 4, time to quality",
    # where 2,000 steps, lr 3e-3 and Muon were tried too)
    "demo": {
        "model": dict(d_model=192, n_layers=6, n_heads=6, context_length=256, dropout=0.0),
        "train": dict(max_tokens=7_372_800, batch_size=16, lr=2e-3, warmup_steps=50, schedule="wsd",
                      decay_fraction=0.5, min_lr_ratio=0.0, weight_decay=0.1, eval_interval=100, eval_batches=4,
                      checkpoint_interval=200, dtype="bfloat16", compile=True),
    },
    # seed 002's transformer table (word-level vocabulary of 2,048): shape, then lr, StepLR step size and gamma
    "ts-1m": seed_row(seed_transformer(128, 8, 3, 355, 0.08, "rope", "post"), 0.004902, 5000, 0.7997),
    "ts-5m": seed_row(seed_transformer(256, 8, 5, 1028, 0.1, "rope", "post"), 0.0013, 12500, 0.5551),
    "ts-10m": seed_row(seed_transformer(384, 8, 5, 1422, 0.1, "sinusoidal", "pre"), 0.0009, 12000, 0.5),
    # The seed's two largest rows, with its shapes as published. They count 23.1M and 88.2M parameters, not 15M and
    # 35M: the three rows above match their names only with the standard count (untied, biased, 2-matrix MLP), and
    # no reading fits these two, since 8 layers of width-1024 attention alone (4 x 1024^2 each) make 33.6M before
    # any embedding or feed-forward weight. (Both names would fit 3 layers: 14.7M and 35.7M.)
    "ts-15m": seed_row(seed_transformer(512, 8, 5, 3072, 0.1007, "sinusoidal", "pre"), 0.0012, 12000, 0.5),
    "ts-35m": seed_row(seed_transformer(1024, 16, 8, 3072, 0.1007, "sinusoidal", "post"), 0.00065, 11500, 0.555),
    # seed 002's recurrent table: family, embedding size, layers, hidden size; StepLR every 2,500 steps
    "rnn-5m": seed_row(seed_recurrent("rnn", 512, 4, 590), 0.0006, 2500, 0.75),
    "lstm-5m": seed_row(seed_recurrent("lstm", 384, 2, 464), 0.0011, 2500, 0.78),
    "gru-5m": seed_row(seed_recurrent("gru", 384, 2, 546), 0.0011, 2500, 0.78),
    "260k": {"model": dict(d_model=64, n_layers=5, n_heads=8, n_kv_heads=4, d_ff=172, context_length=512)},
    "15m": {"model": dict(d_model=288, n_layers=6, n_heads=6, n_kv_heads=6, d_ff=768, context_length=256)},
    "42m": {"model": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_ff=1376, context_length=1024)},
    "110m": {"model": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=2048, context_length=1024)},
}


# Named fine-tuning recipes: FinetuneConfig values (LoRA's under 'lora'), before any YAML or flag.
FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    # seed 000: DistilGPT2 + LoRA on tagged TinyStories; ranks 8/16/32 by --lora-rank, alpha = 2r
    "distilgpt2-tags": dict(base="distilgpt2", task="stories-tags", lora=dict(rank=8, alpha=0.0, target_modules="gpt2"),
                            lr=2e-4, warmup_ratio=0.1, batch_size=16, epochs=5.0),
    # seed 003's setting: TinyLlama-1.1B-Chat + LoRA on Dolly instructions in the Alpaca template; the knob values
    # are a common starting point (seed 003 compared five trials; `talelab trials` reruns such a grid)
    "tinyllama-dolly": dict(base="TinyLlama/TinyLlama-1.1B-Chat-v1.0", task="instruct",
                            data="data/instruct/dolly-subset.jsonl", template="alpaca",
                            lora=dict(rank=16, alpha=32.0, dropout=0.05, target_modules="llama"), lr=2e-4,
                            warmup_ratio=0.1, batch_size=4,
                            grad_accum=4, epochs=1.0, max_length=512),
}
