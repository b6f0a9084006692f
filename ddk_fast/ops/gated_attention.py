"""Gated multi-head attention, and the masked self-attention block built on it.

    gated_attention(q, k, v, head_gate, attention_mask=None, causal=False, path="auto") -> [B, H, S, D]
    masked_self_attention(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads, ...) -> AttentionOutput

Why gates: head pruning searches over per-head gates; a head whose gate is exactly 0 is switched off
and must cost nothing. Every path honours that (zero output, zero gradient for the gate and for the
head's q/k/v or projection weights); the paths differ only in how much work a pruned head still costs:

- "triton": flash-style kernels whose grid has one program per (query block, batch, *active* head);
  pruned heads get no program (kernels/gated_attention.py).
- "compact": gather the active heads, run torch SDPA (faster than matmul+softmax on CPU, forward and
  backward), scatter back. The fast CPU path.
- "reference": plain PyTorch over every head, multiplied by the gate.

Masks: ``attention_mask`` [B, S] marks keys (1 = token, 0 = padding). A padding *query* row still gets
softmax over the valid keys. A query row with no allowed key at all (a batch row whose mask is all
zeros, or a causal row whose earlier keys are all padding) outputs zeros and passes no gradient, in
every path: no NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ddk_fast import _runtime
from ddk_fast.ops._dispatch import resolve_path, triton_kernels
from ddk_fast.ops.masked_linear import linear_active_in, linear_active_out

__all__ = [
    "gated_attention", "gated_attention_reference", "masked_softmax",
    "masked_self_attention", "masked_self_attention_reference", "AttentionOutput",
]


# ----------------------------------------------------------------------------------------------------
# masks and gates, shared by every path
# ----------------------------------------------------------------------------------------------------

def _allowed_keys(attention_mask: torch.Tensor | None, causal: bool, seq_len: int, device):
    """(allowed, has_key) for softmax over keys.

    allowed: bool, broadcastable to [B, 1, S, S] (True = may attend), or None when all keys are allowed.
    has_key: bool [B, 1, S, 1], or None when every query row is known to have an allowed key (checked
    only where reading the mask is free: CPU tensors, eager mode). When it is not None, ``allowed`` has
    been widened to all keys on the rows without one (so softmax stays finite); the caller multiplies
    those rows by ``has_key`` (zero output, zero gradient).
    """
    allowed = has_key = None
    if causal:
        allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()[None, None]
    if attention_mask is not None:
        keys = attention_mask != 0  # [B, S]
        allowed = keys[:, None, None, :] if allowed is None else allowed & keys[:, None, None, :]
        rows = keys.cumsum(-1) > 0 if causal else keys.any(-1, keepdim=True).expand_as(keys)
        # every row has a key in almost every batch: skip the fix-up then, when checking is free
        if not (_runtime.may_read_on_host(rows) and bool(rows.all())):
            has_key = rows[:, None, :, None]
            allowed = allowed | ~has_key
    return allowed, has_key


def masked_softmax(scores: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   causal: bool = False) -> torch.Tensor:
    """softmax over the last dim of ``scores`` [B, H, S, S] with padded keys (and future keys when
    ``causal``) removed; rows with no allowed key are zeros."""
    allowed, has_key = _allowed_keys(attention_mask, causal, scores.shape[-1], scores.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if has_key is not None:
        probs = probs * has_key
    return probs


def _gate_switch_off(head_gate: torch.Tensor) -> torch.Tensor:
    """The gate with exact zeros cut out of the graph: a zero gate gets zero gradient (not the
    ungated head output), which is what "switched off" means in every path."""
    return torch.where(head_gate != 0, head_gate, torch.zeros_like(head_gate))


def _active_heads(head_gate: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the heads whose gate is not exactly 0 (int64, on the gate's device)."""
    return torch.nonzero(head_gate.detach() != 0).flatten()


def _scatter_heads(values: torch.Tensor, active: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, A, ...] -> [B, H, ...] with zeros for the heads not in ``active`` (differentiable)."""
    if active.numel() == num_heads:
        return values
    full = values.new_zeros((values.shape[0], num_heads) + tuple(values.shape[2:]))
    return full.index_copy(1, active, values)


class _GatherHeads(torch.autograd.Function):
    """``t.index_select(1, active)`` whose backward writes the gradient with ``index_copy_`` (the
    indices are distinct): autograd's default ``index_add_`` along dim 1 is ~3x slower on CPU."""

    @staticmethod
    def forward(ctx, t, active):
        ctx.save_for_backward(active)
        ctx.full_shape = t.shape
        return t.index_select(1, active)

    @staticmethod
    def backward(ctx, grad):
        (active,) = ctx.saved_tensors
        return grad.new_zeros(ctx.full_shape).index_copy_(1, active, grad), None


def _gather_heads(t: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return t if active.numel() == t.shape[1] else _GatherHeads.apply(t, active)


# ----------------------------------------------------------------------------------------------------
# reference path
# ----------------------------------------------------------------------------------------------------

def gated_attention_reference(q, k, v, head_gate, attention_mask=None, causal=False):
    """Plain PyTorch over every head: ``gate[h] * softmax(q k^T / sqrt(D) + mask) v``."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    probs = masked_softmax(scores, attention_mask, causal)
    gate = _gate_switch_off(head_gate).to(q.dtype)
    return (probs @ v) * gate[:, None, None]


# ----------------------------------------------------------------------------------------------------
# compact path (gather active heads, SDPA)
# ----------------------------------------------------------------------------------------------------

def _attend_compact(q, k, v, gate, attention_mask, causal):
    """SDPA over heads that are all active; ``gate`` [A] has no zeros."""
    if q.shape[1] == 0:  # every head off: an empty result that still connects q, k, v and the gate
        return (q + k + v) * gate.to(q.dtype)[:, None, None]
    allowed, has_key = _allowed_keys(attention_mask, causal, q.shape[2], q.device)
    if attention_mask is None and causal:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return _apply_gate(out, gate, has_key)


def _apply_gate(out, gate, has_key=None):
    """``out * gate`` per head (and * has_key per row), computed in the gate's precision when that is
    wider, so a bfloat16 output still gets a float32-accurate gate gradient (a sum over B*S*D)."""
    scale = gate[:, None, None]
    if has_key is not None:
        scale = scale * has_key  # [B, A, S, 1]: rows without a key -> 0
    return (out * scale).to(out.dtype)


# ----------------------------------------------------------------------------------------------------
# triton path
# ----------------------------------------------------------------------------------------------------

def _key_valid_int(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if attention_mask is None else (attention_mask != 0).to(torch.int32).contiguous()


def _bshd_buffer(like: torch.Tensor, zero: bool) -> torch.Tensor:
    """A [B, H, S, D] tensor stored as [B, S, H, D]: merging heads back to [B, S, H*D] is then free."""
    B, H, S, D = like.shape
    make = torch.zeros if zero else torch.empty
    return make((B, S, H, D), device=like.device, dtype=like.dtype).transpose(1, 2)


def _grad_buffer(like: torch.Tensor, zero: bool) -> torch.Tensor:
    return torch.zeros_like(like) if zero else torch.empty_like(like)


# The kernels as torch.library custom ops (forward, backward): torch.compile sees one opaque node per
# launch, with the output shapes from the fake implementations, instead of breaking the graph.

def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("ddk_fast::gated_attention_fwd", mutates_args=())
def _triton_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                          head_index: torch.Tensor, key_valid: torch.Tensor | None,
                          causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, S, D] stored as [B, S, H, D], zeros at the heads not in ``head_index``; lse [B, A, S])."""
    kern = triton_kernels().gated_attention
    out = _bshd_buffer(q, zero=head_index.numel() < q.shape[1])
    if head_index.numel() == 0:
        return out, q.new_empty((q.shape[0], 0, q.shape[2]), dtype=_stats_dtype(q.dtype))
    lse = kern.gated_attention_forward(q, k, v, gate.contiguous(), head_index, key_valid, causal, out)
    return out, lse


@_triton_attention_fwd.register_fake
def _(q, k, v, gate, head_index, key_valid, causal):
    B, _, S, _ = q.shape
    return _bshd_buffer(q, zero=False), q.new_empty((B, head_index.shape[0], S), dtype=_stats_dtype(q.dtype))


@torch.library.custom_op("ddk_fast::gated_attention_bwd", mutates_args=())
def _triton_attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                          head_index: torch.Tensor, key_valid: torch.Tensor | None, causal: bool, out: torch.Tensor,
                          lse: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """(dq, dk, dv, dgate); pruned heads get exact zeros."""
    kern = triton_kernels().gated_attention
    some_pruned = head_index.numel() < q.shape[1]
    dq, dk, dv = (_grad_buffer(t, some_pruned) for t in (q, k, v))
    dgate = torch.zeros_like(gate)
    if head_index.numel() > 0:
        gate_c = gate.contiguous()
        delta = kern.gated_attention_backward(q, k, v, gate_c, head_index, key_valid, causal, out, lse, dout,
                                              dq, dk, dv)
        # sum(dout * out) = gate * sum(dout * ungated_out); active gates are non-zero by definition
        per_head = delta.sum(dim=(0, 2)) / gate_c.index_select(0, head_index).to(delta.dtype)
        dgate.index_copy_(0, head_index, per_head.to(gate.dtype))
    return dq, dk, dv, dgate


@_triton_attention_bwd.register_fake
def _(q, k, v, gate, head_index, key_valid, causal, out, lse, dout):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(gate)


def _triton_attention_setup(ctx, inputs, output):
    q, k, v, gate, head_index, key_valid, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, gate, head_index, key_valid, out, lse)
    ctx.causal = causal


def _triton_attention_backward(ctx, dout, _dlse):
    q, k, v, gate, head_index, key_valid, out, lse = ctx.saved_tensors
    dq, dk, dv, dgate = _triton_attention_bwd(q, k, v, gate, head_index, key_valid, ctx.causal, out, lse, dout)
    return dq, dk, dv, dgate, None, None, None


_triton_attention_fwd.register_autograd(_triton_attention_backward, setup_context=_triton_attention_setup)


def _autocast_inputs(q, k, v):
    """Autocast does not reach inside a custom kernel: apply its dtype here."""
    dev = q.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    return q, k, v


def _attend_triton(q, k, v, gate, head_index, attention_mask, causal):
    kern = triton_kernels().gated_attention
    q, k, v = _autocast_inputs(q, k, v)
    kern.check_inputs(q, k, v)
    out, _ = _triton_attention_fwd(q, k, v, gate, head_index, _key_valid_int(attention_mask), bool(causal))
    return out


# ----------------------------------------------------------------------------------------------------
# public op 1
# ----------------------------------------------------------------------------------------------------

def _check_attention_args(q, k, v, head_gate, attention_mask):
    if q.dim() != 4:
        raise ValueError(f"gated_attention: q must be [B, H, S, D], got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"gated_attention: {name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"gated_attention: {name} is {t.dtype} on {t.device}, expected q's {q.dtype} on {q.device}")
    B, H, S, _ = q.shape
    if head_gate.dim() != 1 or head_gate.shape[0] != H or not head_gate.is_floating_point():
        raise ValueError(f"gated_attention: head_gate must be a float [H={H}] tensor, "
                         f"got {head_gate.dtype} shape {tuple(head_gate.shape)}")
    if head_gate.device != q.device:
        raise ValueError(f"gated_attention: head_gate is on {head_gate.device}, expected {q.device}")
    if attention_mask is not None and (tuple(attention_mask.shape) != (B, S) or attention_mask.device != q.device):
        raise ValueError(f"gated_attention: attention_mask must be [B={B}, S={S}] on {q.device}, got "
                         f"shape {tuple(attention_mask.shape)} on {attention_mask.device}")


def gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_gate: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, causal: bool = False,
                    path: str = "auto", *, active: torch.Tensor | None = None) -> torch.Tensor:
    """``out[:, h] = head_gate[h] * softmax(q_h k_h^T / sqrt(D) + padding/causal bias) v_h``.

    q, k, v: [B, H, S, D] (float16/bfloat16/float32/float64; the triton path accumulates in float32,
    float64 for float64 inputs). head_gate: [H] float. attention_mask: [B, S], non-zero = token.
    Returns [B, H, S, D] in q's dtype (on the triton path stored as [B, S, H, D], so merging heads is
    a free view). Heads with ``head_gate[h] == 0`` are zeros and get zero gradients; a query row with no
    allowed key is zeros. path: "triton" | "compact" | "reference" | "auto" (triton on GPU, compact on CPU).
    ``active``: the sorted indices of the non-zero gates when the caller has them (one host read per
    structure with :func:`ddk_fast.ops.active.active_units`); None finds them here, a device sync.
    """
    _check_attention_args(q, k, v, head_gate, attention_mask)
    path = resolve_path("gated_attention", "engine", path, q.device)
    if path == "reference":
        return gated_attention_reference(q, k, v, head_gate, attention_mask, causal)
    active = _active_heads(head_gate) if active is None else active
    if path == "triton":
        return _attend_triton(q, k, v, head_gate, active, attention_mask, causal)
    gate_a = head_gate.index_select(0, active)
    out_a = _attend_compact(_gather_heads(q, active), _gather_heads(k, active), _gather_heads(v, active),
                            gate_a, attention_mask, causal)
    return _scatter_heads(out_a, active, q.shape[1])


# ----------------------------------------------------------------------------------------------------
# public op 2: the self-attention block
# ----------------------------------------------------------------------------------------------------

class AttentionOutput(NamedTuple):
    """What ``masked_self_attention`` returns. Optional fields are None unless asked for; per-head
    tensors are [B, H, ...] with zeros for pruned heads."""

    out: torch.Tensor                      # [B, S, d]
    q: torch.Tensor | None = None          # [B, H, S, D]   (return_qkv)
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    scores: torch.Tensor | None = None     # [B, H, S, S] raw q k^T / sqrt(D), no mask  (return_scores)
    probs: torch.Tensor | None = None      # [B, H, S, S] masked softmax                (return_probs)


def _check_block_args(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads, attention_mask):
    if x.dim() != 3:
        raise ValueError(f"masked_self_attention: x must be [B, S, d], got shape {tuple(x.shape)}")
    B, S, d = x.shape
    if num_heads <= 0 or wq.dim() != 2 or wq.shape[0] % num_heads:
        raise ValueError(f"masked_self_attention: wq rows ({tuple(wq.shape)}) must be num_heads ({num_heads}) * D")
    inner = wq.shape[0]
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv)):
        if tuple(w.shape) != (inner, d):
            raise ValueError(f"masked_self_attention: {name} must be [H*D={inner}, d={d}], got {tuple(w.shape)}")
    for name, b in (("bq", bq), ("bk", bk), ("bv", bv)):
        if b is not None and tuple(b.shape) != (inner,):
            raise ValueError(f"masked_self_attention: {name} must be [H*D={inner}], got {tuple(b.shape)}")
    if tuple(wo.shape) != (d, inner):
        raise ValueError(f"masked_self_attention: wo must be [d={d}, H*D={inner}], got {tuple(wo.shape)}")
    if bo is not None and tuple(bo.shape) != (d,):
        raise ValueError(f"masked_self_attention: bo must be [d={d}], got {tuple(bo.shape)}")
    if head_gate.dim() != 1 or head_gate.shape[0] != num_heads or not head_gate.is_floating_point():
        raise ValueError(f"masked_self_attention: head_gate must be a float [num_heads={num_heads}] tensor, "
                         f"got {head_gate.dtype} shape {tuple(head_gate.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(f"masked_self_attention: attention_mask must be [B={B}, S={S}], "
                         f"got {tuple(attention_mask.shape)}")


def _split_heads(t: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[B, S, heads*D] -> [B, heads, S, D] (a view)."""
    return t.view(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, S, D] -> [B, S, heads*D] (free when t is stored as [B, S, heads, D])."""
    B, heads, S, D = t.shape
    return t.transpose(1, 2).reshape(B, S, heads * D)


def masked_self_attention_reference(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads,
                                    attention_mask=None, causal=False, return_qkv=False,
                                    return_scores=False, return_probs=False) -> AttentionOutput:
    """Plain PyTorch: full projections, every head, gate multiply, full output projection."""
    head_dim = wq.shape[0] // num_heads
    q = _split_heads(F.linear(x, wq, bq), num_heads, head_dim)
    k = _split_heads(F.linear(x, wk, bk), num_heads, head_dim)
    v = _split_heads(F.linear(x, wv, bv), num_heads, head_dim)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    probs = masked_softmax(scores, attention_mask, causal)
    gate = _gate_switch_off(head_gate).to(x.dtype)
    ctx = (probs @ v) * gate[:, None, None]
    out = F.linear(_merge_heads(ctx), wo, bo)
    keep = (head_gate != 0).to(x.dtype)[:, None, None]
    return AttentionOutput(
        out,
        q * keep if return_qkv else None, k * keep if return_qkv else None, v * keep if return_qkv else None,
        scores * keep if return_scores else None, probs * keep if return_probs else None,
    )


def masked_self_attention(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads,
                          attention_mask=None, causal=False, path="auto", return_qkv=False,
                          return_scores=False, return_probs=False, *, active=None) -> AttentionOutput:
    """Multi-head self-attention whose pruned heads cost nothing.

    ``out = bo + sum_h head_gate[h] * attention_h(x) @ wo[:, h*D:(h+1)*D].T`` -> [B, S, d].

    x: [B, S, d]; wq/wk/wv: [H*D, d]; bq/bk/bv: [H*D] or None; wo: [d, H*D]; bo: [d] or None;
    head_gate: [H] float; num_heads: H for this layer (D = wq.shape[0] // H). attention_mask: [B, S].
    On the triton/compact paths Q/K/V are projected only for the active heads (gate != 0) and the
    output projection reduces only over them (``linear_active_out`` / ``linear_active_in``). The extra
    outputs (see :class:`AttentionOutput`) are differentiable; scores/probs are computed separately
    from the compact q/k when asked for (on "compact", probs are then reused for the output).
    ``active``: as in :func:`gated_attention` (the sorted indices of the non-zero gates, or None).
    """
    _check_block_args(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads, attention_mask)
    path = resolve_path("masked_self_attention", "engine", path, x.device)
    if path == "reference":
        return masked_self_attention_reference(x, wq, bq, wk, bk, wv, bv, wo, bo, head_gate, num_heads,
                                               attention_mask, causal, return_qkv, return_scores, return_probs)
    head_dim = wq.shape[0] // num_heads
    active = _active_heads(head_gate) if active is None else active
    n_active = active.numel()
    rows = (active[:, None] * head_dim + torch.arange(head_dim, device=active.device)).flatten()
    gate_a = head_gate.index_select(0, active)

    # one GEMM for Q, K and V (rows of the stacked weight): one pass over x and one input gradient
    inner = wq.shape[0]
    w_qkv = torch.cat([wq, wk, wv])
    b_qkv = None
    if not (bq is None and bk is None and bv is None):
        b_qkv = torch.cat([b if b is not None else wq.new_zeros(inner) for b in (bq, bk, bv)])
    qkv = linear_active_out(x, w_qkv, b_qkv, torch.cat([rows, rows + inner, rows + 2 * inner]), path)
    n = rows.numel()
    q, k, v = (_split_heads(qkv[..., i * n:(i + 1) * n], n_active, head_dim) for i in range(3))

    scores = probs = None
    if return_scores or return_probs:
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))
        if return_probs:
            probs = masked_softmax(scores, attention_mask, causal)

    if path == "compact" and probs is not None:
        ctx = _apply_gate(probs @ v, gate_a)
    elif path == "compact":
        ctx = _attend_compact(q, k, v, gate_a, attention_mask, causal)
    else:
        ctx = _attend_triton(q, k, v, gate_a, torch.arange(n_active, device=x.device), attention_mask, causal)
    out = linear_active_in(_merge_heads(ctx), wo, bo, rows, path)

    def full(t):
        return _scatter_heads(t, active, num_heads)

    return AttentionOutput(
        out,
        full(q) if return_qkv else None, full(k) if return_qkv else None, full(v) if return_qkv else None,
        full(scores) if return_scores else None, full(probs) if return_probs else None,
    )
