"""The prepare stage: stream a corpus through cleaning workers, drop duplicates, split by content hash, publish.

Output directory (config.out):
    train.jsonl, val.jsonl, test.jsonl   one {"text": ..., the record's other fields} per line, in corpus order
    report.json, report.md                counts in/out, per rule changed/removed with examples, split sizes,
                                          statistics, and stories per feature tag when records carry tags
    lengths.png, coverage.png             words per document, and vocabulary coverage

How it scales to corpora larger than memory: one worker process per core (talelab.data.batches) recases, cleans
and scores batches of records and keeps, per kept document, its JSON line in a scratch file and a few numbers: a
64-byte MinHash signature, an 8-byte exact-duplicate key, the split position and counts (about 100 bytes in all).
A large local file is cut into ranges between documents that the workers read themselves; any other source (hub,
gzip, JSON array, parquet, several files, or a filter that needs every record in order) streams through this
process in batches. Once the corpus is read, duplicates and splits are decided on the numbers alone and the scratch
files are copied into the splits, each run of lines bound for one split as one byte range (the line lengths are one
more number a document). The same input gives the same splits, whatever the number of workers or ranges.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from talelab.atomic import atomic_directory
from talelab.config import PrepareConfig
from talelab.data.batches import (BATCH_DOCUMENTS, Cleaned, Scratch, WorkerSettings, clean_range, configure_worker,
                                  process_batch, split_position)
from talelab.data.clean import EXAMPLES_PER_RULE, record_removal, repair_mojibake
from talelab.data.dedupe import (SLOTS, candidate_pairs, confirm_near_duplicates, first_occurrences,
                                 near_duplicate_reason, pair_members, word_hashes)
from talelab.data.parallel import batched, ordered_map, worker_count
from talelab.data.recase import learn_recasing
from talelab.data.sources import field_value, iter_records, split_file
from talelab.data.statistics import WordCounts, corpus_statistics, coverage_curve, statistics_markdown
from talelab.data.tags import CARRIES_TAGS, FEATURES, RULE_FEATURES, rule_features
from talelab.errors import InputError
from talelab.plots import coverage_chart, length_histogram
from talelab.tokenizer import load_tokenizer

SPLITS = ("train", "val", "test")
MIN_DOCUMENTS_FOR_EVERY_SPLIT = 10


def prepare(config: PrepareConfig, data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Turn config.source into train/val/test.jsonl plus a cleaning report in config.out; returns a summary.

    Large inputs are cleaned in worker processes started with forkserver (spawn elsewhere), which import the calling
    script again: a script that calls prepare needs the `if __name__ == "__main__":` idiom, as with multiprocessing."""
    started = time.perf_counter()
    out = Path(config.out)
    check_output_dir(out)  # before the slow part, so a wrong --out fails at once
    source = Source(config, data_root)
    recaser, recase_rule = learn_recasing(r["text"] for r in source.records()) if config.recase else (None, None)
    settings = WorkerSettings(config.min_chars, config.max_chars, config.max_non_ascii, config.min_quality,
                              recaser, config.stats_tokenizer, config.tag_field)
    try:
        with atomic_directory(out) as partial:
            cleaned = clean_in_workers(source, settings, partial, progress)
            rules = source.rules + ([recase_rule] if recase_rule else []) + cleaned.reports
            if config.recase:  # the workers' counts join the rule that holds the held-out accuracy
                rules = merge_recase(rules)
            report = publish(cleaned, rules, config, partial, source.documents_in, source.labelled)
            report["seconds"] = round(time.perf_counter() - started, 2)
            (partial / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
            (partial / "report.md").write_text(render_markdown(report), encoding="utf-8")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG):  # say which output failed and that nothing was replaced
            raise OSError(e.errno, f"no space left on the device while writing {out}; the previous output "
                                   "is intact") from None
        raise
    return summarize(report, out)


class Source:
    """The records prepare reads: the source(s) labelled by --tag-rules, with --max-documents, --require-field and
    --sample applied, and a drop rule for each filter in use so that the report's counts add up."""

    def __init__(self, config: PrepareConfig, data_root):
        self.config, self.data_root, self.documents_in, self.labelled = config, data_root, 0, 0
        self.missing = {"rule": "missing_field", "action": "drop", "removed": 0, "examples": []}
        self.unsampled = {"rule": "sample", "action": "drop", "removed": 0, "examples": []}
        self.rules = [self.missing] * bool(config.require_field) + [self.unsampled] * bool(config.sample)
        self.chosen = None

    @property
    def filtered(self) -> bool:
        """True when a filter needs every record in order, or --tag-rules labels them before the filters: then they
        stream through this process."""
        config = self.config
        return bool(config.max_documents or config.require_field or config.sample or config.tag_rules)

    def _read(self) -> Iterator[dict]:
        config = self.config
        records = iter_records(config.source, format=config.format, text_field=config.text_field,
                               hub_split=config.hub_split, hub_config=config.hub_config,
                               data_files=config.data_files, data_root=self.data_root)
        return itertools.islice(records, config.max_documents) if config.max_documents > 0 else records

    def records(self) -> Iterator[dict]:
        """One pass over the filtered records (counts reset, so each pass reports the same)."""
        if self.config.sample and self.chosen is None:
            total = sum(1 for _ in self._filtered())  # the first pass: how many there are to sample from
            self.chosen = np.zeros(total, dtype=bool)
            rng = np.random.default_rng(self.config.seed)
            self.chosen[rng.choice(total, size=min(self.config.sample, total), replace=False)] = True
        for rule in self.rules:
            rule.update(removed=0, examples=[])
        for i, record in enumerate(self._filtered()):
            if self.chosen is None or self.chosen[i]:
                yield record
            else:
                self.unsampled["removed"] += 1

    def _filtered(self) -> Iterator[dict]:
        self.documents_in = self.labelled = 0
        config, field = self.config, self.config.require_field
        for record in self._read():
            self.documents_in += 1
            if config.tag_rules:
                self.labelled += label_by_rules(record, config.tag_field,
                                                f"{config.source}: record {self.documents_in}")
            if field and not has_field(record, field):
                record_removal(self.missing, record["text"], f"'{field}' missing or empty")
                continue
            yield record


def has_field(record: dict, dotted: str) -> bool:
    """True when the (dotted, nested) field is present and not empty."""
    return field_value(record, dotted) not in (None, "", [], {})


def label_by_rules(record: dict, dotted: str, where: str) -> bool:
    """Give a record without the (dotted) tag field the rule features of its story there; False when it has one (a
    published label, such as TinyStories' all_data carries, says more than two rules can)."""
    if field_value(record, dotted) is not None:
        return False
    *parents, last = dotted.split(".")
    holder = record
    for key in parents:
        holder = holder.setdefault(key, {})
        if not isinstance(holder, dict):
            raise InputError(f"{where}: '{key}' is not an object, so --tag-rules cannot write '{dotted}' there; "
                             "choose another --tag-field")
    # The rules look for quotation marks, which mojibake (`â€œ`) hides until cleaning repairs it: they see it
    # repaired, as the split will hold it.
    holder[last] = rule_features(repair_mojibake(record["text"]))
    record["tag_source"] = "rules"  # so that finetune does not count them as published labels
    return True


def clean_in_workers(source: Source, settings: WorkerSettings, partial: Path, progress: bool) -> Cleaned:
    """Every record through process_batch on `--workers` processes (0: one per core), results in corpus order.

    A large local file is cut into ranges between documents that the workers read themselves (split_file): this
    process then only collects numbers. Any other source streams through this process in batches."""
    config = source.config
    workers = worker_count(config.workers)
    split = None if source.filtered else split_file(config.source, config.format, source.data_root, 4 * workers)
    cleaned = Cleaned(settings)
    # disable=None: a bar on a terminal only, so logs and captured stderr keep one line per message.
    with tqdm(desc="prepare", unit="doc", disable=None if progress else True) as bar:
        if split:
            ranges, format = split
            tasks = [(span, format, config.text_field, partial / f".documents-{i}.jsonl")
                     for i, span in enumerate(ranges)]
            for part in ordered_map(clean_range, tasks, workers, configure_worker, (settings,)):
                cleaned.absorb(part)
                bar.update(part.documents_read)
            source.documents_in = cleaned.documents_read
            if not cleaned.documents_read:
                raise InputError(f"{ranges[0].path}: no documents (empty, or only separators and whitespace)")
            return cleaned
        scratch, records = partial / ".documents.jsonl", source.records()
        with open(scratch, "w", encoding="utf-8") as out:
            for result in ordered_map(process_batch, batched(records, BATCH_DOCUMENTS), workers, configure_worker,
                                      (settings,)):
                cleaned.add(result, out)
                bar.update(result.documents_read)
        cleaned.scratch_files.append(scratch)
    return cleaned


def merge_recase(rules: list[dict]) -> list[dict]:
    """The learned recase rule (accuracy, skipped) with the workers' counts and examples folded into it."""
    learned = next(r for r in rules if r["rule"] == "recase")
    counted = [r for r in rules if r["rule"] == "recase" and r is not learned]
    for r in counted:
        learned["changed"] += r["changed"]
        learned["examples"] = (learned["examples"] + r["examples"])[:EXAMPLES_PER_RULE]
    return [r for r in rules if not any(r is c for c in counted)]


def publish(cleaned: Cleaned, rules: list[dict], config: PrepareConfig, partial: Path, documents_in: int,
            labelled: int = 0) -> dict:
    """Decide duplicates and splits on the numbers, copy the scratch files into the splits, write the charts;
    `labelled`: the records --tag-rules labelled."""
    if not cleaned.documents:
        counts = ", ".join(f"{r['rule']} removed {r['removed']}" for r in rules if r.get("removed"))
        raise InputError(f"{config.source}: no documents left after cleaning ({counts}); "
                         "loosen --min-chars/--max-chars/--max-non-ascii/--min-quality or check --format")
    exact = {"rule": "exact_duplicate", "action": "drop", "removed": 0, "examples": []}
    near = {"rule": "near_duplicate", "action": "drop", "removed": 0, "examples": [],
            "index_bytes_per_document": SLOTS}
    keep = first_occurrences(cleaned.numbers("exact_keys"))
    pairs = candidate_pairs(cleaned.numbers("signatures"), np.flatnonzero(keep), config.near_duplicate_threshold)
    scratch = cleaned.scratch()
    texts = {i: scratch.text(i) for i in sorted(pair_members(pairs))}
    matches = confirm_near_duplicates(pairs, texts, config.near_duplicate_threshold)
    keep[list(matches)] = False
    split = np.full(len(keep), -1, dtype=np.int8)
    split[keep] = assign_splits(cleaned.numbers("positions")[keep], config.val_fraction, config.test_fraction)
    if not (split == 0).any():
        raise InputError(f"{config.source}: all {int(keep.sum())} documents fell into val/test, none is left for "
                         "training; use a larger corpus or lower --val-fraction/--test-fraction")
    dropped = Dropped(config.stats_tokenizer, cleaned.words)
    write_splits(scratch, partial, split, matches, exact, near, dropped)
    for path in cleaned.scratch_files:
        path.unlink()
    words = cleaned.words.frequencies()
    word_counts = cleaned.numbers("word_counts")[keep]
    token_ids = None if cleaned.token_ids is None else cleaned.token_ids - dropped.token_ids
    statistics = corpus_statistics(word_counts, words, cleaned.numbers("token_counts")[keep], token_ids,
                                   config.stats_tokenizer)
    length_histogram(word_counts, partial / "lengths.png")
    coverage_chart(coverage_curve(words), partial / "coverage.png", dropped.word_level_vocabulary)
    chars = cleaned.numbers("char_counts")
    tags = tag_counts(cleaned.numbers("feature_bits"), split)
    return {
        "source": config.source,
        "documents_in": documents_in,
        "documents_out": int(keep.sum()),
        "splits": {name: {"documents": int((split == i).sum()), "characters": int(chars[split == i].sum())}
                   for i, name in enumerate(SPLITS)},
        "rules": rules + [exact, near],
        "statistics": statistics,
        **({"tags": {"field": config.tag_field, "labelled_by_rules": labelled if config.tag_rules else None, **tags}}
           if tags else {}),
        "config": dataclasses.asdict(config),
    }


def tag_counts(bits: np.ndarray, split: np.ndarray) -> dict | None:
    """Kept stories per feature (all six, 0 where none) and those with none of them, per split and in all; None when
    no kept record carries the tag field. `bits`: tags.feature_bits per document, `split`: its split or -1."""
    kept = split >= 0
    if not (bits[kept] & CARRIES_TAGS).any():
        return None
    places = {name: split == i for i, name in enumerate(SPLITS)} | {"all": kept}
    shown = {feature: (bits & (1 << k)) != 0 for k, feature in enumerate(FEATURES)}
    untagged = (bits & (CARRIES_TAGS - 1)) == 0
    return {"stories": {place: {feature: int((has & where).sum()) for feature, has in shown.items()}
                        for place, where in places.items()},
            "without_feature": {place: int((untagged & where).sum()) for place, where in places.items()}}


def assign_splits(positions: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per document, from its content-hash position in [0, 1).

    A document's split depends on its own text only, so reordering, adding or removing other documents never moves
    it. One exception keeps small corpora usable: with at least MIN_DOCUMENTS_FOR_EVERY_SPLIT documents, an empty
    val (or test) split with a non-zero fraction takes the training document with the lowest position."""
    chosen = np.where(positions < val_fraction, 1, np.where(positions < val_fraction + test_fraction, 2, 0))
    for index, fraction in ((1, val_fraction), (2, test_fraction)):
        train = np.flatnonzero(chosen == 0)
        if fraction > 0 and len(positions) >= MIN_DOCUMENTS_FOR_EVERY_SPLIT and not (chosen == index).any() \
                and len(train):
            chosen[train[np.argmin(positions[train])]] = index
    return chosen.astype(np.int8)


class Dropped:
    """Takes the documents dropped as duplicates off the word counts (the workers counted every cleaned document),
    and counts their token ids to take them off too, with a statistics tokenizer."""

    def __init__(self, tokenizer_path: str, words: WordCounts):
        self.words, self.tokenizer, self.token_ids = words, None, None
        if tokenizer_path:
            self.tokenizer = load_tokenizer(tokenizer_path)
            self.token_ids = np.zeros(self.tokenizer.vocab_size, np.int64)

    def add(self, text: str) -> None:
        hashes = word_hashes([text])[0]
        self.words.add(hashes, np.full(len(hashes), -1, np.int64))
        if self.tokenizer is not None:
            self.token_ids += np.bincount(self.tokenizer.encode(text), minlength=len(self.token_ids))

    @property
    def word_level_vocabulary(self) -> int | None:
        """The statistics tokenizer's vocabulary size when it is word-level (marked on the coverage chart)."""
        return self.tokenizer.vocab_size if self.tokenizer is not None and self.tokenizer.kind == "words" else None


def write_splits(scratch: Scratch, partial: Path, split: np.ndarray, matches: dict, exact: dict, near: dict,
                 dropped: Dropped) -> None:
    """Copy each kept scratch line into its split file; count the duplicates, with examples, into `dropped`."""
    outputs = [open(partial / f"{name}.jsonl", "wb") for name in SPLITS]
    try:
        scratch.copy(split, outputs)
    finally:
        for f in outputs:
            f.close()
    examples = sorted(matches)[:EXAMPLES_PER_RULE]
    for i in np.flatnonzero(split < 0).tolist():
        text = scratch.text(i)
        dropped.add(text)
        if i not in matches:
            record_removal(exact, text, "same text as an earlier document")
        elif i in examples:
            earlier, estimate = matches[i]
            record_removal(near, text, near_duplicate_reason(estimate, scratch.text(earlier)))
        else:
            near["removed"] += 1


def summarize(report: dict, out: Path) -> dict:
    """The report without examples or config: what a command line prints."""
    return {
        "source": report["source"],
        "out": str(out),
        "documents_in": report["documents_in"],
        "documents_out": report["documents_out"],
        "changed": {r["rule"]: r["changed"] for r in report["rules"] if r["action"] == "edit"},
        "removed": {r["rule"]: r["removed"] for r in report["rules"] if r["action"] == "drop"},
        "splits": report["splits"],
        "report": str(out / "report.md"),
        "seconds": report["seconds"],
    }


def check_output_dir(out: Path) -> None:
    """InputError unless `out` is absent, empty, or an earlier prepare output that may be replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        # Replacing means deleting: never do that to a directory this stage did not write.
        raise InputError(f"{out}: exists and is not a prepared corpus (no report.json); choose another --out")


def split_documents(docs: list[str], val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Train/val/test of a list of distinct documents, each in corpus order, as prepare splits them."""
    chosen = assign_splits(np.array([split_position(d) for d in docs]), val_fraction, test_fraction)
    return {name: [d for d, c in zip(docs, chosen) if c == i] for i, name in enumerate(SPLITS)}


def render_markdown(report: dict) -> str:
    """The report as a page a person reads: totals, a table of rules, split sizes, statistics, examples."""
    splits = report["splits"]
    sizes = ", ".join(f"{name} {s['documents']:,}" for name, s in splits.items())
    lines = [
        f"# Prepared corpus: {report['source']}",
        "",
        f"{report['documents_in']:,} documents read, {report['documents_out']:,} kept "
        f"({sizes}) in {report['seconds']} s.",
        "",
        "| rule | action | documents |",
        "|---|---|---:|",
    ]
    for rule in report["rules"]:
        verb = "changed" if rule["action"] == "edit" else "removed"
        lines.append(f"| {rule['rule']} | {verb} | {rule[verb]:,} |")
    accuracy = next((r["held_out_word_accuracy"] for r in report["rules"] if r.get("held_out_word_accuracy")), None)
    if accuracy is not None:
        lines += ["", f"Recasing restores {accuracy:.2%} of words exactly as written when the casing learned on half "
                      "of the cased documents is applied to the other half, lowercased."]
    lines += ["", "| split | documents | characters |", "|---|---:|---:|"]
    lines += [f"| {name} | {s['documents']:,} | {s['characters']:,} |" for name, s in splits.items()]
    if "tags" in report:
        lines += tags_markdown(report["tags"])
    lines += statistics_markdown(report["statistics"])
    lines += ["", "## Examples"]
    for rule in report["rules"]:
        if not rule["examples"]:
            continue
        verb = "changed" if rule["action"] == "edit" else "removed"
        lines += ["", f"### {rule['rule']} ({verb} {rule[verb]:,})", ""]
        for example in rule["examples"]:
            if "why" in example:
                lines.append(f"- {example['why']}: {_code(example['text'])}")
            else:
                lines += [f"- before: {_code(example['before'])}", f"  after: {_code(example['after'])}"]
    return "\n".join(lines) + "\n"


def tags_markdown(tags: dict) -> list[str]:
    """The stories per feature tag as a table of features by split, under its own heading."""
    places = list(tags["without_feature"])
    lines = ["", "## Feature tags", "", f"Kept stories per feature, from the records' `{tags['field']}` (a story "
             "with several features counts under each)."]
    if tags["labelled_by_rules"] is not None:
        lines[-1] += (f" --tag-rules labelled {tags['labelled_by_rules']:,} records that had none by rules: "
                      f"{' and '.join(RULE_FEATURES)} only, the other features are never labelled by rules.")
    lines += ["", "| feature | " + " | ".join(places) + " |", "|---|" + "---:|" * len(places)]
    for feature in FEATURES:
        lines.append(f"| {feature} | " + " | ".join(f"{tags['stories'][p][feature]:,}" for p in places) + " |")
    lines.append("| (none of them) | " + " | ".join(f"{tags['without_feature'][p]:,}" for p in places) + " |")
    return lines


def _code(snippet: str) -> str:
    """A snippet as inline code on one line; newlines shown as ⏎, double backticks survive a stray backtick."""
    return "`` " + snippet.replace("\n", " ⏎ ") + " ``"
