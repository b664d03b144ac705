"""Data-parallel training across processes started by `torchrun`: one rank per device, rank 0 writes.

Every rank draws the same global batch from the same seeded generator and trains on its own slice of it, so a run
on N processes sees exactly the data of a one-process run with the same global batch. Gradients are averaged by
DistributedDataParallel, or with `--fsdp` by FSDP2, which also shards weights and optimizer state. Checkpoints hold
whole tensors keyed by parameter name (the data state is the generator's), so they resume on any number of
processes, with or without FSDP.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from talelab.errors import ConfigError


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    owns_group: bool = False  # whether join() made the process group (and leave() should end it)

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

    def slowest(self, seconds: float) -> float:
        """The longest of each rank's `seconds` (itself in a single process): a time every rank agrees on."""
        if self.world_size == 1:
            return seconds
        value = torch.tensor(seconds, dtype=torch.float64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value)

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
    owns_group = not dist.is_initialized()  # a caller that set up its own group (several runs in a row) keeps it
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=dist.get_rank(), world_size=world_size, device=device, owns_group=owns_group)


def leave(ranks: Ranks) -> None:
    if ranks.world_size > 1 and dist.is_initialized():
        dist.barrier()
        if ranks.owns_group:
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, fsdp: bool = False, compile: bool = False,
         dtype: str = "float32") -> torch.nn.Module:
    """What the training step calls: the model itself in one process; with DistributedDataParallel, which averages
    gradients across ranks during backward; or, with `fsdp`, the model sharded in place by FSDP2 (its all-gathers
    in `dtype` when that is a 16-bit autocast dtype). `compile` compiles it as `compile_for_training` says."""
    if ranks.world_size > 1 and fsdp:
        shard(model, ranks, dtype)  # the module itself now holds this rank's slices, so compile it after sharding
        return torch.compile(model) if compile else model
    if compile:
        model = compile_for_training(model)
    if ranks.world_size == 1:
        return model
    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    # The only buffers are position tables, the same on every rank: broadcasting them every step is wasted traffic.
    # Compiled blocks inside DDP: its reducer all-reduces each gradient bucket as soon as backward has filled it, so
    # communication overlaps the rest of the backward pass.
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """The model with each of its blocks compiled in place (regional compilation), or, for a family without
    blocks (recurrent), the whole model compiled. The blocks share one compiled graph, so a cold start compiles
    one block instead of the whole model: the demo's first two steps took 22 s instead of 52-58. After that a step
    is about 11 % faster at the small benchmark shape and as fast at the demo's (benchmarks/RESULTS.md, issue 19):
    the chunked cross-entropy stays eager, where it is fastest.
    Parameter names stay as they were, so checkpoints do not change."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return torch.compile(model)
    for block in blocks:
        block.compile()
    return model


@contextlib.contextmanager
def gradient_sync(forward, model: torch.nn.Module, enabled: bool):
    """A micro-batch's forward and backward; with `enabled` False (every micro-batch of an accumulated step but the
    last) the gradients are only added up on each rank, which saves one all-reduce (DDP) or reduce-scatter (FSDP)
    per micro-batch: the last one averages the sum."""
    if enabled or not dist.is_initialized():
        yield
        return
    if hasattr(forward, "no_sync"):  # DistributedDataParallel (compiled blocks inside it, never compiled around)
        with forward.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def shard(model: torch.nn.Module, ranks: Ranks, dtype: str = "float32") -> None:
    """FSDP2: every rank keeps 1/N of each parameter, gradient and optimizer moment, and gathers a block's weights
    only while that block runs. Each block is one unit; the embeddings, final norm and output layer form the root
    unit, which keeps tied input/output embeddings in one piece. Under a 16-bit autocast the weights are gathered
    in that dtype (half the traffic) and gradients reduced in fp32."""
    # deferred: FSDP loads torch.distributed.tensor, about a second of import that runs without --fsdp never need
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if model.config.family in ("rnn", "lstm", "gru"):  # nn.LSTM & co. keep private flat views of their weights
        raise ConfigError(f"--fsdp shards transformer blocks; the {model.config.family} family has none "
                          f"(train it with plain torchrun, which uses DistributedDataParallel)")
    mesh = init_device_mesh(ranks.device.type, (ranks.world_size,))
    policy = MixedPrecisionPolicy()
    if dtype in ("bfloat16", "float16"):
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def rank_rng_states(ranks: Ranks) -> list:
    """Every rank's torch RNG state (and CUDA's), gathered on every rank: each rank draws its own dropout masks, so a
    checkpoint keeps them all."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state() if ranks.device.type == "cuda" else None)
    if ranks.world_size == 1:
        return [mine]
    states = [None] * ranks.world_size
    dist.all_gather_object(states, mine)
    return states


def seed_rank(seed: int, ranks: Ranks, saved: list | None = None, step: int = 0) -> None:
    """This rank's RNG for dropout: restored from a checkpoint of the same world size, else seeded apart from the
    other ranks' (same seed, rank and step: rank 0 of a fresh run keeps `seed` itself), so that replicas do not all
    drop the same units."""
    if saved is not None and len(saved) == ranks.world_size:
        cpu, cuda = saved[ranks.rank]
        torch.set_rng_state(cpu)
        if cuda is not None and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(cuda)
        return
    if ranks.rank or step:
        torch.manual_seed(seed + 1_000_003 * ranks.rank + step)


def local_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Each parameter as this rank holds it: whole, or under FSDP its shard."""
    if not dist.is_initialized():  # nothing can be sharded (and torch.distributed.tensor takes a second to import)
        return list(model.parameters())
    from torch.distributed.tensor import DTensor  # deferred: see above

    return [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]


def is_sharded(model: torch.nn.Module) -> bool:
    if not dist.is_initialized():  # as in local_tensors: no import of torch.distributed.tensor in one process
        return False
    from torch.distributed.tensor import DTensor  # deferred: a second to import

    return any(isinstance(p, DTensor) for p in model.parameters())


def held_parameters(model: torch.nn.Module) -> int:
    """Parameters this rank holds: all of them, or under FSDP its shards' share."""
    return sum(t.numel() for t in local_tensors(model))


def all_finite(model: torch.nn.Module, ranks: Ranks) -> bool:
    """Whether every weight is finite on every rank (under FSDP each rank checks the shards it holds)."""
    local = all(bool(torch.isfinite(t).all()) for t in local_tensors(model))
    return float(ranks.mean(torch.tensor(float(local), device=ranks.device))) == 1.0


def gathered_state(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> tuple[dict | None, dict]:
    """The optimizer state, and under FSDP the weights, as whole tensors keyed by parameter name, on rank 0 (empty
    on other ranks). The layout is the same for a plain, DDP or FSDP model on any number of ranks, which is what
    lets a checkpoint resume on any world size. Every rank must call it: under FSDP gathering is a collective."""
    # deferred: torch.distributed.checkpoint loads torch.distributed.tensor (a second); checkpoints of one process
    # reach here too, but only at save time, not at every import of the training loop
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())
    weights = get_model_state_dict(model, options=options) if is_sharded(model) else None
    return weights, get_optimizer_state_dict(model, optimizers, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], state: dict) -> None:
    """Load a whole optimizer state (as gathered_state writes it); under FSDP each rank keeps its own slices."""
    if all(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
        optimizers[0].load_state_dict(state)  # a checkpoint from before named optimizer states (AdamW alone)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # deferred: as above

    set_optimizer_state_dict(model, optimizers, state, options=StateDictOptions(full_state_dict=True))
