"""Triton kernels for gated multi-head attention (flash-attention style), forward and backward.

Why a head-index tensor: the grid's second axis runs over ``B * A`` where ``A`` is the number of
*active* heads, and each program reads its head number from ``head_index``. A pruned head therefore
gets no program at all (nothing is read, nothing is written), instead of a program that multiplies
by zero.

Layout and conventions
- q, k, v, out, dout, dq, dk, dv: [B, H, S, D] with arbitrary strides (all four are passed), so the
  callers can hand in views of a [B, S, H*D] projection without copies.
- ``gate``: [H]; only ``gate[head_index]`` is read. Outputs are gated: out = gate * softmax(...) v.
- ``key_valid``: [B, S] int32, non-zero = real token. Masked keys get probability 0. A query row
  with no allowed key (an all-padding batch row, or a causal row whose keys are all padding) outputs
  zeros and gets zero gradients; its log-sum-exp is stored as +inf.
- ``lse`` and ``delta`` are compact: [B, A, S] (float32, float64 for float64 inputs), indexed by
  the program's (batch, active slot). ``lse`` is in base 2 (the kernels use exp2).
- Accumulation is float32 (float64 for float64 inputs). ``DOT_FP32`` upcasts the dot operands,
  used for bfloat16 under the CPU interpreter, whose bf16 ``tl.dot`` is wrong.

Backward (FlashAttention-2 split, no atomics): ``delta = rowsum(dout * out)`` (which equals
rowsum(dO_ungated * O_ungated), no division needed); one kernel per key block for dK/dV, one per
query block for dQ. The gate enters as dO_ungated = gate * dout, applied to fp32 partial results.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ddk_fast.kernels.configs import attention_tile, compiled_launch

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256


@triton.jit
def _allowed(offs_m, offs_n, S, KeyValid, b, smb, sms, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool: query row in range, key in range, key not padding, causal order."""
    n_ok = offs_n < S
    if HAS_MASK:
        kv = tl.load(KeyValid + b * smb + offs_n * sms, mask=n_ok, other=0)
        n_ok = n_ok & (kv != 0)
    ok = (offs_m[:, None] < S) & n_ok[None, :]
    if CAUSAL:
        ok = ok & (offs_m[:, None] >= offs_n[None, :])
    return ok


@triton.jit
def _gated_attn_fwd_kernel(
    Q, K, V, Gate, HeadIndex, KeyValid, Out, Lse,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sob, soh, sos, sod,
    smb, sms,
    num_active, S, D, qk_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, FP64: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_active).to(tl.int64)
    h = tl.load(HeadIndex + pid_bh % num_active).to(tl.int64)
    acc_t: tl.constexpr = tl.float64 if FP64 else tl.float32
    gate = tl.load(Gate + h).to(acc_t)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < S) & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), acc_t)
    l_i = tl.zeros([BLOCK_M], acc_t)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    else:
        hi = S
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd,
                    mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd,
                    mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(acc_t) * qk_scale
        ok = _allowed(offs_m, offs_n, S, KeyValid, b, smb, sms, HAS_MASK, CAUSAL)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with no allowed key so far keeps m = -inf; shift by 0 so exp2 gives 0, not NaN
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(acc_t)
        m_i = m_new

    has_key = l_i > 0
    out = acc * (gate / tl.where(has_key, l_i, 1.0))[:, None]
    out = tl.where(has_key[:, None], out, 0.0)
    m_ok = offs_m < S
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
    tl.store(Lse + pid_bh * S + offs_m, lse, mask=m_ok)


@triton.jit
def _gated_attn_bwd_delta_kernel(
    Out, DO, HeadIndex, Delta,
    sob, soh, sos, sod,
    sdb, sdh, sds, sdd,
    num_active, S, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_active).to(tl.int64)
    h = tl.load(HeadIndex + pid_bh % num_active).to(tl.int64)
    acc_t: tl.constexpr = tl.float64 if FP64 else tl.float32
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < S) & (offs_d[None, :] < D)
    o = tl.load(Out + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod, mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :] * sdd, mask=mask, other=0.0)
    delta = tl.sum(o.to(acc_t) * do.to(acc_t), 1)
    tl.store(Delta + pid_bh * S + offs_m, delta, mask=offs_m < S)


@triton.jit
def _gated_attn_bwd_dkdv_kernel(
    Q, K, V, Gate, HeadIndex, KeyValid, DO, Lse, Delta, DK, DV,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdb, sdh, sds, sdd,
    sdkb, sdkh, sdks, sdkd,
    sdvb, sdvh, sdvs, sdvd,
    smb, sms,
    num_active, S, D, sm_scale, qk_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, FP64: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_active).to(tl.int64)
    h = tl.load(HeadIndex + pid_bh % num_active).to(tl.int64)
    acc_t: tl.constexpr = tl.float64 if FP64 else tl.float32
    gate = tl.load(Gate + h).to(acc_t)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    kv_mask = (offs_n[:, None] < S) & d_ok[None, :]
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], acc_t)
    dv = tl.zeros([BLOCK_N, BLOCK_D], acc_t)

    if CAUSAL:
        lo = ((pid_n * BLOCK_N) // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    for start_m in range(lo, S, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < S
        qd_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd, mask=qd_mask, other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :] * sdd, mask=qd_mask, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(Lse + pid_bh * S + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(Delta + pid_bh * S + offs_m, mask=m_ok, other=0.0)
        # transposed scores [BLOCK_N, BLOCK_M]: rows are this program's keys
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION).to(acc_t) * qk_scale
        ok_t = tl.trans(_allowed(offs_m, offs_n, S, KeyValid, b, smb, sms, HAS_MASK, CAUSAL))
        s_t = tl.where(ok_t, s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION).to(acc_t)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION).to(acc_t) * gate
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION).to(acc_t)

    dk = dk * sm_scale
    dv = dv * gate
    tl.store(DK + b * sdkb + h * sdkh + offs_n[:, None] * sdks + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvs + offs_d[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _gated_attn_bwd_dq_kernel(
    Q, K, V, Gate, HeadIndex, KeyValid, DO, Lse, Delta, DQ,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdb, sdh, sds, sdd,
    sdqb, sdqh, sdqs, sdqd,
    smb, sms,
    num_active, S, D, sm_scale, qk_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, FP64: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_active).to(tl.int64)
    h = tl.load(HeadIndex + pid_bh % num_active).to(tl.int64)
    acc_t: tl.constexpr = tl.float64 if FP64 else tl.float32
    gate = tl.load(Gate + h).to(acc_t)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < S
    d_ok = offs_d < D
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd, mask=qd_mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :] * sdd, mask=qd_mask, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(Lse + pid_bh * S + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(Delta + pid_bh * S + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], acc_t)

    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    else:
        hi = S
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(acc_t) * qk_scale
        ok = _allowed(offs_m, offs_n, S, KeyValid, b, smb, sms, HAS_MASK, CAUSAL)
        s = tl.where(ok, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(acc_t) * gate
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION).to(acc_t)

    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqs + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=qd_mask)


# ----------------------------------------------------------------------------------------------------
# launch helpers
# ----------------------------------------------------------------------------------------------------

def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise if the kernels cannot take these tensors (dtype, rank, head size)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"gated_attention: {name} must be [B, H, S, D], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"gated_attention (triton): {name} dtype {t.dtype} is not one of {SUPPORTED_DTYPES}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"gated_attention (triton): head size D={q.shape[-1]} exceeds {MAX_HEAD_DIM}")


def _common(q: torch.Tensor, head_index: torch.Tensor, key_valid: torch.Tensor | None):
    B, _, S, D = q.shape
    block_d = max(16, triton.next_power_of_2(D))
    dot_fp32 = q.dtype == torch.bfloat16 and not compiled_launch(q.device)
    fp64 = q.dtype == torch.float64
    precision = "ieee"  # fp32 inputs: exact fp32 products (tf32 would change results vs the reference)
    if key_valid is None:
        mask_arg, smb, sms = head_index, 0, 0  # never read (HAS_MASK=False)
    else:
        mask_arg, smb, sms = key_valid, key_valid.stride(0), key_valid.stride(1)
    return B, S, D, block_d, dot_fp32, fp64, precision, mask_arg, smb, sms


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gated_attention_forward(q, k, v, gate, head_index, key_valid, causal, out, block_m=None, block_n=None,
                            num_warps=None, num_stages=None):
    """Write ``out[:, head_index]`` (gated) and return the base-2 log-sum-exp, [B, A, S].

    ``out`` is preallocated by the caller (any strides); its pruned heads are left untouched.
    ``head_index``: [A] int64 on q's device, A >= 1. ``key_valid``: [B, S] int32 or None.
    """
    A = head_index.numel()
    B, S, D, block_d, dot_fp32, fp64, precision, mask_arg, smb, sms = _common(q, head_index, key_valid)
    tile = attention_tile(D, q.dtype, backward=False, device=q.device)
    block_m = block_m or tile.meta()["BLOCK_M"]
    block_n = block_n or tile.meta()["BLOCK_N"]
    lse = torch.empty((B, A, S), device=q.device, dtype=stats_dtype(q.dtype))
    sm_scale = 1.0 / math.sqrt(D)
    grid = (triton.cdiv(S, block_m), B * A)
    _gated_attn_fwd_kernel[grid](
        q, k, v, gate, head_index, mask_arg, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), smb, sms,
        A, S, D, sm_scale * LOG2E,
        HAS_MASK=key_valid is not None, CAUSAL=bool(causal),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        DOT_FP32=dot_fp32, FP64=fp64, PRECISION=precision,
        num_warps=num_warps or tile.num_warps, num_stages=num_stages or tile.num_stages,
    )
    return lse


def gated_attention_backward(q, k, v, gate, head_index, key_valid, causal, out, lse, dout, dq, dk, dv,
                             block_m=None, block_n=None, num_warps=None, num_stages=None):
    """Write dq/dk/dv for the active heads (preallocated, any strides) and return ``delta`` [B, A, S]
    = rowsum(dout * out), from which the caller gets the gate gradient."""
    A = head_index.numel()
    B, S, D, block_d, dot_fp32, fp64, precision, mask_arg, smb, sms = _common(q, head_index, key_valid)
    tile = attention_tile(D, q.dtype, backward=True, device=q.device)
    block_m = block_m or tile.meta()["BLOCK_M"]
    block_n = block_n or tile.meta()["BLOCK_N"]
    warps = num_warps or tile.num_warps
    stages = num_stages or tile.num_stages
    sm_scale = 1.0 / math.sqrt(D)
    delta = torch.empty((B, A, S), device=q.device, dtype=stats_dtype(q.dtype))
    _gated_attn_bwd_delta_kernel[(triton.cdiv(S, block_m), B * A)](
        out, dout, head_index, delta, *out.stride(), *dout.stride(), A, S, D,
        BLOCK_M=block_m, BLOCK_D=block_d, FP64=fp64, num_warps=warps,
    )
    flags = dict(HAS_MASK=key_valid is not None, CAUSAL=bool(causal), BLOCK_M=block_m, BLOCK_N=block_n,
                 BLOCK_D=block_d, DOT_FP32=dot_fp32, FP64=fp64, PRECISION=precision,
                 num_warps=warps, num_stages=stages)
    _gated_attn_bwd_dkdv_kernel[(triton.cdiv(S, block_n), B * A)](
        q, k, v, gate, head_index, mask_arg, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), smb, sms,
        A, S, D, sm_scale, sm_scale * LOG2E, **flags,
    )
    _gated_attn_bwd_dq_kernel[(triton.cdiv(S, block_m), B * A)](
        q, k, v, gate, head_index, mask_arg, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(), smb, sms,
        A, S, D, sm_scale, sm_scale * LOG2E, **flags,
    )
    return delta
