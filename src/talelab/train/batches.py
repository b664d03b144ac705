"""Training batches: random windows of the token stream and, for the contrastive objective, shuffled stories.

Every rank draws the whole global batch from the same seeded generator and keeps its own rows, so the data a run
sees, and where its generator stands in a checkpoint, do not depend on how many processes train it.
"""

from __future__ import annotations

import numpy as np
import torch

from talelab.config import TrainConfig
from talelab.data.shards import Shard
from talelab.train.distributed import Ranks
from talelab.train.objectives import contrastive_loss, next_token_loss, shuffled_stories


def random_windows(shard: Shard, batch_size: int, length: int, generator: torch.Generator, device,
                   rows: slice = slice(None)) -> tuple:
    """`rows` of `batch_size` windows of `length` + 1 tokens at random offsets: inputs and next-token targets."""
    starts = torch.randint(0, len(shard.tokens) - length - 1, (batch_size,), generator=generator).tolist()[rows]
    batch = torch.from_numpy(np.stack([shard.tokens[s:s + length + 1] for s in starts]).astype(np.int64))
    if torch.device(device).type == "cuda":  # a copy overlaps the device's work only from page-locked memory
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    return batch[:, :-1], batch[:, 1:]


def batch_source(config: TrainConfig, shard: Shard, tokenizer, length: int, generator: torch.Generator,
                 ranks: Ranks) -> tuple:
    """The objective and a `next_batch()` for it: this rank's rows of the next global batch drawn from `generator`."""
    contrastive = config.objective == "contrastive"
    # a share of every contrastive batch becomes sentence-shuffled stories
    shuffled = round(config.contrastive_fraction * config.batch_size) if contrastive else 0
    windows = config.batch_size - shuffled
    window_rows, story_rows = ranks.rows(windows), ranks.rows(shuffled)

    def next_batch() -> tuple:
        batch = random_windows(shard, windows, length, generator, ranks.device, window_rows)
        if contrastive:
            batch += shuffled_stories(shard, tokenizer, shuffled, length, generator, ranks.device, story_rows)
        return batch

    return (contrastive_loss(config.contrastive_alpha) if contrastive else next_token_loss), next_batch
