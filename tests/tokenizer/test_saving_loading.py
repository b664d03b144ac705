"""Saving, loading, fingerprints, streaming, and the one-line errors for bad tokenizer files."""

import json

import pytest
from transformers import AutoTokenizer

from talelab.errors import InputError
from talelab.paths import shared_file
from talelab.tokenizer import load_tokenizer

KINDS = ["bpe", "words", "gpt2", "llama2c"]
SAMPLE = 'Lily saw a big, red ball. "Can I play?" she asked.\nâ€™ 🤖 日本 zyzzyva'


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_saved_tokenizer_loads_in_transformers_with_identical_ids_and_bos_eos(tokenizers_by_kind, kind, tmp_path):
    ours = tokenizers_by_kind[kind]
    ours.save(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    assert theirs(SAMPLE)["input_ids"] == ours.encode(SAMPLE)
    assert theirs.convert_tokens_to_ids([theirs.bos_token, theirs.eos_token]) == [ours.bos_id, ours.eos_id]
    ids = ours.encode(SAMPLE, bos=True, eos=True)
    if kind != "words":  # transformers' decode drops <unk> with the special tokens; ours keeps it
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_tokenizer_reloads_with_the_same_kind_ids_and_fingerprint(tokenizers_by_kind, kind, tmp_path):
    ours = tokenizers_by_kind[kind]
    ours.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (again.kind, again.bos_id, again.eos_id) == (kind, ours.bos_id, ours.eos_id)
    assert again.vocab_size == ours.vocab_size
    assert again.encode(SAMPLE) == ours.encode(SAMPLE)
    assert again.fingerprint() == ours.fingerprint()


def test_a_bare_tokenizer_json_file_loads_with_bos_and_eos_found_by_name(llama2c, bpe, tmp_path):
    llama2c.backend.save(str(tmp_path / "llama.json"))
    bpe.backend.save(str(tmp_path / "bpe.json"))
    assert (load_tokenizer(tmp_path / "llama.json").bos_id, load_tokenizer(tmp_path / "llama.json").eos_id) == (1, 2)
    assert load_tokenizer(tmp_path / "bpe.json").bos_id == 0


def test_fingerprints_are_short_and_tell_tokenizers_apart(tokenizers_by_kind):
    prints = {kind: t.fingerprint() for kind, t in tokenizers_by_kind.items()}
    assert len(set(prints.values())) == 4 and all(len(p) == 16 for p in prints.values())


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_pieces_concatenate_to_decode(tokenizers_by_kind, kind):
    tokenizer = tokenizers_by_kind[kind]
    ids = [*tokenizer.encode(SAMPLE, bos=True), tokenizer.eos_id, *tokenizer.encode("The end 🐉", bos=True)]
    stream = tokenizer.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tokenizer.decode(ids)
    assert stream.flush() == ""
    assert sum(1 for p in pieces if p) > len(ids) // 2  # it does stream, not hold everything back


def test_stream_holds_back_an_unfinished_character_until_it_completes_or_flush(llama2c):
    snow = [0xE2 + 3, 0x9D + 3, 0x84 + 3]  # ❄ as three byte tokens
    stream = llama2c.stream()
    assert [stream.push(i) for i in [1, *snow]] == ["", "", "", "❄"]
    assert [stream.push(i) for i in snow[:2]] == ["", ""]
    assert stream.flush() == llama2c.decode(snow[:2]) == "\ufffd"
    assert stream.flush() == ""


def test_stream_and_decode_survive_broken_bytes_after_a_byte_fallback_character(llama2c):
    snow = [0xE2 + 3, 0x9D + 3, 0x84 + 3]
    ids = [1, *snow, *snow[:2], *llama2c.encode("and snow"), 0x84 + 3]
    stream = llama2c.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == llama2c.decode(ids) == "❄\ufffd and snow\ufffd"


def one_line_error_naming(path, load=load_tokenizer):
    with pytest.raises(InputError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_path_is_an_error_naming_it(tmp_path):
    one_line_error_naming(tmp_path / "nowhere" / "tokenizer.json")


def test_directory_without_a_tokenizer_is_an_error_naming_it(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing
    assert "tokenizer.json" in one_line_error_naming(tmp_path)


def test_tokenizer_json_that_is_not_json_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    one_line_error_naming(tmp_path / "tokenizer.json")
    one_line_error_naming(tmp_path)


def test_tokenizer_config_that_is_not_json_is_an_error_naming_it(bpe, tmp_path):
    bpe.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{bos_token: <|endoftext|>}")
    with pytest.raises(InputError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)


def test_truncated_llama2c_bin_is_an_error_naming_the_file_and_byte_offset(tmp_path):
    data = shared_file("models/stories260K/tok512.bin").read_bytes()
    cut = tmp_path / "tok512.bin"
    cut.write_bytes(data[:1000])
    assert "byte" in one_line_error_naming(cut)
    cut.write_bytes(data[:2])
    assert "at byte 2" in one_line_error_naming(cut)
    cut.write_bytes(data[:4] + b"\x00\x00\x80?" + (1 << 30).to_bytes(4, "little") + data[12:])
    assert "at byte 8" in one_line_error_naming(cut)


def test_llama2c_bin_without_byte_tokens_is_an_error_naming_the_file(tmp_path):
    data = shared_file("models/stories260K/tok512.bin").read_bytes()
    short = tmp_path / "short.bin"
    short.write_bytes(data[: 4 + 3 * 8 + len(b"<unk>\n<s>\n\n</s>\n")])  # only the three specials
    assert "token 3" in one_line_error_naming(short)


def test_gpt2_directory_with_a_broken_vocab_is_an_error_naming_it(tmp_path):
    gpt2_dir = shared_file("tokenizers/gpt2/vocab.json").parent
    (tmp_path / "merges.txt").write_bytes((gpt2_dir / "merges.txt").read_bytes())
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0})[:-3])
    one_line_error_naming(tmp_path)
