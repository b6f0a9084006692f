"""A measured latency cost model for ``--target latency=R``: time the teacher cut to uniform widths on
this machine, fit whole-model latency as an affine function of the kept heads and channels.

Why whole models, not single layers: the ratio a user checks is whole-model latency (embeddings and
the classifier included), and it is measured the same way afterwards (``train.latency.compare``: the
same engine, path, threads and shape). Timing the model itself at a few uniform widths measures the
constant part too, with nothing to add up.

Points: heads per layer at 0, H/4, H/2, 3H/4, H with every FFN channel kept, and FFN channels per
layer at 0, I/4, I/2, 3I/4, I with every head kept (9 distinct models). Rounds: each round times
every model once, in order; the median over rounds is each point's latency (a change of load hits
all points alike). Least squares of ``ms = fixed + head_ms * sum(heads) + channel_ms * sum(channels)``
over the points; the largest relative residual is reported with the fit. ``runtime="onnx"`` times
each uniform model's ONNX export in ONNX Runtime instead (what `--latency-runtime onnx` budgets for). The cost is affine, as Kwon
et al. (2022) find latency to be beyond small widths on CPUs: exact expectations and the one-shot
mask search stay valid; where a runtime is not affine the residual says so.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from ddk_fast.export import save_pruned
from ddk_fast.export.onnx import ONNX_FILE, OnnxModel, export_onnx
from ddk_fast.model import prune
from ddk_fast.model.structure import Structure
from ddk_fast.search.cost import LatencyFit
from ddk_fast.runs.latency import pinned_threads, random_inputs

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _uniform(model, heads: int, channels: int) -> Structure:
    return Structure(heads=tuple(tuple(range(min(heads, h))) for h in model.num_heads),
                     channels=tuple(tuple(range(min(channels, c))) for c in model.intermediate_sizes),
                     total_heads=tuple(model.num_heads), total_channels=tuple(model.intermediate_sizes))


def grid(model) -> list[tuple[int, int]]:
    """(heads per layer, channels per layer) of the timed models, the full model once."""
    H, I = max(model.num_heads), max(model.intermediate_sizes)
    points = [(round(f * H), I) for f in FRACTIONS] + [(H, round(f * I)) for f in FRACTIONS]
    return list(dict.fromkeys(points))


RUNTIMES = ("torch", "onnx")


def _runners(models, inputs, runtime: str, threads: int, scratch: str, path: str):
    """One zero-argument forward per model: the engine itself (torch) or its ONNX export in ONNX Runtime."""
    ids, mask, types = inputs
    if runtime == "torch":
        kwargs = {} if path == "auto" else {"path": path}
        return [lambda m=m: m(ids, attention_mask=mask, token_type_ids=types, **kwargs) for m in models]
    runners = []
    for i, model in enumerate(models):
        folder = save_pruned(model, os.path.join(scratch, f"m{i}"))
        export_onnx(folder, os.path.join(scratch, f"m{i}-onnx"))
        session = OnnxModel(os.path.join(scratch, f"m{i}-onnx", ONNX_FILE), threads)
        runners.append(lambda s=session: s(ids, mask, types))
    return runners


@torch.inference_mode()
def measure_latency_fit(teacher, batch_size: int, seq_len: int, threads: int = 1, rounds: int = 3,
                        path: str = "auto", info=None, runtime: str = "torch") -> LatencyFit:
    """Time uniform-width copies of ``teacher`` (a MaskedTransformer) in ``runtime`` ("torch": the engine,
    "onnx": each copy exported and run in ONNX Runtime) and fit the affine latency model."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: expected one of {RUNTIMES}")
    teacher = teacher.to("cpu").eval()
    inputs = random_inputs(batch_size, seq_len, teacher.config.vocab_size)
    points = grid(teacher)
    models = [prune(teacher, _uniform(teacher, h, c)).eval() for h, c in points]
    times: list[list[float]] = [[] for _ in points]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddk-latency-table-") as scratch, pinned_threads(threads):
        runners = _runners(models, inputs, runtime, threads, scratch, path)
        for run in runners:  # warm-up
            run()
        for _ in range(max(1, rounds)):
            for i, run in enumerate(runners):
                start = time.perf_counter()
                run()
                times[i].append((time.perf_counter() - start) * 1000.0)
    ms = [statistics.median(t) for t in times]
    fit = fit_latency(teacher, points, ms, batch_size, seq_len, threads, runtime)
    if info is not None:
        info(f"latency table ({runtime}): {len(points)} uniform models at {batch_size}x{seq_len}, {threads} thread(s), "
             f"{time.perf_counter() - t0:.0f} s: {fit.fixed_ms:.1f} ms + {fit.head_ms:.2f} ms/head + "
             f"{fit.channel_ms * 1000:.2f} us/channel (max residual {fit.max_rel_error:.1%})")
    return fit


def fit_latency(model, points, ms, batch_size: int, seq_len: int, threads: int, runtime: str = "torch") -> LatencyFit:
    """Least squares of the affine model over the timed points (float64)."""
    L = model.num_layers
    rows = torch.tensor([[1.0, L * h, L * c] for h, c in points], dtype=torch.float64)
    y = torch.tensor(ms, dtype=torch.float64)
    coef = torch.linalg.lstsq(rows, y[:, None]).solution[:, 0]
    predicted = rows @ coef
    rel = ((predicted - y).abs() / y).max().item()
    fixed, head, channel = (float(v) for v in coef)
    return LatencyFit(fixed_ms=fixed, head_ms=max(head, 0.0), channel_ms=max(channel, 0.0), batch_size=batch_size,
                      seq_len=seq_len, threads=threads, runtime=runtime, max_rel_error=round(rel, 4),
                      points=tuple({"heads": h, "channels": c, "ms": round(t, 3)} for (h, c), t in zip(points, ms)))


__all__ = ["measure_latency_fit", "fit_latency", "grid", "RUNTIMES"]
