"""stories260K's tokenizer and a way to save hand-wired talelab models (stories260K itself is in the top conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from talelab import paths
from talelab.models.storage import save_model
from talelab.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tok512(shared):
    """stories260K's 512-token llama2.c tokenizer, for hand-wired models."""
    return load_tokenizer(shared / paths.STORIES260K_TOKENIZER)


@pytest.fixture
def saved(tmp_path):
    """saved(model, tokenizer) -> a talelab model directory holding them."""

    def save(model, tokenizer, name: str = "planted") -> Path:
        (tmp_path / name).mkdir()
        save_model(tmp_path / name, model.eval(), tokenizer)
        return tmp_path / name

    return save
