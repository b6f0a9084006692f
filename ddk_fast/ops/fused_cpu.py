"""Fused memory-bound passes of the layer on the CPU: bias + erf GELU, and residual add + LayerNorm.

    gelu_bias(z, bias)                                   -> gelu(z + bias)
    residual_layer_norm(x, y, weight, bias, eps, path)   -> layer_norm(x + y) * weight + bias

Why: around the GEMMs a layer runs the GELU, its slope, the bias gradient, the residual add and the
LayerNorm as separate passes over [tokens, width] tensors; the kernels in ``ddk_fast._C``
(csrc/fused_layer_cpu.cpp) do each in one pass (forward and backward). They run when the extension
is built and every tensor is a float32 CPU tensor (float64 works too, for testing); otherwise the
plain-PyTorch reference beside each op runs. The compact FFN calls the GELU kernels directly
(:func:`gelu_kernels`), inside its own hand-written backward.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from ddk_fast._ext import extension
from ddk_fast.ops._dispatch import resolve_path

__all__ = ["gelu_bias", "gelu_bias_reference", "residual_layer_norm", "residual_layer_norm_reference",
           "fused_cpu_kernels", "gelu_kernels"]


def fused_cpu_kernels(*tensors: torch.Tensor | None, dtypes=(torch.float32,)) -> ModuleType | None:
    """The extension when it has the fused layer kernels and every given tensor is a CPU tensor of
    one of ``dtypes``; None otherwise (the caller then runs today's plain-PyTorch code). None under
    torch.compile too: the compiler cannot trace into the extension, and fuses these passes itself."""
    if torch.compiler.is_compiling():
        return None
    ext = extension()
    if ext is None or not hasattr(ext, "residual_layer_norm_forward"):
        return None
    for t in tensors:
        if t is not None and (t.device.type != "cpu" or t.dtype not in dtypes):
            return None
    return ext


def gelu_kernels(activation_name: str, *tensors: torch.Tensor | None) -> ModuleType | None:
    """The extension for the fused erf-GELU kernels, when ``activation_name`` is "gelu" and the tensors
    are float32 on the CPU (see :func:`fused_cpu_kernels`)."""
    return fused_cpu_kernels(*tensors) if activation_name == "gelu" else None


# ----------------------------------------------------------------------------------------------------
# bias + GELU
# ----------------------------------------------------------------------------------------------------

def gelu_bias_reference(z: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.gelu(z if bias is None else z + bias, approximate="none")


class _GeluBias(torch.autograd.Function):
    """Forward writes z + bias (kept for the backward) and gelu of it in one pass; backward gives
    grad * gelu'(z + bias) and its row sum (the bias gradient) in one pass."""

    @staticmethod
    def forward(ctx, z, bias, kernels):
        pre = z.contiguous().clone()  # the kernel adds the bias in place
        out = kernels.gelu_bias_forward(pre, bias)
        ctx.save_for_backward(pre)
        ctx.kernels, ctx.has_bias = kernels, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        (pre,) = ctx.saved_tensors
        want_db = ctx.has_bias and ctx.needs_input_grad[1]
        dz, db = ctx.kernels.gelu_bias_backward(grad.contiguous(), pre, want_db)
        return dz if ctx.needs_input_grad[0] else None, db if want_db else None, None


def gelu_bias(z: torch.Tensor, bias: torch.Tensor | None = None, *, dtypes=(torch.float32,)) -> torch.Tensor:
    """erf ``gelu(z + bias)`` over the last dim (bias [K] or None); fused on float32 CPU tensors.
    ``dtypes``: the dtypes the fused kernels take here (tests add float64 for gradcheck)."""
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != z.shape[-1]):
        raise ValueError(f"gelu_bias: bias must have shape ({z.shape[-1]},), got {tuple(bias.shape)}")
    kernels = fused_cpu_kernels(z, bias, dtypes=dtypes)
    if kernels is None or z.numel() == 0 or (bias is not None and bias.dtype != z.dtype):
        return gelu_bias_reference(z, bias)
    return _GeluBias.apply(z, bias, kernels)


# ----------------------------------------------------------------------------------------------------
# residual + LayerNorm
# ----------------------------------------------------------------------------------------------------

def residual_layer_norm_reference(x, y, weight, bias, eps):
    return F.layer_norm(x + y, (x.shape[-1],), weight, bias, eps)


class _ResidualLayerNorm(torch.autograd.Function):
    """Forward: h = x + y and LayerNorm(h) in one pass over the row (saves h, mean, 1/std).
    Backward: the standard fused LayerNorm backward (one pass per row for dh, per-block column sums
    for the weight and bias gradients); x and y both receive dh."""

    @staticmethod
    def forward(ctx, x, y, weight, bias, eps, kernels):
        out, h, mean, rstd = kernels.residual_layer_norm_forward(x.contiguous(), y.contiguous(), weight.contiguous(),
                                                                 bias.contiguous(), eps)
        ctx.save_for_backward(h, mean, rstd, weight)
        ctx.kernels = kernels
        return out

    @staticmethod
    def backward(ctx, grad):
        h, mean, rstd, weight = ctx.saved_tensors
        want_affine = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        dh, dw, db = ctx.kernels.layer_norm_backward(grad.contiguous(), h, mean, rstd, weight.contiguous(),
                                                     want_affine)
        need = ctx.needs_input_grad
        return (dh if need[0] else None, dh if need[1] else None, dw if need[2] else None,
                db if need[3] else None, None, None)


def residual_layer_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        eps: float, path: str = "auto", *, dtypes=(torch.float32,)) -> torch.Tensor:
    """``layer_norm(x + y) * weight + bias`` over the last dim (the post-LN residual of a block).

    Fused on the compact path (``path`` as the engine ops take it) when x, y, weight and bias are CPU
    tensors of ``dtypes`` with one shape; otherwise plain PyTorch, exactly as ``nn.LayerNorm(x + y)``.
    """
    fused_ok = (weight is not None and bias is not None and x.shape == y.shape and x.numel() > 0
                and resolve_path("residual_layer_norm", "engine", path, x.device) == "compact")
    kernels = fused_cpu_kernels(x, y, weight, bias, dtypes=dtypes) if fused_ok else None
    if kernels is None or len({x.dtype, y.dtype, weight.dtype, bias.dtype}) != 1:
        return residual_layer_norm_reference(x, y, weight, bias, eps)
    return _ResidualLayerNorm.apply(x, y, weight, bias, float(eps), kernels)
