"""llama2.c's tokenizer.bin as an equivalent Hugging Face BPE that reproduces run.c's `encode` token for token.

The file is an int32 max_token_length, then for each token a float32 score, an int32 length and that many bytes
of UTF-8 (sentencepiece pieces with a real space where sentencepiece writes ▁). Ids 0, 1, 2 are <unk>, <s>, </s>
(llama2.c writes the last two as "\\n<s>\\n" and "\\n</s>\\n"); ids 3..258 are the byte tokens <0x00>..<0xFF>.
"""

from __future__ import annotations

import struct
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers

from talelab.errors import InputError

SPECIALS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
FIRST_PIECE = len(SPECIALS) + len(BYTE_TOKENS)  # 259: ids below are never merged


def read_llama2c(path: Path) -> tuple[list[str], list[float]]:
    """The pieces (real spaces, specials named as sentencepiece names them) and scores of a tokenizer.bin."""
    data = path.read_bytes()
    if len(data) < 4:
        raise InputError(f"{path}: truncated at byte {len(data)}: expected an int32 max_token_length at byte 0")
    (max_length,) = struct.unpack_from("<i", data, 0)
    if max_length <= 0:
        raise InputError(f"{path}: corrupt at byte 0: max_token_length {max_length} is not positive")
    pieces, scores, offset = [], [], 4
    while offset < len(data):
        if offset + 8 > len(data):
            raise InputError(f"{path}: truncated at byte {offset}: token {len(pieces)} needs a score and a length")
        score, length = struct.unpack_from("<fi", data, offset)
        if not 0 < length <= max_length or offset + 8 + length > len(data):
            raise InputError(f"{path}: corrupt or truncated at byte {offset + 4}: token {len(pieces)} has length "
                             f"{length} (max_token_length {max_length}, {len(data) - offset - 8} bytes left)")
        try:
            piece = data[offset + 8 : offset + 8 + length].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: corrupt at byte {offset + 8}: token {len(pieces)} is not UTF-8") from None
        pieces.append(piece)
        scores.append(score)
        offset += 8 + length
    expected = [*SPECIALS, *BYTE_TOKENS]
    found = [p.strip() for p in pieces[:3]] + pieces[3:FIRST_PIECE]
    if found != expected:
        at = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), len(found))
        raise InputError(f"{path}: not a llama2.c sentencepiece tokenizer: token {at} should be "
                         f"{expected[at]!r} (ids 0-2 <unk> <s> </s>, ids 3-258 byte tokens)")
    return [*SPECIALS, *pieces[3:]], scores


def load_llama2c(path: Path) -> tokenizers.Tokenizer:
    """The tokenizer.bin at `path` as a byte-fallback BPE, built the way Hugging Face converts Llama's sentencepiece."""
    pieces, scores = read_llama2c(path)
    vocab = {piece.replace(" ", "▁"): i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise InputError(f"{path}: corrupt: {len(pieces) - len(vocab)} pieces occur twice")
    # run.c merges, over and over, the adjacent pair whose concatenation is the highest-scoring piece. A BPE
    # applies its lowest-ranked merge first, so every way of splitting a piece into two pieces becomes a merge,
    # ranked by the score of the piece (ids break ties, as the scores of sentencepiece BPE are distinct anyway).
    merges = []
    for piece, i in vocab.items():
        if i < FIRST_PIECE:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], i, left, right))
    merges.sort()
    model = models.BPE(vocab, [(left, right) for _, _, left, right in merges], unk_token="<unk>",
                       fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    # run.c's dummy prefix: a space before non-empty text; then spaces are ▁ as in the pieces.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    return backend


_BYTE_VALUES = {token: b for b, token in enumerate(BYTE_TOKENS)}


def decode_llama2c(backend: tokenizers.Tokenizer, ids: list[int]) -> str:
    """One story as run.c prints it: byte tokens are raw bytes, the first piece loses its leading space.

    Unlike Hugging Face's ByteFallback decoder, which turns a whole run of byte tokens into '\ufffd's when any of
    them is broken, only the broken bytes become '\ufffd' here, so that streamed text never has to be taken back.
    """
    out = bytearray()
    for i in ids:
        token = backend.id_to_token(i)
        byte = _BYTE_VALUES.get(token)
        if byte is None:
            out += token.replace("▁", " ").encode("utf-8")
        else:
            out.append(byte)
    text = out.decode("utf-8", errors="replace")
    return text[1:] if text.startswith(" ") else text
