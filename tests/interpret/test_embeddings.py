"""`talelab interpret embeddings`: nearest tokens by cosine of the input embedding rows, worked out by hand on a
planted embedding; every talelab family and Hugging Face models; words of several tokens and words not in the
vocabulary."""

import json
import math

import pytest
import torch

from talelab import paths
from talelab.cli import main
from talelab.config import ModelConfig, TokenizerConfig
from talelab.interpret.embeddings import run_embeddings, word_tokens
from talelab.models import build_model
from talelab.tokenizer import load_tokenizer, train_tokenizer_from


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared):
    return load_tokenizer(shared / paths.GPT2_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def word_level(tmp_path_factory, prepared):
    """A word-level tokenizer of the 300 most frequent words of the prepared stories: most words are <unk>."""
    out = tmp_path_factory.mktemp("words") / "words"
    return train_tokenizer_from(TokenizerConfig(data=str(prepared), out=str(out), kind="words", vocab_size=300))


def planted_lstm(tokenizer):
    """An LSTM whose embedding rows are zero but for three words: doctor (1, 0, 0, 0), nurse (1, 1, 0, 0) and
    teacher (3, 4, 0, 0) (inside a sentence: " doctor", GPT-2's Ġdoctor)."""
    model = build_model(ModelConfig(family="lstm", vocab_size=tokenizer.vocab_size, d_model=4, n_layers=1,
                                    context_length=16, tie_embeddings=False))
    rows = {"doctor": [1.0, 0, 0, 0], "nurse": [1.0, 1, 0, 0], "teacher": [3.0, 4, 0, 0]}
    with torch.no_grad():
        model.embed.weight.zero_()
        for word, row in rows.items():
            (token,) = word_tokens(tokenizer, word)
            model.embed.weight[token] = torch.tensor(row)
    return model


def test_nearest_tokens_of_a_planted_embedding_by_hand(gpt2_tokenizer, saved, tmp_path):
    model_dir = saved(planted_lstm(gpt2_tokenizer), gpt2_tokenizer)
    report = run_embeddings(model_dir, "doctor,teacher", tmp_path, top=2)
    doctor, teacher = report["words"]
    # doctor . nurse = 1 over lengths 1 and sqrt(2); doctor . teacher = 3 over 1 and 5; every other row is zero
    assert doctor["token"] == " doctor" and doctor["neighbours"] == [(" nurse", round(1 / math.sqrt(2), 4)),
                                                                     (" teacher", 0.6)]
    # teacher . nurse = 3 + 4 = 7 over 5 and sqrt(2): 0.9899
    assert teacher["neighbours"] == [(" nurse", round(7 / (5 * math.sqrt(2)), 4)), (" doctor", 0.6)]
    assert report["family"] == "talelab lstm" and "note" not in doctor
    saved_report = json.loads((tmp_path / "embeddings.json").read_text())
    assert saved_report["words"][0]["neighbours"] == [[" nurse", 0.7071], [" teacher", 0.6]]
    assert '| 1 | " nurse" | 0.7071 |' in (tmp_path / "embeddings.md").read_text()


def test_a_word_of_several_tokens_uses_its_first_and_says_so(gpt2_tokenizer, saved, tmp_path):
    model_dir = saved(planted_lstm(gpt2_tokenizer), gpt2_tokenizer)
    (entry,) = run_embeddings(model_dir, ["xylophone"], tmp_path, top=3)["words"]
    assert entry["tokens"] == [" x", "yl", "ophone"] and entry["token"] == " x"
    assert entry["note"] == "'xylophone' is 3 tokens (\" x\" \"yl\" \"ophone\"): its token \" x\" is used"
    assert len(entry["neighbours"]) == 3


def test_a_word_missing_from_a_word_level_vocabulary_is_one_line_not_a_crash(word_level, saved, tmp_path, capsys):
    compressor = build_model(ModelConfig(family="compressor", vocab_size=word_level.vocab_size, d_model=32,
                                         n_layers=2, n_heads=4, context_length=32))
    model_dir = saved(compressor, word_level)
    assert main(["interpret", "embeddings", "--model", str(model_dir), "--words", "happy, zzzqqq", "--top", "4",
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "'zzzqqq' is not in the vocabulary (the tokenizer writes it as <unk>)" in printed
    report = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    happy, missing = report["words"]
    assert happy["token"] == " happy" and len(happy["neighbours"]) == 4 and report["family"] == "talelab compressor"
    assert missing == {"word": "zzzqqq", "missing": "'zzzqqq' is not in the vocabulary (the tokenizer writes it as "
                                                    "<unk>)"}


def test_a_hugging_face_llama_has_the_neighbours_of_its_talelab_original(stories260k, stories260k_hf, tmp_path):
    ours = run_embeddings(stories260k, "happy,dog", tmp_path / "ours", top=5)
    theirs = run_embeddings(stories260k_hf, "happy,dog", tmp_path / "theirs", top=5)
    assert theirs["family"] == "llama" and ours["family"] == "talelab transformer"
    for a, b in zip(ours["words"], theirs["words"], strict=True):
        assert a["tokens"] == b["tokens"]
        assert [t for t, _ in a["neighbours"]] == [t for t, _ in b["neighbours"]]
        assert [c for _, c in a["neighbours"]] == pytest.approx([c for _, c in b["neighbours"]], abs=1e-4)


def test_no_words_and_a_missing_model_are_one_line_errors(stories260k, tmp_path, capsys):
    for argv, message in ((["--model", stories260k, "--words", " , "], "--words: name at least one word"),
                          (["--model", tmp_path / "nowhere", "--words", "dog"], "no such model directory"),
                          (["--model", stories260k, "--words", "dog", "--top", "0"], "--top 0: must be at least 1")):
        assert main(["interpret", "embeddings", *map(str, argv), "--out", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
