"""Weight-only int8 for decoding: a quarter of fp32's bytes per weight, where one token at a time is memory-bound.

Decoding one token reads every weight once and does two flops with it, so at batch 1 the time is the bytes moved.
Each output row of a linear layer is stored as int8 with one scale (symmetric, per row: the largest |w| maps to
127, so the rounding error is at most scale / 2 per weight), and PyTorch's `_weight_int8pack_mm` multiplies bf16
activations by the int8 rows without ever widening the weights in memory. Measured on 2 Xeon cores: the 288 x 32,000
output projection of the `15m` shape takes 0.29 ms for one row against 0.72 ms in fp32 and bf16.

Everything else (embedding, norms, attention over the cache) runs in bf16. Logits move by about 1 % of their range
(stories260K: at most 0.33 of a 29.6 spread; bits per byte 0.9750 -> 0.9761), so greedy text can part from fp32's
where two tokens are nearly tied (stories260K's greedy story is identical for 57 tokens). Tests bound both.
"""

from __future__ import annotations

import torch
from torch import nn

# _weight_int8pack_mm's CPU kernel walks the input width in blocks of 8 (its checks refuse anything else)
INT8_WIDTH_MULTIPLE = 8


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weight rows and a bf16 scale per row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, bf16 scales"


def can_quantize(linear: nn.Linear) -> bool:
    return linear.weight.device.type == "cpu" and linear.in_features % INT8_WIDTH_MULTIPLE == 0


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` in bf16 with every CPU linear layer whose input width the kernel takes replaced by an Int8Linear
    (in place; returns the model). A tied output projection gets its own int8 copy: the embedding lookup keeps
    reading the bf16 table, one row per token."""
    model = model.to(torch.bfloat16).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and can_quantize(child):
                setattr(parent, name, Int8Linear(child))
    return model
