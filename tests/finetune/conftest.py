"""Fine-tuning fixtures: one small run configuration shared by the SFT tests (tiny models, tens of steps)."""

from __future__ import annotations

import pytest

from talelab.config import FinetuneConfig
from talelab.settings import resolve


@pytest.fixture
def quick():
    """quick(**overrides) -> FinetuneConfig for a CI-sized run: no progress bars, few steps, short sequences."""
    def make(**overrides):
        values = dict(batch_size=8, max_length=128, lr=3e-3, logging_steps=1, save_steps=1000, progress=False,
                      samples=0, eval_fraction=0.1, max_new_tokens=48)
        return resolve(FinetuneConfig, [("test", {**values, **overrides})])

    return make
