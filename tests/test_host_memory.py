"""keep_freed_memory: inside it a large freed block is reused without page faults; after it glibc's
defaults are back (a freed large block goes back to the system and the next one faults in again)."""
import resource

import pytest
import torch

from ddk_fast.runs import host_memory
from ddk_fast.runs.host_memory import keep_freed_memory

NUMEL = 16 * 2**20  # 64 MiB of float32: above glibc's largest mmap threshold (32 MiB)
PAGES = NUMEL * 4 // 4096


def _faults_of_second_allocation() -> int:
    """Minor page faults of filling a 64 MiB tensor allocated right after an equal one was freed."""
    first = torch.ones(NUMEL)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(NUMEL)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


@pytest.mark.skipif(host_memory._glibc() is None, reason="the settings are glibc's (this C library is another)")
def test_freed_block_is_reused_inside_and_returned_after():
    _faults_of_second_allocation()  # warm-up: glibc's dynamic mmap threshold has settled
    outside = _faults_of_second_allocation()
    with keep_freed_memory():
        _faults_of_second_allocation()  # the heap grows once to hold the block
        inside = _faults_of_second_allocation()
    after = _faults_of_second_allocation()
    assert outside > PAGES // 2, f"glibc mmaps a fresh 64 MiB block by default: {outside} faults"
    assert inside < PAGES // 10, f"inside, the freed block is reused: {inside} faults for {PAGES} pages"
    assert after > PAGES // 2, f"after, the defaults are back: {after} faults"

