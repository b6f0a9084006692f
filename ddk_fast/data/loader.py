"""DataLoaders whose batch order depends only on (seed, epoch), with optional length bucketing.

Determinism matters for resuming and for comparing runs: every sampler here draws its permutation
from a fresh ``torch.Generator`` seeded with ``seed + epoch``, never from the global RNG.
"""
import functools
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from ddk_fast.data.encoding import EncodedDataset, collate
from ddk_fast.data.tasks import DataError


class _EpochMixin:
    """Epoch counter: ``set_epoch`` pins it (resume, DDP); otherwise each pass advances it by one."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _next_epoch(self) -> int:
        epoch = self.epoch
        self.epoch += 1
        return epoch


class SeededShuffleSampler(_EpochMixin, Sampler):
    """A random permutation of ``range(n)`` drawn from ``seed + epoch``."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, int(seed)

    def __len__(self):
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self._next_epoch())
        return iter(torch.randperm(self.n, generator=generator).tolist())


class LengthGroupedBatchSampler(_EpochMixin, Sampler):
    """Batches of similar length: less padding, so faster steps (most of all for evaluation).

    Indices come from ``sampler`` (e.g. a DistributedSampler) if given, else a seeded shuffle or
    ``range(n)``. They are cut into buckets of ``bucket_size`` (default: 50 batches when shuffling,
    everything otherwise; rounded up to whole batches), each bucket is sorted by length, longest first,
    and cut into batches; when shuffling, the batch order is shuffled too.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, sampler: Optional[Sampler] = None, bucket_size: Optional[int] = None):
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, int(seed), drop_last
        self.sampler = sampler
        bucket_size = bucket_size or (50 * batch_size if shuffle else max(1, len(self.lengths)))
        # Whole batches per bucket, so only the very last batch can be short.
        self.bucket_size = -(-bucket_size // batch_size) * batch_size

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _num_indices(self):
        return len(self.sampler) if self.sampler is not None else len(self.lengths)

    def __len__(self):
        n = self._num_indices()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        generator = torch.Generator().manual_seed(self.seed + self._next_epoch())
        if self.sampler is not None:
            indices = list(self.sampler)
        elif self.shuffle:
            indices = torch.randperm(len(self.lengths), generator=generator).tolist()
        else:
            indices = list(range(len(self.lengths)))
        batches = []
        for start in range(0, len(indices), self.bucket_size):
            bucket = sorted(indices[start:start + self.bucket_size], key=lambda i: -self.lengths[i])
            batches.extend(bucket[i:i + self.batch_size] for i in range(0, len(bucket), self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        return iter(batches)


def make_dataloader(encoded: EncodedDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                    drop_last: bool = False, sampler: Optional[Sampler] = None, sort_by_length: bool = False,
                    num_workers: int = 0, pad_to_multiple_of: Optional[int] = None) -> DataLoader:
    """A DataLoader over ``encoded`` yielding dynamically padded batches (see ``collate``).

    The same ``seed`` gives the same batches; each new pass over the loader reshuffles (epoch + 1),
    and ``set_loader_epoch(loader, epoch)`` pins the epoch for resuming. With ``sampler`` (e.g. a
    DistributedSampler) the sampler decides order and sharding, and ``shuffle``/``seed`` are ignored
    except for the batch order under ``sort_by_length``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r}; expected a positive int")
    collate_fn = functools.partial(collate, pad_token_id=getattr(encoded, "pad_token_id", 0),
                                   pad_to_multiple_of=pad_to_multiple_of)
    common = dict(collate_fn=collate_fn, num_workers=num_workers)
    if sort_by_length:
        lengths = getattr(encoded, "lengths", None)
        if lengths is None:
            lengths = [len(encoded[i]["input_ids"]) for i in range(len(encoded))]
        batch_sampler = LengthGroupedBatchSampler(lengths, batch_size, shuffle=shuffle, seed=seed,
                                                  drop_last=drop_last, sampler=sampler)
        return DataLoader(encoded, batch_sampler=batch_sampler, **common)
    if sampler is None:
        sampler = SeededShuffleSampler(len(encoded), seed) if shuffle else SequentialSampler(encoded)
    return DataLoader(encoded, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Pin the epoch of the loader's (batch) sampler so the order is a function of (seed, epoch)."""
    for part in (loader.batch_sampler, loader.sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
            return
