"""What every benchmark records, so one reporter can turn any suite into ratio tables.

Each timed case calls :func:`tag` with the subject (op or workload), the provider (the path being
timed), the mode (fwd, fwd+bwd, step, infer), the keep ratio and a shape string. Cases that share
everything but the provider form one comparison row; the baseline provider of the row is the
pure-PyTorch path ("reference", or stock "transformers" for inference; "uncached" for whole runs with
the teacher cache off; "sgemm" for a rate goal against square fp32 matmuls timed in the same run).
A case that has a performance goal passes ``target_ratio=`` (its time / the baseline's time must not
exceed it, e.g. 0.625 for "1.6x faster"); the report lists those rows under "Targets".
"""
from __future__ import annotations

import os

BASELINES = ("reference", "transformers", "eager", "uncached", "sgemm", "student step")  # the last: batching's
QUICK_ENV = "DDK_BENCH_QUICK"
DEVICE_ENV = "DDK_BENCH_DEVICE"


def quick() -> bool:
    """True when the suite should run its small, fast subset (``ddk-fast benchmark --quick``)."""
    return os.environ.get(QUICK_ENV, "0") not in ("", "0")


def bench_device() -> str:
    return os.environ.get(DEVICE_ENV, "cpu")


def tag(benchmark, subject: str, provider: str, mode: str, keep: float | None = None, shape: str = "",
        peak_mem_bytes: int | None = None, target_ratio: float | None = None, **extra) -> None:
    """Attach the comparison keys to a pytest-benchmark case and group it with its siblings.

    ``target_ratio=None`` (cases without a goal) records nothing, so call sites pass a conditional."""
    if target_ratio is not None:
        extra["target_ratio"] = target_ratio
    keep_txt = "" if keep is None else f" keep={keep:g}"
    benchmark.group = f"{subject} {mode}{keep_txt} {shape}".strip()
    benchmark.extra_info.update(subject=subject, provider=provider, mode=mode, keep=keep, shape=shape,
                                device=bench_device(), **extra)
    if peak_mem_bytes is not None:
        benchmark.extra_info["peak_mem_bytes"] = int(peak_mem_bytes)
