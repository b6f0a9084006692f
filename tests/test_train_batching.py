"""Resumable batch order: a pure function of (seed, epoch), restartable mid-epoch, rank shards that
cover the data, length grouping that keeps every example exactly once."""
import pytest
import torch

from ddk_fast.runs.batching import ResumableBatchSampler


@pytest.mark.parametrize("lengths", [None, [((i * 37) % 23) + 1 for i in range(103)]])
def test_epoch_order_is_deterministic_and_resumable(lengths):
    s = ResumableBatchSampler(103, 8, shuffle=True, seed=3, lengths=lengths, group_size=4)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == s.batches_per_epoch() == len(s)
    assert sorted(i for b in full for i in b) == list(range(103))
    s.set_epoch(2, start_batch=5)
    assert list(s) == full[5:]
    s.set_epoch(3)
    assert list(s) != full
    before = torch.get_rng_state()
    list(s)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is never touched


def test_length_grouping_reduces_padding():
    lengths = [((i * 7919) % 120) + 5 for i in range(640)]
    plain = ResumableBatchSampler(640, 16, shuffle=True, seed=0)
    grouped = ResumableBatchSampler(640, 16, shuffle=True, seed=0, lengths=lengths)

    def padded(sampler):
        return sum(max(lengths[i] for i in b) * len(b) for b in sampler)

    assert padded(grouped) < 0.6 * padded(plain)


def test_rank_shards_cover_the_data():
    shards = [list(ResumableBatchSampler(50, 4, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for s in shards for b in s for i in b)
    assert set(seen) == set(range(50)) and len(seen) == 51  # padded to a multiple of the world size


def test_eval_order_is_longest_first_and_complete():
    lengths = [3, 9, 1, 7, 5]
    s = ResumableBatchSampler(5, 2, shuffle=False, seed=0, lengths=lengths)
    batches = list(s)
    assert [i for b in batches for i in b] == [1, 3, 4, 0, 2]
