"""Training objectives beyond next-token prediction.

The contrastive objective (a seed project's idea for plot and coherence): part of each batch is stories whose
sentences were shuffled, and the loss rewards the model for finding those unlikely:
    L = L_next + alpha / (L_shuffled + 0.01)
so lowering L means predicting real stories well while keeping shuffled ones surprising.
"""

from __future__ import annotations

import torch

from talelab.data.sentences import shuffle_sentences


def shuffled_stories(shard, tokenizer, count: int, length: int, generator: torch.Generator, device,
                     rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random training stories with shuffled sentences, as (inputs, targets) of `length` tokens, -1 padded."""
    picks = torch.randint(0, len(shard.starts), (count,), generator=generator).tolist()
    texts = [shuffle_sentences(tokenizer.decode(shard.story(i)), generator) for i in picks][rows]
    inputs = torch.zeros(len(texts), length, dtype=torch.long)
    targets = torch.full((len(texts), length), -1, dtype=torch.long)
    for row, ids in enumerate(tokenizer.encode_batch(texts)):
        ids = torch.tensor([tokenizer.bos_id, *ids][:length + 1])
        inputs[row, :len(ids) - 1] = ids[:-1]
        targets[row, :len(ids) - 1] = ids[1:]
    return inputs.to(device), targets.to(device)


def next_token_loss(forward, batch) -> torch.Tensor:
    inputs, targets = batch
    return forward(inputs, targets)[1]


def contrastive_loss(alpha: float):
    """L_next on the real windows plus alpha / (L_shuffled + 0.01) on the shuffled stories."""

    def loss(forward, batch) -> torch.Tensor:
        inputs, targets, shuffled_inputs, shuffled_targets = batch
        shuffled = forward(shuffled_inputs, shuffled_targets)[1]
        return forward(inputs, targets)[1] + alpha / (shuffled + 0.01)

    return loss
