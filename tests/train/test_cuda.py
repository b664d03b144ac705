"""Training on CUDA, where there is a GPU (`pytest -m cuda`, which benchmarks/gpu_check.sh runs); on the CPU only the
rule that keeps every other test off the GPU."""

import json
import math
import os

import pytest
import torch

from talelab.models.storage import load_model
from talelab.train.loop import train

QUIET = lambda *_: None  # noqa: E731


def test_tests_train_on_the_cpu_unless_they_are_about_cuda(request, tiny_configs, tmp_path):
    _, config = tiny_configs(tmp_path)
    assert config.device == "cpu"
    if "cuda" not in (request.config.option.markexpr or ""):  # nor can `device auto` or a subprocess find a GPU
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, grad_accum", [("float32", 1), ("bfloat16", 1), ("float16", 1), ("float16", 2)])
def test_tiny_trains_on_cuda_with_a_finite_falling_loss(tiny_configs, tmp_path, dtype, grad_accum):
    model_config, config = tiny_configs(tmp_path / "run", device="cuda", dtype=dtype, grad_accum=grad_accum,
                                        max_steps=20, log_interval=1)
    summary = train(model_config, config, log=QUIET)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in records if "loss" in r]
    assert summary["step"] == 20 and all(math.isfinite(v) for v in loss) and loss[-1] < loss[0]


@pytest.mark.cuda
def test_a_cuda_run_resumes_on_cuda_and_its_checkpoint_loads_on_the_cpu(tiny_configs, tmp_path):
    model_config, config = tiny_configs(tmp_path / "run", device="cuda", max_steps=10)
    train(model_config, config, log=QUIET)
    model_config, config = tiny_configs(tmp_path / "run", device="cuda", max_steps=20)
    assert train(model_config, config, resume=True, log=QUIET)["step"] == 20
    model, _, _ = load_model(tmp_path / "run" / "checkpoints" / "step-00000020")
    assert next(model.parameters()).device.type == "cpu"
