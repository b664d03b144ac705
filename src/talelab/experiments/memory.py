"""`talelab memory`: peak memory of training steps per model and batch size, `oom` where it does not fit.

Rows are presets and/or a grid over any model or training key (families, widths, depths), planned and checked as
`talelab sweep` plans them. Each cell runs in a fresh child process (`python -m talelab.experiments.memory RUN
BATCH ...`, RUN being the row's preset and overrides as JSON), so one cell's memory never inflates another's and an
out-of-memory failure is a table entry, not a crash. CPU cells report the child's own peak resident memory (VmHWM);
CUDA cells report torch.cuda.max_memory_allocated / max_memory_reserved (what the caching allocator took from the
GPU). --memory-limit-gb caps the child's address space on the CPU and the caching allocator's share of the GPU on
CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from talelab.devices import autocast_context, own_peak_rss_mb, pick_device, training_dtype
from talelab.errors import TalelabError
from talelab.experiments.sweep import configurations, plan_runs
from talelab.models import build_model
from talelab.train.loop import train_step
from talelab.train.optim import make_optimizers

STEPS = 2  # the second step has the optimizer's moments allocated: the steady-state peak


def measure_in_this_process(run: dict, batch_size: int, vocab_size: int, device: str, dtype: str) -> dict:
    """Build the row's model (run: {"preset": name or None, "overrides": {key: value}}), train STEPS steps on random
    tokens, report the peak (run inside the child)."""
    model_config, config = configurations(run["preset"], {**run["overrides"], "vocab_size": vocab_size},
                                          {"batch_size": batch_size, "dtype": dtype})
    device = torch.device(device)
    model = build_model(model_config).to(device).train()
    optimizers = make_optimizers(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    tokens = torch.randint(0, vocab_size, (batch_size, model_config.context_length + 1), device=device)
    for _ in range(STEPS):
        train_step(model, model, optimizers, scaler, autocast_context(device, dtype), config,
                   lambda: (tokens[:, :-1], tokens[:, 1:]))
    cuda = device.type == "cuda"
    return {"parameters": model.num_parameters(), "rss_peak_mb": own_peak_rss_mb(),
            "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            # what the caching allocator held: the memory the process really took from the GPU
            "cuda_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None}


def measure(run: dict, batch_size: int, vocab_size: int, device: str, dtype: str, memory_limit_gb: float = 0) -> str:
    """The cell's text: peak MB (CUDA: allocated / reserved), or 'oom'."""
    command = [sys.executable, "-m", "talelab.experiments.memory", json.dumps(run), str(batch_size), str(vocab_size),
               device, dtype, str(memory_limit_gb)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    out, err = child.stdout.read(), child.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        if "out of memory" in err.lower() or "cannot allocate" in err.lower() or os.WIFSIGNALED(status):
            return "oom"
        last = err.strip().splitlines()[-1] if err.strip() else "no output"
        raise TalelabError(f"memory: measuring {run['preset'] or ''} {run['overrides']} at batch {batch_size} "
                           f"failed: {last}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["cuda_peak_mb"] is not None:
        return f"{result['cuda_peak_mb']:,.0f} / {result['cuda_reserved_mb']:,.0f}"
    return f"{result['rss_peak_mb'] or usage.ru_maxrss / 1024:,.0f}"


def memory_table(presets: list[str], batch_sizes: list[int], vocab_size: int, device: str, dtype: str, out: str,
                 memory_limit_gb: float = 0, grid: str | None = None, base_preset: str | None = None,
                 every_run: dict | None = None, log=print) -> list[dict]:
    """Every row (presets, then the grid's configurations over `base_preset`, all with the model settings
    `every_run` under the grid's values) x batch size; writes memory.md and memory.csv into `out`."""
    picked = pick_device(device)
    device, dtype = picked.type, training_dtype(dtype, picked)  # the child is told cpu or cuda, never auto
    runs = plan_runs(presets, grid, base_preset, every_run)  # unknown presets, keys, shapes fail before any child
    rows = []
    for name, preset_name, overrides in runs:
        row = {"model": name}
        for batch in batch_sizes:
            row[str(batch)] = measure({"preset": preset_name, "overrides": overrides}, batch, vocab_size, device,
                                      dtype, memory_limit_gb)
            log(f"{name} batch {batch}: {row[str(batch)]}")
        rows.append(row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    what = ("peak resident memory of the process (MB)" if device == "cpu" else
            "torch.cuda.max_memory_allocated / max_memory_reserved (MB)")
    lines = [f"# Training memory: {what}, {dtype}, vocabulary {vocab_size}", "",
             "| model | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
             "|---|" + "---:|" * len(batch_sizes)]
    lines += ["| " + " | ".join([r["model"]] + [r[str(b)] for b in batch_sizes]) + " |" for r in rows]
    (out / "memory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "memory.csv").write_text("\n".join([",".join(["model"] + [str(b) for b in batch_sizes])] + [
        ",".join([r["model"]] + [r[str(b)].replace(",", "") for b in batch_sizes]) for r in rows]) + "\n",
        encoding="utf-8")
    return rows


if __name__ == "__main__":  # the child: python -m talelab.experiments.memory RUN BATCH VOCAB DEVICE DTYPE LIMIT_GB
    run, batch, vocab, device_name, dtype_name, limit = sys.argv[1:7]
    cap = int(float(limit) * 2**30)
    if cap and device_name == "cuda":
        # CUDA reserves far more address space than it uses, so RLIMIT_AS would fail every cell: cap the caching
        # allocator instead, whose refusal is a CUDA out-of-memory error
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(0).total_memory))
    elif cap:  # a ceiling on the address space makes an out-of-memory cell reproducible on any machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    print(json.dumps(measure_in_this_process(json.loads(run), int(batch), int(vocab), device_name, dtype_name)))
