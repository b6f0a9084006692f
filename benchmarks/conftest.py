"""Shared set-up of the benchmark suites: device and quick mode come from `ddk-fast benchmark`.

Run directly with `python -m pytest benchmarks/` or through `ddk-fast benchmark [--quick]`.
"""
import os

import pytest
import torch

from ddk_fast.bench.conventions import bench_device, quick

if not torch.cuda.is_available():
    # Triton suites need a GPU; on CPU only the compact/reference/fused paths are timed.
    os.environ.setdefault("TRITON_INTERPRET", "0")


@pytest.fixture(scope="session")
def device():
    dev = bench_device()
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA asked for but not available")
    return torch.device(dev)


@pytest.fixture(scope="session")
def is_quick():
    return quick()
