import pytest

from talelab.config import TokenizerConfig
from talelab.errors import ConfigError, InputError
from talelab.tokenizer import train_tokenizer

AWKWARD_TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "Tom said, â€œIâ€™m sorry.â€\x9d",  # the mojibake of valid-head.txt, control character included
    "The robot 🤖 waved 👋🏽 at the 🐉!",
    "日本語のお話。 Ça va? naïve cafe\u0301 (decomposed é)",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows lines\n\n\nand blank lines\n",
    "<unk> and <s> are plain text",
    "",
]


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
@pytest.mark.slow
def test_bpe_round_trips_any_text_exactly(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_endoftext_written_in_the_text_is_the_special_token_as_in_transformers(bpe):
    assert bpe.encode("The end.<|endoftext|>Once")[-2] == 0
    assert bpe.decode(bpe.encode("The end.<|endoftext|>Once")) == "The end.Once"


def test_bpe_has_the_requested_vocab_size_and_endoftext_as_id_0_for_bos_and_eos(bpe):
    assert bpe.vocab_size == 2048
    assert bpe.backend.id_to_token(0) == "<|endoftext|>"
    assert (bpe.bos_id, bpe.eos_id, bpe.kind) == (0, 0, "bpe")
    assert bpe.encode("Lily", bos=True, eos=True)[0] == bpe.encode("Lily", bos=True, eos=True)[-1] == 0


def test_bpe_compresses_tinystories_to_several_bytes_per_token(bpe, reference_pieces):
    n_bytes = sum(len(piece.encode("utf-8")) for piece in reference_pieces)
    n_tokens = sum(len(ids) for ids in bpe.encode_batch(reference_pieces))
    assert n_bytes / n_tokens > 3.0  # 2048 merges of children's-story English; raw bytes would be 1.0


def test_encode_batch_gives_the_same_ids_as_encode_with_bos_and_eos(bpe, reference_pieces):
    pieces = reference_pieces[:20]
    assert bpe.encode_batch(pieces, bos=True, eos=True) == [bpe.encode(p, bos=True, eos=True) for p in pieces]


def test_training_refuses_lowercase_for_bpe_and_unknown_kinds():
    with pytest.raises(ConfigError, match="lowercase"):
        train_tokenizer(["a story"], TokenizerConfig(kind="bpe", lowercase=True))
    with pytest.raises(ConfigError, match="kind"):
        train_tokenizer(["a story"], TokenizerConfig(kind="gpt2"))
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["a story"], TokenizerConfig(kind="bpe", vocab_size=100))


def test_training_on_no_text_is_an_input_error_naming_the_data():
    with pytest.raises(InputError, match="empty.jsonl"):
        train_tokenizer(iter(["", ""]), TokenizerConfig(data="runs/empty.jsonl"))


def test_sample_chars_trains_on_the_first_stories_only(prepared, tmp_path):
    from talelab.data.sources import read_documents
    from talelab.tokenizer import train_tokenizer_from

    stories = read_documents(str(prepared / "train.jsonl"))
    sample = TokenizerConfig(data=str(prepared), out=str(tmp_path / "sample"), vocab_size=300, sample_chars=20_000)
    sampled = train_tokenizer_from(sample)
    first, chars = [], 0  # the stories whose characters reach 20,000, the one that crosses it included
    for story in stories:
        first.append(story)
        chars += len(story)
        if chars >= 20_000:
            break
    assert len(first) < len(stories)
    on_prefix = train_tokenizer(first, TokenizerConfig(vocab_size=300))
    assert sampled.backend.to_str() == on_prefix.backend.to_str()
