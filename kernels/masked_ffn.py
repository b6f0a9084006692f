"""Triton kernels of the masked FFN: the two GEMMs that carry the activation, over active channels only.

    up   (forward):  h[M, K] = act(x @ w_in[active].T + b_in[active]) * gate[active]   (+ z saved)
    dh   (backward): dh = dy @ w_out[:, active]  (+ grad of h if the caller used it), then in the epilogue
                     dz = dh * gate * act'(z),  h = act(z) * gate  (recomputed for dW_out),
                     partial dgate[m_block, k] = sum_rows dh * act(z)

The other four GEMMs (down-proj forward, dW_out/db_out, dx, dW_in/db_in) are plain indexed GEMMs from
:mod:`ddk_fast.kernels.masked_linear`. ``active`` holds the channels whose gate is non-zero, so pruned
channels get no program, no load and no FLOP, forward or backward.

Saved for backward: the pre-activation z only ([M, K], compact). Why: act(z), act'(z) and h are all
cheap elementwise functions of z computed in the dh epilogue where z is already in registers; saving
h and act(z) as well would triple the activation memory of the largest tensor in the layer.
The gate gradient is reduced per row block into a small fp32 buffer (summed by the caller) rather than
with atomics, so the result is deterministic and autotuning can re-run the kernel safely.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ddk_fast.kernels.configs import (FFN_DH_TILES, FFN_UP_TILES, INTERPRETER_GEMM_BLOCKS, autotune_candidates,
                                      compiled_launch, family_pruner)
from ddk_fast.kernels.masked_linear import (
    bucket,
    check_dtype,
    indexed_tile_dot,
    input_precision_for,
    needs_upcast,
)

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
DEFAULT_BLOCKS = INTERPRETER_GEMM_BLOCKS


@triton.jit
def activation_and_grad(z, ACTIVATION: tl.constexpr):
    """(act(z), act'(z)) in fp32; erf/exp are core ops (libdevice is avoided: it fails in the interpreter)."""
    if ACTIVATION == "gelu":
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        value = z * cdf
        slope = cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACTIVATION == "gelu_tanh":
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh(u), overflow-safe at both ends
        value = 0.5 * z * (1.0 + t)
        slope = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * z * z)
    else:
        value = tl.maximum(z, 0.0)
        slope = (z > 0.0).to(tl.float32)
    return value, slope


@triton.jit
def ffn_up_kernel(
    x_ptr, w_ptr, b_ptr, gate_ptr, idx_ptr, h_ptr, z_ptr,
    M, K, D,
    stride_xm, stride_xd, stride_wi, stride_wd, stride_hm, stride_hk,
    m_bucket, k_bucket, d_bucket,  # autotune keys only
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_Z: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """h = act(x @ w_in[idx].T + b_in[idx]) * gate[idx]; z (pre-activation) stored when SAVE_Z.
    h and z share strides (both compact [M, K] buffers allocated by the launcher)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < K
    z, _ = indexed_tile_dot(x_ptr, w_ptr, idx_ptr, offs_m, offs_n, M, K, D,
                            stride_xm, stride_xd, stride_wd, stride_wi,
                            False, True, False, UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_R)
    channels = tl.load(idx_ptr + offs_n, mask=mask_n, other=0)
    if HAS_BIAS:
        z += tl.load(b_ptr + channels, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    gate = tl.load(gate_ptr + channels, mask=mask_n, other=0.0).to(tl.float32)
    value, _ = activation_and_grad(z, ACTIVATION)
    out_offs = offs_m[:, None] * stride_hm + offs_n[None, :] * stride_hk
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(h_ptr + out_offs, (value * gate[None, :]).to(h_ptr.dtype.element_ty), mask=mask)
    if SAVE_Z:
        tl.store(z_ptr + out_offs, z.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ffn_dh_kernel(
    dy_ptr, w_ptr, z_ptr, gate_ptr, idx_ptr, extra_ptr, dz_ptr, h_ptr, dgate_part_ptr,
    M, K, D,
    stride_dym, stride_dyd, stride_wd, stride_wi, stride_zm, stride_zk, stride_em, stride_ek,
    m_bucket, k_bucket, d_bucket,  # autotune keys only
    ACTIVATION: tl.constexpr, HAS_EXTRA: tl.constexpr, WANT_GATE: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dh = dy @ w_out[:, idx] (+ extra); writes dz = dh*gate*act'(z), h = act(z)*gate and the per-row-block
    partial gate gradient sum(dh * act(z)) into dgate_part[pid_m, k]. dz, h share z's strides."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < K
    mask = mask_m[:, None] & mask_n[None, :]
    dh, _ = indexed_tile_dot(dy_ptr, w_ptr, idx_ptr, offs_m, offs_n, M, K, D,
                             stride_dym, stride_dyd, stride_wd, stride_wi,
                             False, True, False, UPCAST, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_R)
    if HAS_EXTRA:
        dh += tl.load(extra_ptr + offs_m[:, None] * stride_em + offs_n[None, :] * stride_ek,
                      mask=mask, other=0.0).to(tl.float32)
    z_offs = offs_m[:, None] * stride_zm + offs_n[None, :] * stride_zk
    z = tl.load(z_ptr + z_offs, mask=mask, other=0.0).to(tl.float32)
    channels = tl.load(idx_ptr + offs_n, mask=mask_n, other=0)
    gate = tl.load(gate_ptr + channels, mask=mask_n, other=0.0).to(tl.float32)
    value, slope = activation_and_grad(z, ACTIVATION)
    tl.store(dz_ptr + z_offs, (dh * slope * gate[None, :]).to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(h_ptr + z_offs, (value * gate[None, :]).to(h_ptr.dtype.element_ty), mask=mask)
    if WANT_GATE:
        # rows past M have dh == 0 (dy masked to 0), so they add nothing
        part = tl.sum(dh * value, axis=0)
        tl.store(dgate_part_ptr + pid_m * K + offs_n, part, mask=mask_n)


# ----------------------------------------------------------------------------------------------------
# launch helpers
# ----------------------------------------------------------------------------------------------------

_MIN_GPU_BLOCK_M = min(tile.meta()["BLOCK_M"] for group in FFN_DH_TILES.values() for tile in group)
_tuned: dict = {}


def _tuned_kernel(kernel, tiles, pointer_arg, key, reset=None):
    """Autotuned wrapper over the tiles of the launch's family (configs.FFN_*_TILES), built on first
    GPU use (never at import: no driver may be queried then)."""
    name = kernel.fn.__name__
    if name not in _tuned:
        configs, by_family = autotune_candidates(tiles)
        prune = {"early_config_prune": family_pruner(by_family, pointer_arg)}
        _tuned[name] = triton.autotune(configs=configs, key=key, reset_to_zero=reset, prune_configs_by=prune)(kernel)
    return _tuned[name]


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def ffn_up_forward(x2d, w_in, b_in, gate, active, activation, save_z=True, blocks=None):
    """(h, z): h[M, K] gated activations of the active channels, z[M, K] pre-activations (or None)."""
    _check_activation(activation)
    check_dtype("x", x2d)
    M, D = x2d.shape
    K = active.numel()
    h = torch.empty((M, K), device=x2d.device, dtype=x2d.dtype)
    z = torch.empty_like(h) if save_z else None
    if M == 0 or K == 0:
        return h, z
    args = (x2d, w_in, b_in if b_in is not None else h, gate, active, h, z if z is not None else h,
            M, K, D, x2d.stride(0), x2d.stride(1), w_in.stride(0), w_in.stride(1), h.stride(0), h.stride(1),
            bucket(M), bucket(K), bucket(D))
    flags = dict(ACTIVATION=activation, HAS_BIAS=b_in is not None, SAVE_Z=save_z,
                 UPCAST=needs_upcast(x2d.dtype, x2d.device), INPUT_PRECISION=input_precision_for(x2d.dtype))
    if compiled_launch(x2d.device) and blocks is None:
        kernel = _tuned_kernel(ffn_up_kernel, FFN_UP_TILES, "x_ptr",
                               ["m_bucket", "k_bucket", "d_bucket", "ACTIVATION", "INPUT_PRECISION"])
        kernel[lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(K, m["BLOCK_N"]))](*args, **flags)
    else:
        bl = dict(DEFAULT_BLOCKS, **(blocks or {}))
        grid = (triton.cdiv(M, bl["BLOCK_M"]), triton.cdiv(K, bl["BLOCK_N"]))
        ffn_up_kernel[grid](*args, **flags, **bl)
    return h, z


def ffn_dh_backward(grad_y, w_out, z, gate, active, activation, grad_h=None, want_gate=True, blocks=None):
    """(dz, h, dgate_active): dz[M, K] grad of the pre-activation, h[M, K] recomputed gated activations,
    dgate_active[K] fp32 gradient of gate[active] (None unless ``want_gate``)."""
    _check_activation(activation)
    M, D = grad_y.shape
    K = active.numel()
    dz = torch.empty_like(z)
    h = torch.empty_like(z)
    on_gpu = compiled_launch(grad_y.device) and blocks is None
    bl = dict(DEFAULT_BLOCKS, **(blocks or {}))
    n_row_blocks = triton.cdiv(M, _MIN_GPU_BLOCK_M if on_gpu else bl["BLOCK_M"])
    part = torch.zeros((max(n_row_blocks, 1), K), device=z.device, dtype=torch.float32)
    if M == 0 or K == 0:
        return dz, h, (part.sum(0) if want_gate else None)
    if grad_h is not None and grad_h.stride() != z.stride():
        grad_h = grad_h.contiguous()
    extra = grad_h if grad_h is not None else z
    args = (grad_y, w_out, z, gate, active, extra, dz, h, part, M, K, D,
            grad_y.stride(0), grad_y.stride(1), w_out.stride(0), w_out.stride(1), z.stride(0), z.stride(1),
            extra.stride(0), extra.stride(1), bucket(M), bucket(K), bucket(D))
    flags = dict(ACTIVATION=activation, HAS_EXTRA=grad_h is not None, WANT_GATE=want_gate,
                 UPCAST=needs_upcast(grad_y.dtype, grad_y.device),
                 INPUT_PRECISION=input_precision_for(grad_y.dtype))
    if on_gpu:
        # rows of `part` past this config's row-block count stay zero: reset between tuning runs
        kernel = _tuned_kernel(ffn_dh_kernel, FFN_DH_TILES, "dy_ptr",
                               ["m_bucket", "k_bucket", "d_bucket", "ACTIVATION", "HAS_EXTRA", "INPUT_PRECISION"],
                               reset=["dgate_part_ptr"])
        kernel[lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(K, m["BLOCK_N"]))](*args, **flags)
    else:
        grid = (triton.cdiv(M, bl["BLOCK_M"]), triton.cdiv(K, bl["BLOCK_N"]))
        ffn_dh_kernel[grid](*args, **flags, **bl)
    return dz, h, (part.sum(0) if want_gate else None)
