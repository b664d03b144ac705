"""Read a corpus into a list of documents: a text or JSONL file (by path or under the data root) or a hub dataset."""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
from pathlib import Path

from talelab import paths
from talelab.errors import InputError

FORMATS = ("auto", "eot", "blank-line", "lines", "jsonl")
# A separator line may carry stray spaces; the token inside a sentence is not a separator.
_EOT_LINE = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# `lines`: a single line break ends a document and a blank line is a paragraph break inside one (the layout of
# TinyStories' lowercased train file). Paragraphs become single line breaks, as in the cased TinyStories files.
_LONE_LINE_BREAK = re.compile(r"(?<![\n \t])[ \t]*\n[ \t]*(?![\n \t])")
_PARAGRAPH_BREAK = re.compile(r"[ \t]*\n(?:[ \t]*\n)+[ \t]*")
# owner/name with no file suffix, as Hugging Face spells dataset ids (roneneldan/TinyStories).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_documents(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    text_field: str = "text",
    hub_split: str = "train",
    max_documents: int = 0,
    data_root: str | os.PathLike | None = None,
) -> list[str]:
    """The stripped, non-empty documents of `source` (a file path, a path under the data root, or a hub id).

    Several sources separated by commas are read in turn; `format` is then one format for all or one per source."""
    source = os.fspath(source)
    sources = [s.strip() for s in source.split(",") if s.strip()]
    formats = [f.strip() for f in format.split(",")]
    if len(formats) not in (1, len(sources)):
        raise InputError(f"--format lists {len(formats)} formats for {len(sources)} sources: give one for all or "
                         "one per source")
    for name in formats:
        if name not in FORMATS:
            raise InputError(f"{source}: unknown format '{name}' (choose from {', '.join(FORMATS)})")
    if len(sources) > 1:
        docs = []
        for one, one_format in zip(sources, formats * len(sources) if len(formats) == 1 else formats):
            docs += read_documents(one, format=one_format, text_field=text_field, hub_split=hub_split,
                                   max_documents=max_documents, data_root=data_root)
        return docs[:max_documents] if max_documents > 0 else docs
    path = resolve_source(source, data_root)
    if path is None:
        docs = _read_hub(source, text_field, hub_split, max_documents)
        where = source
    else:
        text = read_text(path)
        if format == "auto":
            format = detect_format(path, text)
        if format == "jsonl":
            docs = _split_jsonl(path, text, text_field)
        elif format == "eot":
            docs = _EOT_LINE.split(text)
        elif format == "lines":
            docs = [_PARAGRAPH_BREAK.sub("\n", d) for d in _LONE_LINE_BREAK.split(text)]
        else:
            docs = _BLANK_LINES.split(text)
        where = str(path)
    docs = [d.strip() for d in docs]
    docs = [d for d in docs if d]
    if not docs:
        raise InputError(f"{where}: no documents (empty, or only separators and whitespace)")
    return docs[:max_documents] if max_documents > 0 else docs


def resolve_source(source: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """The file `source` names, or None when it is a hub dataset id; InputError when it is neither."""
    try:
        path = paths.resolve_input(source, data_root)
    except InputError:
        # Only a name that is no file becomes a hub id: a local file of the same name always wins.
        if _HUB_ID.match(source) and not Path(source).suffix:
            return None
        raise
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a text or JSONL file")
    return path


def read_text(path: Path) -> str:
    """A file's text as UTF-8 with '\\n' line ends; InputError for binary or wrongly encoded files."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    # A BOM is legal UTF-8 but would break the first JSON line; count offsets in the file as it is.
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    nul = raw.find(b"\0")
    if nul >= 0:
        raise InputError(
            f"{path}: looks binary (NUL byte at offset {nul}, line {_line_at(raw, nul)}); "
            "expected UTF-8 text"
        )
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        raise InputError(
            f"{path}: not valid UTF-8 (byte 0x{raw[at]:02x} at offset {at}, line {_line_at(raw, at)}); "
            "re-encode the file as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_at(raw: bytes, offset: int) -> int:
    """The 1-based line number of byte `offset`."""
    return raw.count(b"\n", 0, offset) + 1


def detect_format(path: Path, text: str) -> str:
    """jsonl for .jsonl/.json files, eot when a line is exactly <|endoftext|>, else blank-line."""
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    return "eot" if _EOT_LINE.search(text) else "blank-line"


def json_lines(path, text: str):
    """(line number, value) of every non-blank line of JSONL text; a line that is not JSON stops with file:line."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line, naming file and line for the first that is not an object."""
    rows = []
    for number, row in json_lines(path, read_text(path)):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, found a JSON {type(row).__name__}")
        rows.append((number, row))
    return rows


def _split_jsonl(path: Path, text: str, text_field: str) -> list[str]:
    """The `text_field` of every JSON object line, naming file and line for the first bad one."""
    docs = []
    for number, row in json_lines(path, text):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            found = f"keys: {', '.join(sorted(row))}" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            raise InputError(f"{path}:{number}: no string field '{text_field}' ({found}; set --text-field)")
        docs.append(row[text_field])
    return docs


def _read_hub(source: str, text_field: str, split: str, max_documents: int) -> list[str]:
    """The `text_field` of a Hugging Face dataset's records; streams when only the first few are wanted."""
    import datasets  # imported here: only hub sources need it, and it is slow to import
    try:
        # Streaming the first rows avoids downloading a whole multi-gigabyte split for a small run.
        dataset = datasets.load_dataset(source, split=split, streaming=max_documents > 0)
        rows = itertools.islice(dataset, max_documents) if max_documents > 0 else dataset
        docs = []
        for number, row in enumerate(rows):
            value = row.get(text_field)
            if not isinstance(value, str):
                raise InputError(
                    f"{source} [{split}] record {number}: no string field '{text_field}' "
                    f"(fields: {', '.join(sorted(row))}; set --text-field)"
                )
            docs.append(value)
    except InputError:
        raise
    except Exception as e:  # the hub raises many types (network, missing split, auth); the user needs one line
        detail = " ".join(str(e).split())  # one line, whatever the library put in its message
        raise InputError(f"{source}: could not load split '{split}' ({type(e).__name__}: {detail})") from None
    return docs
