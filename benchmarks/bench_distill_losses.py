"""Fused distillation losses vs their references on the reference workload, forward + backward.

Workload (a 6-layer, 12-head, d=384 student against a same-shaped teacher, batch 32, length 128):
hidden-state MSE over 7 states (embeddings + 6 layers), attention KL over 6 layers, soft CE on
[32, 2] logits, summed, then ``backward()``. The token mask pads each sequence to 128 from a length
drawn in [64, 128] (GLUE-like padding).

Providers: ``fused`` (ddk_fast._C), ``eager`` (the plain-PyTorch references through the public ops,
path="reference"), ``compile`` (torch.compile of the reference functions, warmed up outside the
timed region).

Memory: torch has no allocator statistics for CPU tensors and tracemalloc does not see them, so a
background thread samples the process RSS (/proc/self/statm) every 0.5 ms during one step run in a
fresh process (see measure_peak_mb); ``peak_rss_delta_mb`` is the peak minus the RSS before that
step, with no gradients alive and the fused path's buffer pool emptied, so every provider's
gradients count.
Also reported: ``saved_mb``, the bytes the fused path keeps between forward and backward (its
gradients, float32). The fused path reuses its gradient buffers between steps (a pool of up to
DDK_FAST_CPU_POOL_MB, see csrc/cpu_buffer_pool.h); set DDK_FAST_CPU_POOL_MB=0 to time it without.

Run:
    pytest benchmarks/bench_distill_losses.py --benchmark-only            # pytest-benchmark table
    python benchmarks/bench_distill_losses.py [--rounds 5] [--json out.json]  # ratios table
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

from ddk_fast import _ext
from ddk_fast.bench.conventions import tag
from ddk_fast.ops import distill_losses as D

LAYERS, BATCH, SEQ, HIDDEN, HEADS, CLASSES = 6, 32, 128, 384, 12, 2
PROVIDERS = ("fused", "eager", "compile")


def make_inputs(seed: int = 0) -> dict:
    """Student leaves (requires_grad), detached teachers, learnable layer weights, a padding mask."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, grad=False):
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    lengths = torch.randint(SEQ // 2, SEQ + 1, (BATCH,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).to(torch.int64)
    return {
        "hs": [randn(BATCH, SEQ, HIDDEN, grad=True) for _ in range(LAYERS + 1)],
        "ht": [randn(BATCH, SEQ, HIDDEN) for _ in range(LAYERS + 1)],
        "as": [randn(BATCH, HEADS, SEQ, SEQ, grad=True) for _ in range(LAYERS)],
        "at": [randn(BATCH, HEADS, SEQ, SEQ) for _ in range(LAYERS)],
        "ls": randn(BATCH, CLASSES, grad=True),
        "lt": randn(BATCH, CLASSES),
        "hw": torch.full((LAYERS + 1,), 1.0 / (LAYERS + 1), requires_grad=True),
        "aw": torch.full((LAYERS,), 1.0 / LAYERS, requires_grad=True),
        "mask": mask,
    }


def _leaves(x: dict) -> list[torch.Tensor]:
    return [*x["hs"], *x["as"], x["ls"], x["hw"], x["aw"]]


def _reference_loss(hs, ht, as_, at, ls, lt, hw, aw, mask):
    hidden, _ = D.hidden_distill_loss_reference(hs, ht, hw, mask, "mse")
    attention, _ = D.attention_distill_loss_reference(as_, at, aw, mask, "kl")
    return hidden + attention + D.soft_cross_entropy_reference(ls, lt, 2.0)


def reset_grads(x: dict) -> None:
    """Drop the previous step's gradients (outside the timed region, like optimizer.zero_grad())."""
    for leaf in _leaves(x):
        leaf.grad = None


def make_step(provider: str, x: dict):
    """A closure running one forward + backward of the workload with ``provider``."""
    args = (x["hs"], x["ht"], x["as"], x["at"], x["ls"], x["lt"], x["hw"], x["aw"], x["mask"])
    if provider in ("fused", "eager"):
        path = "fused" if provider == "fused" else "reference"

        def loss_fn(hs, ht, as_, at, ls, lt, hw, aw, mask):
            return (D.hidden_distill_loss(hs, ht, hw, mask, "mse", path=path)
                    + D.attention_distill_loss(as_, at, aw, mask, "kl", path=path)
                    + D.soft_cross_entropy(ls, lt, 2.0, path=path))
    elif provider == "compile":
        loss_fn = torch.compile(_reference_loss, dynamic=False)
    else:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")

    def step():
        loss_fn(*args).backward()

    return step


class PeakRss:
    """Samples the resident set size in a thread; ``delta_mb`` = peak - RSS at entry."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s = interval_s
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def fused_saved_mb(x: dict) -> float:
    """Bytes the fused path keeps for backward: one float32 gradient per student element."""
    elems = sum(t.numel() for t in x["hs"]) + sum(t.numel() for t in x["as"]) + x["ls"].numel()
    return elems * 4 / 2**20


def run_provider(provider: str, x: dict, rounds: int, warmup: int = 2) -> dict:
    step = make_step(provider, x)
    for _ in range(warmup):  # includes compilation for "compile"
        reset_grads(x)
        step()
    times = []
    for _ in range(rounds):
        reset_grads(x)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"provider": provider, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "peak_rss_delta_mb": measure_peak_mb(provider), "threads": torch.get_num_threads()}


def measure_peak_mb(provider: str) -> float:
    """RSS one step of ``provider`` adds, gradients included, measured in a fresh process.

    Why a fresh process: glibc keeps freed memory of earlier steps (and of other providers) in its
    heap, which hides new allocations from the RSS; the child lowers the mmap threshold so every
    large tensor is mapped and unmapped on its own, and empties the fused path's buffer pool so its
    gradients count as fresh memory like everybody else's.
    """
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-of", provider],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {provider} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_delta_mb"]


def _memory_child(provider: str) -> None:
    try:  # glibc: allocations >= 1 MiB are mmap'ed, so freeing them lowers the RSS at once
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except OSError:
        pass
    x = make_inputs()
    step = make_step(provider, x)
    for _ in range(2):
        reset_grads(x)
        step()
    reset_grads(x)
    ext = _ext.extension()
    if ext is not None:
        ext.cpu_pool_empty()
    gc.collect()
    with PeakRss() as rss:
        step()
    print(json.dumps({"provider": provider, "peak_rss_delta_mb": rss.delta_mb}))


# ---- pytest-benchmark ----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def workload():
        return make_inputs()

    @pytest.mark.parametrize("provider", PROVIDERS)
    def test_distill_losses_fwd_bwd(benchmark, workload, provider):
        step = make_step(provider, workload)
        for _ in range(2):
            reset_grads(workload)
            step()
        peak_mb = measure_peak_mb(provider)
        # goal: fused >= 3x eager (and not slower than compile: compare the two rows' ratios)
        tag(benchmark, "distill_losses", provider, "fwd+bwd", None,
            f"L{LAYERS} B{BATCH} S{SEQ} d{HIDDEN} A{HEADS}", peak_mem_bytes=int(peak_mb * 2**20),
            target_ratio=1 / 3 if provider == "fused" else None, peak_rss_delta_mb=round(peak_mb, 1))
        benchmark.pedantic(step, setup=lambda: reset_grads(workload), rounds=5, iterations=1,
                           warmup_rounds=0)
        if provider == "fused":
            benchmark.extra_info["saved_mb"] = round(fused_saved_mb(workload), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--json", default=None, help="append results to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child of measure_peak_mb
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.memory_of:
        _memory_child(opts.memory_of)
        return
    x = make_inputs()
    results = [run_provider(p, x, opts.rounds) for p in opts.providers.split(",")]
    by = {r["provider"]: r for r in results}
    print(f"workload: hidden MSE {LAYERS + 1}x[{BATCH},{SEQ},{HIDDEN}] + attention KL {LAYERS}x"
          f"[{BATCH},{HEADS},{SEQ},{SEQ}] + soft CE [{BATCH},{CLASSES}], fwd+bwd, "
          f"{torch.get_num_threads()} threads, fused saved {fused_saved_mb(x):.0f} MiB")
    print(f"{'provider':10s} {'median ms':>10s} {'min ms':>8s} {'peak RSS +MiB':>14s}")
    for r in results:
        print(f"{r['provider']:10s} {r['median_ms']:10.1f} {r['min_ms']:8.1f} {r['peak_rss_delta_mb']:14.0f}")
    if "fused" in by:
        for other in ("eager", "compile"):
            if other in by:
                print(f"fused speed-up vs {other}: {by[other]['median_ms'] / by['fused']['median_ms']:.2f}x")
    if opts.json:
        old = json.load(open(opts.json)) if os.path.exists(opts.json) else []
        json.dump(old + results, open(opts.json, "w"), indent=1)


if __name__ == "__main__":
    main()
