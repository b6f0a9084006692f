"""Keep freed host memory in the process during a training run (glibc malloc settings).

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
hands it back with ``munmap`` when freed, so the next allocation of that size faults in and zeroes
every page again. A training step allocates such buffers many times over: the dense gradient of the
word embeddings (30522 x 384 floats, 47 MiB for MiniLM) and AdamW's temporaries of the same size
(``sqrt`` and the division of the second moment), besides the activations and GEMM outputs of the
forward and backward passes. With mmap off and the heap top not trimmed, freed blocks are reused
instead: a distillation step of a 50 % MiniLM student (batch 32 x 128 tokens, one thread) takes about
ten times fewer page faults and 5-10 % less CPU time. The arithmetic is unchanged (same kernels on the
same values; results are bit-identical); only where the bytes live changes.

The settings hold inside :func:`keep_freed_memory` and are put back to glibc's defaults after it, and
the memory held on the heap is returned to the system (``malloc_trim``). Elsewhere (musl, macOS,
Windows, or a preloaded jemalloc/tcmalloc, which ignore these settings) it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
RUN_TRIM_THRESHOLD = 2**30  # while a run holds its peak, keep up to 1 GiB of free heap top


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 -- both must exist
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory():
    """Inside: large freed blocks stay in the process for the next allocation (see the module docstring)."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, RUN_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


__all__ = ["keep_freed_memory"]
