"""Weight-only int8 decoding: the per-row rounding bound, stories260K's logits and greedy text against fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from talelab.config import SamplingConfig
from talelab.generate import fast_decoder, generate
from talelab.models.quantize import Int8Linear, quantize_int8
from talelab.models.storage import load_model


def test_int8_linear_stays_within_its_rounding_bound():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    x = torch.randn(5, 64)
    quantized = Int8Linear(linear)
    # each weight is off by at most half its row's scale, so row j's output by at most sum|x| * scale_j / 2
    # (plus the bf16 rounding of x, the scales and the output: a few parts in 1e3)
    scales = linear.weight.detach().abs().amax(dim=1) / 127
    bound = x.abs().sum(dim=1, keepdim=True) * scales / 2
    error = (quantized(x).float() - linear(x)).abs()
    reference = linear(x).abs()
    assert bool((error <= bound + 8e-3 * (reference + 1)).all())
    assert quantized.weight.dtype == torch.int8 and quantized.weight.abs().max() == 127


def test_widths_the_kernel_cannot_take_stay_bf16_linears(stories260k):
    model, _, _ = load_model(stories260k)
    quantized = quantize_int8(model)
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    assert kinds["lm_head"] == "Int8Linear" and kinds["blocks.0.attn.qkv"] == "Int8Linear"
    assert kinds["blocks.0.mlp.down"] == "Linear"  # stories260K's hidden width 172 is not a multiple of 8
    assert quantized.embed.weight.dtype == torch.bfloat16


@pytest.mark.slow
def test_stories260k_logits_and_greedy_story_stay_close_to_fp32(stories260k):
    model, tokenizer, _ = load_model(stories260k)
    ids = tokenizer.encode("Once upon a time, there was a little girl named Lily. She loved to play outside.")
    ids = torch.tensor([[tokenizer.bos_id, *ids]])
    with torch.no_grad():
        exact = model(ids)[0]
        quantized_model = quantize_int8(load_model(stories260k)[0])
        approx = quantized_model(ids)[0].float()
    spread = (exact.amax(dim=-1) - exact.amin(dim=-1)).mean()
    assert (approx - exact).abs().max() < 0.05 * spread
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9
    config = SamplingConfig(max_new_tokens=60, temperature=0.0)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Once upon a time")]
    [fp32] = generate(model, prompt, config, eos_id=None)
    compiled = fast_decoder(load_model(stories260k)[0], dtype="int8", compile=True)  # what generate --dtype int8 runs
    [int8] = generate(compiled, prompt, config, eos_id=None)
    same = next((i for i, (a, b) in enumerate(zip(fp32, int8)) if a != b), len(fp32))
    assert same >= 20, tokenizer.decode(int8)
