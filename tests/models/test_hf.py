"""Hugging Face causal LMs and LoRA adapters load through load_model and run talelab's own decoding and scoring
unchanged: stories260K as a Hugging Face Llama gives the talelab model's figures and text exactly; the GPT-2-shaped
model (real GPT-2 tokenizer) agrees with itself batched and with transformers' own generate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from talelab import paths
from talelab.cli import main
from talelab.config import SamplingConfig
from talelab.decoding_batch import generate_batch
from talelab.errors import InputError
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.generate import generate, generate_text
from talelab.models.hf import HFCausalLM
from talelab.models.storage import load_model

PROMPTS = ["Once upon a time", "Lily saw a big dog in the park and she", "Tom"]


def greedy(max_new_tokens: int, **overrides) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0, **overrides)


@pytest.fixture(scope="module")
def talelab_260k(stories260k):
    return load_model(stories260k)


@pytest.fixture(scope="module")
def hf_260k(stories260k_hf):
    return load_model(stories260k_hf)


@pytest.fixture(scope="module")
def gpt2(gpt2_small):
    return load_model(gpt2_small)


def test_a_hugging_face_directory_loads_as_a_wrapped_causal_lm_with_its_tokenizer(hf_260k, talelab_260k):
    model, tokenizer, raw = hf_260k
    assert isinstance(model, HFCausalLM) and raw["model_type"] == "llama"
    assert (model.config.context_length, model.config.vocab_size) == (512, 512)
    assert model.num_parameters() == talelab_260k[0].num_parameters()
    reference = talelab_260k[1]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.kind) == (reference.bos_id, reference.eos_id, "llama2c")
    text = "Once upon a time, Lily's mom said \"hello\"."
    assert tokenizer.encode(text, bos=True) == reference.encode(text, bos=True)


@pytest.mark.slow
def test_stories260k_hf_scores_the_same_bits_per_byte_as_the_talelab_model(hf_260k, talelab_260k, shared):
    documents = reference_pieces(shared / paths.TINYSTORIES_VALID)
    hf = score_documents(*hf_260k[:2], documents)
    talelab = score_documents(*talelab_260k[:2], documents)
    assert (hf["tokens"], hf["bytes"]) == (talelab["tokens"], talelab["bytes"]) == (29212, 62046)
    assert hf["bits_per_byte"] == pytest.approx(talelab["bits_per_byte"], abs=1e-6)
    assert round(hf["bits_per_byte"], 3) == 0.975


def test_greedy_story_from_stories260k_hf_equals_the_talelab_models(hf_260k, talelab_260k):
    config = greedy(100, prompt="Once upon a time")
    story = generate_text(*hf_260k[:2], config)[0]
    assert story == generate_text(*talelab_260k[:2], config)[0]
    assert story.startswith("Once upon a time, there was a little girl named Lily. She loved to play outside")


def test_batched_greedy_rows_of_stories260k_hf_equal_their_single_streams_and_the_talelab_rows(hf_260k,
                                                                                                talelab_260k):
    model, tokenizer, _ = hf_260k
    prompts = [tokenizer.encode(p, bos=True) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3  # left padding of different widths
    configs = [greedy(40)] * len(prompts)
    rows = generate_batch(model, prompts, configs, tokenizer.eos_id)
    talelab_rows = generate_batch(talelab_260k[0], prompts, configs, tokenizer.eos_id)
    for prompt, row, talelab_row in zip(prompts, rows, talelab_rows):
        assert row.tokens == generate(model, prompt, greedy(40), tokenizer.eos_id)[0]
        assert row.tokens == talelab_row.tokens and len(row.tokens) == 40


def test_beam_search_on_stories260k_hf_equals_the_talelab_models(hf_260k, talelab_260k):
    config = greedy(30, prompt="Once upon a time", num_beams=3, num_samples=2)
    stories = generate_text(*hf_260k[:2], config)
    assert stories == generate_text(*talelab_260k[:2], config) and stories[0] != stories[1]


def test_gpt2_uses_end_of_text_to_begin_and_end_a_story(gpt2):
    _, tokenizer, raw = gpt2
    assert raw["model_type"] == "gpt2" and tokenizer.kind == "bpe"
    assert tokenizer.bos_id == tokenizer.eos_id == tokenizer.backend.token_to_id("<|endoftext|>") == 50256
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_gpt2_greedy_equals_transformers_own_generate(gpt2):
    model, tokenizer, _ = gpt2
    prompt = tokenizer.encode("Once upon a time", bos=True)
    ours = generate(model, prompt, greedy(40, stop_at_eos=False), tokenizer.eos_id)[0]
    ids = torch.tensor([prompt])
    # the mask says the leading <|endoftext|> is real: pad = eos would otherwise hide it (GPT-2's classic pitfall)
    hf = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                           eos_token_id=None, pad_token_id=tokenizer.eos_id)
    assert ours == hf[0, len(prompt):].tolist()


def test_gpt2_batched_greedy_rows_equal_their_single_streams(gpt2):
    model, tokenizer, _ = gpt2
    prompts = [tokenizer.encode(p, bos=True) for p in PROMPTS]
    rows = generate_batch(model, prompts, [greedy(30)] * len(prompts), tokenizer.eos_id)
    for prompt, row in zip(prompts, rows):
        assert row.tokens == generate(model, prompt, greedy(30), tokenizer.eos_id)[0]


def test_gpt2_generation_stops_at_end_of_text(gpt2):
    model, tokenizer, _ = gpt2
    prompt = tokenizer.encode("They lived happily ever after.", bos=True)
    # after a story's last sentence the model gives <|endoftext|> a few per cent: some of 8 seeded rows draw it
    configs = [SamplingConfig(max_new_tokens=40, temperature=1.0, seed=seed) for seed in range(8)]
    rows = generate_batch(model, [prompt] * len(configs), configs, tokenizer.eos_id)
    stopped = [row for row in rows if row.finish_reason == "stop"]
    assert stopped and all(len(row.tokens) < 40 for row in stopped)
    assert all(tokenizer.eos_id not in row.tokens for row in rows)
    stories = generate(model, prompt, SamplingConfig(max_new_tokens=40, temperature=1.0, seed=0, num_samples=8),
                       tokenizer.eos_id)  # the single-prompt path: stories end at the eos, which is not returned
    assert any(len(s) < 40 for s in stories) and all(tokenizer.eos_id not in s for s in stories)


def test_gpt2_beam_search_returns_distinct_ranked_stories(gpt2):
    model, tokenizer, _ = gpt2
    prompt = tokenizer.encode("Once upon a time", bos=True)
    beams = generate(model, prompt, greedy(20, num_beams=3, num_samples=3), tokenizer.eos_id)
    assert len(beams) == 3 and len({tuple(b) for b in beams}) == 3

    def log_prob(tokens):  # summed over the new tokens, by one full forward pass
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
        return logits.log_softmax(-1)[0, len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).sum().item()

    scores = [log_prob(b) / len(b) for b in beams]  # length_penalty 1: ranked by mean log-prob
    assert scores == sorted(scores, reverse=True)


def make_adapter(base_dir, out, target_modules):
    """A tiny LoRA adapter, B randomised (peft's default zeros it) so that it changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    adapted = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=target_modules,
                                              init_lora_weights=False))
    adapted.save_pretrained(out)
    return out


@pytest.mark.parametrize("base, targets", [("stories260k_hf", ["q_proj", "v_proj"]), ("gpt2_small", ["c_attn"])])
@pytest.mark.slow
def test_a_lora_adapter_loads_unmerged_and_gives_peft_s_own_logits(base, targets, request, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = request.getfixturevalue(base)
    adapter = make_adapter(base_dir, tmp_path / "adapter", targets)
    model, tokenizer, raw = load_model(adapter)
    assert model.config.adapter == str(adapter) and raw["adapter_config"]["r"] == 2
    ids = torch.tensor([tokenizer.encode("Once upon a time, there was a dog named Max.", bos=True)])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = reference(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours - plain).abs().max() > 0.1  # the adapter is really there, and unmerged: the base is intact
    prompts = [tokenizer.encode(p, bos=True) for p in PROMPTS[:2]]
    rows = generate_batch(model, prompts, [greedy(10)] * 2, tokenizer.eos_id)
    assert [r.tokens for r in rows] == [generate(model, p, greedy(10), tokenizer.eos_id)[0] for p in prompts]


@pytest.mark.slow
def test_generate_and_eval_loss_from_the_command_line_on_a_hugging_face_directory(stories260k_hf, talelab_260k,
                                                                                 capsys):
    assert main(["generate", "--model", str(stories260k_hf), "--temperature", "0", "--max-new-tokens", "50"]) == 0
    printed = capsys.readouterr().out
    assert printed == generate_text(*talelab_260k[:2], greedy(50, prompt="Once upon a time"))[0] + "\n"
    assert main(["eval", "loss", "--model", str(stories260k_hf), "--text", paths.TINYSTORIES_VALID,
                 "--protocol", "reference"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 29212 and round(report["bits_per_byte"], 3) == 0.975


def test_a_hugging_face_directory_without_tokenizer_files_is_one_line(stories260k_hf, tmp_path, capsys):
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stories260k_hf / name, bare / name)
    with pytest.raises(InputError, match="no tokenizer files"):
        load_model(bare)
    assert main(["generate", "--model", str(bare)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bare) in err[0] and "no tokenizer files" in err[0]


def test_a_directory_that_is_no_model_is_one_line_naming_what_was_expected(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a model directory.*'model_type'.*adapter_config.json"):
        load_model(tmp_path)
    assert main(["eval", "loss", "--model", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0]


def test_an_adapter_whose_base_is_missing_is_one_line(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA"}), encoding="utf-8")
    with pytest.raises(InputError, match="base model .*gone' is neither a directory nor a hub id"):
        load_model(adapter)


def test_interpret_studies_an_adapter_through_the_same_loader(stories260k_hf, tmp_path):
    from talelab.interpret.inputs import forward, load_subject

    adapter = make_adapter(stories260k_hf, tmp_path / "adapter", ["q_proj", "v_proj"])
    subject = load_subject(adapter)
    assert (subject.family, subject.n_layers, subject.n_heads, subject.context_length) == ("llama", 5, 8, 512)
    model, tokenizer, _ = load_model(adapter)
    ids = torch.tensor([tokenizer.encode("Once upon a time", bos=True)])
    with torch.no_grad():
        out = forward(subject, ids, output_attentions=True)  # eager attention: the weights are there to study
    assert len(out.attentions) == 5 and torch.allclose(out.logits, model(ids)[0], atol=1e-5)
