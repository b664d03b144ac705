"""Run several `talelab` commands one after another inside the same torchrun workers.

Starting processes (Python, torch, a rendezvous) is the slow part of a multi-process test; one launch serves every
case. The workers make the process group once, so every run joins it instead of making its own (gloo cannot
rendezvous twice in one torchrun launch). Usage: `torchrun ... torchrun_jobs.py '[[exit_code, [argv...]], ...]'`.
"""

import json
import sys

import torch.distributed as dist

from talelab.cli import main

dist.init_process_group("gloo")
for expected, argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code != expected:
        sys.exit(f"talelab {' '.join(argv)}: exit code {code}, expected {expected}")
dist.destroy_process_group()
