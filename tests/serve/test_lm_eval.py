"""EleutherAI's lm-evaluation-harness (`lm_eval --model local-completions`) against a live `talelab serve`: its
loglikelihood tasks read the prompt logprobs that echo returns, and its figures agree with talelab's own scoring.

The tasks are written at test time from shared text: a loglikelihood_rolling task over a few stories of valid-head
(short enough for one window of `max_length`, so that lm_eval and `talelab eval loss` read the same tokens), and a
multiple_choice task built from talelab's probes (each probe's answer against other probes' answers). lm_eval needs
a tokenizer to count the context's tokens: the served model's own directory, which transformers loads offline.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from talelab import paths
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.evaluate.probes import DEFAULT_SETS, load_probe_set
from talelab.models.storage import load_model

from .conftest import live_server

MAX_LENGTH = 128  # lm_eval's window: prompts of up to 127 tokens and the one token it asks to be written after them

def task_yaml(name: str, data: str, output_type: str, metrics: list[str], **fields: str) -> str:
    """An lm_eval task over a local JSONL file; `fields` are doc_to_text / doc_to_choice / doc_to_target."""
    lines = [f"task: {name}", "dataset_path: json", f'dataset_kwargs: {{data_files: {{test: "{data}"}}}}',
             "test_split: test", f"output_type: {output_type}", *(f"{k}: {v}" for k, v in fields.items()),
             "metric_list: [" + ", ".join(f"{{metric: {m}}}" for m in metrics) + "]"]
    return "\n".join(lines) + "\n"


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def probe_questions() -> list[dict]:
    """Each probe's first answer among the first answers of the next three probes of its set, in turn at 0..3."""
    questions = []
    for name in DEFAULT_SETS:
        probes = load_probe_set(name)["probes"]
        for i, probe in enumerate(probes):
            others = [p["answers"][0] for p in probes[i + 1:] + probes[:i] if p["answers"][0] not in probe["answers"]]
            gold = i % 4
            choices = others[:3]
            choices.insert(gold, probe["answers"][0])
            questions.append({"prompt": probe["prompt"], "choices": choices, "gold": gold})
    return questions


def run_lm_eval(url: str, tokenizer_dir, tasks_dir, task: str) -> dict:
    # lm_eval pulls in datasets, evaluate and the harness's task machinery: only the tests that use it pay for it
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_args = (f"model=stories260K,base_url={url}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={tokenizer_dir},max_length={MAX_LENGTH},batch_size=8,max_retries=1")
    # no global seeding: the rest of the test session's random state stays its own
    return simple_evaluate(model="local-completions", model_args=model_args, tasks=[task], log_samples=True,
                           task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                           random_seed=None, numpy_random_seed=None, torch_random_seed=None)


@pytest.fixture(scope="module")
def lm_eval_server(stories260k):
    with live_server({"stories260K": stories260k}) as url:
        yield url


@pytest.mark.slow
def test_lm_eval_perplexity_of_stories_agrees_with_talelab_eval_loss(lm_eval_server, stories260k, shared, tmp_path):
    model, tokenizer, _ = load_model(stories260k)
    stories = [p for p in reference_pieces(shared / paths.TINYSTORIES_VALID)
               if len(tokenizer.encode(p)) < MAX_LENGTH - 2][:4]
    data = write_jsonl(tmp_path / "stories.jsonl", [{"text": story} for story in stories])
    (tmp_path / "stories.yaml").write_text(task_yaml(
        "talelab_stories", data, "loglikelihood_rolling", ["word_perplexity", "byte_perplexity", "bits_per_byte"],
        doc_to_text='""', doc_to_target='"{{text}}"'))
    figures = run_lm_eval(lm_eval_server, stories260k, tmp_path, "talelab_stories")["results"]["talelab_stories"]
    ours = score_documents(model, tokenizer, stories)
    words = sum(len(re.split(r"\s+", story)) for story in stories)  # lm_eval's count of words
    assert figures["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-3)
    assert figures["byte_perplexity,none"] == pytest.approx(2 ** ours["bits_per_byte"], rel=1e-3)
    assert figures["word_perplexity,none"] == pytest.approx(math.exp(ours["nll_nats"] / words), rel=1e-3)


@pytest.mark.slow
def test_lm_eval_multiple_choice_on_the_probes_scores_each_choice_as_the_model_does(lm_eval_server, stories260k,
                                                                                    tmp_path):
    model, tokenizer, _ = load_model(stories260k)
    questions = probe_questions()
    data = write_jsonl(tmp_path / "probes.jsonl", questions)
    (tmp_path / "probes.yaml").write_text(task_yaml("talelab_probes", data, "multiple_choice", ["acc"],
                                                    doc_to_text='"{{prompt}}"', doc_to_choice='"{{choices}}"',
                                                    doc_to_target="gold"))
    result = run_lm_eval(lm_eval_server, stories260k, tmp_path, "talelab_probes")
    samples = sorted(result["samples"]["talelab_probes"], key=lambda s: s["doc_id"])
    model.eval()
    right = 0
    for question, sample in zip(questions, samples, strict=True):
        expected = []
        for choice in question["choices"]:  # lm_eval's split: the context's tokens, then the rest of the whole's
            context = tokenizer.encode(question["prompt"])
            whole = tokenizer.encode(f"{question['prompt']} {choice}")
            with torch.no_grad():
                logits, _ = model(torch.tensor([whole[:-1]]))
            logp = logits[0].log_softmax(-1)
            expected.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        assert [ll for (ll, _greedy), in sample["resps"]] == pytest.approx(expected, abs=1e-4)
        right += max(range(len(expected)), key=expected.__getitem__) == question["gold"]
    assert result["results"]["talelab_probes"]["acc,none"] == pytest.approx(right / len(questions))
