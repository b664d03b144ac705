"""Models to study: Karpathy's stories260K imported from llama2.c, the same weights as a Hugging Face Llama, and
a way to save hand-wired talelab models."""

from __future__ import annotations

from pathlib import Path

import pytest

from talelab import paths
from talelab.models.convert import convert_llama2c, export_hf
from talelab.models.storage import load_model, save_model
from talelab.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def stories260k(tmp_path_factory, shared) -> Path:
    out = tmp_path_factory.mktemp("interpret") / "stories260K"
    convert_llama2c(str(shared / paths.STORIES260K_MODEL), str(shared / paths.STORIES260K_TOKENIZER), out)
    return out


@pytest.fixture(scope="session")
def stories260k_hf(tmp_path_factory, stories260k) -> Path:
    model, tokenizer, _ = load_model(stories260k)
    return export_hf(model, tokenizer, tmp_path_factory.mktemp("interpret") / "stories260K-hf")


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
