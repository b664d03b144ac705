"""Answers scored as training scores them: the reference perplexity counts an answer's tokens and EOS, never the
question's (hand-computed on a stand-in model with known probabilities); a fixed question set answered by a fine-tuned
model; the 80/5/15 split with its test loss."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2TokenizerFast

from talelab.config import FinetuneConfig
from talelab.finetune.questions import completion_nll, perplexities, scored_sequence
from talelab.finetune.sft import finetune, held_out_figures, prepare_run, split_examples

DOLLY = "data/instruct/dolly-subset.jsonl"


class HalfEos(torch.nn.Module):
    """A stand-in causal LM: after any token, EOS has probability 1/2 and each of the other V - 1 tokens
    1 / (2 (V - 1)) (logit ln(V - 1) for EOS, 0 for the rest)."""

    def __init__(self, vocab: int, eos: int):
        super().__init__()
        self.vocab, self.eos = vocab, eos
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.eos] = math.log(self.vocab - 1)
        return SimpleNamespace(logits=logits)


def test_reference_perplexity_counts_the_answer_tokens_and_eos_only(shared):
    tokenizer = GPT2TokenizerFast.from_pretrained(shared / "tokenizers/gpt2")  # "Hello world" = [15496, 995]
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    examples = [{"prompt": "Hello", "completion": " world"}, {"prompt": "Hello", "completion": " world world"},
                {"text": "Hello world"}]
    assert scored_sequence(tokenizer, examples[0], 512) == ([15496, 995, eos], 1)  # EOS appended, as trl does
    scores = completion_nll(HalfEos(vocab, eos), tokenizer, examples, max_length=512)
    other, half = math.log(2 * (vocab - 1)), math.log(2)  # -ln p of a non-EOS token, of EOS
    # ' world' + EOS; ' world world' + EOS; a text row: every token after its first, and EOS
    expected = [(other + half, 2), (2 * other + half, 3), (other + half, 2)]
    for (nll, tokens), (want_nll, want_tokens) in zip(scores, expected):  # to float32 logits' precision
        assert tokens == want_tokens and nll == pytest.approx(want_nll, rel=1e-5)
    figures = perplexities(expected[:2])  # the two answers: every token weighs the same, or every answer
    assert figures["scored_tokens"] == 5
    assert figures["perplexity"] == pytest.approx(math.exp((3 * other + 2 * half) / 5), rel=1e-12)
    assert figures["mean_perplexity"] == pytest.approx(
        (math.sqrt(4 * (vocab - 1)) + (8 * (vocab - 1) ** 2) ** (1 / 3)) / 2, rel=1e-12)
    # cut to max_length as training cuts: ' world world' keeps one scored token; a prompt filling it keeps none
    assert completion_nll(HalfEos(vocab, eos), tokenizer, examples[1:2], max_length=2)[0][1] == 1
    assert completion_nll(HalfEos(vocab, eos), tokenizer, examples[1:2], max_length=1)[0] == (0.0, 0)


@pytest.mark.slow
def test_the_tokens_scored_are_those_the_trainer_scores(stories260k_hf, quick, tmp_path):
    for task, data in (("instruct", DOLLY), ("lm", "data/poetry/shakespeare-sonnets.txt")):
        run = prepare_run(quick(base=str(stories260k_hf), task=task, data=data, out=str(tmp_path / task),
                                eval_fraction=0.04, batch_size=8, max_length=128), log=lambda _: None)
        assert 1 < len(run.held_out) <= 8  # one evaluation batch: eval_loss is the mean over its scored tokens
        scores = completion_nll(run.trainer.model, run.tokenizer, run.held_out, 128)
        loss = sum(n for n, _ in scores) / sum(t for _, t in scores)
        assert loss == pytest.approx(run.trainer.evaluate()["eval_loss"], rel=1e-5), task
        # the loss finetune reports weighs every token the same: in batches of one, where transformers' eval_loss
        # (a mean of batch means) moves, it stays
        run.trainer.args.per_device_eval_batch_size = 1  # instruct: transformers says 6.756 here, 6.604 at 8
        assert held_out_figures(run.trainer, lambda _: None, "")["eval_loss"] == pytest.approx(loss, rel=1e-5), task


def test_an_80_5_15_split_is_seeded_disjoint_and_whole():
    examples = [{"text": f"poem {i}"} for i in range(2206)]  # the size of Poetry-Instructions
    train, held, test = split_examples(examples, FinetuneConfig(base="b", eval_fraction=0.05, test_fraction=0.15),
                                       tokenizer=None)
    assert (len(train), len(held), len(test)) == (1765, 110, 331)
    texts = [e["text"] for part in (train, held, test) for e in part]
    assert sorted(texts) == sorted(e["text"] for e in examples)  # every example in exactly one part
    again = split_examples(examples, FinetuneConfig(base="b", eval_fraction=0.05, test_fraction=0.15), None)
    assert again == (train, held, test)
    other_seed = split_examples(examples, FinetuneConfig(base="b", eval_fraction=0.05, test_fraction=0.15, seed=1),
                                None)
    assert other_seed[2] != test
    no_test = split_examples(examples, FinetuneConfig(base="b", eval_fraction=0.05), None)
    assert no_test[1] == held and no_test[2] == []  # a test split leaves the held-out examples where they were


@pytest.mark.slow
def test_finetune_answers_the_questions_and_measures_its_test_split(stories260k_hf, shared, quick, tmp_path):
    rows = [json.loads(line) for line in (shared / DOLLY).read_text(encoding="utf-8").splitlines()]
    picked = sorted(rows, key=lambda r: len(r["prompt"]))[:3]  # prompts that leave room for an answer
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    out = tmp_path / "sft"
    lines = []
    summary = finetune(quick(base=str(stories260k_hf), task="instruct", data=DOLLY, out=str(out), max_steps=2,
                             max_length=256, eval_fraction=0.05, test_fraction=0.15, questions=str(questions),
                             max_new_tokens=16), log=lines.append)
    assert (summary["train_examples"], summary["held_out_examples"], summary["test_examples"]) == (120, 8, 23)
    assert summary["test_loss"] > 0 and summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_loss"] for r in records if "test_loss" in r] == [summary["test_loss"]]  # measured once
    figures = summary["questions"]
    assert figures["count"] == 3 and figures["template"] == "alpaca" and 0 <= figures["bleu"] <= 100
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [a["reference"] for a in answers] == [r["answer"].replace("###eos_token###", "").strip() for r in picked]
    assert all(a["prompt"].endswith(r["prompt"].rstrip()) and isinstance(a["answer"], str)
               for a, r in zip(answers, picked))
    assert figures["unscored"] == 0 and figures["scored_tokens"] == sum(a["reference_tokens"] for a in answers)
    assert figures["perplexity"] == pytest.approx(
        math.exp(sum(a["reference_nll"] for a in answers) / figures["scored_tokens"]))
    log = "\n".join(lines)
    assert "examples: 120 for training, 8 held out, 23 for the test" in log and "test loss: " in log
    assert "questions: 3 from questions.jsonl: BLEU" in log
