"""Generation on real tiny transformers: the cached paths against full forward passes, and planted models whose
next-token distribution is known."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from talelab.config import ModelConfig, SamplingConfig
from talelab.errors import ConfigError, MismatchError
from talelab import paths
from talelab.generate import (beam_search, fast_decoder, generate, generate_text, keep_top_p, penalize_repeats,
                              pick)
from talelab.models.transformer import Transformer

PROMPT = [1, 2, 3]
GREEDY = dict(temperature=0.0, seed=0)


def random_model(seed: int = 0, vocab: int = 64, **overrides) -> Transformer:
    """A tiny transformer with large random weights, so that its next-token distributions are far from uniform."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, context_length=64,
                                    **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def self_loving_model(vocab: int = 48) -> Transformer:
    """Planted: every logit is negative and the largest is the token just read, so greedy repeats it forever."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, context_length=64,
                                    tie_embeddings=False))
    with torch.no_grad():
        for p in model.blocks.parameters():
            if p.dim() == 2:
                p.zero_()  # the blocks add nothing: the last hidden state is the last token's embedding
        directions = F.normalize(torch.randn(vocab, 31), dim=-1)
        model.embed.weight.copy_(torch.cat([torch.ones(vocab, 1), directions], dim=1))
        # logit(u | t) = 4 * (-10 + d_t . d_u): in [-44, -36], largest for u = t
        model.lm_head.weight.copy_(torch.cat([torch.full((vocab, 1), -10.0), directions], dim=1))
    return model.eval()


@torch.no_grad()
def full_forward_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The reference: re-run the whole sequence for every new token, no cache."""
    seq = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@torch.no_grad()
def log_prob(model, prompt: list[int], new: list[int]) -> float:
    """Summed log-probability of `new` after `prompt`, from one full forward pass."""
    seq = torch.tensor([prompt + new])
    logits, _ = model(seq)
    logp = logits[0, len(prompt) - 1:-1].log_softmax(dim=-1)
    return float(logp.gather(1, seq[0, len(prompt):, None]).sum())


@pytest.mark.parametrize("overrides", [{}, dict(positions="learned", norm="layernorm", n_kv_heads=2,
                                                 activation="gelu")])
def test_greedy_with_cache_equals_argmax_of_full_forward_passes(overrides):
    model = random_model(**overrides)
    config = SamplingConfig(max_new_tokens=24, **GREEDY)
    assert generate(model, PROMPT, config, eos_id=None) == [full_forward_greedy(model, PROMPT, 24)]


def test_generation_stops_when_the_context_is_full():
    model = random_model()
    prompt = list(range(60))
    [tokens] = generate(model, prompt, SamplingConfig(max_new_tokens=100, **GREEDY), eos_id=None)
    assert tokens == full_forward_greedy(model, prompt, 4)
    assert generate(model, list(range(64)), SamplingConfig(max_new_tokens=100), eos_id=None) == [[]]


def test_beam_search_with_one_beam_equals_greedy():
    model = random_model()
    config = SamplingConfig(max_new_tokens=20, num_beams=1, **GREEDY)
    assert beam_search(model, PROMPT, config, eos_id=None) == generate(model, PROMPT, config, eos_id=None)


def test_beam_search_finds_sequences_at_least_as_likely_as_greedy_ranked_best_first():
    for seed in range(3):
        model = random_model(seed)
        [greedy] = generate(model, PROMPT, SamplingConfig(max_new_tokens=12, **GREEDY), eos_id=None)
        beams = generate(model, PROMPT, SamplingConfig(max_new_tokens=12, num_beams=4, num_samples=4), eos_id=None)
        assert len(beams) == 4 and all(len(b) == 12 for b in beams)
        scores = [log_prob(model, PROMPT, b) for b in beams]
        assert scores[0] >= log_prob(model, PROMPT, greedy) - 1e-4
        assert scores == sorted(scores, reverse=True)


def test_same_seed_gives_same_samples_and_other_seeds_differ():
    model = random_model()

    def run(seed):
        return generate(model, PROMPT, SamplingConfig(max_new_tokens=20, temperature=1.0, num_samples=2, seed=seed),
                        eos_id=None)

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    assert first[0] != first[1]  # the streams of one call are independent draws


@pytest.mark.parametrize("filters", [dict(temperature=0.0), dict(temperature=1.5, top_k=1),
                                     dict(temperature=1.5, top_p=1e-6)])
def test_filters_that_leave_one_token_equal_greedy(filters):
    model = random_model()
    config = SamplingConfig(max_new_tokens=20, num_samples=2, seed=3, **filters)
    reference = full_forward_greedy(model, PROMPT, 20)
    assert generate(model, PROMPT, config, eos_id=None) == [reference, reference]


def test_samples_come_only_from_the_top_k_and_the_nucleus():
    model = random_model()
    logits, _ = model(torch.tensor([PROMPT]))
    probs = logits[0, -1].softmax(dim=-1)
    ranked = probs.argsort(descending=True).tolist()
    nucleus_size = int((probs[ranked].cumsum(0) < 0.6).sum()) + 1  # smallest prefix reaching 0.6
    for filters, allowed in ((dict(top_k=3), ranked[:3]), (dict(top_p=0.6), ranked[:nucleus_size])):
        samples = generate(model, PROMPT, SamplingConfig(max_new_tokens=1, temperature=1.0, num_samples=300, seed=0,
                                                         **filters), eos_id=None)
        assert {s[0] for s in samples} == set(allowed)


def test_pick_draws_in_proportion_to_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    tokens = pick(logits, [SamplingConfig(temperature=1.0)], torch.rand(len(logits), 1, generator=generator))
    counts = torch.bincount(tokens, minlength=4) / len(tokens)
    assert torch.allclose(counts, logits[0].softmax(dim=-1), atol=0.015)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(keep_top_p(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.7) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]


@pytest.mark.parametrize("p", [0.3, 0.9, 0.999])
def test_top_p_shortlist_keeps_what_a_full_sort_keeps(p):
    """The shortlist (most likely 256) and its whole-vocabulary fallback (p = 0.999 on flat logits) both keep
    exactly the nucleus a full sort finds."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4000, generator=generator) * torch.tensor([[0.5], [1], [2], [4], [8], [0.1]])
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    drop = probs.cumsum(dim=-1) - probs >= p
    drop[:, 0] = False
    expected = torch.zeros_like(drop).scatter(1, order, ~drop)
    assert torch.equal(torch.isfinite(keep_top_p(logits, p)), expected)


def test_bfloat16_decoder_keeps_logits_within_rounding_of_float32():
    model = random_model()
    fast = fast_decoder(random_model(), dtype="bfloat16")
    idx = torch.tensor([PROMPT * 5])
    with torch.no_grad():
        exact, rounded = model(idx)[0], fast(idx)[0].float()
    assert (rounded - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.slow
def test_compiled_decoder_writes_the_same_greedy_story():
    model = random_model()
    fast = fast_decoder(random_model(), compile=True)
    config = SamplingConfig(max_new_tokens=20, **GREEDY)
    assert generate(fast, PROMPT, config, eos_id=None) == generate(model, PROMPT, config, eos_id=None)


@pytest.mark.slow
def test_compiled_decoder_freezes_its_weights():
    """The weights are constants of the compiled code (what lets Inductor fold and pre-pack them), not inputs: with
    `options={"freezing": True}` alone Dynamo had already made them graph inputs, and nothing was frozen."""
    from torch._inductor.utils import run_and_get_code
    fast = fast_decoder(random_model(), compile=True)
    with torch.no_grad():
        _, code = run_and_get_code(fast, torch.tensor([PROMPT]))
    assert "_frozen_param" in "\n".join(code)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    present = torch.tensor([[True, True, False, False]])
    assert penalize_repeats(logits, present, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_huge_repetition_penalty_never_repeats_a_token(num_beams):
    model = self_loving_model(vocab=48)
    config = SamplingConfig(max_new_tokens=40, num_beams=num_beams, **GREEDY)
    assert generate(model, [5], config, eos_id=None) == [[5] * 40]  # the planted model loves repeating
    penalized = SamplingConfig(max_new_tokens=40, num_beams=num_beams, repetition_penalty=1e6, **GREEDY)
    [tokens] = generate(model, [5], penalized, eos_id=None)
    assert len(tokens) == 40 and len(set(tokens) | {5}) == 41


def test_stops_at_eos_and_leaves_it_out():
    model = random_model()
    [greedy] = generate(model, PROMPT, SamplingConfig(max_new_tokens=20, **GREEDY), eos_id=None)
    eos = greedy[2]
    streamed = []
    [tokens] = generate(model, PROMPT, SamplingConfig(max_new_tokens=20, **GREEDY), eos_id=eos,
                        on_token=streamed.append)
    assert tokens == greedy[:greedy.index(eos)] and streamed == tokens
    keep_going = SamplingConfig(max_new_tokens=20, stop_at_eos=False, **GREEDY)
    assert generate(model, PROMPT, keep_going, eos_id=eos) == [greedy]


def test_every_stream_stops_at_its_own_eos():
    model = random_model()
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, num_samples=4, seed=1)
    free = generate(model, PROMPT, config, eos_id=None)
    eos = free[0][3]
    stopped = generate(model, PROMPT, config, eos_id=eos)
    assert stopped == [row[:row.index(eos)] if eos in row else row for row in free]


@torch.no_grad()
def reference_beam_search(model, prompt: list[int], beams: int, steps: int, eos: int | None,
                          length_penalty: float) -> list[tuple[float, list[int]]]:
    """Beam search as a textbook writes it: every hypothesis re-read in full, no cache, and all beams x vocab
    continuations ranked by one stable sort (of equal sums the lower beam, then the lower token first). The rules
    are talelab's (Hugging Face's): 2 x beams candidates; an eos among the best `beams` ends a hypothesis, its
    length counting the eos; stop once no running beam can beat the worst of `beams` finished ones.
    Returns (normalised score, tokens), best first."""
    done = []

    def finish(tokens, score, length):
        done.append((score / length ** length_penalty, tokens))
        done.sort(key=lambda hypothesis: -hypothesis[0])
        del done[beams:]

    running, scores = [[]], torch.zeros(1)
    for step in range(steps):
        logits, _ = model(torch.tensor([prompt + tokens for tokens in running]))
        sums = (scores[:, None] + logits[:, -1].log_softmax(dim=-1)).view(-1)
        kept = []
        for rank, i in enumerate(sums.sort(descending=True, stable=True).indices[:2 * beams].tolist()):
            beam, token = divmod(i, logits.size(-1))
            if token != eos:
                kept.append((beam, token, float(sums[i])))
            elif rank < beams:
                finish(running[beam], float(sums[i]), len(running[beam]) + 1)
            if len(kept) == beams:
                break
        running = [running[beam] + [token] for beam, token, _ in kept]
        scores = torch.tensor([score for _, _, score in kept])
        best_possible = kept[0][2] / (steps if length_penalty > 0 else step + 1) ** length_penalty
        if len(done) == beams and best_possible <= done[-1][0]:
            break
    for tokens, score in zip(running, scores.tolist()):
        finish(tokens, score, len(tokens))
    return done


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eos_rank, length_penalty", [(None, 1.0), (1, 1.0), (1, 0.0), (0, 2.0)])
def test_beam_search_returns_what_a_reference_beam_search_without_cache_returns(seed, eos_rank, length_penalty):
    model = random_model(seed)
    [greedy] = generate(model, PROMPT, SamplingConfig(max_new_tokens=16, **GREEDY), eos_id=None)
    eos = None if eos_rank is None else greedy[eos_rank]
    config = SamplingConfig(max_new_tokens=16, num_beams=4, num_samples=4, length_penalty=length_penalty)
    fast = beam_search(model, PROMPT, config, eos_id=eos)
    reference = reference_beam_search(model, PROMPT, 4, 16, eos, length_penalty)
    assert fast == [tokens for _, tokens in reference]
    ended = [b + [eos] if len(b) < 16 else b for b in fast]
    rescored = [log_prob(model, PROMPT, b) / len(b) ** length_penalty for b in ended]
    assert rescored == pytest.approx([score for score, _ in reference], abs=1e-4)


def test_beam_search_breaks_ties_for_the_lower_token_as_the_reference_does():
    """Tokens 32-63 always score exactly as tokens 0-31 (the same output rows): every candidate has a twin."""
    model = random_model(tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[32:] = model.lm_head.weight[:32]
    config = SamplingConfig(max_new_tokens=10, num_beams=4, num_samples=4)
    fast = beam_search(model, PROMPT, config, eos_id=None)
    assert fast == [tokens for _, tokens in reference_beam_search(model, PROMPT, 4, 10, None, 1.0)]
    assert fast[1] == fast[0][:-1] + [fast[0][-1] + 32]  # twins end the best two, equal: the lower token first


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_ranks_hypotheses_by_log_prob_including_eos_and_leaves_eos_out(length_penalty):
    model = random_model()
    [greedy] = generate(model, PROMPT, SamplingConfig(max_new_tokens=20, **GREEDY), eos_id=None)
    eos = greedy[1]
    config = SamplingConfig(max_new_tokens=20, num_beams=4, num_samples=4, length_penalty=length_penalty)
    beams = generate(model, PROMPT, config, eos_id=eos)
    assert len(beams) == 4 and all(eos not in b for b in beams)
    ended = [b + [eos] if len(b) < 20 else b for b in beams]
    scores = [log_prob(model, PROMPT, b) / len(b) ** length_penalty for b in ended]
    assert scores == pytest.approx(sorted(scores, reverse=True), abs=1e-4)
    assert any(len(b) < 20 for b in beams)  # some hypotheses did end at eos


@pytest.mark.parametrize("extra", [dict(temperature=1.0, num_samples=2),
                                   dict(num_beams=3, num_samples=2),
                                   dict(num_beams=3, num_samples=2, beam_sample=True, temperature=1.0)])
def test_on_token_receives_exactly_the_tokens_of_the_first_stream(extra):
    model = random_model()
    streamed = []
    samples = generate(model, PROMPT, SamplingConfig(max_new_tokens=15, seed=4, **extra), eos_id=None,
                       on_token=streamed.append)
    assert len(samples) == 2 and streamed == samples[0] and len(streamed) == 15


def test_sampled_beam_search_is_reproducible_with_a_seed():
    model = random_model()
    config = SamplingConfig(max_new_tokens=15, num_beams=3, num_samples=3, beam_sample=True, temperature=1.0, seed=5)
    first = generate(model, PROMPT, config, eos_id=None)
    assert first == generate(model, PROMPT, config, eos_id=None) and len(first) == 3


def test_num_samples_returns_that_many_sequences():
    model = random_model()
    samples = generate(model, PROMPT, SamplingConfig(max_new_tokens=5, num_samples=3, seed=0), eos_id=None)
    assert len(samples) == 3 and all(len(s) == 5 for s in samples)


def test_prompt_that_does_not_fit_the_context_is_a_mismatch_naming_both_lengths():
    model = random_model()
    with pytest.raises(MismatchError, match=r"65 tokens.*context_length 64"):
        generate(model, list(range(65)), SamplingConfig(), eos_id=None)
    with pytest.raises(MismatchError, match="0 tokens"):
        generate(model, [], SamplingConfig(), eos_id=None)


def test_more_samples_than_beams_is_a_config_error():
    with pytest.raises(ConfigError, match="num_samples=5 exceeds num_beams=4"):
        generate(random_model(), PROMPT, SamplingConfig(num_beams=4, num_samples=5), eos_id=None)


def test_generation_runs_in_eval_mode_and_restores_training_mode():
    model = random_model(dropout=0.5).train()
    config = SamplingConfig(max_new_tokens=10, **GREEDY)
    tokens = generate(model, PROMPT, config, eos_id=None)
    assert model.training
    assert tokens == [full_forward_greedy(model.eval(), PROMPT, 10)]  # no dropout during generation


def test_greedy_stories260k_prints_what_llama2c_prints_byte_for_byte(shared):
    from talelab.models.convert import import_llama2c
    from talelab.tokenizer import load_tokenizer

    model = import_llama2c(shared / paths.STORIES260K_MODEL)
    tokenizer = load_tokenizer(shared / paths.STORIES260K_TOKENIZER)
    expected = (shared / paths.STORIES260K_GREEDY).read_text(encoding="utf-8")
    # llama2.c's 200 steps feed positions 0..199 and print the token chosen at the last one too: 201 in all
    prompt_length = len(tokenizer.encode("Once upon a time", bos=True))
    config = SamplingConfig(prompt="Once upon a time", max_new_tokens=201 - prompt_length, stop_at_eos=False, **GREEDY)
    out = io.StringIO()
    assert generate_text(model, tokenizer, config, stream=True, out=out) == [expected]
    assert out.getvalue() == expected + "\n"
