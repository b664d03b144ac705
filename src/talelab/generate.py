"""Stories from a model: greedy, sampled (repetition penalty, temperature, top-k, top-p) or beam search.

Every path runs the prompt once into a KV cache and then feeds one token per step. The sampling pipeline follows the
order of Hugging Face's logits processors: repetition penalty, temperature, top-k, top-p, softmax, draw. Batched
decoding (`generate_batch`, `talelab serve`) lives in talelab.decoding_batch and samples through `pick` here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch._inductor.config as inductor_config

from talelab.config import DecodeConfig, SamplingConfig
from talelab.devices import check_compiler, decoding_dtype, pick_device
from talelab.errors import MismatchError
from talelab.models.quantize import quantize_int8
from talelab.models.storage import load_model


def start(model, prompt_ids: list[int], config: SamplingConfig) -> tuple[int, torch.Generator]:
    """Check the request; return how many tokens may be generated and the seeded random generator."""
    context, vocab = model.config.context_length, model.config.vocab_size
    if not 0 < len(prompt_ids) <= context:
        raise MismatchError(f"prompt of {len(prompt_ids)} tokens does not fit the model's context_length {context} "
                            f"(it needs 1 to {context} tokens)")
    if not all(0 <= i < vocab for i in prompt_ids):
        raise MismatchError(f"prompt holds token ids outside the model's vocabulary of {vocab}: wrong tokenizer?")
    # the whole sequence, prompt and story, must stay within the context so that the model can read it back
    steps = min(config.max_new_tokens, context - len(prompt_ids))
    # On the CPU whatever the model's device: a draw there costs no kernel launch, the same seed gives the same
    # stories on every device, and a fresh seed from the OS leaves torch's global generator alone, so callers' own
    # randomness is undisturbed
    generator = torch.Generator()
    generator.manual_seed(config.seed if config.seed >= 0 else int.from_bytes(os.urandom(8), "little") >> 1)
    return steps, generator


@contextmanager
def evaluating(model):
    """Eval mode (no dropout) for the duration, then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def on_device(values: list, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host values as a tensor on `device`, without waiting for the work queued there (the copy is staged): a
    decoding step then waits for the device once, when it reads its tokens back."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def prefill(model, prompt_ids: list[int], rows: int):
    """Run the prompt once and copy its cache to `rows` streams: next-token logits (rows, vocab) in fp32, cache."""
    param = next(model.parameters())
    cache = model.new_cache(1, param.device, param.dtype)
    logits, _ = model(torch.tensor([prompt_ids], device=param.device), cache=cache, start=0)
    if rows > 1:  # identical prompts: one forward pass, then copies of its keys and values
        cache.reorder(torch.zeros(rows, dtype=torch.long, device=param.device))
    return logits[:, -1].float().expand(rows, -1), cache


def seen_tokens(prompt_ids: list[int], rows: int, config: SamplingConfig, vocab: int, device) -> torch.Tensor | None:
    """(rows, vocab) mask of tokens already present, for the repetition penalty; None when there is no penalty."""
    if config.repetition_penalty == 1.0:
        return None
    present = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
    present[:, prompt_ids] = True
    return present


def penalize_repeats(logits: torch.Tensor, present: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """CTRL's penalty: make every present token less likely, whatever the sign of its logit."""
    if present is None:
        return logits
    return torch.where(present, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def keep_top_k(logits: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:
    """Keep each row's k most likely tokens and any tied with the k-th (k: one for every row, or one per row;
    0 or the vocabulary size or more: all)."""
    vocab = logits.size(-1)
    ks = [k] if isinstance(k, int) else list(k)
    ks = [k if 0 < k < vocab else vocab for k in ks]
    if min(ks) == vocab:
        return logits
    top = logits.topk(max(ks), dim=-1).values
    wanted = on_device(ks, logits.device).view(-1, 1).expand(logits.size(0), 1)
    kth = top.gather(1, (wanted - 1).clamp(max=top.size(1) - 1))
    kth = kth.masked_fill(wanted == vocab, float("-inf"))  # rows without a top-k keep everything
    return logits.masked_fill(logits < kth, float("-inf"))


TOP_P_SHORTLIST = 256  # most likely tokens examined before sorting a whole vocabulary


def keep_top_p(logits: torch.Tensor, p: float | Sequence[float]) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (always the most likely one), p for
    every row or one per row (1 or more: all). The probabilities are the softmax of `logits` as given: after top-k,
    the nucleus is taken over the renormalised top-k."""
    ps = [p] if isinstance(p, (int, float)) else list(p)
    if min(ps) >= 1.0:
        return logits
    # a row without top-p never drops a token, even where rounding brings the mass before it to 1
    limit = on_device([q if q < 1.0 else float("inf") for q in ps], logits.device).view(-1, 1)
    # Sorting 32k logits per token on a CPU costs more than a small model's forward pass, and the nucleus is nearly
    # always within the few hundred most likely tokens: rank those, and sort everything only when they fall short
    # of p. Elsewhere the whole sort is cheap and checking the shortlist would wait for the device.
    probs = logits.softmax(dim=-1)
    k = min(TOP_P_SHORTLIST, logits.size(-1))
    ranked, order = probs.topk(k, dim=-1)  # descending
    short = logits.device.type != "cpu" or bool((ranked.sum(dim=-1, keepdim=True) < limit).any())
    if k < logits.size(-1) and short:
        ranked, order = probs.sort(dim=-1, descending=True)
    drop = ranked.cumsum(dim=-1) - ranked >= limit  # the tokens before this one already reach p
    drop[:, 0] = False
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, ~drop)
    return logits.masked_fill(~keep, float("-inf"))


def load_decoder(path, decode: DecodeConfig, **options):
    """(model, tokenizer, raw config) of `load_model`, on `decode`'s device, in its dtype, compiled if it says so.
    `options` go to load_model (tokenizer_path; Hugging Face attn_implementation)."""
    device = pick_device(decode.device)
    dtype = decoding_dtype(decode.dtype, device)
    if decode.compile:
        check_compiler(device)
    model, tokenizer, raw = load_model(path, device=device, **options)
    if dtype != "float32" or decode.compile:
        model = fast_decoder(model, dtype=dtype, compile=decode.compile)
    return model, tokenizer, raw


def fast_decoder(model, dtype: str = "float32", compile: bool = False):
    """The model ready for fast decoding: weights cast to `dtype`, and optionally its forward compiled.

    Decoding one token reads every weight once, so at small batch sizes speed is memory traffic: bfloat16 weights
    halve it (logits then differ from fp32 by bf16 rounding, ~1e-2), and `int8` (weight-only, a scale per output row,
    see talelab.models.quantize) quarters it for the linear layers, whose one-row bf16 kernel on CPU is no faster
    than fp32's. `compile` uses TorchInductor with frozen weights, which fuses the elementwise work between matmuls
    and pre-packs weights for oneDNN (the bf16 matmuls need the packing to beat fp32 on CPU); the first call
    compiles for 20-60 s, so it pays off for long generations or many stories. Returns a model to pass to
    `generate` / `generate_batch`; do not train it.
    """
    if dtype == "int8":
        decoding_dtype(dtype, next(model.parameters()).device)  # refuses a CUDA model: the kernel is the CPU's
        model = quantize_int8(model)
    else:
        model = model.to(getattr(torch, dtype)).eval()
    if compile:  # dynamic: one graph serves every prompt length and cache position
        # Dynamo keeps its compiled graphs per code object, so every compiled model in the process shares
        # Transformer.forward's budget of 8; a few models x batch sizes (1, beams, streams) would overflow it and
        # silently fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(model.forward, dynamic=True, options={"freezing": True})

        def frozen_forward(*args, **kwargs):
            # Dynamo reads Inductor's `freezing` when it traces (first call, recompiles): without it on then, the
            # weights become graph inputs and nothing is frozen or pre-packed (the 4-row bf16 step at the 15m
            # shape: 4.2 ms, not 2.8).
            with inductor_config.patch(freezing=True):
                return compiled(*args, **kwargs)

        model.forward = frozen_forward
    return model


def pick(logits: torch.Tensor, configs: Sequence[SamplingConfig], uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row (rows,) from penalised logits, under each row's own settings (or one config for every
    row): argmax at temperature 0, else temperature, top-k, top-p over the renormalised top-k, and a draw at the
    row's uniform (rows, 1). Every decoding path samples here, so a seed and settings give the same story alone, in
    a batch, from generate, eval, serve or prefs."""
    temperatures = [c.temperature for c in configs]
    if max(temperatures) == 0:
        return logits.argmax(dim=-1)
    temperature = on_device(temperatures, logits.device).view(-1, 1)
    scaled = logits / temperature.clamp(min=1e-6)
    filtered = keep_top_p(keep_top_k(scaled, [c.top_k for c in configs]), [c.top_p for c in configs])
    sampled = draw(filtered.softmax(dim=-1), uniforms.to(logits.device, non_blocking=True))
    if min(temperatures) > 0:
        return sampled  # no argmax over the vocabulary when no row is greedy (2 ms a step at 32 rows x 32k)
    return torch.where(temperature.squeeze(1) == 0, logits.argmax(dim=-1), sampled)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverting the cumulative distribution at a uniform draw (rows, 1).

    torch.multinomial draws an exponential variate per vocabulary entry (~0.6 ms for 32k on a CPU core, more than a
    small model's whole forward pass); one uniform per row is all inverse-CDF sampling needs. Zero-probability
    tokens are never chosen: the first cumulative sum to reach the draw belongs to a token with mass.
    """
    cumulative = probs.cumsum(dim=-1)
    return (cumulative < uniforms * cumulative[:, -1:]).sum(dim=-1).clamp(max=probs.size(-1) - 1)


@torch.no_grad()
def sample(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
           on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """`num_samples` greedy or sampled continuations, decoded side by side as one batch."""
    steps, generator = start(model, prompt_ids, config)
    n, stop = config.num_samples, (eos_id if config.stop_at_eos else None)
    tokens = []
    with evaluating(model):
        logits, cache = prefill(model, prompt_ids, n)
        present = seen_tokens(prompt_ids, n, config, logits.size(-1), logits.device)
        finished = torch.zeros(n, dtype=torch.bool, device=logits.device)
        for step in range(steps):
            uniforms = torch.rand(n, 1, generator=generator)
            token = pick(penalize_repeats(logits, present, config.repetition_penalty), [config], uniforms)
            if stop is not None:
                token = token.masked_fill(finished, stop)  # finished streams are padded with eos until all are
                finished |= token == stop
            tokens.append(token)
            if on_token is not None and (first := int(token[0])) != stop:
                on_token(first)
            if step == steps - 1 or (stop is not None and bool(finished.all())):
                break  # no forward pass for a token that nothing will follow
            if present is not None:
                present.scatter_(1, token[:, None], True)
            logits, _ = model(token[:, None], cache=cache, start=len(prompt_ids) + step)
            logits = logits[:, -1].float()
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(n)]
    return [row[:row.index(stop)] if stop in row else row for row in rows]


CANDIDATE_BLOCK = 128  # candidates per block whose maximum best_candidates compares


def best_candidates(candidates: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    """The k largest candidates, best first, of equal ones the lower flat index first (beam, then token): their
    values and their indices into candidates.view(-1).

    torch.topk over 4 beams x 32k tokens costs more on a CPU than several of the passes around it, and it leaves
    the order of ties to its algorithm (bfloat16 logits tie often). At least k candidates reach the k-th largest
    block maximum, so every winner does, and lies in a block whose maximum does: sort those few blocks only.
    """
    flat = candidates.reshape(-1)
    pad = -flat.numel() % CANDIDATE_BLOCK
    blocks = (torch.nn.functional.pad(flat, (0, pad), value=float("-inf")) if pad else flat).view(-1, CANDIDATE_BLOCK)
    maxima = blocks.amax(dim=1)
    floor = maxima.topk(min(k, maxima.numel())).values[-1:]
    chosen = (maxima >= floor).nonzero().squeeze(1)  # ascending, so a stable sort keeps ties in index order
    values, order = blocks[chosen].view(-1).sort(descending=True, stable=True)
    firsts = [block * CANDIDATE_BLOCK for block in chosen.tolist()]  # k is a handful: the host does the rest
    return values[:k].tolist(), [firsts[i // CANDIDATE_BLOCK] + i % CANDIDATE_BLOCK for i in order[:k].tolist()]


@torch.no_grad()
def beam_search(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
                on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """The `num_samples` best of `num_beams` hypotheses, ranked by summed log-prob / length**length_penalty.

    With `beam_sample` (and temperature > 0) the candidates are drawn from the softmax of the beam scores, after
    repetition penalty and temperature; top-k and top-p do not apply to beams.
    """
    steps, generator = start(model, prompt_ids, config)
    if steps == 0:
        return [[] for _ in range(config.num_samples)]
    beams, stop, lp = config.num_beams, (eos_id if config.stop_at_eos else None), config.length_penalty
    sampled = config.beam_sample and config.temperature > 0
    done: list[tuple[float, list[int]]] = []  # (normalised score, tokens), best first, at most `beams`

    def finish(tokens: list[int], score: float, length: int) -> None:
        done.append((score / length ** lp, tokens))
        done.sort(key=lambda hypothesis: -hypothesis[0])  # stable: of equal scores the earlier one stays first
        del done[beams:]

    with evaluating(model):
        logits, cache = prefill(model, prompt_ids, 1)  # one running beam at first: no duplicates to suppress
        vocab, device = logits.size(-1), logits.device
        present = seen_tokens(prompt_ids, 1, config, vocab, device)
        scores = torch.zeros(1, device=device)  # summed log-probs of the running beams
        running: list[list[int]] = [[]]
        for step in range(steps):
            logits = penalize_repeats(logits, present, config.repetition_penalty)
            if sampled:
                logits = logits / config.temperature
            # every continuation's summed log-prob, (beams, vocab); in place: the log-probs are not needed apart
            candidates = logits.log_softmax(dim=-1).add_(scores[:, None])
            # 2 * beams candidates: even if half of them end in eos, `beams` remain to continue
            k = min(2 * beams, candidates.numel())
            if sampled:
                probs = candidates.view(-1).softmax(dim=-1)
                index = torch.multinomial(probs.cpu(), min(k, int((probs > 0).sum())), generator=generator)
                index = index.to(probs.device)
                top, order = candidates.view(-1)[index].sort(descending=True)
                top, index = top.tolist(), index[order].tolist()
            else:
                top, index = best_candidates(candidates, k)
            kept = []  # (beam, token, score) of the next running beams, best first
            for rank, (score, i) in enumerate(zip(top, index)):
                beam, token = divmod(i, vocab)
                if token != stop:
                    kept.append((beam, token, score))
                elif rank < beams:  # as in Hugging Face: an eos below the best `beams` candidates is ignored
                    finish(running[beam], score, len(running[beam]) + 1)  # the eos counts in the length
                if len(kept) == beams:
                    break
            running = [running[beam] + [token] for beam, token, _ in kept]
            scores = torch.tensor([score for _, _, score in kept], device=device)
            if not running or step == steps - 1:
                break
            # log-probs only lower a sum; the longest (lp > 0) or the current (lp <= 0) length divides it best
            best_possible = kept[0][2] / (steps if lp > 0 else step + 1) ** lp
            if len(done) == beams and best_possible <= done[-1][0]:
                break
            index = torch.tensor([beam for beam, _, _ in kept], device=device)
            cache.reorder(index, filled=len(prompt_ids) + step)
            token = torch.tensor([token for _, token, _ in kept], device=device)
            if present is not None:
                present = present[index].scatter_(1, token[:, None], True)
            logits, _ = model(token[:, None], cache=cache, start=len(prompt_ids) + step)
            logits = logits[:, -1].float()
    for tokens, score in zip(running, scores.tolist()):  # unfinished beams compete too (they lose if stopped early)
        finish(tokens, score, len(tokens))
    best = [tokens for _, tokens in done[:config.num_samples]]
    if on_token is not None:  # the best beam is known only at the end
        for token in best[0]:
            on_token(token)
    return best


def generate(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
             on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """`config.num_samples` lists of new token ids continuing `prompt_ids`, without the prompt and the eos.

    Beam search when `num_beams > 1`, else sampling (greedy at temperature 0). `on_token` receives the tokens of the
    first story as they are chosen (beam search: at the end), e.g. to print them.
    """
    search = beam_search if config.num_beams > 1 else sample
    return search(model, prompt_ids, config, eos_id, on_token)


def generate_text(model, tokenizer, config: SamplingConfig, stream: bool = False, out=None) -> list[str]:
    """Stories (prompt included) after bos + `config.prompt`; `stream` writes the first to `out` as it grows."""
    out = sys.stdout if out is None else out  # looked up at call time: tests and notebooks swap sys.stdout
    prompt_ids = tokenizer.encode(config.prompt, bos=True)
    on_token = None
    if stream:
        text = tokenizer.stream()
        out.write("".join(text.push(i) for i in prompt_ids))

        def on_token(token_id: int) -> None:
            out.write(text.push(token_id))
            out.flush()

    sequences = generate(model, prompt_ids, config, tokenizer.eos_id, on_token)
    if stream:
        out.write(text.flush() + "\n")
        out.flush()
    return [tokenizer.decode(prompt_ids + ids) for ids in sequences]
