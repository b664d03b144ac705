"""Shared fixtures: real shared data, one small prepared corpus, one BPE tokenizer and one tiny trained run.

Torch runs on one thread in tests: the suite shares two cores and two multi-threaded processes thrash.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from talelab import paths  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared() -> Path:
    root = paths.data_root()
    assert root is not None, "tests need the shared data: ../shared beside the checkout or TALELAB_DATA"
    return root


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, shared) -> Path:
    """The first 400 stories of train-head.txt, cleaned and split."""
    from talelab.config import PrepareConfig
    from talelab.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(PrepareConfig(source=str(shared / paths.TINYSTORIES_TRAIN), out=str(out), max_documents=400,
                          val_fraction=0.05, test_fraction=0.02), progress=False)
    return out


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, prepared) -> Path:
    from talelab.config import TokenizerConfig
    from talelab.tokenizer import train_tokenizer_from

    out = tmp_path_factory.mktemp("tokenizer") / "bpe"
    train_tokenizer_from(TokenizerConfig(data=str(prepared), out=str(out), kind="bpe", vocab_size=512))
    return out


@pytest.fixture(scope="session")
def tiny_configs(prepared, bpe_dir):
    """configs(out, **train_overrides) -> (ModelConfig, TrainConfig) of the 'tiny' preset on the shared stories."""
    from talelab.config import build_train_configs

    def configs(out: Path, model: dict | None = None, **train_overrides):
        return build_train_configs("tiny", overrides={"model": model or {}, "train": {
            "data": str(prepared), "tokenizer": str(bpe_dir), "out": str(out), "progress": False, **train_overrides}})

    return configs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_configs) -> Path:
    """A run directory holding a tiny model trained for 20 steps on real stories."""
    from talelab.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(*tiny_configs(out), log=lambda *_: None)
    return out
