"""Pre-tokenized splits: one flat memory-mapped array of token ids per split, story starts recorded beside it.

Layout of a split: `<split>.bin` (uint16, or uint32 when the vocabulary exceeds 65,535), `<split>.starts.npy`
(int64 offset of each story's first token) and `<split>.json` (counts, bytes, tokenizer fingerprint). Each story is
stored as [bos] + tokens (+ [eos] when eos differs from bos), and the whole stream ends with eos, so a model sees
where every story ends. Bytes are kept so that losses convert to bits per byte.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from talelab.data.parallel import batched, ordered_map, worker_count
from talelab.data.sources import FileRange, iter_range_records, iter_texts, split_file
from talelab.errors import InputError, MismatchError

SPLITS = ("train", "val", "test")
ENCODE_BATCH = 512
# A worker's share of a large split file: its ids (about a quarter of its bytes in uint16) travel back whole and a few
# shares wait in order, so shares are smaller than prepare's, whose results are numbers only.
RANGE_BYTES = 16 << 20


@dataclass
class Shard:
    tokens: np.ndarray  # memory-mapped, shape (num_tokens,)
    starts: np.ndarray  # int64 story start offsets
    num_bytes: int  # UTF-8 bytes of the stories' text

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / max(1, len(self.tokens))

    def story(self, i: int) -> np.ndarray:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.tokens)
        return self.tokens[self.starts[i]:end]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.uint32


def write_shard(directory: Path, split: str, texts: Path | Iterable[str], tokenizer, progress: bool = False,
                workers: int = 0) -> dict:
    """Encode `texts` (or the texts of a JSONL file) on `workers` processes (0: one per core) and write the split's
    three files as the encoded parts come back, in order; returns its metadata.

    Memory holds a few parts of texts and ids, a count per vocabulary id and each worker's corpus encoder's bounded
    memory of pieces; the story starts go to a scratch file as they come. A split of any size streams through."""
    dtype = token_dtype(tokenizer.vocab_size)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    offset, num_stories, num_bytes = 0, 0, 0
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)  # occurrences of each id: the unique tokens at the end
    tmp, starts_tmp = directory / f".{split}.bin.tmp", directory / f".{split}.starts.tmp"
    try:
        with open(tmp, "wb") as out, open(starts_tmp, "wb") as starts, \
                tqdm(desc=f"tokenize {split}", disable=not progress, unit=" stories", unit_scale=True) as bar:
            for lengths, ids, batch_bytes in encode_in_workers(texts, tokenizer, workers):
                ids.tofile(out)
                counts += np.bincount(ids, minlength=len(counts))
                (offset + np.cumsum(lengths) - lengths).astype(np.int64).tofile(starts)
                offset += len(ids)
                num_stories += len(lengths)
                num_bytes += batch_bytes
                bar.update(len(lengths))
            if eos == bos:  # the last story's end, which the next story's bos marks for every other one
                np.asarray([eos], dtype=dtype).tofile(out)
                counts[eos] += 1
                offset += 1
        save_raw_as_npy(starts_tmp, directory / f"{split}.starts.npy", np.int64, num_stories)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed split leaves no partial file to fill the disk
        raise
    finally:
        starts_tmp.unlink(missing_ok=True)
    meta = {"split": split, "dtype": np.dtype(dtype).name, "num_tokens": offset, "num_unique_tokens":
            int(np.count_nonzero(counts)), "num_stories": num_stories, "num_bytes": num_bytes,
            "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.fingerprint()}
    (directory / f"{split}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / f"{split}.bin")  # the .bin appears last: its presence marks a complete split
    return meta


def save_raw_as_npy(raw: Path, path: Path, dtype, count: int) -> None:
    """`count` items of `dtype` written end to end in `raw`, copied into the .npy file `path` (what np.save writes
    for them), without holding them in memory."""
    with open(raw, "rb") as source, open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": (count,)})
        shutil.copyfileobj(source, out, 8 << 20)


def encode_in_workers(texts: Path | Iterable[str], tokenizer, workers: int) -> Iterator[tuple]:
    """encode_stories' results in order. A large JSONL file is cut into ranges that the workers read and encode
    themselves (split_file), so that this process neither parses nor sends the texts; any other input is batched
    here."""
    if isinstance(texts, Path):
        split = split_file(str(texts), "jsonl", parts=4 * worker_count(workers), range_bytes=RANGE_BYTES)
        if split:
            return ordered_map(encode_range, split[0], workers, start_encoder, (tokenizer,))
        texts = iter_texts(str(texts), format="jsonl")
    return ordered_map(encode_stories, batched(texts, ENCODE_BATCH), workers, start_encoder, (tokenizer,))


_encoder = None  # a worker's corpus encoder, set by start_encoder


def start_encoder(tokenizer) -> None:
    """A worker's setup: one corpus encoder, whose memory of pieces then serves every batch it encodes."""
    global _encoder
    _encoder = tokenizer.corpus_encoder()


def encode_stories(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens per story, the stories' ids end to end as [bos] + ids (+ [eos]), UTF-8 bytes of the texts)."""
    tokenizer = _encoder.tokenizer
    lengths, ids = _encoder.encode_flat(texts, bos=True, eos=tokenizer.eos_id != tokenizer.bos_id)
    ids = ids.astype(token_dtype(tokenizer.vocab_size))
    return lengths, ids, sum(len(t.encode("utf-8")) for t in texts)


def encode_range(span: FileRange) -> tuple[np.ndarray, np.ndarray, int]:
    """encode_stories for the texts of one range of a JSONL file, batch by batch, joined."""
    parts = [encode_stories([record["text"] for record in batch])
             for batch in batched(iter_range_records(span, "jsonl"), ENCODE_BATCH)]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=token_dtype(_encoder.tokenizer.vocab_size)), 0
    lengths, ids, sizes = zip(*parts)
    return np.concatenate(lengths), np.concatenate(ids), sum(sizes)


def load_shard(directory: Path, split: str, tokenizer=None) -> Shard:
    """Memory-map a split; with a tokenizer, refuse shards made by a different one."""
    bin_path = directory / f"{split}.bin"
    if not bin_path.is_file():
        raise InputError(f"{bin_path}: missing (run `talelab pretokenize` first)")
    meta = json.loads((directory / f"{split}.json").read_text(encoding="utf-8"))
    if tokenizer is not None and meta["tokenizer"] != tokenizer.fingerprint():
        raise MismatchError(f"{bin_path}: made with tokenizer {meta['tokenizer']}, not with the given tokenizer "
                            f"{tokenizer.fingerprint()}")
    tokens = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r")
    return Shard(tokens=tokens, starts=np.load(directory / f"{split}.starts.npy"), num_bytes=meta["num_bytes"])


def shard_directory(prepared: Path, tokenizer) -> Path:
    """Shards live inside the prepared data directory, one folder per tokenizer."""
    return prepared / f"shards-{tokenizer.fingerprint()}"


def pretokenize(prepared: str | Path, tokenizer, progress: bool = True) -> Path:
    """Tokenize every split of a prepared directory once; later calls reuse the files."""
    prepared = Path(prepared)
    if not (prepared / "train.jsonl").is_file():
        raise InputError(f"{prepared}: not a prepared data directory (no train.jsonl; run `talelab prepare`)")
    directory = shard_directory(prepared, tokenizer)
    directory.mkdir(exist_ok=True)
    for split in SPLITS:
        source = prepared / f"{split}.jsonl"
        if source.is_file() and source.stat().st_size and not (directory / f"{split}.bin").is_file():
            write_shard(directory, split, source, tokenizer, progress)
    return directory
