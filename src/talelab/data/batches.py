"""What prepare does to each batch of documents, in worker processes: recase, clean, score, and reduce each kept
document to the numbers that deduplication, splitting and the corpus statistics need.

A worker gets its settings once (`configure_worker`) and then batches of records (`process_batch`) or a range of a
file to read itself (`clean_range`); a batch gives the kept documents as the JSON lines the splits will hold, per-rule
counts with the batch's first examples, and per-document numbers, which `Cleaned` collects in corpus order. Nothing
here depends on other batches, so batches run on every core and the result does not depend on how many.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talelab.data.clean import (EDITS, EXAMPLES_PER_RULE, clean_document, drop_rules, record_change, record_removal,
                                rule_reports)
from talelab.data.dedupe import exact_key, signatures, word_hashes
from talelab.data.parallel import batched
from talelab.data.quality import quality_too_low
from talelab.data.recase import Recaser, is_lowercased
from talelab.data.sources import field_value, iter_range_records
from talelab.data.statistics import WordCounts
from talelab.data.tags import feature_bits
from talelab.tokenizer import load_tokenizer

BATCH_DOCUMENTS = 512  # per batch: large enough that per-batch overhead (numpy, inter-process) is small


@dataclass
class WorkerSettings:
    """Everything a worker needs, sent to it once."""

    min_chars: int
    max_chars: int
    max_non_ascii: float
    min_quality: float = 0.0
    recaser: Recaser | None = None  # learned from the cased documents when --recase
    tokenizer: str = ""  # a tokenizer path whose token counts go into the corpus statistics
    tag_field: str = ""  # the (dotted) field of a record's feature tags, counted per split in the report

    def rule_reports(self) -> list[dict]:
        """Empty report entries for the rules workers apply, in order: recase, edits, drops, quality."""
        reports = rule_reports(drop_rules(self.min_chars, self.max_chars, self.max_non_ascii))
        if self.recaser is not None:
            reports.insert(0, {"rule": "recase", "action": "edit", "changed": 0, "examples": []})
        if self.min_quality > 0:
            reports.append({"rule": "low_quality", "action": "drop", "removed": 0, "examples": []})
        return reports


@dataclass
class BatchResult:
    lines: list[str]  # kept documents as JSON lines ("text" first, then the record's other fields)
    line_bytes: np.ndarray  # int64 UTF-8 bytes of each line, so the scratch files can be copied by byte ranges
    exact_keys: np.ndarray  # uint64 per kept document
    signatures: np.ndarray  # (kept, 64) uint8 MinHash signatures
    positions: np.ndarray  # float64 split position in [0, 1) per kept document
    word_counts: np.ndarray  # int32 words per kept document
    char_counts: np.ndarray  # int64 characters per kept document
    token_counts: np.ndarray  # int32 tokens per kept document (zeros without a statistics tokenizer)
    feature_bits: np.ndarray  # uint8 per kept document: its tag field as tags.feature_bits encodes it
    token_ids: np.ndarray  # occurrences of each token id in the batch (empty without a statistics tokenizer)
    word_hashes: np.ndarray  # the distinct words of the batch's kept documents, by hash
    word_hash_counts: np.ndarray  # and their occurrences
    reports: list[dict] = field(default_factory=list)  # WorkerSettings.rule_reports(), counted over this batch
    documents_read: int = 0


_settings: WorkerSettings | None = None
_encoder = None  # the statistics tokenizer's corpus encoder, when there is one


def configure_worker(settings: WorkerSettings) -> None:
    """Keep the settings (and load the statistics tokenizer) for process_batch, in a worker or in-process."""
    global _settings, _encoder
    _settings = settings
    if settings.tokenizer:
        _encoder = load_tokenizer(settings.tokenizer).corpus_encoder()
    else:
        _encoder = None  # the statistics tokenizer's corpus encoder, when there is one


def split_position(text: str) -> float:
    """A document's position in [0, 1), from the SHA-1 of its text: the same text always lands in the same split."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def process_batch(records: list[dict]) -> BatchResult:
    """Recase, clean and score a batch of records; the numbers of the documents that survive."""
    settings = _settings
    reports = settings.rule_reports()
    by_rule = {r["rule"]: r for r in reports}
    edits = [by_rule[name] for name, _ in EDITS]
    drops = drop_rules(settings.min_chars, settings.max_chars, settings.max_non_ascii)
    drop_reports = [by_rule[name] for name, _ in drops]
    kept = []
    for record in records:
        text = record["text"]
        if settings.recaser is not None and is_lowercased(text):
            fixed = settings.recaser.recase(text)
            record_change(by_rule["recase"], text, fixed)
            text = fixed
        text, changes, dropped = clean_document(text, drops)
        for i, before, after in changes:
            record_change(edits[i], before, after)
        if dropped is not None:
            record_removal(drop_reports[dropped[0]], text, dropped[1])
            continue
        if settings.min_quality > 0:
            why = quality_too_low(text, settings.min_quality)
            if why is not None:
                record_removal(by_rule["low_quality"], text, why)
                continue
        kept.append((text, record))
    result = summarize(kept, reports, settings.tag_field)
    result.documents_read = len(records)
    return result



def summarize(kept: list[tuple[str, dict]], reports: list[dict], tag_field: str = "") -> BatchResult:
    """The kept documents' JSON lines and numbers."""
    texts = [text for text, _ in kept]
    ids, lengths = word_hashes(texts)
    distinct, occurrences = np.unique(ids, return_counts=True)
    token_counts, token_ids = np.zeros(len(texts), np.int32), np.zeros(0, np.int64)
    if _encoder is not None:  # the ids pretokenize will write, each distinct piece encoded once
        lengths_in_tokens, flat = _encoder.encode_flat(texts)
        token_counts = lengths_in_tokens.astype(np.int32)
        token_ids = np.bincount(flat, minlength=_encoder.tokenizer.vocab_size)
    lines = [json_line(text, record) for text, record in kept]
    return BatchResult(
        lines=lines,
        line_bytes=np.array([len(line) if line.isascii() else len(line.encode("utf-8")) for line in lines], np.int64),
        exact_keys=np.array([exact_key(t, cleaned=True) for t in texts], np.uint64),
        signatures=signatures(ids, lengths),
        positions=np.array([split_position(t) for t in texts], np.float64),
        word_counts=lengths.astype(np.int32),
        char_counts=np.array([len(t) for t in texts], np.int64),
        token_counts=token_counts,
        feature_bits=np.array([feature_bits(field_value(r, tag_field), tag_field) if tag_field else 0
                               for _, r in kept], np.uint8),
        token_ids=token_ids,
        word_hashes=distinct,
        word_hash_counts=occurrences,
        reports=reports,
    )


def json_line(text: str, record: dict) -> str:
    """A prepared document as one JSONL line: its cleaned text first, then the record's other fields."""
    if len(record) == 1:  # text alone, the common case: the same line without building a dict
        return '{"text": ' + json.dumps(text, ensure_ascii=False) + "}\n"
    return json.dumps({"text": text, **{k: v for k, v in record.items() if k != "text"}}, ensure_ascii=False) + "\n"


class Cleaned:
    """Cleaned documents, batch after batch: the scratch files holding their lines (in corpus order), their numbers,
    the rules' counts and the word counts. A worker fills one for its range; the main process absorbs them in order."""

    NUMBERS = ("line_bytes", "exact_keys", "signatures", "positions", "word_counts", "char_counts", "token_counts",
               "feature_bits")

    def __init__(self, settings: WorkerSettings):
        self.reports = settings.rule_reports()
        self.parts = {name: [] for name in self.NUMBERS}
        self.words, self.token_ids = WordCounts(), None
        self.documents = self.documents_read = 0
        self.scratch_files: list[Path] = []

    def add(self, result: BatchResult, scratch) -> None:
        """A batch's result; its kept lines go to the open `scratch` file."""
        scratch.write("".join(result.lines))
        self.documents += len(result.lines)
        self.documents_read += result.documents_read
        for name in self.NUMBERS:
            self.parts[name].append(getattr(result, name))
        self.words.add(result.word_hashes, result.word_hash_counts)
        self._count(result.token_ids, result.reports)

    def absorb(self, other: Cleaned) -> None:
        """Everything `other` (the next range) collected, after what this one holds."""
        self.documents += other.documents
        self.documents_read += other.documents_read
        for name in self.NUMBERS:
            self.parts[name] += other.parts[name]
        self.words.absorb(other.words)
        self.scratch_files += other.scratch_files
        self._count(other.token_ids if other.token_ids is not None else (), other.reports)

    def _count(self, token_ids, reports: list[dict]) -> None:
        if len(token_ids):
            self.token_ids = token_ids if self.token_ids is None else self.token_ids + token_ids
        for total, more in zip(self.reports, reports):
            for count in ("changed", "removed"):
                if count in total:
                    total[count] += more[count]
            total["examples"] = (total["examples"] + more["examples"])[:EXAMPLES_PER_RULE]

    def compact(self) -> Cleaned:
        """Each number's batches joined into one array (and the word counts merged): a range's result then crosses
        to the main process as a few large arrays, not thousands of small ones that fragment its heap."""
        for name in self.NUMBERS:
            if len(self.parts[name]) > 1:
                self.parts[name] = [np.concatenate(self.parts[name])]
        self.words.compact()
        return self

    def numbers(self, name: str) -> np.ndarray:
        """One number per kept document, in corpus order. Taken once: the parts are released as they are joined."""
        return np.concatenate(self.parts.pop(name))

    def scratch(self) -> Scratch:
        return Scratch(self.scratch_files, self.numbers("line_bytes"))


class Scratch:
    """The kept documents' JSON lines, in corpus order, across the scratch files the cleaning wrote: read one by one
    where a line is wanted (a duplicate, an example), or copied by byte ranges where whole runs go to one split."""

    def __init__(self, files: list[Path], line_bytes: np.ndarray):
        self.files = files
        self.ends = np.cumsum(line_bytes)  # each line's end, counted over the files end to end
        self.file_ends = np.cumsum([path.stat().st_size for path in files])
        if self.file_ends[-1:].tolist() != self.ends[-1:].tolist():
            raise RuntimeError(f"scratch files hold {self.file_ends[-1]} bytes, their lines {self.ends[-1]}")

    def _place(self, start: int) -> tuple[Path, int]:
        """The file holding byte `start` of the files end to end, and the offset in it."""
        f = int(np.searchsorted(self.file_ends, start, side="right"))
        return self.files[f], start - (int(self.file_ends[f - 1]) if f else 0)

    def text(self, i: int) -> str:
        """The text of line `i`."""
        start = int(self.ends[i - 1]) if i else 0
        path, offset = self._place(start)
        with open(path, "rb") as f:
            f.seek(offset)
            return json.loads(f.read(int(self.ends[i]) - start))["text"]

    def copy(self, destination: np.ndarray, outputs: list) -> None:
        """Line i appended to outputs[destination[i]] (binary files) where destination[i] >= 0, in order, run by run:
        a run of lines bound for one output is one byte range of a file."""
        for f, path in enumerate(self.files):
            first_byte = int(self.file_ends[f - 1]) if f else 0
            lines = np.arange(*np.searchsorted(self.ends, [first_byte, self.file_ends[f]], side="right"))
            if not len(lines):
                continue
            where = destination[lines]
            bounds = np.concatenate(([0], np.flatnonzero(np.diff(where)) + 1, [len(lines)]))
            starts = np.concatenate(([first_byte], self.ends[lines]))  # line k of the file starts at starts[k]
            with open(path, "rb") as source:
                for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                    if where[a] >= 0:
                        source.seek(int(starts[a]) - first_byte)
                        _copy_bytes(source, outputs[where[a]], int(starts[b] - starts[a]))


def _copy_bytes(source, out, count: int) -> None:
    while count > 0:
        chunk = source.read(min(count, 8 << 20))
        out.write(chunk)
        count -= len(chunk)


def clean_range(task: tuple) -> Cleaned:
    """A worker's share of a split file: read its range, clean it batch by batch, write the kept lines to its own
    scratch file; (range, format, text field, scratch path) -> what it collected."""
    span, format, text_field, scratch = task
    part = Cleaned(_settings)
    records = iter_range_records(span, format, text_field)
    with open(scratch, "w", encoding="utf-8") as out:
        for batch in batched(records, BATCH_DOCUMENTS):
            part.add(process_batch(batch), out)
    part.scratch_files.append(scratch)
    return part.compact()
