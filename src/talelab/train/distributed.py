"""Data-parallel training across processes started by `torchrun`: one rank per device, rank 0 writes.

Every rank draws the same global batch from the same seeded generator and trains on its own slice of it, so a run
on N processes sees exactly the data of a one-process run with the same global batch, and a checkpoint (whose data
state is the generator's) resumes on any number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from talelab.errors import ConfigError


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        if batch_size % self.world_size:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the world size {self.world_size}: "
                              f"every process needs an equal share of the global batch")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of `value` over ranks (itself in a single process)."""
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def join(device: torch.device) -> Ranks:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA), or stay a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=dist.get_rank(), world_size=world_size, device=device)


def leave(ranks: Ranks) -> None:
    if ranks.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """DistributedDataParallel averages gradients across ranks during backward."""
    if ranks.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
