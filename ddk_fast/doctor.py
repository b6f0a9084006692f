"""`ddk-fast doctor`: which versions are installed and which fast paths are live on this machine.

Why: a missing extension or an interpreter-only Triton silently changes the speed a user sees; this
report makes it visible before a long run.
"""
from __future__ import annotations

import os
import platform

import torch

from ddk_fast._ext import extension, extension_error, has_cuda_kernels
from ddk_fast._runtime import triton_import_error, triton_interpret
from ddk_fast._version import __version__


def _version_of(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def collect() -> dict:
    """The doctor report as a dict (also used by benchmarks to stamp results)."""
    from ddk_fast.ops._dispatch import describe_auto

    ext = extension()
    triton_err = triton_import_error()
    if triton_err:
        triton_mode = f"unavailable ({triton_err})"
    elif torch.cuda.is_available():
        triton_mode = "compiled (CUDA)" + (" — but TRITON_INTERPRET=1 forces the interpreter" if triton_interpret() else "")
    else:
        triton_mode = "interpreted only (no GPU; set TRITON_INTERPRET=1 to run kernels on CPU tensors)"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    report = {
        "ddk_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version_of("triton"),
        "transformers": _version_of("transformers"),
        "datasets": _version_of("datasets"),
        "cpu_threads": torch.get_num_threads(),
        "extension_cpu": ext is not None,
        "extension_cuda": has_cuda_kernels(),
        "extension_error": extension_error(),
        "extension_openmp": bool(ext is not None and getattr(ext, "WITH_OPENMP", False)),
        "extension_cpu_isa": ext.cpu_isa() if ext is not None and hasattr(ext, "cpu_isa") else None,
        "triton_mode": triton_mode,
        "gpus": gpus,
        "auto_paths_cpu": describe_auto(torch.device("cpu")),
    }
    if gpus:
        report["auto_paths_cuda"] = describe_auto(torch.device("cuda"))
    report["env"] = {k: os.environ[k] for k in ("TRITON_INTERPRET", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                     if k in os.environ}
    return report


def format_report(report: dict) -> str:
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k:<24} {v}" for k, v in value.items())
        else:
            lines.append(f"{key:<26} {value}")
    return "\n".join(lines)
