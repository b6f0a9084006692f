"""FFN activations and their derivatives in plain PyTorch (the compact path's hand-written backward).

Names: "gelu" = BERT's exact erf GELU (torch ``gelu(approximate='none')``), "gelu_tanh" = the tanh
approximation (GPT-2's "gelu_new"), "relu". The Triton kernels implement the same formulas.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


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


def activation_and_grad(z: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(z), act'(z)) sharing the expensive part (erf / tanh) between the two.

    Why: the compact backward recomputes the activation from the saved pre-activation instead of
    keeping it from the forward, so one erf pass gives both the value and the slope.
    """
    if name == "gelu":
        cdf = torch.erf(z * _INV_SQRT2).add_(1.0).mul_(0.5)
        value = z * cdf
        slope = torch.exp(z.square().mul_(-0.5)).mul_(_INV_SQRT_2PI).mul_(z).add_(cdf)
        return value, slope
    if name == "gelu_tanh":
        z2 = z.square()
        t = torch.tanh(z2.mul(_TANH_CUBIC).add_(1.0).mul_(z).mul_(_SQRT_2_OVER_PI))
        half_1pt = t.add(1.0).mul_(0.5)
        value = z * half_1pt
        # 0.5 (1+t) + 0.5 z (1 - t^2) sqrt(2/pi) (1 + 3 c z^2)
        slope = (1.0 - t.square_()).mul_(z2.mul_(3.0 * _TANH_CUBIC).add_(1.0)).mul_(z).mul_(
            0.5 * _SQRT_2_OVER_PI).add_(half_1pt)
        return value, slope
    if name == "relu":
        return F.relu(z), (z > 0).to(z.dtype)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
