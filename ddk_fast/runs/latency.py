"""CPU inference latency of teacher and student: one protocol, so the ratio in report.json can be trusted.

Protocol (what ``compare`` does and report.json records):
1. Same engine, same inputs (a full ``[B, S]`` batch of random token ids), eval mode, inference mode.
2. Threads pinned for the measurement (default 1, restored afterwards): with more threads than idle
   cores, a busy machine drowns the difference between two models.
3. Warm-up: two forward passes of each model.
4. Pairs: teacher and student are timed back to back, alternating which goes first, so a change of
   load hits both; the ratio is the median of the per-pair ratios student / teacher, its spread the
   inter-quartile range of those ratios.
5. At least ``repeats`` pairs; while the spread (IQR / median) exceeds ``tolerance`` more pairs are
   timed, up to ``max_pairs``.
6. The machine's 1-minute load average is recorded before and after. The measurement is marked
   unreliable, with a warning, when the spread stays above ``tolerance`` or the load left fewer idle
   cores than the measurement's threads.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from typing import Callable

import torch


@contextlib.contextmanager
def pinned_threads(threads: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_inputs(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low=1000 if vocab_size > 2000 else 1, high=vocab_size, size=(batch_size, seq_len), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _on_cpu_eval(model):
    cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    return cpu, cpu.training


def _timer(model, inputs, path):
    ids, mask, types = inputs
    kwargs = {} if path == "auto" else {"path": path}
    return timed(lambda: model(ids, attention_mask=mask, token_type_ids=types, **kwargs))


def _quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not on this platform
        return None


@torch.inference_mode()
def compare(teacher, student, batch_size: int, seq_len: int, vocab_size: int, repeats: int = 10, path: str = "auto",
            threads: int = 1, tolerance: float = 0.1, max_pairs: int | None = None) -> dict:
    """Teacher vs student latency (two engine / transformers modules, moved to CPU in eval mode) by the
    module's protocol; returns what report.json records."""
    inputs = random_inputs(batch_size, seq_len, vocab_size)
    models = [_on_cpu_eval(teacher), _on_cpu_eval(student)]
    for m, _ in models:
        m.eval()
    try:
        with pinned_threads(threads):
            return compare_runners(_timer(models[0][0], inputs, path), _timer(models[1][0], inputs, path),
                                   batch_size, seq_len, repeats, threads, tolerance, max_pairs)
    finally:
        for m, was_training in models:
            m.train(was_training)


def timed(fn, *args) -> Callable[[], float]:
    """A runner for ``compare_runners``: calls ``fn(*args)`` and returns its wall time in ms."""
    def once() -> float:
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1000.0

    return once


def compare_runners(run_t: Callable[[], float], run_s: Callable[[], float], batch_size: int, seq_len: int,
                    repeats: int = 10, threads: int = 1, tolerance: float = 0.1, max_pairs: int | None = None,
                    device: str = "cpu") -> dict:
    """Steps 3-6 of the protocol for any two runners (each runs one forward pass and returns its ms):
    PyTorch modules, ONNX Runtime sessions, int8 models. The caller pins the threads (step 2)."""
    max_pairs = max_pairs or max(4 * repeats, 20)
    load_before = _load()
    pairs: list[tuple[float, float]] = []
    for _ in range(2):
        run_t(), run_s()
    while len(pairs) < max_pairs:
        if len(pairs) % 2 == 0:
            t_ms, s_ms = run_t(), run_s()
        else:
            s_ms, t_ms = run_s(), run_t()
        pairs.append((t_ms, s_ms))
        if len(pairs) >= max(1, repeats) and _spread(pairs) <= tolerance:
            break
    load_after = _load()
    ratios = [s / t for t, s in pairs]
    ratio = statistics.median(ratios)
    q1, q3 = _quartiles(ratios)
    spread = _spread(pairs)
    t_ms = statistics.median(t for t, _ in pairs)
    s_ms = statistics.median(s for _, s in pairs)
    warning = _warning(spread, tolerance, load_before, load_after, threads, len(pairs))
    return {"device": device, "batch_size": batch_size, "seq_len": seq_len, "threads": int(threads),
            "repeats": len(pairs), "teacher_ms": round(t_ms, 3), "student_ms": round(s_ms, 3),
            "teacher_ms_min_max": [round(min(t for t, _ in pairs), 3), round(max(t for t, _ in pairs), 3)],
            "student_ms_min_max": [round(min(s for _, s in pairs), 3), round(max(s for _, s in pairs), 3)],
            "ratio_student_over_teacher": round(ratio, 4), "ratio_iqr": [round(q1, 4), round(q3, 4)],
            "speedup": round(1.0 / ratio, 3) if ratio > 0 else None, "spread": round(spread, 4),
            "load_avg_1m": [load_before, load_after], "cpu_count": os.cpu_count(),
            "reliable": warning is None, "warning": warning}


def _spread(pairs) -> float:
    """IQR / median of the per-pair ratios (0 for a single pair)."""
    ratios = [s / t for t, s in pairs]
    if len(ratios) < 4:
        return 0.0 if len(ratios) == 1 else (max(ratios) - min(ratios)) / statistics.median(ratios)
    q1, q3 = _quartiles(ratios)
    return (q3 - q1) / statistics.median(ratios)


def _warning(spread, tolerance, load_before, load_after, threads, pairs) -> str | None:
    reasons = []
    if spread > tolerance:
        reasons.append(f"the per-pair ratios still spread by {spread:.0%} (IQR/median) after {pairs} pairs")
    cpus = os.cpu_count() or 1
    # the 1-minute average after the measurement counts the measurement itself (about ``threads``);
    # what is left is the other work that competed for the cores
    if load_after is not None and load_after - threads > cpus - threads + 0.5:
        reasons.append(f"load average {load_after:.2f} on {cpus} cores: other work left fewer than {threads} "
                       "core(s) idle")
    if not reasons:
        return None
    return "latency ratio may be unreliable: " + "; ".join(reasons) + " (re-measure on an idle machine)"
