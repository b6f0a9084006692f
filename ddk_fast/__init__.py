"""ddk_fast: structured pruning + knowledge distillation for BERT-family transformers.

Importing this package never touches a GPU or compiles a kernel; heavy submodules load on first use.
"""
import torch as _torch  # noqa: F401 - loads libtorch before the compiled extension can be imported

from ddk_fast._version import __version__

__all__ = ["__version__"]
