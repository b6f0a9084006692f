"""Facts about the running machine, asked lazily (never at import time).

Why: the package must import on machines without a GPU, and Triton must never be queried for a
driver at import or decoration time.
"""
from __future__ import annotations

import functools
import os


def triton_interpret() -> bool:
    """True when Triton runs in interpreter mode (TRITON_INTERPRET=1): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "no triton"
        return f"triton cannot be imported: {exc}"
    return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def triton_can_run_on(device) -> tuple[bool, str]:
    """(ok, why-not) for running Triton kernels on tensors of ``device``."""
    err = triton_import_error()
    if err:
        return False, err
    dev = str(device)
    if dev.startswith("cuda"):
        return True, ""
    if triton_interpret():
        return True, ""
    return False, f"Triton kernels need a CUDA tensor (got {dev}) or TRITON_INTERPRET=1"


def may_read_on_host(t) -> bool:
    """True when a shortcut may read the value of tensor ``t`` on the host for free.

    Why: reading a CUDA tensor's value (``.item()``, ``bool(t)``, ``float(t)``) waits for every queued
    kernel, so a shortcut that saves a little work per call would stall the GPU every call; inside a
    graph being traced by ``torch.compile`` the read breaks the graph. Such shortcuts run only for
    host-resident tensors in eager mode; elsewhere the branch-free form runs (same result).
    """
    import torch

    return t.device.type == "cpu" and not torch.compiler.is_compiling()
