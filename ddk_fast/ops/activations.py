"""FFN activations and their backward in plain PyTorch (the compact path's hand-written backward).

Names: "gelu" = BERT's exact erf GELU (torch ``gelu(approximate='none')``), "gelu_tanh" = the tanh
approximation (GPT-2's "gelu_new"), "relu". The Triton kernels implement the same formulas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def activation(z: torch.Tensor, name: str) -> torch.Tensor:
    """The activation with torch's own kernels (what the reference path uses)."""
    if name == "gelu":
        return F.gelu(z, approximate="none")
    if name == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if name == "relu":
        return F.relu(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def activation_backward(grad: torch.Tensor, z: torch.Tensor, name: str) -> torch.Tensor:
    """``grad * act'(z)`` in one fused torch kernel (what autograd itself would run for ``act``).

    Why not the formulas: spelled out in tensor ops the erf-GELU slope takes ~6 passes over the largest
    tensor of the layer; the fused kernel takes one.
    """
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, z, approximate="none")
    if name == "gelu_tanh":
        return torch.ops.aten.gelu_backward(grad, z, approximate="tanh")
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, z, 0)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
