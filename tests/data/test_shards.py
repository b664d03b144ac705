"""Pre-tokenized splits: written batch by batch as they stream in, the same files as encoding the split at once."""

import dataclasses
import itertools
import json
import tracemalloc

import numpy as np
import pytest

from talelab.data import shards, sources
from talelab.data.shards import SPLITS, load_shard, pretokenize, shard_directory, write_shard
from talelab.data.sources import read_documents
from talelab.errors import InputError, MismatchError
from talelab.tokenizer import load_tokenizer


def encoded_at_once(texts: list[str], tokenizer) -> tuple[list[int], list[int]]:
    """The layout of shards.py written plainly: [bos] + ids (+ [eos] when it is another token) for every story, then
    a final eos when bos is also eos; and where each story starts."""
    tokens, starts = [], []
    for text in texts:
        starts.append(len(tokens))
        tokens += tokenizer.encode(text, bos=True, eos=tokenizer.eos_id != tokenizer.bos_id)
    if tokenizer.eos_id == tokenizer.bos_id:
        tokens.append(tokenizer.eos_id)
    return tokens, starts


@pytest.fixture(scope="module")
def bpe(bpe_dir):
    return load_tokenizer(bpe_dir)


@pytest.mark.parametrize("eos, workers", [("same as bos", 1), ("same as bos", 2), ("its own token", 2)])
@pytest.mark.slow
def test_a_split_written_in_batches_equals_the_split_encoded_at_once(prepared, bpe, tmp_path, monkeypatch, eos,
                                                                     workers):
    tokenizer = bpe if eos == "same as bos" else dataclasses.replace(bpe, eos_id=1)
    texts = read_documents(str(prepared / "train.jsonl"))
    monkeypatch.setattr(shards, "ENCODE_BATCH", 7)  # many batches (two workers really run) and a shorter last one
    meta = write_shard(tmp_path, "train", iter(texts), tokenizer, workers=workers)
    tokens, starts = encoded_at_once(texts, tokenizer)
    assert np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist() == tokens
    saved_starts = np.load(tmp_path / "train.starts.npy")
    assert saved_starts.dtype == np.int64 and saved_starts.tolist() == starts
    assert meta == json.loads((tmp_path / "train.json").read_text())
    assert meta == {"split": "train", "dtype": "uint16", "num_tokens": len(tokens), "num_unique_tokens":
                    len(set(tokens)), "num_stories": len(texts), "num_bytes": sum(len(t.encode()) for t in texts),
                    "vocab_size": 512, "tokenizer": tokenizer.fingerprint()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary .bin was renamed


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_a_split_file_read_in_ranges_by_the_workers_equals_the_split_encoded_at_once(prepared, bpe, tmp_path,
                                                                                    monkeypatch, workers):
    monkeypatch.setattr(sources, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(shards, "RANGE_BYTES", 20_000)  # dozens of ranges, each of several batches
    monkeypatch.setattr(shards, "ENCODE_BATCH", 7)
    source = prepared / "train.jsonl"
    assert len(sources.split_file(str(source), "jsonl", range_bytes=shards.RANGE_BYTES)[0]) > 10
    texts = read_documents(str(source))
    meta = write_shard(tmp_path, "train", source, bpe, workers=workers)
    tokens, starts = encoded_at_once(texts, bpe)
    assert np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist() == tokens
    assert np.load(tmp_path / "train.starts.npy").tolist() == starts
    assert (meta["num_stories"], meta["num_bytes"]) == (len(texts), sum(len(t.encode()) for t in texts))


@pytest.mark.slow
def test_writing_a_split_holds_one_batch_in_memory_not_the_split(prepared, bpe, tmp_path):
    texts = read_documents(str(prepared / "train.jsonl"))

    def peak_bytes(n_stories: int) -> int:
        stories = itertools.islice(itertools.cycle(texts), n_stories)  # made as they are read, as a file streams
        tracemalloc.start()
        try:
            write_shard(tmp_path, "train", stories, bpe)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # 4x the stories (about 4 MB of text, 1M tokens) and the peak stays that of a few batches: only the starts grow
    small, large = peak_bytes(1000), peak_bytes(4000)
    assert large < 1.3 * small, (small, large)


def test_pretokenize_encodes_every_split_once_and_loads_them(prepared, bpe, tmp_path):
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        (tmp_path / name).write_bytes((prepared / name).read_bytes())
    directory = pretokenize(tmp_path, bpe, progress=False)
    assert directory == shard_directory(tmp_path, bpe)
    for split in SPLITS:
        shard = load_shard(directory, split, bpe)
        texts = read_documents(str(tmp_path / f"{split}.jsonl"))
        assert len(shard.starts) == len(texts)
        assert bpe.decode(shard.story(0)) == texts[0]
    written = (directory / "train.bin").stat().st_mtime_ns
    pretokenize(tmp_path, bpe, progress=False)
    assert (directory / "train.bin").stat().st_mtime_ns == written  # reused, not written again


def test_shards_of_another_tokenizer_and_a_missing_split_are_refused(prepared, bpe, shared, tmp_path):
    directory = pretokenize(prepared, bpe, progress=False)
    with pytest.raises(MismatchError, match="made with tokenizer"):
        load_shard(directory, "train", load_tokenizer(shared / "models/stories260K/tok512.bin"))
    with pytest.raises(InputError, match="missing"):
        load_shard(tmp_path, "train")
    with pytest.raises(InputError, match="not a prepared data directory"):
        pretokenize(tmp_path, bpe, progress=False)
