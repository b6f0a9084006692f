"""Linear layers restricted to a set of active units (pruned heads / FFN channels are never computed).

    linear_active_out(x, weight, bias, active) -> [..., K]   only output rows ``active`` of ``weight``
    linear_active_in(h, weight, bias, active)  -> [..., O]   only input columns ``active`` of ``weight``

Paths: "triton" (one Triton GEMM that gathers weight rows/columns through ``active`` inside the kernel,
forward and backward), "compact" (gather the active weights once, dense GEMMs, gradient scattered into a
zero full-size buffer: the fast CPU path) and "reference" (index_select + F.linear; autograd does the
rest). Every path gives weight/bias gradients that are exactly zero outside the active units.

``active`` must be a 1-D integer tensor of distinct indices, sorted ascending (as ``torch.nonzero``
returns them). Sortedness is what lets ``K == N`` mean "all units", which skips the gather.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ddk_fast.ops._dispatch import resolve_path

__all__ = ["linear_active_out", "linear_active_in", "linear_active_out_reference",
           "linear_active_in_reference"]


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------

def _check(op: str, x: torch.Tensor, weight: torch.Tensor, bias, active: torch.Tensor, x_dim: int,
           axis: int) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D, got shape {tuple(weight.shape)}")
    if active.dim() != 1 or active.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: active must be a 1-D int64/int32 tensor of unit indices, "
                         f"got dtype {active.dtype} shape {tuple(active.shape)}")
    if active.device != weight.device:
        raise ValueError(f"{op}: active is on {active.device} but weight is on {weight.device}")
    if x.shape[-1] != x_dim:
        raise ValueError(f"{op}: input last dim must be {x_dim}, got shape {tuple(x.shape)}")
    if active.numel() > weight.shape[axis]:
        raise ValueError(f"{op}: {active.numel()} active indices but weight has only "
                         f"{weight.shape[axis]} units along dim {axis}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} != weight dtype {weight.dtype}")
    n_bias = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n_bias):
        raise ValueError(f"{op}: bias must have shape ({n_bias},), got {tuple(bias.shape)}")


def _is_all(active: torch.Tensor, n: int) -> bool:
    """Sorted distinct indices with K == N are exactly arange(N): no gather needed."""
    return active.numel() == n


# ----------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------

def linear_active_out_reference(x, weight, bias, active):
    """Plain PyTorch: index_select the active rows, F.linear; autograd scatters the gradient."""
    w = weight.index_select(0, active)
    b = bias.index_select(0, active) if bias is not None else None
    return F.linear(x, w, b)


def linear_active_in_reference(h, weight, bias, active):
    """Plain PyTorch: index_select the active columns, F.linear."""
    return F.linear(h, weight.index_select(1, active), bias)


# ----------------------------------------------------------------------------------------------------
# compact (CPU-fast) path
# ----------------------------------------------------------------------------------------------------

def _scatter_rows(values: torch.Tensor, active: torch.Tensor, n: int) -> torch.Tensor:
    if values.shape[0] == n:
        return values
    out = values.new_zeros((n,) + tuple(values.shape[1:]))
    return out.index_copy_(0, active, values)


def _scatter_cols(values: torch.Tensor, active: torch.Tensor, n: int) -> torch.Tensor:
    if values.shape[1] == n:
        return values
    out = values.new_zeros((values.shape[0], n))
    return out.index_copy_(1, active, values)


class _LinearActiveOutCompact(torch.autograd.Function):
    """Gathers the K active weight rows once (a [K, D] copy, needed by the backward too) and runs dense
    GEMMs; the weight gradient is a zero [N, D] buffer with only the active rows written."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, active):
        n = weight.shape[0]
        w_a = weight if _is_all(active, n) else weight.index_select(0, active)
        if bias is None:
            y = x2d @ w_a.t()
        else:
            b_a = bias if _is_all(active, n) else bias.index_select(0, active)
            y = torch.addmm(b_a, x2d, w_a.t())
        ctx.save_for_backward(x2d, w_a, active)
        ctx.n = n
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2d, w_a, active = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = grad_y @ w_a
        if ctx.needs_input_grad[1]:
            dw = _scatter_rows(grad_y.t() @ x2d, active, ctx.n)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = _scatter_rows(grad_y.sum(0), active, ctx.n)
        return dx, dw, db, None


class _LinearActiveInCompact(torch.autograd.Function):
    """Gathers the K active weight columns once ([O, K]) and runs dense GEMMs; the weight gradient is a
    zero [O, N] buffer with only the active columns written."""

    @staticmethod
    def forward(ctx, h2d, weight, bias, active):
        n = weight.shape[1]
        w_a = weight if _is_all(active, n) else weight.index_select(1, active)
        y = h2d @ w_a.t() if bias is None else torch.addmm(bias, h2d, w_a.t())
        ctx.save_for_backward(h2d, w_a, active)
        ctx.n = n
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        h2d, w_a, active = ctx.saved_tensors
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            dh = grad_y @ w_a
        if ctx.needs_input_grad[1]:
            dw = _scatter_cols(grad_y.t() @ h2d, active, ctx.n)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_y.sum(0)
        return dh, dw, db, None


# ----------------------------------------------------------------------------------------------------
# triton path
# ----------------------------------------------------------------------------------------------------

class _LinearActiveOutTriton(torch.autograd.Function):
    """Forward/backward GEMMs gather the active weight rows inside the kernel; no weight copy."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, active):
        from ddk_fast.kernels import masked_linear as K

        y = K.active_out_forward(x2d, weight, bias, active)
        ctx.save_for_backward(x2d, weight, active)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from ddk_fast.kernels import masked_linear as K

        x2d, weight, active = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = K.active_out_backward_input(grad_y, weight, active)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_b:
            dw, db = K.active_out_backward_weight(grad_y, x2d, active, weight.shape[0], want_b)
            if not ctx.needs_input_grad[1]:
                dw = None
        return dx, dw, db, None


class _LinearActiveInTriton(torch.autograd.Function):
    """Forward/backward GEMMs gather the active weight columns inside the kernel; no weight copy."""

    @staticmethod
    def forward(ctx, h2d, weight, bias, active):
        from ddk_fast.kernels import masked_linear as K

        y = K.active_in_forward(h2d, weight, bias, active)
        ctx.save_for_backward(h2d, weight, active)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from ddk_fast.kernels import masked_linear as K

        h2d, weight, active = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            dh = K.active_in_backward_input(grad_y, weight, active)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1]:
            dw, db = K.active_in_backward_weight(grad_y, h2d, active, weight.shape[1], want_b)
        elif want_b:
            db = grad_y.sum(0)
        return dh, dw, db, None


# ----------------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------------

def _triton_inputs(op, x, weight, bias):
    """Autocast does not reach inside a custom kernel: apply its dtype here; check what Triton supports."""
    from ddk_fast.kernels.masked_linear import check_dtype

    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    check_dtype(f"{op}: x", x)
    return x, weight, bias


def linear_active_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      active: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """``y[..., j] = x @ weight[active[j]] + bias[active[j]]``: only the K active output rows.

    x: [..., D]; weight: [N, D]; bias: [N] or None; active: [K] sorted distinct row indices.
    Returns [..., K] in x's dtype. Gradients reach x, and weight/bias at the active rows only (the other
    rows get exactly zero). K == 0 gives an empty [..., 0] output and zero weight gradients.
    """
    _check("linear_active_out", x, weight, bias, active, weight.shape[1], 0)
    path = resolve_path("linear_active_out", "engine", path, x.device)
    if path == "reference":
        return linear_active_out_reference(x, weight, bias, active)
    lead = x.shape[:-1]
    active = active.long()
    if path == "compact":
        y = _LinearActiveOutCompact.apply(x.reshape(lead.numel(), x.shape[-1]), weight, bias, active)
    else:
        x, weight, bias = _triton_inputs("linear_active_out", x, weight, bias)
        y = _LinearActiveOutTriton.apply(x.reshape(lead.numel(), x.shape[-1]), weight, bias, active)
    return y.reshape(*lead, active.numel())


def linear_active_in(h_compact: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     active: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """``y = h_compact @ weight[:, active].T + bias``: reduces only over the K active input columns.

    h_compact: [..., K]; weight: [O, N]; bias: [O] or None; active: [K] sorted distinct column indices.
    Returns [..., O]. Gradients reach h_compact, bias, and weight at the active columns only.
    K == 0 gives ``bias`` broadcast (zeros without bias) and a zero weight gradient.
    """
    _check("linear_active_in", h_compact, weight, bias, active, active.numel(), 1)
    path = resolve_path("linear_active_in", "engine", path, h_compact.device)
    if path == "reference":
        return linear_active_in_reference(h_compact, weight, bias, active)
    lead = h_compact.shape[:-1]
    active = active.long()
    h2d = h_compact.reshape(lead.numel(), h_compact.shape[-1])
    if path == "compact":
        y = _LinearActiveInCompact.apply(h2d, weight, bias, active)
    else:
        h2d, weight, bias = _triton_inputs("linear_active_in", h2d, weight, bias)
        y = _LinearActiveInTriton.apply(h2d, weight, bias, active)
    return y.reshape(*lead, weight.shape[0])
