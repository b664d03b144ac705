"""Reading corpora: formats, source resolution, and one-line errors that name the file (and line) at fault."""

from __future__ import annotations

import gzip
import json

import pytest

from talelab import paths
from talelab.data import sources
from talelab.data.sources import iter_records, read_documents
from talelab.errors import InputError


def test_train_head_splits_on_endoftext_lines_into_2317_stories():
    docs = read_documents(str(paths.shared_file(paths.TINYSTORIES_TRAIN)))
    assert len(docs) == 2317  # 2,316 complete stories and the one cut off at the 2 MiB mark
    assert docs[0].startswith("One day, a little girl named Lily found a needle")
    assert not any("<|endoftext|>" in d for d in docs)


def test_source_is_found_under_the_data_root_by_its_shared_name():
    by_name = read_documents(paths.TINYSTORIES_TRAIN, max_documents=3)
    by_path = read_documents(str(paths.shared_file(paths.TINYSTORIES_TRAIN)), max_documents=3)
    assert by_name == by_path and len(by_name) == 3


def test_valid_head_is_read_as_blank_line_blocks_one_document_per_paragraph():
    # Stories and paragraphs are both blank-line separated there, so each paragraph becomes a document (documented).
    docs = read_documents(paths.TINYSTORIES_VALID)
    assert len(docs) > 4000
    assert docs[0].startswith("Spot. Spot saw the shiny car")
    assert all("\n\n" not in d for d in docs)


def test_explicit_format_overrides_detection(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("First story.\n\nStill the first.\n<|endoftext|>\nSecond story.\n", encoding="utf-8")
    assert read_documents(str(path)) == ["First story.\n\nStill the first.", "Second story."]
    blocks = read_documents(str(path), format="blank-line")
    assert blocks == ["First story.", "Still the first.\n<|endoftext|>\nSecond story."]


def test_jsonl_reads_the_named_text_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"story": " One. "}\n\n{"story": "Two.", "id": 2}\n{"story": ""}\n', encoding="utf-8")
    assert read_documents(str(path), text_field="story") == ["One.", "Two."]


def test_windows_line_ends_and_a_byte_order_mark_read_like_plain_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a\\r\\nb"}\r\n{"text": "c"}\r\n')
    assert read_documents(str(path)) == ["a\r\nb", "c"]  # escapes inside JSON are content, not line ends
    text = tmp_path / "crlf.txt"
    text.write_bytes(b"One.\r\n\r\nTwo.\r\n")
    assert read_documents(str(text)) == ["One.", "Two."]


def test_max_documents_keeps_the_first_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)), encoding="utf-8")
    assert read_documents(str(path), max_documents=2) == ["doc 0", "doc 1"]


# --- bad input: one line, naming the file, and the line where there is one ---------------------------------------


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        read_documents(str(source), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_file_names_the_path_and_the_data_root_searched(tmp_path):
    message = one_line_error(tmp_path / "nope.txt")
    assert "nope.txt" in message and str(paths.data_root()) in message


def test_directory_is_rejected_by_name(tmp_path):
    assert f"{tmp_path}: is a directory" in one_line_error(tmp_path)


def test_binary_file_names_file_and_first_nul_byte(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"line one\nab\x00cd")
    message = one_line_error(path)
    assert str(path) in message and "NUL byte at offset 11, line 2" in message


def test_non_utf8_file_names_byte_offset_and_line_of_first_bad_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Once upon a time.\nA café.\n".encode("latin-1"))  # é: 18 bytes of line 1 + "A caf"
    message = one_line_error(path)
    assert str(path) in message and "byte 0xe9 at offset 23, line 2" in message


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": broken}\n', encoding="utf-8")
    assert f"{path}:3: not valid JSON" in one_line_error(path)


def test_jsonl_line_without_text_field_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"story": "elsewhere"}\n', encoding="utf-8")
    message = one_line_error(path)
    assert f"{path}:2: no string field 'text'" in message and "story" in message


@pytest.mark.parametrize("line", ['{"text": 3}', '["text"]', '"text"', '{"text": null}'])
def test_jsonl_line_that_is_not_an_object_with_a_string_field_names_file_and_line(tmp_path, line):
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    assert f"{path}:1: no string field 'text'" in one_line_error(path)


@pytest.mark.parametrize("content", ["", "\n  \n", "<|endoftext|>\n<|endoftext|>\n"])
def test_file_without_documents_is_an_empty_corpus(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    assert f"{path}: no documents" in one_line_error(path)


def test_unknown_format_is_rejected():
    assert "unknown format 'csv'" in one_line_error(paths.TINYSTORIES_TRAIN, format="csv")


# --- streaming formats: JSON arrays, gzip, parquet, hub datasets ---------------------------------------------------

RECORDS = [{"story": "One.", "instruction": {"features": ["Dialogue"]}}, {"story": "Two.", "summary": "s"}]


def test_blocks_split_documents_as_the_whole_file_would(monkeypatch):
    whole = read_documents(paths.TINYSTORIES_VALID, format="blank-line")
    lines = read_documents("data/tinystories/train-head-lowercase.txt", format="lines")
    monkeypatch.setattr(sources, "BLOCK_BYTES", 997)  # separators straddle block ends thousands of times
    assert read_documents(paths.TINYSTORIES_VALID, format="blank-line") == whole
    assert read_documents("data/tinystories/train-head-lowercase.txt", format="lines") == lines


def test_json_array_records_keep_their_other_fields(tmp_path, monkeypatch):
    path = tmp_path / "data00.json"
    path.write_text(json.dumps(RECORDS, indent=1), encoding="utf-8")
    monkeypatch.setattr(sources, "BLOCK_BYTES", 7)  # elements straddle blocks
    records = list(iter_records(str(path), text_field="story"))
    assert records == [{"instruction": {"features": ["Dialogue"]}, "text": "One."}, {"summary": "s", "text": "Two."}]


def test_gzip_of_jsonl_and_of_text_reads_like_the_plain_file(tmp_path):
    (tmp_path / "rows.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode()))
    assert read_documents(str(tmp_path / "rows.jsonl.gz"), text_field="story") == ["One.", "Two."]
    (tmp_path / "stories.txt.gz").write_bytes(gzip.compress(b"A.\n<|endoftext|>\nB.\n"))
    assert read_documents(str(tmp_path / "stories.txt.gz")) == ["A.", "B."]


def test_parquet_rows_with_nested_columns_are_records(tmp_path):
    import pyarrow
    import pyarrow.parquet

    rows = [{"story": f"Story {i}.", "instruction": {"features": ["Dialogue"] * (i % 2)}} for i in range(3000)]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "train.parquet")
    records = list(iter_records(str(tmp_path / "train.parquet"), text_field="story"))  # three batches
    assert records == [{"instruction": r["instruction"], "text": r["story"]} for r in rows]


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "stories.txt.gz"
    path.write_bytes(gzip.compress(b"A story.\n<|endoftext|>\n" * 1000)[:-40])
    assert f"{path}: truncated or corrupt gzip" in one_line_error(path)


def test_corrupt_parquet_names_the_file(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 100 + b"PAR1")
    assert f"{path}: not a readable parquet file" in one_line_error(path)


@pytest.mark.parametrize("content, expected", [
    ('[{"text": "a"}, {"text": "b"}, {"text": }]', "element 2: not valid JSON"),
    ('[{"text": "a"}, 7]', "element 1: no string field 'text' (a JSON int"),
    ('[{"text": "a"} {"text": "b"}]', "element 1: expected ',' or ']' after element 0"),
    ('{"story": "a"}', "data.json:1: no string field 'text'"),  # not an array: read as JSONL
])
def test_json_array_with_a_bad_element_names_its_index(tmp_path, content, expected):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    assert expected in one_line_error(path)


def test_hub_id_offline_says_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    message = one_line_error("nobody-here/no-such-dataset")
    assert "nobody-here/no-such-dataset: no such file, and the Hugging Face hub cannot be reached" in message


def test_endoftext_lines_are_found_where_the_anchored_pattern_finds_them():
    text = ("<|endoftext|>\nA said <|endoftext|> in a line.\n  <|endoftext|>\t\nB.\n<|endoftext|>x\n"
            "\t<|endoftext|>\n<|endoftext|><|endoftext|>\nC.\n<|endoftext|>")
    expected = [m.span() for m in sources._EOT_LINE.finditer(text)]
    assert list(sources._eot_lines(text)) == expected and len(expected) == 4
