"""Where a model runs and in which precision: one rule for training, decoding, evaluation and serving.

`auto` means CUDA when a CUDA device is present, else the CPU. On CUDA the default precision is bfloat16 (autocast
while training, bf16 weights while decoding), and fp32 matrix products may use TF32 tensor cores; on the CPU it is
float32, so results there are the reference ones. And how much memory this process has taken at most
(`own_peak_rss_mb`), which training logs and `talelab memory` reports.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from talelab.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:N) stands for; on CUDA, fp32 matrix products may use TF32."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but no CUDA device is available")
        # TF32 keeps fp32's range with a 10-bit mantissa: ~8x the fp32 matmul rate on tensor cores, and the
        # precision a float32 run on a GPU is expected to have (PyTorch's default is full fp32, which wastes them)
        torch.set_float32_matmul_precision("high")
    return torch.device(name)


def training_dtype(name: str, device: torch.device) -> str:
    """The autocast dtype `name` stands for on `device`: auto is bfloat16 on CUDA (float16 on GPUs without bf16),
    float32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if name == "float16" and device.type != "cuda":
        raise ConfigError("dtype=float16 needs CUDA (its grad scaler); use bfloat16 on CPU")
    return name


def decoding_dtype(name: str, device: torch.device) -> str:
    """The weights' dtype `name` stands for while decoding on `device`: auto is bfloat16 on CUDA, float32 on the
    CPU; int8 (weight-only, talelab.models.quantize) has a CPU kernel only."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name == "int8" and device.type != "cpu":
        raise ConfigError(f"dtype=int8 quantizes for the CPU's int8 kernel only; on {device.type} use bfloat16")
    return name


def autocast_context(device: torch.device, dtype: str):
    """The autocast region of a training or scoring step in `dtype` (training_dtype's answer)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def missing_compiler(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device`, or None when it can: on the CPU TorchInductor writes C++
    and needs a compiler (g++ or clang++, or $CXX), which laptops often lack; without one the first compiled step
    would end in a page of Inductor traceback."""
    if device.type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # torch's own search ($CXX, then g++, clang++)

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001  (a missing compiler, or a torch without this private helper)
        return f"torch.compile on the CPU needs a C++ compiler (g++ or clang++, or set CXX): {str(e).splitlines()[0]}"
    return None


def check_compiler(device: torch.device, option: str = "compile") -> None:
    """A one-line error instead of Inductor's traceback when `option` asks to compile and no compiler is there."""
    missing = missing_compiler(device)
    if missing:
        raise ConfigError(f"{option}: {missing}; install one or turn {option} off")


def own_peak_rss_mb() -> float | None:
    """This process's own peak resident memory: VmHWM of /proc/self/status (None where there is none, off Linux).
    The parent's wait4 cannot give it: Linux carries the peak of the process that forked the child over into the
    child's ru_maxrss, so a child of a larger process reports the parent's size (2,194 MB for the tiny model when
    the test process had grown to that)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)
