"""Peak memory of one call, on CPU and on CUDA.

Why: speed ratios alone hide a path that wins by holding twice the memory. CUDA has an exact peak
counter; CPU has none, so the CPU figure is the peak of the running sum of allocations and frees that
the torch profiler attributes to each op (tensors alive before the call are not counted).
"""
from __future__ import annotations

from typing import Callable

import torch


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Bytes allocated at the high-water mark while ``fn()`` runs, above what was live before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += int(getattr(event, "self_cpu_memory_usage", 0) or 0)
        peak = max(peak, live)
    return peak
