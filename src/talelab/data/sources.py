"""Read a corpus as a stream of records: text files, JSONL, JSON arrays, parquet, gzip of any of them, hub datasets.

A record is a dict with a stripped, non-empty "text" and every other field the source gave it (TinyStories'
all_data files keep `instruction`, `summary`, `source`), so metadata survives into the prepared splits. Everything
streams: files are read in blocks of BLOCK_BYTES and hub datasets through `datasets` streaming, so no stage holds a
whole corpus in memory. `read_documents` collects the texts of a small file (prompts, fine-tuning data) in a list.
"""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from talelab import paths
from talelab.errors import InputError

FORMATS = ("auto", "eot", "blank-line", "lines", "jsonl", "json", "parquet")
BLOCK_BYTES = 8 << 20  # read size: large enough that regex splitting runs at C speed, small against any memory
PARQUET_BATCH = 1024
MAX_JSON_ELEMENT = 64 << 20  # a JSON array element still incomplete after this many characters is broken, not long
# A separator line may carry stray spaces; the token inside a sentence is not a separator.
_EOT_LINE = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*$", re.MULTILINE)
_EOT_TOKEN = re.compile(re.escape("<|endoftext|>"))
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# `lines`: a single line break ends a document and a blank line is a paragraph break inside one (the layout of
# TinyStories' lowercased train file). Paragraphs become single line breaks, as in the cased TinyStories files.
_LONE_LINE_BREAK = re.compile(r"(?<![\n \t])[ \t]*\n[ \t]*(?![\n \t])")
_PARAGRAPH_BREAK = re.compile(r"[ \t]*\n(?:[ \t]*\n)+[ \t]*")
NEWLINE = b"\n"
SEPARATORS = {"eot": _EOT_LINE, "blank-line": _BLANK_LINES, "lines": _LONE_LINE_BREAK}
# owner/name with no file suffix, as Hugging Face spells dataset ids (roneneldan/TinyStories).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def iter_records(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    text_field: str = "text",
    hub_split: str = "train",
    hub_config: str = "",
    data_files: str = "",
    data_root: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """The records of `source` (a file path, a path under the data root, or a hub dataset id), in order.

    Several sources separated by commas are read in turn; `format` is then one format for all or one per source.
    A source without a single document is an InputError (raised when its end is reached)."""
    sources = [s.strip() for s in os.fspath(source).split(",") if s.strip()]
    formats = [f.strip() for f in format.split(",")]
    if len(formats) not in (1, len(sources)):
        raise InputError(f"--format lists {len(formats)} formats for {len(sources)} sources: give one for all or "
                         "one per source")
    for name in formats:
        if name not in FORMATS:
            raise InputError(f"{source}: unknown format '{name}' (choose from {', '.join(FORMATS)})")
    for one, one_format in zip(sources, formats * len(sources) if len(formats) == 1 else formats):
        path = resolve_source(one, data_root)
        if path is None:
            where, records = one, _hub_records(one, text_field, hub_split, hub_config, data_files)
        else:
            where, records = str(path), _file_records(path, one_format, text_field)
        count = 0
        for record in _with_text(records):
            count += 1
            yield record
        if not count:
            raise InputError(f"{where}: no documents (empty, or only separators and whitespace)")


def iter_texts(source: str | os.PathLike, **options) -> Iterator[str]:
    """The texts of iter_records(source, **options)."""
    return (record["text"] for record in iter_records(source, **options))


def field_value(record: dict, dotted: str):
    """The value of a record's (dotted, nested: instruction.features) field, or None when a key on the way is
    missing."""
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def read_documents(source: str | os.PathLike, *, max_documents: int = 0, **options) -> list[str]:
    """The stripped, non-empty texts of a small source as a list (at most max_documents of them when > 0)."""
    texts = iter_texts(source, **options)
    return list(itertools.islice(texts, max_documents) if max_documents > 0 else texts)


def validation_file(data: str | os.PathLike) -> Path:
    """`data` itself, or the val.jsonl of a prepared directory (where eval and interpret read held-out stories)."""
    path = Path(data)
    if not path.is_dir():
        return path
    if not (path / "val.jsonl").is_file():
        raise InputError(f"{data}: a directory without val.jsonl (expected a prepared directory or a file)")
    return path / "val.jsonl"


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
        raise InputError(f"{path}: is a directory, expected a text, JSON, JSONL or parquet file")
    return path


@dataclass(frozen=True)
class FileRange:
    """Bytes [start, end) of a local file that begin and end between documents; first_line: the line at start."""

    path: Path
    start: int
    end: int
    first_line: int


RANGE_BYTES = 64 << 20  # a worker's share of a split file: large against start-up costs, small against memory
MIN_SPLIT_BYTES = 16 << 20  # smaller files are read as one stream
# What a range may end after, in the formats whose documents never span such a place.
_RANGE_END = {"eot": re.compile(rb"^[ \t]*<\|endoftext\|>[ \t]*(?:\n|\Z)", re.MULTILINE),
              "blank-line": re.compile(rb"\n[ \t]*\n"), "jsonl": re.compile(rb"\n")}


def split_file(source: str, format: str, data_root=None, parts: int = 1, range_bytes: int = 0) \
        -> tuple[list[FileRange], str] | None:
    """(ranges of about `range_bytes` (0: RANGE_BYTES), at least `parts` of them, and the format) for one local,
    uncompressed file of MIN_SPLIT_BYTES or more in a format whose separators are whole lines (eot, blank-line,
    jsonl): each range can be read on its own, and its documents are those the whole file gives there. None for any
    other source."""
    if "," in source:
        return None
    path = resolve_source(source.strip(), data_root)
    if path is None or path.name.lower().endswith(".gz") or path.stat().st_size < MIN_SPLIT_BYTES:
        return None
    format = detect_format(path) if format == "auto" else format
    if format not in _RANGE_END:
        return None
    size = path.stat().st_size
    count = max(parts, -(-size // (range_bytes or RANGE_BYTES)))
    ends, lines, line, done = [], [], 1, 0
    with open(path, "rb") as f:
        for target in (size * k // count for k in range(1, count)):
            end = _range_end(f, max(target, done), format)
            if end > done and end < size:
                ends.append(end)
                done = end
        ends.append(size)
        f.seek(0)
        for end in ends:  # the line each range starts at, for error messages: one read of the file
            lines.append(line)
            left = end - f.tell()
            while left > 0:
                chunk = f.read(min(BLOCK_BYTES, left))
                line, left = line + chunk.count(NEWLINE), left - len(chunk)
    starts = [0] + ends[:-1]
    return [FileRange(path, a, b, n) for a, b, n in zip(starts, ends, lines)], format


def _range_end(f, target: int, format: str) -> int:
    """The first place at or after `target` where a range may end (the file's size when there is none)."""
    window, size = 1 << 20, os.fstat(f.fileno()).st_size
    while True:
        f.seek(target)
        data = f.read(window)
        start = data.find(NEWLINE) + 1 if format == "eot" else 0  # eot's separator is a whole line: from a line start
        match = _RANGE_END[format].search(data, start) if start or format != "eot" else None
        if match and match.end() < len(data) or target + len(data) >= size:
            return target + match.end() if match else size
        window *= 4  # a separator that far is rare: look further


def iter_range_records(span: FileRange, format: str, text_field: str = "text") -> Iterator[dict]:
    """The records of one range of split_file, as iter_records gives them (stripped, non-empty texts)."""
    return _with_text(_file_records(span.path, format, text_field, span))


def _with_text(records: Iterable[dict]) -> Iterator[dict]:
    """The records whose text is not blank, the text stripped."""
    for record in records:
        text = record["text"].strip()
        if text:
            record["text"] = text
            yield record


# --- files ---------------------------------------------------------------------------------------------------------


def _file_records(path: Path, format: str, text_field: str, span: FileRange | None = None) -> Iterator[dict]:
    if format == "auto":
        format = detect_format(path)
    if format == "parquet":
        return (_record(row, text_field, f"{path}: row {i}") for i, row in enumerate(_parquet_rows(path)))
    if format == "json":
        return (_record(row, text_field, f"{path}: element {i}") for i, row in enumerate(_json_array(path)))
    if format == "jsonl":
        first = span.first_line if span else 1
        return (_record(row, text_field, f"{path}:{n}") for n, row in json_lines(path, _text_lines(path, span), first))
    return ({"text": text} for text in _split_text(path, format, span))


def _record(row, text_field: str, where: str) -> dict:
    """A source row as a record: its `text_field` as "text", its other fields kept; InputError naming `where`."""
    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
        found = f"keys: {', '.join(sorted(row))}" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
        raise InputError(f"{where}: no string field '{text_field}' ({found}; set --text-field)")
    record = {key: value for key, value in row.items() if key != text_field}
    record["text"] = row[text_field]
    return record


def detect_format(path: Path) -> str:
    """By name (.jsonl, .json: a JSON array when it starts with '[', else JSONL; .parquet; also under .gz), else
    eot when a line of the first block is exactly <|endoftext|>, else blank-line."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    first = next(_text_blocks(path), "")
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json" if first.lstrip().startswith("[") else "jsonl"
    return "eot" if _EOT_LINE.search(first) else "blank-line"


def _open(path: Path):
    """The file's bytes, decompressed when it is gzip."""
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def _raw_blocks(path: Path, span: FileRange | None = None) -> Iterator[bytes]:
    """Blocks of the file's bytes (of its span only, when given); a truncated or corrupt gzip is an InputError."""
    with _open(path) as f:
        left = None
        if span is not None:
            f.seek(span.start)
            left = span.end - span.start
        while left is None or left > 0:
            try:
                block = f.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left))
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise InputError(f"{path}: truncated or corrupt gzip ({e})") from None
            except OSError as e:
                raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block


def _text_blocks(path: Path, whole_lines: bool = True, span: FileRange | None = None) -> Iterator[str]:
    """The file (or its span) as UTF-8 text with '\\n' line ends, in blocks that end at a line end (whole_lines) or
    anywhere.

    Binary or wrongly encoded input is an InputError naming byte offset and line, counted in the file as it is."""
    carry = b""
    offset, line = (span.start, span.first_line) if span else (0, 1)  # of carry's first byte
    decoder = codecs.getincrementaldecoder("utf-8")()
    for i, block in enumerate(itertools.chain(_raw_blocks(path, span), [None])):
        data = carry + block if block is not None else carry
        if i == 0 and offset == 0 and data.startswith(codecs.BOM_UTF8):
            # A BOM is legal UTF-8 but would break the first JSON line; offsets still count it.
            data, offset = data[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
        cut = len(data) if block is None or not whole_lines else data.rfind(NEWLINE) + 1
        if cut == 0 and block is not None:  # no line end yet: keep reading
            carry = data
            continue
        piece, carry = data[:cut], data[cut:]
        nul = piece.find(b"\0")
        if nul >= 0:
            raise InputError(f"{path}: looks binary (NUL byte at offset {offset + nul}, line "
                             f"{line + piece.count(NEWLINE, 0, nul)}); expected UTF-8 text")
        held = len(decoder.getstate()[0])  # bytes of a character the last block cut, decoded with this one
        try:
            text = decoder.decode(piece, final=block is None)
        except UnicodeDecodeError as e:
            at = max(0, e.start - held)
            raise InputError(
                f"{path}: not valid UTF-8 (byte 0x{piece[at]:02x} at offset {offset + at}, line "
                f"{line + piece.count(NEWLINE, 0, at)}); re-encode the file as UTF-8") from None
        offset, line = offset + len(piece), line + piece.count(NEWLINE)
        if text:
            yield text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
        if block is None:
            return


def _text_lines(path: Path, span: FileRange | None = None) -> Iterator[str]:
    """The file's (or span's) lines without their line ends."""
    for block in _text_blocks(path, span=span):
        lines = block.split("\n")
        if block.endswith("\n"):
            lines.pop()
        yield from lines


def _split_text(path: Path, format: str, span: FileRange | None = None) -> Iterator[str]:
    """The documents of a text file, split at the format's separators (not yet stripped).

    A block ends at a line end; a separator touching a block's end could still grow with the next block (a longer
    blank run, a lone line break that the next line turns into a paragraph), so the text from the last separator
    that ends inside the block is carried over: the documents are those of splitting the whole file at once."""
    carry = ""
    for block in _text_blocks(path, span=span):
        text, start = carry + block, 0
        for begin, end in _separators(text, format):
            if end >= len(text):
                break
            yield _document(text[start:begin], format)
            start = end
        carry = text[start:]
    start = 0
    for begin, end in _separators(carry, format):
        yield _document(carry[start:begin], format)
        start = end
    yield _document(carry[start:], format)


def _separators(text: str, format: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each separator of `format` in `text`."""
    if format == "eot":
        return _eot_lines(text)
    return (match.span() for match in SEPARATORS[format].finditer(text))


def _eot_lines(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each line that is <|endoftext|> with optional spaces, as _EOT_LINE would match it. Found by
    the token's literal text (a fast search), then checked: 10x faster than the anchored pattern over every byte."""
    for match in _EOT_TOKEN.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.end())
        line_end = len(text) if line_end < 0 else line_end
        if not text[line_start:match.start()].strip(" \t") and not text[match.end():line_end].strip(" \t"):
            yield line_start, line_end


def _document(piece: str, format: str) -> str:
    return _PARAGRAPH_BREAK.sub("\n", piece) if format == "lines" else piece


def json_lines(path, lines: Iterable[str] | str, first_line: int = 1):
    """(line number, value) of every non-blank line of JSONL; a line that is not JSON stops with file:line."""
    if isinstance(lines, str):
        lines = lines.split("\n")
    for number, line in enumerate(lines, start=first_line):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line, naming file and line for the first that is not an object."""
    rows = []
    for number, row in json_lines(path, _text_lines(path)):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, found a JSON {type(row).__name__}")
        rows.append((number, row))
    return rows


def read_text(path: Path) -> str:
    """A small file's whole text as UTF-8 with '\\n' line ends; InputError for binary or wrongly encoded files."""
    return "".join(_text_blocks(path))


def _json_array(path: Path) -> Iterator:
    """The elements of a file holding one JSON array, decoded one at a time (TinyStories' all_data files)."""
    decoder, blocks = json.JSONDecoder(), _text_blocks(path, whole_lines=False)
    buffer, position, index, ended = "", 0, 0, False

    def more() -> bool:
        nonlocal buffer, position, ended
        block = next(blocks, None)
        if block is None:
            ended = True
            return False
        buffer, position = buffer[position:] + block, 0
        return True

    def skip_space() -> str:
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in " \t\n":
                position += 1
            if position < len(buffer) or not more():
                return buffer[position:position + 1]

    if skip_space() != "[":
        raise InputError(f"{path}: not a JSON array (starts with {buffer[position:position + 20]!r}); "
                         "use --format jsonl for one object per line")
    position += 1
    if skip_space() == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(buffer, position)
            complete = end < len(buffer) or ended  # a number at the buffer's end may go on in the next block
        except json.JSONDecodeError as e:
            if ended or len(buffer) - position > MAX_JSON_ELEMENT:
                raise InputError(f"{path}: element {index}: not valid JSON ({e.msg})") from None
            complete = False
        if not complete:
            more()
            continue
        position = end
        yield value
        index += 1
        after = skip_space()
        position += 1
        if after == "]":
            return
        if after != ",":
            raise InputError(f"{path}: element {index}: expected ',' or ']' after element {index - 1}, "
                             f"found {after or 'the end of the file'!r}")
        skip_space()


def _parquet_rows(path: Path) -> Iterator[dict]:
    """The rows of a parquet file as dicts (nested columns as dicts), read one batch at a time."""
    import pyarrow  # imported here: only parquet sources need it, and it is slow to import
    import pyarrow.parquet

    try:
        with _open(path) as f:
            for batch in pyarrow.parquet.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH):
                yield from batch.to_pylist()
    except (pyarrow.ArrowException, OSError, EOFError, zlib.error) as e:
        detail = " ".join(str(e).split())
        raise InputError(f"{path}: not a readable parquet file ({type(e).__name__}: {detail})") from None


# --- the hub ------------------------------------------------------------------------------------------------------


def hub_offline() -> bool:
    """True when the environment forbids reaching the Hugging Face hub."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_records(source: str, text_field: str, split: str, config: str, data_files: str) -> Iterator[dict]:
    """The records of a Hugging Face dataset, streamed (nothing downloaded beyond what is read)."""
    if hub_offline():
        raise InputError(f"{source}: no such file, and the Hugging Face hub cannot be reached to load it as a "
                         "dataset (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
    import datasets  # imported here: only hub sources need it, and it is slow to import

    files = [f.strip() for f in data_files.split(";") if f.strip()] or None
    try:
        rows = datasets.load_dataset(source, name=config or None, split=split, streaming=True, data_files=files)
        for number, row in enumerate(rows):
            yield _record(row, text_field, f"{source} [{split}] record {number}")
    except InputError:
        raise
    except Exception as e:  # the hub raises many types (network, missing split, auth); the user needs one line
        detail = " ".join(str(e).split())  # one line, whatever the library put in its message
        reach = " (the Hugging Face hub could not be reached)" if isinstance(e, (ConnectionError, OSError)) else ""
        raise InputError(f"{source}: could not load split '{split}'{reach} ({type(e).__name__}: {detail})") from None
