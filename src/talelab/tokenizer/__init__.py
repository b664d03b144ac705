"""Tokenizers: train byte-level BPE or word-level ones, load GPT-2's and llama2.c's; one Hugging Face backend for all.

A saved tokenizer is a directory with tokenizer.json + tokenizer_config.json that `transformers.AutoTokenizer`
loads as it is and that gives the same ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers

from talelab.atomic import atomic_directory
from talelab.config import TokenizerConfig
from talelab.data.sources import iter_texts
from talelab.errors import ConfigError, InputError
from talelab.tokenizer.bpe import END_OF_TEXT, train_bpe
from talelab.tokenizer.gpt2 import load_gpt2
from talelab.tokenizer.llama2c import decode_llama2c, load_llama2c
from talelab.tokenizer.words import train_words

__all__ = ["CorpusEncoder", "Tokenizer", "TextStream", "load_tokenizer", "train_tokenizer"]

@dataclass
class Tokenizer:
    """A backend tokenizer plus the ids that begin (bos) and end (eos) a story."""

    backend: tokenizers.Tokenizer
    bos_id: int
    eos_id: int
    kind: str  # "bpe" | "words" | "gpt2" | "llama2c"
    chat_template: str | None = None  # an instruct model's Jinja template (transformers' `chat_template`)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def unk_token(self) -> str | None:
        return getattr(self.backend.model, "unk_token", None)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """The ids of `text`, optionally with bos before and eos after."""
        return self._frame(self.backend.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """`encode` for many texts at once, in parallel in the backend."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [self._frame(e.ids, bos, eos) for e in encodings]

    def _frame(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        """Text of `ids` (a list, array or tensor), without bos/eos; <unk> shows as '<unk>'."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        # Each story is decoded on its own: a sentencepiece decoder drops the leading space of the first piece
        # after every BOS, as llama2.c's run.c prints it. For byte-level kinds this changes nothing.
        hidden = self._hidden_ids
        stories, story = [], []
        for i in ids:
            if i == self.bos_id:
                stories.append(story)
                story = []
            elif i not in hidden:
                story.append(i)
        stories.append(story)
        return "".join(self._decode_story(s) for s in stories if s)

    def _decode_story(self, ids: list[int]) -> str:
        if self.kind == "llama2c":
            return decode_llama2c(self.backend, ids)
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def _hidden_ids(self) -> set[int]:
        """Special tokens that decode drops: all but <unk>, whose absence would silently lose words."""
        specials = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        return specials - {self.backend.token_to_id(self.unk_token) if self.unk_token else None}

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text an instruct model continues for `messages` ({role, content} dicts): its chat template with the
        generation prompt, rendered as transformers renders it. The beginning-of-story token is left out of the text
        (encode(bos=True) adds it), so it is never there twice."""
        if not self.chat_template:
            raise ConfigError("this model has no chat template: it continues stories, not conversations (a model "
                              "fine-tuned with `talelab finetune --task instruct` stores its template)")
        # deferred: transformers takes seconds to import, and only instruct models have a template to render
        from transformers.utils.chat_template_utils import render_jinja_template

        eos = self.backend.id_to_token(self.eos_id)
        rendered, _ = render_jinja_template([messages], chat_template=self.chat_template, add_generation_prompt=True,
                                            bos_token="", eos_token=eos)
        return rendered[0]

    def stream(self) -> TextStream:
        """An incremental decoder for printing tokens as they are generated."""
        return TextStream(self)

    def corpus_encoder(self) -> CorpusEncoder:
        """`encode_batch` for a long run of texts (pretokenizing a corpus), several times faster on stories."""
        return CorpusEncoder(self)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json, loadable by transformers.AutoTokenizer too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.backend.id_to_token(self.bos_id),
            "eos_token": self.backend.id_to_token(self.eos_id),
            **({"unk_token": self.unk_token} if self.unk_token else {}),
            "clean_up_tokenization_spaces": False,  # else transformers' decode turns " ." into "."
            "talelab_kind": self.kind,
            **({"chat_template": self.chat_template} if self.chat_template else {}),
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def fingerprint(self) -> str:
        """A short hash of the tokenizer.json content: shards and checkpoints record it to find mismatches."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()[:16]


class TextStream:
    """Turns ids, pushed one at a time, into text to print; the pieces concatenate to `Tokenizer.decode(ids)`.

    Text that ends in an unfinished UTF-8 character is held back until the character is complete; `flush`
    returns what is still held when generation ends. (tokenizers' DecodeStream does the same but raises on a
    broken byte sequence after a byte-fallback character, which a small model can generate.)
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._hidden = tokenizer._hidden_ids
        self._new_story()

    def _new_story(self) -> None:
        # `_ids[:_printed]` were printed already and stay as left context: a token's text can depend on its left
        # neighbours (bytes of one character, the dropped first space of a story).
        self._ids: list[int] = []
        self._printed = 0

    def push(self, token_id) -> str:
        """The text that `token_id` adds (maybe '')."""
        token_id = int(token_id)
        if token_id == self._tokenizer.bos_id:
            self._new_story()
            return ""
        if token_id in self._hidden:
            return ""
        self._ids.append(token_id)
        piece = self._unprinted()
        if piece.endswith("\ufffd"):
            return ""
        self._ids = self._ids[self._printed :]
        self._printed = len(self._ids)
        return piece

    def _unprinted(self) -> str:
        decode = self._tokenizer._decode_story
        return decode(self._ids)[len(decode(self._ids[: self._printed])) :]

    def flush(self) -> str:
        """Text held back at the end (an unfinished character decodes as '\ufffd'); the next push starts afresh."""
        rest = self._unprinted()
        self._new_story()
        return rest


# What the backend's GPT-2 regex calls whitespace (\s in Oniguruma: Unicode White_Space; Python's \s adds \x1c-\x1f)
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A run of whitespace and the non-whitespace run after it (or trailing whitespace): the regex never makes a word that
# runs from a non-whitespace character into whitespace, so no word crosses from one piece into the next.
_PIECES = re.compile(f"[{WHITESPACE}]*[^{WHITESPACE}]+|[{WHITESPACE}]+")


class CorpusEncoder:
    """Encodes many texts as `Tokenizer.encode_batch` does, each distinct piece once.

    A byte-level tokenizer (BPE, word-level, GPT-2's) splits text into words with GPT-2's regex before its model sees
    it, so a text's ids are its pieces' ids end to end (see _PIECES). Stories repeat a small set of pieces: each one's
    ids are remembered as a row of a table, up to `max_pieces` rows (then forgotten all at once, to bound memory), and
    the backend, whose regex pass costs most of encoding, only sees new pieces. A batch then costs one regex split and
    one dictionary look-up per piece; the ids are gathered from the table by numpy. Other tokenizers (llama2.c's, a
    lowercasing one) encode each text whole."""

    def __init__(self, tokenizer: Tokenizer, max_pieces: int = 1 << 19):
        self.tokenizer, self.max_pieces = tokenizer, max_pieces
        self.by_pieces = _words_stay_inside_pieces(tokenizer.backend)
        self._forget()

    def _forget(self) -> None:
        self.known: dict[str, int] = {}  # piece -> its row: ids self._ids[self._start[row]:][:self._length[row]]
        self._start = np.zeros(1024, dtype=np.int64)
        self._length = np.zeros(1024, dtype=np.int64)
        self._ids = np.zeros(4096, dtype=np.int64)
        self._num_ids = 0

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        lengths, ids = self.encode_flat(texts, bos, eos)
        return [story.tolist() for story in np.split(ids, np.cumsum(lengths)[:-1])] if len(texts) else []

    def encode_flat(self, texts: list[str], bos: bool = False, eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids per text, every text's ids end to end) as int64 arrays, each text framed by bos and eos."""
        if not self.by_pieces:
            stories = self.tokenizer.encode_batch(texts, bos, eos)
            lengths = np.fromiter(map(len, stories), dtype=np.int64, count=len(stories))
            return lengths, np.fromiter(itertools.chain.from_iterable(stories), dtype=np.int64,
                                        count=int(lengths.sum()))
        pieces_of = [_PIECES.findall(text) for text in texts]
        pieces = list(itertools.chain.from_iterable(pieces_of))
        rows = self._rows(pieces)
        piece_lengths = self._length[rows]
        per_piece_start = np.cumsum(piece_lengths) - piece_lengths
        body = np.arange(int(piece_lengths.sum())) + np.repeat(self._start[rows] - per_piece_start, piece_lengths)
        pieces_per_text = np.fromiter(map(len, pieces_of), dtype=np.int64, count=len(texts))
        # ids per text: the sum of its pieces' lengths (cumulative sums, since reduceat mishandles empty texts)
        ends = np.concatenate(([0], np.cumsum(piece_lengths)))[np.cumsum(pieces_per_text)]
        body_lengths = np.diff(ends, prepend=0)
        return self._frame(body_lengths, self._ids[body], bos, eos)

    def _rows(self, pieces: list[str]) -> np.ndarray:
        """The table row of every piece, encoding the new ones first."""
        rows = np.fromiter(map(self.known.get, pieces, itertools.repeat(-1)), dtype=np.int64, count=len(pieces))
        missing = np.flatnonzero(rows < 0)
        if not len(missing):
            return rows
        new = list(dict.fromkeys(pieces[i] for i in missing))
        if len(self.known) + len(new) > self.max_pieces:
            self._forget()
            new, missing = list(dict.fromkeys(pieces)), np.arange(len(pieces))
        self._add(new)
        rows[missing] = [self.known[pieces[i]] for i in missing]
        return rows

    def _add(self, pieces: list[str]) -> None:
        encodings = self.tokenizer.backend.encode_batch_fast(pieces, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        first_row, num_ids = len(self.known), int(lengths.sum())
        self._start = _room(self._start, first_row + len(pieces))
        self._length = _room(self._length, first_row + len(pieces))
        self._ids = _room(self._ids, self._num_ids + num_ids)
        self._start[first_row:first_row + len(pieces)] = self._num_ids + np.cumsum(lengths) - lengths
        self._length[first_row:first_row + len(pieces)] = lengths
        self._ids[self._num_ids:self._num_ids + num_ids] = np.fromiter(itertools.chain.from_iterable(ids),
                                                                       dtype=np.int64, count=num_ids)
        self._num_ids += num_ids
        self.known.update(zip(pieces, range(first_row, first_row + len(pieces))))

    def _frame(self, body_lengths: np.ndarray, body: np.ndarray, bos: bool, eos: bool) \
            -> tuple[np.ndarray, np.ndarray]:
        """bos before and eos after each text's ids, as Tokenizer._frame does for one text."""
        if not bos and not eos:
            return body_lengths, body
        lengths = body_lengths + bos + eos
        starts = np.cumsum(lengths) - lengths
        ids = np.empty(int(lengths.sum()), dtype=np.int64)
        is_body = np.ones(len(ids), dtype=bool)
        for wanted, token, at in ((bos, self.tokenizer.bos_id, starts), (eos, self.tokenizer.eos_id,
                                                                         starts + lengths - 1)):
            if wanted:
                ids[at] = token
                is_body[at] = False
        ids[is_body] = body
        return lengths, ids


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """`array`, or a copy twice as large when it holds fewer than `size` items: appending costs O(1) on average."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[:len(array)] = array
    return grown


def _words_stay_inside_pieces(backend: tokenizers.Tokenizer) -> bool:
    """Whether `backend` encodes text piece by piece: GPT-2's regex splits it into words, nothing before it changes
    or matches text across whitespace, and words are encoded alone and without chance (no BPE dropout)."""
    split = backend.pre_tokenizer
    if not isinstance(split, tokenizers.pre_tokenizers.ByteLevel) or not split.use_regex or split.add_prefix_space:
        return False
    if backend.normalizer is not None or getattr(backend.model, "dropout", None):
        return False
    return not any(t.lstrip or t.rstrip or t.single_word or re.search(f"[{WHITESPACE}]", t.content)
                   for t in backend.get_added_tokens_decoder().values())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A saved directory (tokenizer.json), a tokenizer.json file, a GPT-2 directory (vocab.json + merges.txt)
    or a llama2.c tokenizer .bin."""
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _load_json(path / "tokenizer.json")
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = load_gpt2(path)
            eot = backend.token_to_id(END_OF_TEXT)  # 50256
            return Tokenizer(backend, bos_id=eot, eos_id=eot, kind="gpt2")
        raise InputError(f"{path}: no tokenizer.json (nor GPT-2 vocab.json + merges.txt) in this directory")
    if not path.is_file():
        raise InputError(f"{path}: no such tokenizer file or directory")
    if path.suffix == ".bin":
        # llama2.c trains on [BOS] + story with no EOS, and run.c stops when it samples BOS: BOS ends a story too
        return Tokenizer(load_llama2c(path), bos_id=1, eos_id=1, kind="llama2c")
    return _load_json(path)


def _load_json(path: Path) -> Tokenizer:
    """tokenizer.json, with bos/eos (and talelab's kind) from a tokenizer_config.json beside it if there is one."""
    try:
        backend = tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a plain Exception naming line and column; also bad UTF-8, no access
        raise InputError(f"{path}: not a valid tokenizer.json ({e})") from None
    config_path = path.parent / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{config_path}: not valid JSON ({e})") from None
    vocab = backend.get_vocab(with_added_tokens=True)
    bos, eos = config.get("bos_token"), config.get("eos_token")
    bos, eos = (t.get("content") if isinstance(t, dict) else t for t in (bos, eos))  # AddedToken dicts too
    if bos is None or eos is None:
        bos, eos = ("<s>", "</s>") if "<s>" in vocab and "</s>" in vocab else (END_OF_TEXT, END_OF_TEXT)
    for name, token in (("bos_token", bos), ("eos_token", eos)):
        if token not in vocab:
            raise InputError(f"{path}: no {name} {token!r} in the vocabulary (set it in {config_path.name})")
    kind = config.get("talelab_kind") or _guess_kind(backend)
    return Tokenizer(backend, bos_id=vocab[bos], eos_id=vocab[eos], kind=kind,
                     chat_template=chat_template_in(path.parent, config))


def chat_template_in(directory: Path, config: dict) -> str | None:
    """A tokenizer's chat template: transformers writes it to chat_template.jinja, older versions into the config."""
    jinja = directory / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template") or None


def _guess_kind(backend: tokenizers.Tokenizer) -> str:
    """The kind of a tokenizer.json that talelab did not write."""
    model = backend.model
    if isinstance(model, tokenizers.models.WordLevel):
        return "words"
    if getattr(model, "byte_fallback", False):
        return "llama2c"
    return "bpe"


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train the tokenizer of `config.kind` on `texts` (stories); `<|endoftext|>` (id 0) is both bos and eos."""
    if config.kind == "bpe":
        if config.lowercase:
            raise ConfigError("lowercase: applies to word-level tokenizers only (kind: words); "
                              "a byte-level BPE keeps text exactly")
        if config.vocab_size < 257:
            raise ConfigError(f"vocab_size: {config.vocab_size} is below 257 (256 bytes + <|endoftext|>) for bpe")
    elif config.kind == "words":
        if config.vocab_size < 3:
            raise ConfigError(f"vocab_size: {config.vocab_size} leaves no room for words beside the 2 specials")
    else:
        raise ConfigError(f"kind: unknown tokenizer kind '{config.kind}' to train (choose bpe or words)")
    seen = _Counting(texts)
    if config.kind == "bpe":
        backend = train_bpe(seen, config.vocab_size, config.min_frequency)
    else:
        backend = train_words(seen, config.vocab_size, config.min_frequency, config.lowercase)
    if not seen.chars:
        raise InputError(f"{config.data}: no text to train the tokenizer on")
    eot = backend.token_to_id(END_OF_TEXT)
    return Tokenizer(backend, bos_id=eot, eos_id=eot, kind=config.kind)


class _Counting:
    """Passes texts through and counts their characters, so that an empty corpus is caught."""

    def __init__(self, texts: Iterable[str]):
        self._texts, self.chars = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.chars += len(text)
            yield text


def first_chars(texts: Iterable[str], limit: int) -> Iterator[str]:
    """The texts until their characters reach `limit` (0: all of them); the text that crosses it is the last."""
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if limit and seen >= limit:
            return


def train_tokenizer_from(config: TokenizerConfig) -> Tokenizer:
    """`talelab tokenizer train`: read `config.data` (prepared dir or corpus file), train, save to `config.out`."""
    data = Path(config.data)
    source = data / "train.jsonl" if data.is_dir() else data
    # Streamed: the trainer keeps word counts only, so memory follows the vocabulary of the corpus, not its size
    tokenizer = train_tokenizer(first_chars(iter_texts(str(source)), config.sample_chars), config)
    with atomic_directory(config.out) as tmp:
        tokenizer.save(tmp)
    return tokenizer
