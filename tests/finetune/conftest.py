"""Fine-tuning fixtures: one small run configuration shared by the SFT tests (tiny models, tens of steps)."""

from __future__ import annotations

import pytest


@pytest.fixture
def quick():
    """quick(**overrides) -> FinetuneConfig for a CI-sized run: no progress bars, few steps, short sequences."""
    from talelab.finetune.sft import build_finetune_config

    def make(**overrides):
        values = dict(batch_size=8, max_length=128, lr=3e-3, logging_steps=1, save_steps=1000, progress=False,
                      samples=0, eval_fraction=0.1, max_new_tokens=48)
        return build_finetune_config(None, {**values, **overrides})

    return make
