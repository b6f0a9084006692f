"""The one place that loads the compiled extension ``ddk_fast._C``.

Why: a missing or stale extension must never surface as an ImportError deep inside an op. Every
caller asks :func:`extension` (or :func:`extension_error`) and falls back to, or reports, the
plain-PyTorch reference path.
"""
from __future__ import annotations

import functools
from types import ModuleType

import torch


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from ddk_fast import _C  # noqa: WPS433 - deliberate lazy import
    except ImportError as exc:
        text = str(exc)
        if "undefined symbol" in text or "version" in text.lower():
            why = (f"ddk_fast._C was built for another torch than the running torch {torch.__version__} "
                   f"({text.splitlines()[0]}); rebuild with: pip install --no-build-isolation -e .")
        else:
            why = (f"ddk_fast._C is not built ({text.splitlines()[0]}); build it with: "
                   "pip install --no-build-isolation -e .  (reference paths still work)")
        return None, why
    built_for = getattr(_C, "TORCH_VERSION", None)
    if built_for not in (None, "unknown") and built_for.split("+")[0] != torch.__version__.split("+")[0]:
        return None, (f"ddk_fast._C was built for torch {built_for}, running torch {torch.__version__}; "
                      "rebuild with: pip install --no-build-isolation -e .")
    return _C, None


def extension() -> ModuleType | None:
    """The loaded ``_C`` module, or None when it is missing or stale."""
    return _load()[0]


def extension_error() -> str | None:
    """Why the extension cannot be used, or None when it can."""
    return _load()[1]


def require_extension() -> ModuleType:
    """The ``_C`` module, or a RuntimeError that says plainly why it is unusable."""
    mod, why = _load()
    if mod is None:
        raise RuntimeError(why)
    return mod


def has_cuda_kernels() -> bool:
    """True when ``_C`` was compiled with its CUDA kernels."""
    mod = extension()
    return bool(mod is not None and getattr(mod, "WITH_CUDA", False))
