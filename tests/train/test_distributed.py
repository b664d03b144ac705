import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from talelab.errors import ConfigError
from talelab.models.storage import resolve_model_dir
from talelab.train.distributed import Ranks
from talelab.train.loop import train


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_two_processes_with_batch_b_each_match_one_process_with_batch_2b(tiny_configs, tmp_path, prepared, bpe_dir):
    model_cfg, one = tiny_configs(tmp_path / "one", max_steps=10, batch_size=8, log_interval=1)
    train(model_cfg, one, log=lambda *_: None)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "talelab", "train", "--preset", "tiny", "--data", prepared, "--tokenizer", bpe_dir,
               "--out", two, "--max-steps", 10, "--batch-size", 8, "--log-interval", 1, "--no-progress"]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a = load_file(str(resolve_model_dir(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(resolve_model_dir(two) / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the checkpoint of the 2-process run resumes in one process: its data state is the global batch's
    _, more = tiny_configs(two, max_steps=12, batch_size=8, log_interval=1)
    assert train(model_cfg, more, resume=True, log=lambda *_: None)["step"] == 12


def test_a_world_size_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ConfigError, match="batch_size 10 is not divisible by the world size 4"):
        Ranks(rank=1, world_size=4).rows(10)
    assert Ranks(rank=1, world_size=4).rows(8) == slice(2, 4)
