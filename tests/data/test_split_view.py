"""Random access to a prepared split: one byte offset per story, a story read by seeking, the same texts as a scan."""

from __future__ import annotations

import json

import pytest

from talelab.data.sources import read_documents
from talelab.data.split_view import SplitView
from talelab.errors import InputError


def test_a_prepared_split_reads_the_same_stories_by_index_slice_and_iteration(prepared):
    path = prepared / "train.jsonl"
    stories = read_documents(path)
    view = SplitView(path)
    assert len(view) == len(stories) == len(path.read_text(encoding="utf-8").splitlines())
    assert list(view) == stories
    assert [view[0], view[17], view[-1]] == [stories[0], stories[17], stories[-1]]
    assert view[5:8] == stories[5:8] and view[-2:] == stories[-2:]
    assert view.offsets.itemsize == 8 and len(view.offsets) == len(stories) + 1  # int64 starts, then the end
    with pytest.raises(IndexError):
        view[len(stories)]


def test_blank_lines_crlf_and_a_missing_last_line_end_are_handled_like_the_jsonl_reader(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "The cat sat."}\r\n\n   \n{"text": " A dog ran. ", "source": "x"}\n\n'
                     b'{"text": "Zo\xc3\xab smiled."}')
    view = SplitView(path)
    # 24 bytes + CRLF, a blank line and a line of spaces (31); 39 + LF and a blank line (72); 24 with the two-byte ë.
    assert list(view.offsets) == [0, 31, 72, 96]  # the three records' first bytes, then the file's size
    assert list(view) == [view[0], view[1], view[2]] == ["The cat sat.", "A dog ran.", "Zoë smiled."]
    assert list(view) == read_documents(path)


def test_any_texts_spool_into_a_temporary_file_and_read_back_unchanged():
    texts = ["Once upon a time.\nThe end.", 'She said "hi" \\ and left.', "Émile 🐱", "x" * 20_000]
    view = SplitView.of_texts(iter(texts))
    assert len(view) == 4 and list(view) == texts and view[3] == texts[3] and view[-4] == texts[0]
    assert view.offsets[1] == len(json.dumps({"text": texts[0]}).encode()) + 1
    view.close()


def test_a_record_without_text_names_the_file_and_record(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine"}\n{"story": "no text"}\nnot json\n', encoding="utf-8")
    view = SplitView(path)
    assert len(view) == 3 and view[0] == "fine"
    with pytest.raises(InputError, match=r"train.jsonl: record 2 \(byte 17\): no string field 'text'"):
        list(view)
    with pytest.raises(InputError, match=r"record 3 \(byte 38\): not valid JSON"):
        view[2]
    with pytest.raises(InputError, match="cannot read"):
        SplitView(tmp_path / "missing.jsonl")
