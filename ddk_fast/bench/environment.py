"""What this machine has: versions, the built extension, Triton's mode and the path each op's ``auto``
takes. ``ddk-fast doctor`` prints it; benchmarks stamp their results with it (so a ratio measured on an
interpreter-only Triton or without the extension says so).
"""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

from ddk_fast._ext import extension, extension_error, has_cuda_kernels
from ddk_fast._runtime import triton_import_error, triton_interpret
from ddk_fast._version import __version__
from ddk_fast.ops._dispatch import describe_auto


def _version_of(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    """The report as a dict."""
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


__all__ = ["collect"]
