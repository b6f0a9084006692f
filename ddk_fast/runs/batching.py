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
from torch.utils.data import DataLoader, Dataset, Sampler
from ddk_fast.data import collate


class ResumableBatchSampler(Sampler[list]):
    """Batches of indices for one rank: permutation(seed, epoch), padded to a multiple of the world
    size like DistributedSampler, strided by rank, cut into batches, the first ``start_batch``
    skipped."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, lengths=None, group_size: int = 50):
        if n <= 0:
            raise ValueError(f"n={n}: need at least one example")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries: expected {n}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.lengths, self.group_size = (list(lengths) if lengths is not None else None), group_size
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
        if self.drop_last:
            return per_rank // self.batch_size
        if self.lengths is not None and self.shuffle:  # each mega-batch may end with a short batch
            mega = self.batch_size * self.group_size
            full, rest = divmod(per_rank, mega)
            return full * self.group_size + math.ceil(rest / self.batch_size)
        return math.ceil(per_rank / self.batch_size)

    def _batches(self) -> list[list[int]]:
        idx = self._rank_indices()
        count = self.batches_per_epoch()
        if self.lengths is None:
            return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(count)]
        if not self.shuffle:  # evaluation: sort everything by length (least padding), order is irrelevant
            idx = sorted(idx, key=lambda i: -self.lengths[i])
            return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(count)]
        # training: sort within mega-batches of group_size batches, then shuffle the batch order, so
        # batches hold similar lengths (less padding) while the data order stays random
        mega = self.batch_size * self.group_size
        batches = []
        for start in range(0, len(idx), mega):
            chunk = sorted(idx[start:start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[b:b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        batches = batches[:count] if self.drop_last else batches
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch + 7919)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list]:
        batches = self._batches()
        for b in range(self.start_batch, len(batches)):
            yield batches[b]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


class _WithIds(Dataset):
    """``encoded`` whose items also carry their index, so that a batch can say which examples it holds."""

    def __init__(self, encoded):
        self.encoded = encoded

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, index):
        return index, self.encoded[index]


def collate_with_ids(items, pad_token_id: int) -> dict:
    """``collate`` of ``(index, features)`` items plus ``example_ids`` ([B] int64, on the host): the key the
    teacher cache looks rows up by, whatever the batching and padding."""
    batch = collate([f for _, f in items], pad_token_id=pad_token_id)
    batch["example_ids"] = torch.tensor([i for i, _ in items], dtype=torch.long)
    return batch


def train_loader(encoded, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 group_by_length: bool = True) -> DataLoader:
    """Shuffled batches of similar lengths (dynamic padding pads each batch to its own longest row);
    each batch carries the ``example_ids`` of its rows (indices into ``encoded``)."""
    sampler = ResumableBatchSampler(len(encoded), batch_size, shuffle=True, seed=seed, rank=rank,
                                    world_size=world_size, lengths=encoded.lengths if group_by_length else None)
    pad = encoded.pad_token_id
    return DataLoader(_WithIds(encoded), batch_sampler=sampler,
                      collate_fn=lambda items: collate_with_ids(items, pad),
                      generator=torch.Generator().manual_seed(seed), num_workers=0)


def eval_loader(encoded, batch_size: int, by_length: bool = True) -> DataLoader:
    """All examples once, longest first: each batch is padded to its own longest row, and rows of
    similar length share a batch, so far fewer padding positions run through the model than in
    input order (``by_length=False``). Batches carry ``example_ids``, with which
    ``evaluation.predict`` returns its rows in example order again. A dataset that says ``keep_order``
    (QA windows: answers are read off by position) is batched in its own order."""
    by_length = by_length and not getattr(encoded, "keep_order", False)
    sampler = ResumableBatchSampler(len(encoded), batch_size, shuffle=False, seed=0,
                                    lengths=encoded.lengths if by_length else None)
    pad = encoded.pad_token_id
    return DataLoader(_WithIds(encoded), batch_sampler=sampler,
                      collate_fn=lambda items: collate_with_ids(items, pad),
                      generator=torch.Generator().manual_seed(0), num_workers=0)
