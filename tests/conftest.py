"""Shared fixtures: real shared data, one small prepared corpus, one BPE tokenizer, one tiny trained run, and real
pretrained models: Karpathy's stories260K (talelab and Hugging Face Llama forms) and a small GPT-2-shaped model with
GPT-2's real tokenizer; and a small TinyStories all_data file labelled by hand-written rules, with its prepared form.

Torch runs on one thread in tests: the suite shares two cores and two multi-threaded processes thrash.

Tests train on the CPU even where a GPU is present: the GPU is hidden from them and every process they start, so
`device auto` means the CPU (a two-process test would otherwise ask a one-GPU machine for cuda:1, and exact-resume
tests would meet non-deterministic kernels). Tests about CUDA carry `@pytest.mark.cuda`; `pytest -m cuda` runs them
with the GPU visible (benchmarks/gpu_check.sh does), and they skip where there is none.
"""

from __future__ import annotations

import json
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


def pytest_configure(config):
    # before anything touches CUDA (torch reads the variable when it first does); inherited by subprocesses
    if "cuda" not in (config.option.markexpr or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


# Fixtures that take seconds to build. Every test that needs one, directly or through another fixture, is slow:
# marking only its first user would hand the cost to the next one in the quick loop (`pytest -m "not slow"`).
SLOW_FIXTURES = {"gpt2_small", "tiny_report", "story_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:  # whatever reads the shared data, through any fixture, says so: `-m "not needs_shared"`
        fixtures = set(getattr(item, "fixturenames", ()))
        if "shared" in fixtures:
            item.add_marker(pytest.mark.needs_shared)
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
    if not torch.cuda.is_available():
        why = "needs a CUDA device" + ("" if "cuda" in (config.option.markexpr or "") else " (run with -m cuda)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


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
    """configs(out, **train_overrides) -> (ModelConfig, TrainConfig) of the 'tiny' preset on the shared stories, on
    the CPU unless `device` is overridden."""
    from talelab.config import build_train_configs

    def configs(out: Path, model: dict | None = None, **train_overrides):
        return build_train_configs("tiny", overrides={"model": model or {}, "train": {
            "data": str(prepared), "tokenizer": str(bpe_dir), "out": str(out), "progress": False, "device": "cpu",
            **train_overrides}})

    return configs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_configs) -> Path:
    """A run directory holding a tiny model trained for 20 steps on real stories."""
    from talelab.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(*tiny_configs(out), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def stories260k(tmp_path_factory, shared) -> Path:
    """Karpathy's stories260K imported from llama2.c: a talelab model directory."""
    from talelab.models.convert import convert_llama2c

    out = tmp_path_factory.mktemp("stories260K") / "stories260K"
    convert_llama2c(str(shared / paths.STORIES260K_MODEL), str(shared / paths.STORIES260K_TOKENIZER), out)
    return out


@pytest.fixture(scope="session")
def stories260k_hf(tmp_path_factory, stories260k) -> Path:
    """The same weights as a Hugging Face LlamaForCausalLM directory with its tokenizer."""
    from talelab.models.convert import export_hf
    from talelab.models.storage import load_model

    model, tokenizer, _ = load_model(stories260k)
    return export_hf(model, tokenizer, tmp_path_factory.mktemp("stories260K-hf") / "stories260K-hf")


@pytest.fixture(scope="session")
def gpt2_small(tmp_path_factory, shared) -> Path:
    """A GPT-2-shaped model (2 layers, 64 wide) with GPT-2's real 50,257-token tokenizer, pretrained for 200 steps
    on the shared stories: a real GPT2LMHeadModel directory that the GPT-2 code paths (Conv1D, c_attn, pad = eos)
    meet as they would meet DistilGPT2, at a size CI can afford."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out = tmp_path_factory.mktemp("gpt2-small") / "gpt2-small"
    gpt2 = shared / "tokenizers/gpt2"
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2)  # vocab.json + merges.txt, as the hub ships them
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    text = (shared / paths.TINYSTORIES_TRAIN).read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:600]
    ids = torch.tensor([i for s in stories for i in tokenizer(s)["input_ids"] + [tokenizer.eos_token_id]])
    windows = ids[: len(ids) // 64 * 64].view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    torch.set_num_threads(2)  # the 50,257-way output layer dominates; nothing else runs while the fixture builds
    try:
        for _ in range(200):
            batch = windows[torch.randint(len(windows), (4,), generator=generator)]
            model(batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(1)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tinystories_features(story: str, index: int) -> list[str]:
    """Features for a shared story, chosen by hand-written rules (the shared data has no labelled stories): quoted
    speech is Dialogue, "learned" a MoralValue, sadness in the last two sentences a BadEnding, every 7th story a
    Twist. Labels the talelab rules cannot give (BadEnding, Twist) show where features came from."""
    ending = " ".join(story.split(". ")[-2:])
    return (["Dialogue"] * ('"' in story) + ["BadEnding"] * any(w in ending for w in (" sad", " bad", " cried"))
            + ["MoralValue"] * ("learned" in story) + ["Twist"] * (index % 7 == 3))


@pytest.fixture(scope="session")
def tagged_all_data(tmp_path_factory, shared) -> tuple[Path, Path]:
    """(data00.json, prepared directory): the first 40 shared stories as one TinyStories all_data JSON array, labelled
    by tinystories_features (a few with no features), and `talelab prepare --text-field story --require-field
    instruction.features` of it with every story in train.jsonl."""
    from talelab.config import PrepareConfig
    from talelab.data.prepare import prepare

    text = (shared / paths.TINYSTORIES_TRAIN).read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:40]
    records = [{"story": story, "instruction": {
                    "prompt:": "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year "
                               "old child would likely understand.",
                    "words": sorted({w for w in story.lower().split() if w.isalpha() and len(w) >= 7})[:3],
                    "features": tinystories_features(story, i)},
                "summary": story.split(". ")[0] + ".", "source": "GPT-4"} for i, story in enumerate(stories)]
    root = tmp_path_factory.mktemp("all_data")
    source = root / "data00.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    prepare(PrepareConfig(source=str(source), text_field="story", require_field="instruction.features",
                          val_fraction=0, test_fraction=0, out=str(root / "tagged")), progress=False)
    return source, root / "tagged"
