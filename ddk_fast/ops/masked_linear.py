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

from ddk_fast.ops._dispatch import resolve_path, triton_kernels

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

# The kernels as torch.library custom ops: torch.compile sees one opaque node per pass (shapes from the
# fake implementations) instead of breaking the graph. The GEMMs gather the active weight rows/columns
# inside the kernel; no weight copy is made.

@torch.library.custom_op("ddk_fast::linear_active_out_fwd", mutates_args=())
def _triton_out_fwd(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    active: torch.Tensor) -> torch.Tensor:
    K = triton_kernels().masked_linear
    return K.active_out_forward(x2d, weight, bias, active)


@_triton_out_fwd.register_fake
def _(x2d, weight, bias, active):
    return x2d.new_empty((x2d.shape[0], active.shape[0]))


@torch.library.custom_op("ddk_fast::linear_active_out_bwd", mutates_args=())
def _triton_out_bwd(grad_y: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, active: torch.Tensor,
                    need_x: bool, need_w: bool, need_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db); an empty tensor for a gradient not asked for."""
    K = triton_kernels().masked_linear
    dx = K.active_out_backward_input(grad_y, weight, active) if need_x else x2d.new_empty((0,))
    dw, db = x2d.new_empty((0,)), x2d.new_empty((0,))
    if need_w or need_b:
        full_w, full_b = K.active_out_backward_weight(grad_y, x2d, active, weight.shape[0], need_b)
        dw = full_w if need_w else dw
        db = full_b if need_b else db
    return dx, dw, db


@_triton_out_bwd.register_fake
def _(grad_y, x2d, weight, active, need_x, need_w, need_b):
    return (x2d.new_empty(x2d.shape if need_x else (0,)), x2d.new_empty(weight.shape if need_w else (0,)),
            x2d.new_empty((weight.shape[0],) if need_b else (0,)))


def _triton_out_setup(ctx, inputs, output):
    x2d, weight, bias, active = inputs
    ctx.save_for_backward(x2d, weight, active)
    ctx.has_bias = bias is not None


def _triton_out_backward(ctx, grad_y):
    x2d, weight, active = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db = _triton_out_bwd(grad_y.contiguous(), x2d, weight, active, need_x, need_w, need_b)
    return dx if need_x else None, dw if need_w else None, db if need_b else None, None


_triton_out_fwd.register_autograd(_triton_out_backward, setup_context=_triton_out_setup)


@torch.library.custom_op("ddk_fast::linear_active_in_fwd", mutates_args=())
def _triton_in_fwd(h2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   active: torch.Tensor) -> torch.Tensor:
    K = triton_kernels().masked_linear
    return K.active_in_forward(h2d, weight, bias, active)


@_triton_in_fwd.register_fake
def _(h2d, weight, bias, active):
    return h2d.new_empty((h2d.shape[0], weight.shape[0]))


@torch.library.custom_op("ddk_fast::linear_active_in_bwd", mutates_args=())
def _triton_in_bwd(grad_y: torch.Tensor, h2d: torch.Tensor, weight: torch.Tensor, active: torch.Tensor,
                   need_h: bool, need_w: bool, need_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dw, db); an empty tensor for a gradient not asked for."""
    K = triton_kernels().masked_linear
    dh = K.active_in_backward_input(grad_y, weight, active) if need_h else h2d.new_empty((0,))
    dw, db = h2d.new_empty((0,)), h2d.new_empty((0,))
    if need_w:
        full_w, full_b = K.active_in_backward_weight(grad_y, h2d, active, weight.shape[1], need_b)
        dw = full_w
        db = full_b if need_b else db
    elif need_b:
        db = grad_y.sum(0)
    return dh, dw, db


@_triton_in_bwd.register_fake
def _(grad_y, h2d, weight, active, need_h, need_w, need_b):
    return (h2d.new_empty(h2d.shape if need_h else (0,)), h2d.new_empty(weight.shape if need_w else (0,)),
            h2d.new_empty((weight.shape[0],) if need_b else (0,)))


def _triton_in_setup(ctx, inputs, output):
    h2d, weight, bias, active = inputs
    ctx.save_for_backward(h2d, weight, active)
    ctx.has_bias = bias is not None


def _triton_in_backward(ctx, grad_y):
    h2d, weight, active = ctx.saved_tensors
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    dh, dw, db = _triton_in_bwd(grad_y.contiguous(), h2d, weight, active, need_h, need_w, need_b)
    return dh if need_h else None, dw if need_w else None, db if need_b else None, None


_triton_in_fwd.register_autograd(_triton_in_backward, setup_context=_triton_in_setup)


# ----------------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------------

def _triton_inputs(op, x, weight, bias):
    """Autocast does not reach inside a custom kernel: apply its dtype here; check what Triton supports."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    triton_kernels().masked_linear.check_dtype(f"{op}: x", x)
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
        y = _triton_out_fwd(x.reshape(lead.numel(), x.shape[-1]), weight, bias, active)
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
        y = _triton_in_fwd(h2d, weight, bias, active)
    return y.reshape(*lead, weight.shape[0])
