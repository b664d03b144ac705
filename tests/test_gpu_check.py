"""benchmarks/gpu_check.sh, the first minutes on a GPU machine, runs its commands on the CPU with --dry-run so it
cannot rot before a GPU comes."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_the_gpu_check_runs_every_command_on_the_cpu_in_a_dry_run():
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    table = done.stdout.splitlines()
    assert "FAILED" not in done.stdout
    for check in ("torchrun --max-minutes (fsdp)", "generate_batch, padded prompts (GQA)", "finetune 3 steps",
                  "dpo 3 steps (bfloat16)", "train --dtype auto"):  # dpo in bf16 once stopped with a traceback on CPU
        assert any(row.startswith(check) and " ok " in row for row in table), check
    assert sum(" ok " in row for row in table) >= 22
