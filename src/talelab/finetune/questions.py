"""Answers and their scores: greedy completion of prompts, the negative log-likelihood of completions given their
prompts (the tokens training scores), and a fixed question set with reference answers (`--questions`), which
`finetune`, `dpo` and `trials` share.

A question set is JSONL read as instruct data are (`formats.build_examples`), so a question reaches the model in the
prompt template it was trained on. Each model answers every question greedily; the figures are the corpus BLEU of the
answers against the references and the perplexity of the references themselves given the questions; answers.jsonl
keeps every answer for a report to show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from talelab.atomic import write_text_atomic
from talelab.finetune.base import context_length
from talelab.finetune.formats import CHAT_TEMPLATES, build_examples
from talelab.train.metrics import mean_perplexity

ANSWERS_FILE = "answers.jsonl"


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt as training tokenized it: text with the tokenizer's own special tokens (a BOS it adds
    itself), or chat messages with the assistant's turn opened."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return tokenizer(prompt)["input_ids"]


@torch.no_grad()
def complete(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             batch_size: int = 8) -> list[str]:
    """The generated continuation of each prompt (decoded without special tokens), stopping at EOS."""
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # rows continue from their last position
    context = context_length(model)
    if context:  # keep the prompt's end when prompt + answer would outgrow the model's positions
        max_new_tokens = min(max_new_tokens, context // 2)
    outputs = []
    for start in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        ids = [i[-(context - max_new_tokens):] for i in ids] if context else ids
        width = max(map(len, ids))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])
        attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        torch.manual_seed(seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else dict(do_sample=False)
        generated = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, **sampling)
        outputs += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    tokenizer.padding_side = padding_side
    return [o.strip() for o in outputs]


def reference_text(example: dict) -> str:
    """An example's reference answer: its completion's text."""
    completion = example["completion"]
    return completion[0]["content"] if isinstance(completion, list) else completion.strip()


def corpus_bleu(answers: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (0-100, its 13a tokenizer) of answers against one reference each."""
    return sacrebleu.corpus_bleu(answers, [references]).score


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))


def scored_sequence(tokenizer, example: dict, max_length: int) -> tuple[list[int], int]:
    """(token ids, position of the first scored token) of an example as trl's SFTTrainer builds its row: plain text
    with EOS appended, every token after the first scored; a text prompt + completion with EOS appended, or chat
    messages through the chat template, the completion scored from where its tokens part from the prompt's alone.
    Cut to max_length tokens, as training cuts them."""
    eos = tokenizer.eos_token or ""
    if "text" in example:
        text = example["text"]
        return tokenizer(text if text.endswith(eos) else text + eos)["input_ids"][:max_length], 1
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, list):
        whole = list(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"])
    else:
        whole = tokenizer(prompt + (completion if completion.endswith(eos) else completion + eos))["input_ids"]
    start = max(1, common_prefix_length(encode_prompt(tokenizer, prompt), whole))
    return whole[:max_length], start


@torch.no_grad()
def completion_nll(model, tokenizer, examples: list[dict], max_length: int,
                   batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, scored tokens) of each example: the tokens training would score
    (`scored_sequence`), each predicted from the tokens before it."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = []
    for first in range(0, len(examples), batch_size):
        rows = [scored_sequence(tokenizer, e, max_length) for e in examples[first:first + batch_size]]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=model.device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=model.device)
        # position t predicts token t + 1; token t + 1 counts when it is scored and not padding
        scored = torch.tensor([[start <= t + 1 < len(ids) for t in range(width - 1)] for ids, start in rows],
                              device=model.device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        # over rows of the vocabulary, the last dimension: summing a strided dimension loses float32 precision
        nll = F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none").view_as(scored)
        nll = nll * scored
        scores += list(zip(nll.sum(1).tolist(), scored.sum(1).tolist()))
    model.train(was_training)
    return scores


def perplexities(scores: list[tuple[float, int]]) -> dict:
    """exp(total NLL / total scored tokens), every token weighing the same, and the mean over examples of each one's
    own perplexity, every example weighing the same."""
    nll, tokens = sum(n for n, _ in scores), sum(t for _, t in scores)
    return {"perplexity": math.exp(min(nll / tokens, 50.0)) if tokens else math.nan, "scored_tokens": tokens,
            "mean_perplexity": mean_perplexity([n for n, _ in scores], [t for _, t in scores])}


def stored_template(tokenizer) -> str:
    """The talelab template a fine-tune stored with the model (its chat_template), else 'auto'."""
    return next((name for name, jinja in CHAT_TEMPLATES.items() if tokenizer.chat_template == jinja), "auto")


def question_figures(model, tokenizer, questions: str, template: str, max_new_tokens: int, max_length: int,
                     out: Path, note, data_root=None) -> dict:
    """Answer every question greedily; corpus BLEU against the references, the perplexity of the references given
    the questions; write out/answers.jsonl (each question's prompt, reference, answer and reference perplexity).
    Sequences are cut to max_length tokens, as training cuts them, and to the model's context."""
    max_length = min(max_length, context_length(model) or max_length)
    examples, _ = build_examples("instruct", questions, tokenizer, template, data_root=data_root)
    answers = complete(model, tokenizer, [e["prompt"] for e in examples], max_new_tokens)
    references = [reference_text(e) for e in examples]
    scores = completion_nll(model, tokenizer, examples, max_length)
    rows = [{"prompt": e["prompt"], "reference": reference, "answer": answer, "reference_nll": nll,
             "reference_tokens": tokens, "reference_perplexity": math.exp(min(nll / tokens, 50.0)) if tokens else None}
            for e, reference, answer, (nll, tokens) in zip(examples, references, answers, scores)]
    write_text_atomic(Path(out) / ANSWERS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    unscored = sum(not tokens for _, tokens in scores)  # the prompt alone fills max_length, as training drops it
    figures = {"file": questions, "count": len(examples), "template": examples[0]["template"],
               "bleu": corpus_bleu(answers, references), **perplexities(scores), "unscored": unscored,
               "answers": ANSWERS_FILE}
    note(f"questions: {len(examples)} from {Path(questions).name}: BLEU {figures['bleu']:.2f} of greedy answers; "
         f"perplexity of the reference answers {figures['perplexity']:.2f}"
         + (f" ({unscored} not scored: the prompt alone fills max_length {max_length})" if unscored else "")
         + f"; answers in {ANSWERS_FILE}")
    return figures
