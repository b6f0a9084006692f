"""ddk_fast: structured pruning + knowledge distillation for BERT-family transformers.

Importing this package never touches a GPU or compiles a kernel; heavy submodules load on first use.
"""
import torch as _torch  # noqa: F401 - loads libtorch before the compiled extension can be imported

from ddk_fast._lazy import lazy_attributes
from ddk_fast._version import __version__

_LAZY = {
    "compress": "ddk_fast.api",
    "finetune": "ddk_fast.api",
    "evaluate": "ddk_fast.api",
    "prune": "ddk_fast.api",
    "sweep": "ddk_fast.api",
    "load_pruned": "ddk_fast.export",
    "register_auto_classes": "ddk_fast.export",
    "MaskedTransformer": "ddk_fast.model",
}

__all__ = ["__version__", *sorted(_LAZY)]


__getattr__ = lazy_attributes(__name__, _LAZY)
