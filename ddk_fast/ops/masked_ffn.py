"""Masked FFN: ``y = (act(x @ w_in.T + b_in) * channel_gate) @ w_out.T + b_out``, pruned channels skipped.

Channels whose gate is exactly 0 are never computed on the "compact" and "triton" paths (neither GEMM
touches them), and in every path, the reference included, a zero gate switches its unit off: zero
contribution, and exactly zero gradient for that gate and for that channel's rows of w_in / b_in and
columns of w_out. Non-zero gates (any value, e.g. 0.3 or -1.2) get their true gradient.

Paths:
  "reference"  plain PyTorch over all I channels; the gate enters as ``gate * (gate != 0)`` so that
               d/dgate is 0 where the gate is 0 (the rule above).
  "compact"    gather the active channels' weights, dense GEMMs over them, hand-written backward that
               saves only x and the compact pre-activation (the fast CPU path).
  "triton"     fused up-proj (+bias, activation, gate) and down-proj kernels over active channels,
               backward kernels likewise (see ``ddk_fast.kernels.masked_ffn``).
  "auto"       triton on GPU, compact on CPU.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ddk_fast.ops._dispatch import resolve_path, triton_kernels
from ddk_fast.ops.activations import activation, activation_backward, check_activation
from ddk_fast.ops.fused_cpu import gelu_kernels

__all__ = ["masked_ffn", "masked_ffn_reference", "FFNIntermediate"]


class FFNIntermediate(NamedTuple):
    """Gated intermediate activations ``act(x @ w_in.T + b_in) * gate`` of the active channels.

    values: [..., K] (differentiable; K = number of non-zero gates, in channel order);
    active: [K] channel indices; num_channels: I. ``full()`` gives [..., I] with zeros at pruned channels.
    Same layout on every path, so distillation code need not care which path ran.
    """

    values: torch.Tensor
    active: torch.Tensor
    num_channels: int

    def full(self) -> torch.Tensor:
        out = self.values.new_zeros(*self.values.shape[:-1], self.num_channels)
        return out.index_copy(-1, self.active, self.values)


# ----------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------

def _check(x, w_in, b_in, w_out, b_out, gate):
    if x.dim() < 1:
        raise ValueError(f"masked_ffn: x must have a last (hidden) dim, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if w_in.dim() != 2 or w_in.shape[1] != d:
        raise ValueError(f"masked_ffn: w_in must have shape (I, {d}), got {tuple(w_in.shape)}")
    n_ch = w_in.shape[0]
    if w_out.shape != (d, n_ch):
        raise ValueError(f"masked_ffn: w_out must have shape ({d}, {n_ch}), got {tuple(w_out.shape)}")
    if b_in is not None and b_in.shape != (n_ch,):
        raise ValueError(f"masked_ffn: b_in must have shape ({n_ch},), got {tuple(b_in.shape)}")
    if b_out is not None and b_out.shape != (d,):
        raise ValueError(f"masked_ffn: b_out must have shape ({d},), got {tuple(b_out.shape)}")
    if gate.shape != (n_ch,):
        raise ValueError(f"masked_ffn: channel_gate must have shape ({n_ch},), got {tuple(gate.shape)}")
    for name, t in (("w_in", w_in), ("w_out", w_out), ("b_in", b_in), ("b_out", b_out)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"masked_ffn: {name} dtype {t.dtype} != x dtype {x.dtype}")
    if not gate.is_floating_point():
        raise TypeError(f"masked_ffn: channel_gate must be floating point, got {gate.dtype}")


def active_channels(gate: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the non-zero gates (a host sync on GPU: the grid size depends on it)."""
    return torch.nonzero(gate.detach()).flatten()


# ----------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------

def masked_ffn_reference(x, w_in, b_in, w_out, b_out, channel_gate, activation_name="gelu"):
    """Plain PyTorch over every channel; returns (y, full gated intermediate [..., I])."""
    check_activation(activation_name)
    gate = channel_gate * (channel_gate != 0)  # d/dgate = 0 exactly where gate == 0
    h = activation(F.linear(x, w_in, b_in), activation_name) * gate.to(x.dtype)
    return F.linear(h, w_out, b_out), h


# ----------------------------------------------------------------------------------------------------
# compact path
# ----------------------------------------------------------------------------------------------------

def _scatter(values, active, n, dim):
    if values.shape[dim] == n:
        return values
    shape = list(values.shape)
    shape[dim] = n
    return values.new_zeros(shape).index_copy_(dim, active, values)


class _MaskedFFNCompact(torch.autograd.Function):
    """Dense GEMMs over the gathered active channels, with the gate folded into the (small) weights.

    Why this shape on CPU, where elementwise passes over the [M, K] intermediate cost real time:
      forward   a = act(x @ w_in_a.T + b_in_a);  y = a @ (w_out_a * g).T + b_out
                (the gate scales K columns of a [d, K] weight instead of M*K activations)
      backward  P = dy.T @ a  gives both dW_out_a = P * g and dgate = sum_o P * w_out_a (no [M, K]
                product for the gate); da = dy @ (w_out_a * g); dz = act_backward(da, z) in one fused
                pass; then dx, dW_in, db_in.
    Saves x, the compact pre-activation z and the gathered weights; act(z) is recomputed in the backward
    (one pass) rather than kept, so activation memory is one [M, K] tensor instead of torch's three [M, I].
    The gated intermediate h = a * g is only materialised when asked for (``want_h``).
    Erf GELU on float32 CPU tensors: bias + GELU and GELU' + bias gradient are one pass each
    (``ddk_fast.ops.fused_cpu``) instead of torch's bias copy, GELU, slope and column-sum passes.
    """

    @staticmethod
    def forward(ctx, x2d, w_in, b_in, w_out, b_out, gate, active, act_name, want_h):
        n_ch = w_in.shape[0]
        all_on = active.numel() == n_ch
        w_in_a = w_in if all_on else w_in.index_select(0, active)
        w_out_a = w_out if all_on else w_out.index_select(1, active)
        g_a = (gate if all_on else gate.index_select(0, active)).to(x2d.dtype)
        b_in_a = None if b_in is None else (b_in if all_on else b_in.index_select(0, active))
        kernels = gelu_kernels(act_name, x2d, w_in_a, b_in_a)
        if kernels is not None:  # z = x W^T, then z += b and a = gelu(z) in one pass
            z = x2d @ w_in_a.t()
            a = kernels.gelu_bias_forward(z, b_in_a)
        else:
            z = x2d @ w_in_a.t() if b_in_a is None else torch.addmm(b_in_a, x2d, w_in_a.t())
            a = activation(z, act_name)
        w_out_g = w_out_a * g_a
        y = a @ w_out_g.t() if b_out is None else torch.addmm(b_out, a, w_out_g.t())
        ctx.save_for_backward(x2d, z, w_in_a, w_out_a, g_a, active)
        ctx.meta = (act_name, n_ch, b_in is not None, b_out is not None, gate.dtype)
        ctx.kernels = kernels
        ctx.set_materialize_grads(False)
        if want_h:
            return y, a.mul_(g_a)
        return y

    @staticmethod
    def backward(ctx, grad_y, *maybe_grad_h):
        x2d, z, w_in_a, w_out_a, g_a, active = ctx.saved_tensors
        act_name, n_ch, has_b_in, has_b_out, gate_dtype = ctx.meta
        grad_h = maybe_grad_h[0] if maybe_grad_h else None
        need_x, need_w_in, need_b_in, need_w_out, need_b_out, need_gate = ctx.needs_input_grad[:6]
        dx = dw_in = db_in = dw_out = db_out = dgate = None
        if grad_y is None and grad_h is None:
            return None, None, None, None, None, None, None, None, None
        kernels = ctx.kernels
        a = activation(z, act_name) if kernels is None else kernels.gelu_bias_forward(z, None)
        da = None
        dgate_a = None
        if grad_y is not None:
            if need_w_out or need_gate:
                p = grad_y.t() @ a  # [d, K]
                if need_w_out:
                    dw_out = _scatter(p * g_a, active, n_ch, 1)
                if need_gate:
                    dgate_a = (p * w_out_a).sum(0)
            if has_b_out and need_b_out:
                db_out = grad_y.sum(0)
            da = grad_y @ (w_out_a * g_a)
        if grad_h is not None:
            if need_gate:
                extra = (grad_h * a).sum(0)
                dgate_a = extra if dgate_a is None else dgate_a + extra
            da = grad_h * g_a if da is None else da.addcmul_(grad_h, g_a)
        if need_gate:
            dgate = _scatter(dgate_a.to(gate_dtype), active, n_ch, 0)
        del a
        want_db_in = has_b_in and need_b_in
        if kernels is not None:  # dz = da * gelu'(z) in place, and its row sum, in one pass
            dz, db_in_a = kernels.gelu_bias_backward(da.contiguous(), z, want_db_in, True)
        else:
            dz = activation_backward(da, z, act_name)
            db_in_a = dz.sum(0) if want_db_in else None
        if need_x:
            dx = dz @ w_in_a
        if need_w_in:
            dw_in = _scatter(dz.t() @ x2d, active, n_ch, 0)
        if want_db_in:
            db_in = _scatter(db_in_a, active, n_ch, 0)
        return dx, dw_in, db_in, dw_out, db_out, dgate, None, None, None


# ----------------------------------------------------------------------------------------------------
# triton path
# ----------------------------------------------------------------------------------------------------

# The kernels as torch.library custom ops: torch.compile sees one opaque node per pass (shapes from the
# fake implementations) instead of breaking the graph. Forward: fused up-proj (+bias, act, gate) and the
# indexed down-proj; it returns y, the gated activations h and the pre-activations z (saved for the
# backward, whose dh kernel applies the gate and act'(z) in its epilogue and recomputes h for dW_out).

@torch.library.custom_op("ddk_fast::masked_ffn_fwd", mutates_args=())
def _triton_ffn_fwd(x2d: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor,
                    b_out: torch.Tensor | None, gate: torch.Tensor, active: torch.Tensor,
                    activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [M, d], h [M, K], z [M, K]) over the K active channels."""
    kernels = triton_kernels()
    FK, LK = kernels.masked_ffn, kernels.masked_linear
    h, z = FK.ffn_up_forward(x2d, w_in, b_in, gate, active, activation, save_z=True)
    return LK.active_in_forward(h, w_out, b_out, active), h, z


@_triton_ffn_fwd.register_fake
def _(x2d, w_in, b_in, w_out, b_out, gate, active, activation):
    rows, k = x2d.shape[0], active.shape[0]
    return x2d.new_empty((rows, w_out.shape[0])), x2d.new_empty((rows, k)), x2d.new_empty((rows, k))


@torch.library.custom_op("ddk_fast::masked_ffn_bwd", mutates_args=())
def _triton_ffn_bwd(grad_y: torch.Tensor, grad_h: torch.Tensor | None, x2d: torch.Tensor, w_in: torch.Tensor,
                    w_out: torch.Tensor, gate: torch.Tensor, z: torch.Tensor, active: torch.Tensor, activation: str,
                    has_b_in: bool, has_b_out: bool, needs: list[bool]) -> list[torch.Tensor]:
    """[dx, dw_in, db_in, dw_out, db_out, dgate]; an empty tensor where ``needs`` (same order) is False."""
    kernels = triton_kernels()
    FK, LK = kernels.masked_ffn, kernels.masked_linear
    need_x, need_w_in, need_b_in, need_w_out, need_b_out, need_gate = needs
    n_ch = w_in.shape[0]
    # distinct empty tensors (the outputs of an op may not alias one another)
    dx, dw_in, db_in, dw_out, db_out = (x2d.new_empty((0,)) for _ in range(5))
    dgate = gate.new_empty((0,))
    dz, h, dgate_a = FK.ffn_dh_backward(grad_y, w_out, z, gate, active, activation, grad_h=grad_h,
                                        want_gate=need_gate)
    if need_gate:
        dgate = torch.zeros_like(gate).index_copy_(0, active, dgate_a.to(gate.dtype))
    want_b_out = has_b_out and need_b_out
    if need_w_out:
        dw_out, db = LK.active_in_backward_weight(grad_y, h, active, n_ch, want_b_out)
        db_out = db if want_b_out else db_out
    elif want_b_out:
        db_out = grad_y.sum(0)
    if need_x:
        dx = LK.active_out_backward_input(dz, w_in, active)
    want_b_in = has_b_in and need_b_in
    if need_w_in or want_b_in:
        dw, db = LK.active_out_backward_weight(dz, x2d, active, n_ch, want_b_in)
        dw_in = dw if need_w_in else dw_in
        db_in = db if want_b_in else db_in
    return [dx, dw_in, db_in, dw_out, db_out, dgate]


@_triton_ffn_bwd.register_fake
def _(grad_y, grad_h, x2d, w_in, w_out, gate, z, active, activation, has_b_in, has_b_out, needs):
    need_x, need_w_in, need_b_in, need_w_out, need_b_out, need_gate = needs
    n_ch, d = w_in.shape
    shapes = [(x2d.shape if need_x else (0,)), ((n_ch, d) if need_w_in else (0,)),
              ((n_ch,) if has_b_in and need_b_in else (0,)), ((d, n_ch) if need_w_out else (0,)),
              ((d,) if has_b_out and need_b_out else (0,)), ((n_ch,) if need_gate else (0,))]
    dtypes = [x2d.dtype] * 5 + [gate.dtype]
    return [x2d.new_empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]


def _triton_ffn_setup(ctx, inputs, output):
    x2d, w_in, b_in, w_out, b_out, gate, active, activation = inputs
    ctx.save_for_backward(x2d, w_in, w_out, gate, output[2], active)
    ctx.meta = (activation, b_in is not None, b_out is not None)
    ctx.set_materialize_grads(False)


def _triton_ffn_backward(ctx, grad_y, grad_h, _grad_z):
    x2d, w_in, w_out, gate, z, active = ctx.saved_tensors
    activation, has_b_in, has_b_out = ctx.meta
    needs = list(ctx.needs_input_grad[:6])
    if (grad_y is None and grad_h is None) or not any(needs):
        return None, None, None, None, None, None, None, None
    if grad_y is None:
        grad_y = torch.zeros((x2d.shape[0], w_out.shape[0]), device=x2d.device, dtype=x2d.dtype)
    grads = _triton_ffn_bwd(grad_y.contiguous(), grad_h, x2d, w_in, w_out, gate, z, active, activation, has_b_in,
                            has_b_out, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None, None)


_triton_ffn_fwd.register_autograd(_triton_ffn_backward, setup_context=_triton_ffn_setup)


# ----------------------------------------------------------------------------------------------------
# public op
# ----------------------------------------------------------------------------------------------------

def masked_ffn(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor,
               b_out: torch.Tensor | None, channel_gate: torch.Tensor, activation: str = "gelu",
               path: str = "auto", *, return_intermediate: bool = False, active: torch.Tensor | None = None):
    """``y = (act(x @ w_in.T + b_in) * channel_gate) @ w_out.T + b_out`` skipping zero-gate channels.

    x: [..., d]; w_in: [I, d]; b_in: [I] or None; w_out: [d, I]; b_out: [d] or None;
    channel_gate: [I] float (any values; exactly 0 = channel off). activation: "gelu" (exact erf, BERT),
    "gelu_tanh", "relu". path: "auto" | "triton" | "compact" | "reference".
    Returns y [..., d] in x's dtype; with ``return_intermediate=True`` returns ``(y, FFNIntermediate)``
    holding the gated activations of the active channels ([..., K], differentiable) and their indices
    (``.full()`` scatters to [..., I]) -- for distilling FFN activations. Same layout on every path.
    Gradients reach x, all weights and biases, and the gate; zero-gate channels get exactly zero.
    Triton path dtypes: fp32/fp16/bf16 (fp32 accumulation); under autocast inputs are cast to its dtype.
    ``active``: the sorted indices of the non-zero gates when the caller has them (one host read per
    structure with :func:`ddk_fast.ops.active.active_units`); None finds them here, a device sync.
    """
    check_activation(activation)
    _check(x, w_in, b_in, w_out, b_out, channel_gate)
    path = resolve_path("masked_ffn", "engine", path, x.device)
    n_ch = w_in.shape[0]
    if path == "reference":
        y, h_full = masked_ffn_reference(x, w_in, b_in, w_out, b_out, channel_gate, activation)
        if not return_intermediate:
            return y
        active = active_channels(channel_gate) if active is None else active
        return y, FFNIntermediate(h_full.index_select(-1, active), active, n_ch)
    active = active_channels(channel_gate) if active is None else active
    lead = x.shape[:-1]
    x2d = x.reshape(lead.numel(), x.shape[-1])
    if path == "triton":
        dev = x.device.type
        if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            x2d, w_in, w_out = x2d.to(dt), w_in.to(dt), w_out.to(dt)
            b_in = b_in.to(dt) if b_in is not None else None
            b_out = b_out.to(dt) if b_out is not None else None
        y2d, h, _ = _triton_ffn_fwd(x2d, w_in, b_in, w_out, b_out, channel_gate, active, activation)
    elif not return_intermediate:
        y2d = _MaskedFFNCompact.apply(x2d, w_in, b_in, w_out, b_out, channel_gate, active, activation, False)
    else:
        y2d, h = _MaskedFFNCompact.apply(x2d, w_in, b_in, w_out, b_out, channel_gate, active, activation, True)
    if not return_intermediate:
        return y2d.reshape(*lead, x.shape[-1])
    return y2d.reshape(*lead, x.shape[-1]), FFNIntermediate(h.reshape(*lead, active.numel()), active, n_ch)
