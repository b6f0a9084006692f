"""Resumable, rank-aware batch order.

Why not a shuffled DataLoader: an exact ``--resume`` needs (1) the batch order of every epoch to be
a pure function of (seed, epoch), (2) starting in the middle of an epoch without replaying it, and
(3) no draw from the global RNG when an iterator is created (DataLoader draws a base seed from the
global generator unless given its own, which would shift the dropout masks after a resume).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableBatchSampler(Sampler[list]):
    """Batches of indices for one rank: permutation(seed, epoch), padded to a multiple of the world
    size like DistributedSampler, strided by rank, cut into batches, the first ``start_batch``
    skipped."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if n <= 0:
            raise ValueError(f"n={n}: need at least one example")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world_size)
        total = per_rank * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank:total:self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.n / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list]:
        idx = self._rank_indices()
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


def train_loader(encoded, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    from ddk_fast.data import collate

    sampler = ResumableBatchSampler(len(encoded), batch_size, shuffle=True, seed=seed, rank=rank,
                                    world_size=world_size)
    pad = encoded.pad_token_id
    return DataLoader(encoded, batch_sampler=sampler, collate_fn=lambda feats: collate(feats, pad_token_id=pad),
                      generator=torch.Generator().manual_seed(seed), num_workers=0)


def eval_loader(encoded, batch_size: int) -> DataLoader:
    from ddk_fast.data import collate

    sampler = ResumableBatchSampler(len(encoded), batch_size, shuffle=False, seed=0)
    pad = encoded.pad_token_id
    return DataLoader(encoded, batch_sampler=sampler, collate_fn=lambda feats: collate(feats, pad_token_id=pad),
                      generator=torch.Generator().manual_seed(0), num_workers=0)
