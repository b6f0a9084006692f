"""Path selection for the fused ops, by declared capability.

Why: each path says what it supports and *why not* when it cannot run. ``auto`` takes the first path
with no reasons against it; forcing a path that cannot run raises with those reasons instead of
silently falling back (a silent fallback would change the speed a user measures).
"""
from __future__ import annotations

from types import ModuleType

import torch

from ddk_fast._ext import extension, extension_error, has_cuda_kernels
from ddk_fast._runtime import triton_can_run_on, triton_import_error

ENGINE_PATHS = ("triton", "compact", "reference")
LOSS_PATHS = ("fused", "reference")


def triton_kernels() -> ModuleType:
    """The ``ddk_fast.kernels`` package with its launch modules (``gated_attention``, ``masked_ffn``,
    ``masked_linear``) loaded; Python's module cache makes every call after the first a lookup.

    Why late and here: the kernel modules import ``triton`` at their top, an optional dependency that
    must not be needed to import the package; every op reaches its kernels through this one function,
    which runs only on a Triton path :func:`resolve_path` chose (so Triton imports). It returns the
    package rather than a new object so that ``torch.compile`` can trace the ops that call it.
    """
    err = triton_import_error()
    if err:
        raise RuntimeError(err)
    from ddk_fast import kernels
    from ddk_fast.kernels import gated_attention, masked_ffn, masked_linear  # noqa: F401 - bound on `kernels`

    return kernels


def _why_not(path: str, device: torch.device) -> list[str]:
    if path in ("reference", "compact"):
        return []
    if path == "triton":
        ok, why = triton_can_run_on(device)
        return [] if ok else [why]
    if path == "fused":
        if extension() is None:
            return [extension_error() or "ddk_fast._C is not available"]
        if device.type == "cuda" and not has_cuda_kernels():
            return ["ddk_fast._C was built without CUDA kernels (rebuild with a CUDA torch and nvcc)"]
        if device.type not in ("cpu", "cuda"):
            return [f"no fused kernels for device type {device.type!r}"]
        return []
    return [f"unknown path {path!r}"]


def auto_order(kind: str, device: torch.device) -> tuple[str, ...]:
    """Preference order of ``auto`` for an op family ("engine" or "loss") on ``device``."""
    if kind == "engine":
        return ("triton", "compact", "reference") if device.type == "cuda" else ("compact", "reference")
    return ("fused", "reference")


def resolve_path(op: str, kind: str, path: str, device: torch.device) -> str:
    """The concrete path to run ``op`` on ``device``; raises ValueError/RuntimeError with reasons."""
    valid = ENGINE_PATHS if kind == "engine" else LOSS_PATHS
    if path == "auto":
        reasons = {}
        for candidate in auto_order(kind, device):
            why = _why_not(candidate, device)
            if not why:
                return candidate
            reasons[candidate] = why
        raise RuntimeError(f"{op}: no path can run on {device}: {reasons}")
    if path not in valid:
        raise ValueError(f"{op}: path must be one of {('auto',) + valid}, got {path!r}")
    why = _why_not(path, device)
    if why:
        raise RuntimeError(f"{op}: path={path!r} cannot run on {device}: {'; '.join(why)}")
    return path


def describe_auto(device: torch.device) -> dict[str, str]:
    """What ``auto`` picks on ``device`` for each op family (for ``ddk-fast doctor``)."""
    out = {}
    for kind, ops in (("engine", ("gated_attention", "masked_ffn")),
                      ("loss", ("hidden_distill_loss", "attention_distill_loss", "soft_cross_entropy"))):
        for op in ops:
            try:
                out[op] = resolve_path(op, kind, "auto", device)
            except RuntimeError as exc:
                out[op] = f"unavailable ({exc})"
    return out


def dense_path(path: str, device) -> str:
    """The path for a model whose every gate is 1 (a teacher being scored, a physically pruned model
    being tuned): nothing to skip, so on a CPU the compact path's gathers are pure overhead
    (benchmarks/bench_prune.py: the reference path takes ~0.85x its time) and "auto" means "reference"."""
    return "reference" if path == "auto" and torch.device(device).type == "cpu" else path
