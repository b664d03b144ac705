"""stories260K's tok512.bin must encode exactly as llama2.c's run.c does and decode as it prints."""

import struct

import pytest

from talelab.paths import shared_file


def read_tokenizer_bin(path):
    """Pieces and scores of a llama2.c tokenizer.bin, read here independently of talelab."""
    data = path.read_bytes()
    pieces, scores, offset = [], [], 4
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        pieces.append(data[offset + 8 : offset + 8 + length].decode("utf-8"))
        scores.append(score)
        offset += 8 + length
    return pieces, scores


def run_c_encode(text, pieces, scores):
    """llama2.c run.c `encode` (no BOS/EOS), transcribed: the oracle our tokenizer must agree with."""
    lookup = {piece: i for i, piece in enumerate(pieces)}
    tokens = [lookup[" "]] if text else []  # the dummy prefix
    for char in text:  # each UTF-8 character, or its bytes as byte-fallback tokens (byte + 3)
        if char in lookup:
            tokens.append(lookup[char])
        else:
            tokens.extend(byte + 3 for byte in char.encode("utf-8"))
    while True:  # merge the leftmost adjacent pair whose concatenation is the best-scoring piece
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            merged = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]], -1)
            if merged != -1 and scores[merged] > best_score:
                best_score, best_id, best_idx = scores[merged], merged, i
        if best_idx == -1:
            return tokens
        tokens[best_idx : best_idx + 2] = [best_id]


@pytest.fixture(scope="module")
def tok512():
    return read_tokenizer_bin(shared_file("models/stories260K/tok512.bin"))


def test_llama2c_has_512_tokens_with_unk_bos_eos_and_byte_tokens(llama2c):
    assert (llama2c.vocab_size, llama2c.bos_id, llama2c.eos_id, llama2c.kind) == (512, 1, 1, "llama2c")
    assert [llama2c.backend.id_to_token(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]


def test_llama2c_encodes_the_reference_pieces_to_29212_tokens_and_62046_bytes(llama2c, reference_pieces):
    assert len(reference_pieces) == 300
    assert sum(len(ids) for ids in llama2c.encode_batch(reference_pieces)) == 29_212
    assert sum(len(piece.encode("utf-8")) for piece in reference_pieces) == 62_046


@pytest.mark.slow
def test_llama2c_encoding_equals_run_c_on_every_reference_piece(llama2c, reference_pieces, tok512):
    pieces, scores = tok512
    ours = llama2c.encode_batch(reference_pieces)
    for piece, ids in zip(reference_pieces, ours):
        assert ids == run_c_encode(piece, pieces, scores), piece


@pytest.mark.parametrize("text", ["Once upon a time", "日本 ✨ naïve", "  two spaces\nand a newline", "a", ""])
def test_llama2c_encoding_equals_run_c_on_awkward_text(llama2c, tok512, text):
    assert llama2c.encode(text) == run_c_encode(text, *tok512)


def test_llama2c_decode_round_trips_the_greedy_output_of_stories260k(llama2c):
    text = shared_file("models/stories260K/greedy-200.txt").read_text(encoding="utf-8")
    assert llama2c.decode(llama2c.encode(text, bos=True)) == text
    assert llama2c.decode(llama2c.encode(text)) == text


def test_llama2c_decode_drops_the_space_after_each_bos_and_turns_byte_tokens_into_bytes(llama2c):
    once = llama2c.encode("Once")  # one piece, " Once"
    assert len(once) == 1 and llama2c.backend.id_to_token(once[0]) == "▁Once"
    assert llama2c.decode([1, *once, *once, 1, *once]) == "Once OnceOnce"
    snow = [0xE2 + 3, 0x9D + 3, 0x84 + 3]  # ❄ has no piece: three byte tokens
    assert llama2c.decode([1, *once, *snow, 2]) == "Once❄"
