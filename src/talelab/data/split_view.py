"""Random access to the stories of a prepared split without holding them: `SplitView(path)[i]` is the "text" of the
i-th record of a JSONL file.

One streaming pass records an int64 byte offset per non-blank line (8 bytes a story: 17 MB for TinyStories' 2.1M
stories); a story is then read by seeking to its line. Iterating reads the file in blocks instead, so a pass over
every story costs no seek. Any other source (a text file, a hub dataset) is first spooled into an anonymous
temporary JSONL file (`SplitView.of_texts`), which the view deletes when it is closed or collected.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from talelab.data.sources import BLOCK_BYTES  # the read size of every data stage, here of the offset pass and iteration
from talelab.errors import InputError


class SplitView(Sequence):
    """The texts of a JSONL file (one {"text": ...} object per line, blank lines skipped), read on demand."""

    def __init__(self, path: str | os.PathLike, *, file=None, offsets: array | None = None):
        """Index `path` in one pass; `file` and `offsets` (line starts, then the end of the data) skip that pass."""
        self.path = Path(path)
        if file is None:
            try:
                file = open(self.path, "rb")
            except OSError as e:
                raise InputError(f"{path}: cannot read ({e.strerror})") from None
        self.file = file
        self.offsets = offsets if offsets is not None else line_offsets(file)

    @classmethod
    def of_texts(cls, texts: Iterable[str], name: str = "stories") -> SplitView:
        """A view of texts from any iterator, spooled one per line into an anonymous temporary file."""
        file, offsets, position = tempfile.TemporaryFile(prefix="talelab-split-"), array("q"), 0
        for text in texts:
            line = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8") + b"\n"
            file.write(line)
            offsets.append(position)
            position += len(line)
        file.flush()
        offsets.append(position)
        return cls(name, file=file, offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"story {index} of {len(self)}")
        index %= len(self)
        start, stop = self.offsets[index], self.offsets[index + 1]
        line = os.pread(self.file.fileno(), stop - start, start)  # up to the next record: this line and blank ones
        return self._text(line[:line.find(b"\n")] if b"\n" in line else line, index)

    def __iter__(self) -> Iterator[str]:
        """Every text in order, read in blocks (pread: independent of any other reader of the file)."""
        index, position, end, carry = 0, 0, self.offsets[-1], b""
        while position < end:
            block = os.pread(self.file.fileno(), min(BLOCK_BYTES, end - position), position)
            if not block:
                break
            position += len(block)
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for line in lines:
                if line.strip():
                    yield self._text(line, index)
                    index += 1
        if carry.strip():
            yield self._text(carry, index)

    def _text(self, line: bytes, index: int) -> str:
        where = f"{self.path}: record {index + 1} (byte {self.offsets[index]})"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{where}: no string field 'text'")
        return record["text"].strip()

    def close(self) -> None:
        self.file.close()


def line_offsets(file) -> array:
    """Byte offsets of the non-blank lines of a binary file, then the offset of its end, in one streaming pass."""
    offsets, position, carry = array("q"), 0, b""
    file.seek(0)
    while block := file.read(BLOCK_BYTES):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            if line.strip():
                offsets.append(position)
            position += len(line) + 1
    if carry.strip():
        offsets.append(position)
    offsets.append(position + len(carry))
    return offsets
