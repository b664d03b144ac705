"""The prepare stage: read a corpus, clean it, drop duplicates, split it by content hash, write it atomically.

Output directory (config.out):
    train.jsonl, val.jsonl, test.jsonl   one {"text": ...} per line, in corpus order
    report.json, report.md                counts in/out, per rule changed/removed with examples, split sizes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from talelab.atomic import atomic_directory
from talelab.config import PrepareConfig
from talelab.data.clean import clean_documents, record_removal
from talelab.data.dedupe import dedupe_documents
from talelab.data.quality import quality_too_low
from talelab.data.recase import recase_documents
from talelab.data.sources import read_documents
from talelab.errors import ConfigError, InputError

SPLITS = ("train", "val", "test")
MIN_DOCUMENTS_FOR_EVERY_SPLIT = 10


def prepare(config: PrepareConfig, data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Turn config.source into train/val/test.jsonl plus a cleaning report in config.out; returns a summary."""
    started = time.perf_counter()
    check_config(config)
    out = Path(config.out)
    check_output_dir(out)  # before the slow part, so a wrong --out fails at once
    docs = read_documents(
        config.source,
        format=config.format,
        text_field=config.text_field,
        hub_split=config.hub_split,
        max_documents=config.max_documents,
        data_root=data_root,
    )
    recase_rules = []
    if config.recase:  # first, so that cleaning and deduplication see the restored text
        docs, recase_rule = recase_documents(docs)
        recase_rules.append(recase_rule)
    kept, clean_rules = clean_documents(
        docs,
        min_chars=config.min_chars,
        max_chars=config.max_chars,
        max_non_ascii=config.max_non_ascii,
        progress=progress,
    )
    rules = recase_rules + clean_rules
    if config.min_quality > 0:
        kept, quality_rule = drop_low_quality(kept, config.min_quality)
        rules.append(quality_rule)
    if not kept:
        counts = ", ".join(f"{r['rule']} removed {r['removed']}" for r in rules if r.get("removed"))
        raise InputError(f"{config.source}: no documents left after cleaning ({counts}); "
                         "loosen --min-chars/--max-chars/--max-non-ascii/--min-quality or check --format")
    kept, duplicate_rules = dedupe_documents(kept, config.near_duplicate_threshold)
    rules += duplicate_rules
    splits = split_documents(kept, config.val_fraction, config.test_fraction)
    if not splits["train"]:
        raise InputError(f"{config.source}: all {len(kept)} documents fell into val/test, none is left for training; "
                         "use a larger corpus or lower --val-fraction/--test-fraction")
    report = {
        "source": config.source,
        "documents_in": len(docs),
        "documents_out": len(kept),
        "splits": {name: {"documents": len(t), "characters": sum(map(len, t))} for name, t in splits.items()},
        "rules": rules,
        "config": dataclasses.asdict(config),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_output(out, splits, report)
    return summarize(report, out)


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


def check_config(config: PrepareConfig) -> None:
    """ConfigError for values that would make the stage meaningless."""
    if not (0 <= config.val_fraction < 1 and 0 <= config.test_fraction < 1
            and config.val_fraction + config.test_fraction < 1):
        raise ConfigError(f"val_fraction {config.val_fraction} + test_fraction {config.test_fraction}: each must be "
                          "in [0, 1) and together below 1, leaving documents for training")
    if not 0 <= config.near_duplicate_threshold <= 1:
        raise ConfigError(f"near_duplicate_threshold {config.near_duplicate_threshold}: must be in [0, 1] (0 disables)")
    if not 0 <= config.min_chars <= config.max_chars:
        raise ConfigError(f"min_chars {config.min_chars}, max_chars {config.max_chars}: need 0 <= min <= max")
    if not 0 <= config.max_non_ascii <= 1:
        raise ConfigError(f"max_non_ascii {config.max_non_ascii}: must be a share in [0, 1]")
    if not 0 <= config.min_quality <= 1:
        raise ConfigError(f"min_quality {config.min_quality}: must be a quality score in [0, 1] (0 disables)")
    if config.max_documents < 0:
        raise ConfigError(f"max_documents {config.max_documents}: must be >= 0 (0 reads all)")


def drop_low_quality(docs: list[str], min_quality: float) -> tuple[list[str], dict]:
    """The cleaned documents whose quality score reaches min_quality, and the rule's report entry."""
    report = {"rule": "low_quality", "action": "drop", "removed": 0, "examples": []}
    kept = []
    for text in docs:
        why = quality_too_low(text, min_quality)
        if why is None:
            kept.append(text)
        else:
            record_removal(report, text, why)
    return kept, report


def check_output_dir(out: Path) -> None:
    """InputError unless `out` is absent, empty, or an earlier prepare output that may be replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        # Replacing means deleting: never do that to a directory this stage did not write.
        raise InputError(f"{out}: exists and is not a prepared corpus (no report.json); choose another --out")


def split_fraction(text: str) -> float:
    """A document's position in [0, 1), from the SHA-1 of its text: the same text always lands in the same split."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(docs: list[str], val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Train/val/test by content hash, each in corpus order.

    A document's split depends on its own text only, so reordering, adding or removing other documents never moves
    it. One exception keeps small corpora usable: with at least MIN_DOCUMENTS_FOR_EVERY_SPLIT documents, an empty
    val (or test) split with a non-zero fraction takes the training document with the lowest hash.
    """
    position = {text: split_fraction(text) for text in docs}
    chosen = {}
    for text, u in position.items():
        chosen[text] = "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        train = [t for t in position if chosen[t] == "train"]
        if fraction > 0 and len(docs) >= MIN_DOCUMENTS_FOR_EVERY_SPLIT and name not in chosen.values() and train:
            chosen[min(train, key=position.get)] = name
    return {name: [t for t in docs if chosen[t] == name] for name in SPLITS}


def write_jsonl(path: str | os.PathLike, texts: list[str]) -> None:
    """One {"text": ...} object per line, UTF-8 (read back with read_documents(path, format="jsonl"))."""
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def write_output(out: Path, splits: dict[str, list[str]], report: dict) -> None:
    """Write the splits and the reports into a hidden sibling directory, then publish it as `out`.

    A crash leaves the previous output or none, never a half-written directory that looks complete; the previous
    output is deleted only after the new one is in place (talelab.atomic does the renaming and syncing).
    """
    with atomic_directory(out) as partial:
        for name, texts in splits.items():
            write_jsonl(partial / f"{name}.jsonl", texts)
        (partial / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (partial / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def render_markdown(report: dict) -> str:
    """The report as a page a person reads: totals, a table of rules, examples, split sizes."""
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


def _code(snippet: str) -> str:
    """A snippet as inline code on one line; newlines shown as ⏎, double backticks survive a stray backtick."""
    return "`` " + snippet.replace("\n", " ⏎ ") + " ``"
