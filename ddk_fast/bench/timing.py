"""Median time of a callable on a GPU (CUDA events) or on the CPU (perf_counter).

Why not pytest-benchmark here: on a GPU the host clock measures launch time, not kernel time, unless
every call synchronises; CUDA events recorded on the stream time the kernels themselves, and one sync
per measurement (not per call) keeps the queue full as in training.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 10,
              inner: int = 1) -> float:
    """Median over ``reps`` measurements of ``inner`` back-to-back calls, in milliseconds per call.

    ``warmup`` calls run first (compilation, autotuning, allocator growth are not timed).
    """
    return spread_ms(fn, device, warmup, reps, inner)[0]


def spread_ms(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 10,
              inner: int = 1) -> tuple[float, float, float]:
    """(median, fastest, slowest) over ``reps`` measurements, ms per call (see :func:`median_ms`):
    the spread a verdict on the median needs."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / inner)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times), min(times), max(times)
