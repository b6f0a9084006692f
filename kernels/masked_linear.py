"""Triton GEMM that reads its weight operand through an index tensor.

One kernel covers every GEMM of a structurally masked linear layer, forward and backward:

    C[m, n] = sum_r A[m, r] * B[r, n]  (+ bias[n])            A, B addressed by strides
    B may be gathered along r (``B_GATHER_R``) or n (``B_GATHER_N``) through an index tensor,
    C may be scattered along m (``C_SCATTER_M``) or n (``C_SCATTER_N``),
    and the row sums of A can be written beside C (the bias gradient comes out of the dW GEMM).

Why one kernel: the six GEMMs of ``linear_active_out`` / ``linear_active_in`` (y, dX, dW for each) differ
only in which operand is indexed and which strides are transposed; the pruned rows or columns are never
loaded, so work scales with the number of active units, and no compact copy of the weight is made.

Launch helpers at the bottom take torch tensors, pick block sizes (autotuned only on a GPU, chosen at
call time) and never query a driver at import time.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ddk_fast.kernels.configs import (INTERPRETER_GEMM_BLOCKS, MATMUL_TILES, autotune_candidates, compiled_launch,
                                      family_pruner)

DEFAULT_BLOCKS = INTERPRETER_GEMM_BLOCKS
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def indexed_tile_dot(a_ptr, b_ptr, b_idx_ptr, offs_m, offs_n, M, N, R,
                     stride_am, stride_ar, stride_br, stride_bn,
                     B_GATHER_R: tl.constexpr, B_GATHER_N: tl.constexpr, WITH_ROWSUM: tl.constexpr,
                     UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """fp32 tile ``A[offs_m, :] @ B[:, offs_n]`` with B gathered through ``b_idx_ptr``; also the row sums
    of the A tile when ``WITH_ROWSUM`` (zeros otherwise). Shared by the masked-linear and FFN kernels."""
    mask_m = offs_m < M
    mask_n = offs_n < N
    if B_GATHER_N:
        b_cols = tl.load(b_idx_ptr + offs_n, mask=mask_n, other=0)
    else:
        b_cols = offs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rowsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        if B_GATHER_R:
            b_rows = tl.load(b_idx_ptr + offs_r, mask=mask_r, other=0)
        else:
            b_rows = offs_r
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_r[None, :] * stride_ar,
                    mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * stride_br + b_cols[None, :] * stride_bn,
                    mask=mask_r[:, None] & mask_n[None, :], other=0.0)
        if WITH_ROWSUM:
            rowsum += tl.sum(a.to(tl.float32), axis=1)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc, rowsum


@triton.jit
def indexed_matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, rowsum_ptr, b_idx_ptr, c_idx_ptr,
    M, N, R,
    stride_am, stride_ar, stride_br, stride_bn, stride_cm, stride_cn,
    m_bucket, n_bucket, r_bucket,  # autotune keys only (size buckets), unused in the body
    B_GATHER_R: tl.constexpr, B_GATHER_N: tl.constexpr,
    C_SCATTER_M: tl.constexpr, C_SCATTER_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, WITH_ROWSUM: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """C = A @ B (+ bias) with index gathers/scatters, see the module docstring.

    The bias is read at B's column index (gathered when ``B_GATHER_N``); row sums of A are stored at C's
    row index (scattered when ``C_SCATTER_M``) by the programs of the first column block only.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc, rowsum = indexed_tile_dot(a_ptr, b_ptr, b_idx_ptr, offs_m, offs_n, M, N, R,
                                   stride_am, stride_ar, stride_br, stride_bn,
                                   B_GATHER_R, B_GATHER_N, WITH_ROWSUM, UPCAST, INPUT_PRECISION,
                                   BLOCK_M, BLOCK_N, BLOCK_R)
    if HAS_BIAS:
        if B_GATHER_N:
            bias_cols = tl.load(b_idx_ptr + offs_n, mask=mask_n, other=0)
        else:
            bias_cols = offs_n
        bias = tl.load(bias_ptr + bias_cols, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if C_SCATTER_M:
        c_rows = tl.load(c_idx_ptr + offs_m, mask=mask_m, other=0)
    else:
        c_rows = offs_m
    if C_SCATTER_N:
        c_cols = tl.load(c_idx_ptr + offs_n, mask=mask_n, other=0)
    else:
        c_cols = offs_n
    tl.store(c_ptr + c_rows[:, None] * stride_cm + c_cols[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    if WITH_ROWSUM:
        if pid_n == 0:
            tl.store(rowsum_ptr + c_rows, rowsum.to(rowsum_ptr.dtype.element_ty), mask=mask_m)


# ----------------------------------------------------------------------------------------------------
# launch helpers
# ----------------------------------------------------------------------------------------------------

_TUNE_KEY = ["m_bucket", "n_bucket", "r_bucket", "B_GATHER_R", "B_GATHER_N", "C_SCATTER_M",
             "C_SCATTER_N", "HAS_BIAS", "WITH_ROWSUM", "INPUT_PRECISION"]
_tuned_kernels: dict = {}


def tuned(kernel, key=None):
    """The kernel to launch for a CUDA tensor: wrapped in ``triton.autotune`` on first use, over the
    tiles of configs.MATMUL_TILES of the launch's family (mma / fma).

    Why lazily: multi-config autotune fails without a GPU, and no driver may be touched at import time.
    Every kernel here overwrites its outputs (no atomics), so re-running configs while tuning is safe.
    """
    name = kernel.fn.__name__ if hasattr(kernel, "fn") else repr(kernel)
    if name not in _tuned_kernels:
        configs, by_family = autotune_candidates(MATMUL_TILES)
        prune = {"early_config_prune": family_pruner(by_family, "a_ptr")}
        _tuned_kernels[name] = triton.autotune(configs=configs, key=key or _TUNE_KEY, prune_configs_by=prune)(kernel)
    return _tuned_kernels[name]


def bucket(n: int) -> int:
    """Power-of-two size bucket used as an autotune key, so varying token counts don't retune each time."""
    return triton.next_power_of_2(max(int(n), 1))


def input_precision_for(dtype: torch.dtype) -> str:
    """Match torch's fp32 matmul setting: exact fp32 ("ieee") unless the user allowed TF32."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def needs_upcast(dtype: torch.dtype, device: torch.device) -> bool:
    """bf16 ``tl.dot`` is wrong in the interpreter: dot in fp32 there (always fp32 accumulation anyway)."""
    return dtype == torch.bfloat16 and not compiled_launch(device)


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the triton path supports dtypes {SUPPORTED_DTYPES}, got {t.dtype}")


def _launch(a, b_ptr_tensor, b_strides, c, c_strides, M, N, R, *, b_index, b_gather, c_index, c_scatter,
            bias, rowsum, blocks):
    """Launch :func:`indexed_matmul_kernel` for logical sizes C[M, N] = A[M, R] @ B[R, N].

    ``b_ptr_tensor`` + ``b_strides`` address B (strides of its logical r and n axes, before gathering);
    ``b_index`` gathers B along ``b_gather`` ("r" or "n"); ``c_index`` scatters C along ``c_scatter``.
    ``blocks`` forces block sizes (tests); otherwise defaults off-GPU and autotuning on a GPU.
    """
    index_dummy = b_index if b_index is not None else (c_index if c_index is not None else c)
    b_idx = b_index if b_index is not None else index_dummy
    c_idx = c_index if c_index is not None else index_dummy
    args = (a, b_ptr_tensor, c, bias if bias is not None else c, rowsum if rowsum is not None else c,
            b_idx, c_idx, M, N, R, a.stride(0), a.stride(1), b_strides[0], b_strides[1],
            c_strides[0], c_strides[1], bucket(M), bucket(N), bucket(R))
    flags = dict(
        B_GATHER_R=b_index is not None and b_gather == "r",
        B_GATHER_N=b_index is not None and b_gather == "n",
        C_SCATTER_M=c_index is not None and c_scatter == "m",
        C_SCATTER_N=c_index is not None and c_scatter == "n",
        HAS_BIAS=bias is not None,
        WITH_ROWSUM=rowsum is not None,
        UPCAST=needs_upcast(a.dtype, a.device),
        INPUT_PRECISION=input_precision_for(a.dtype),
    )
    if M == 0 or N == 0:
        return
    if compiled_launch(a.device) and blocks is None:
        kernel = tuned(indexed_matmul_kernel)
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
        kernel[grid](*args, **flags)
    else:
        bl = dict(DEFAULT_BLOCKS, **(blocks or {}))
        grid = (triton.cdiv(M, bl["BLOCK_M"]), triton.cdiv(N, bl["BLOCK_N"]))
        indexed_matmul_kernel[grid](*args, **flags, **bl)


# The six GEMMs of the masked linear layers, in the names the autograd code uses ---------------------

def active_out_forward(x2d, weight, bias, active, blocks=None):
    """y[M, K] = x[M, D] @ weight[active].T + bias[active]; pruned rows are never read."""
    M, D = x2d.shape
    K = active.numel()
    y = torch.empty((M, K), device=x2d.device, dtype=x2d.dtype)
    if K == 0 or M == 0:
        return y
    # B[r, n] = weight[active[n], r]
    _launch(x2d, weight, (weight.stride(1), weight.stride(0)), y, (y.stride(0), y.stride(1)), M, K, D,
            b_index=active, b_gather="n", c_index=None, c_scatter="m", bias=bias, rowsum=None,
            blocks=blocks)
    return y


def active_out_backward_input(grad_y, weight, active, blocks=None):
    """dx[M, D] = dy[M, K] @ weight[active]; reduces over active rows only."""
    M, K = grad_y.shape
    D = weight.shape[1]
    dx = torch.empty((M, D), device=grad_y.device, dtype=grad_y.dtype)
    if K == 0:
        return dx.zero_()
    # B[r, n] = weight[active[r], n]
    _launch(grad_y, weight, (weight.stride(0), weight.stride(1)), dx, (dx.stride(0), dx.stride(1)), M, D, K,
            b_index=active, b_gather="r", c_index=None, c_scatter="m", bias=None, rowsum=None, blocks=blocks)
    return dx


def active_out_backward_weight(grad_y, x2d, active, n_rows, want_bias, blocks=None):
    """dW[N, D] zero except rows ``active`` = dy.T @ x; db[N] likewise = dy.sum(0) (fused row sums)."""
    M, K = grad_y.shape
    D = x2d.shape[1]
    dw = torch.zeros((n_rows, D), device=x2d.device, dtype=x2d.dtype)
    db = torch.zeros((n_rows,), device=x2d.device, dtype=x2d.dtype) if want_bias else None
    if K == 0 or M == 0:
        return dw, db
    # A[m=k, r=token] = dy[token, k]; C row index scattered through active
    a = grad_y.t()
    _launch(a, x2d, (x2d.stride(0), x2d.stride(1)), dw, (dw.stride(0), dw.stride(1)), K, D, M,
            b_index=None, b_gather="n", c_index=active, c_scatter="m", bias=None, rowsum=db, blocks=blocks)
    return dw, db


def active_in_forward(h2d, weight, bias, active, blocks=None):
    """y[M, O] = h[M, K] @ weight[:, active].T + bias; reduces over active columns only."""
    M, K = h2d.shape
    O = weight.shape[0]
    y = torch.empty((M, O), device=h2d.device, dtype=h2d.dtype)
    if K == 0 or M == 0:
        if bias is not None:
            y.copy_(bias.to(y.dtype).expand(M, O))
        else:
            y.zero_()
        return y
    # B[r, n] = weight[n, active[r]]
    _launch(h2d, weight, (weight.stride(1), weight.stride(0)), y, (y.stride(0), y.stride(1)), M, O, K,
            b_index=active, b_gather="r", c_index=None, c_scatter="m", bias=bias, rowsum=None, blocks=blocks)
    return y


def active_in_backward_input(grad_y, weight, active, blocks=None):
    """dh[M, K] = dy[M, O] @ weight[:, active]; pruned columns are never read."""
    M, O = grad_y.shape
    K = active.numel()
    dh = torch.empty((M, K), device=grad_y.device, dtype=grad_y.dtype)
    if K == 0 or M == 0:
        return dh
    # B[r, n] = weight[r, active[n]]
    _launch(grad_y, weight, (weight.stride(0), weight.stride(1)), dh, (dh.stride(0), dh.stride(1)), M, K, O,
            b_index=active, b_gather="n", c_index=None, c_scatter="m", bias=None, rowsum=None, blocks=blocks)
    return dh


def active_in_backward_weight(grad_y, h2d, active, n_cols, want_bias, blocks=None):
    """dW[O, N] zero except columns ``active`` = dy.T @ h; db[O] = dy.sum(0) (fused row sums)."""
    M, O = grad_y.shape
    K = h2d.shape[1]
    dw = torch.zeros((O, n_cols), device=h2d.device, dtype=h2d.dtype)
    db = torch.zeros((O,), device=h2d.device, dtype=h2d.dtype) if want_bias else None
    if M == 0:
        return dw, db
    if K == 0:
        if db is not None:
            db.copy_(grad_y.sum(0))
        return dw, db
    # A[m=o, r=token] = dy[token, o]; C column index scattered through active
    a = grad_y.t()
    _launch(a, h2d, (h2d.stride(0), h2d.stride(1)), dw, (dw.stride(0), dw.stride(1)), O, K, M,
            b_index=None, b_gather="n", c_index=active, c_scatter="n", bias=None, rowsum=db, blocks=blocks)
    return dw, db
