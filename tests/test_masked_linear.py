"""linear_active_out / linear_active_in: every path against the plain reference, forward and backward.

Tolerances: compact is checked with gradcheck in float64 and must match the reference to 1e-12 there;
triton runs in fp32 (the interpreter on CPU) and must match the float64 reference to 1e-4 abs/rel
(fp32 GEMMs over <= 40 terms of O(1) values: rounding is ~1e-6, 1e-4 leaves room for GPU TF32-free
accumulation order); bf16 via triton to 3e-2 of the output scale.
"""
import pytest
import torch

from ddk_fast.kernels import masked_linear as kernels
from ddk_fast.ops import linear_active_in, linear_active_out

PATHS = ("reference", "compact", "triton")


def _active(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


def _run(fn, inputs, active, path, grad_seed=1):
    inputs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*inputs, active, path=path)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(y.dtype)
    y.backward(g)
    return y.detach(), [t.grad if t is not None else None for t in inputs]


def _out_inputs(lead, d, n, dtype, bias=True):
    x = torch.randn(*lead, d, dtype=dtype)
    w = torch.randn(n, d, dtype=dtype)
    b = torch.randn(n, dtype=dtype) if bias else None
    return [x, w, b]


def _in_inputs(lead, k, o, n, dtype, bias=True):
    h = torch.randn(*lead, k, dtype=dtype)
    w = torch.randn(o, n, dtype=dtype)
    b = torch.randn(o, dtype=dtype) if bias else None
    return [h, w, b]


CASES = [  # (lead shape, d, N, K)
    ((2, 5), 20, 24, 7),     # odd sizes, tokens not a multiple of the block
    ((10,), 16, 24, 1),      # one unit kept
    ((3,), 17, 24, 24),      # every unit kept (no gather)
    ((2, 3, 2), 18, 24, 0),  # 3-D input, every unit off
]


@pytest.mark.parametrize("lead,d,n,k", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_active_out_matches_reference(lead, d, n, k, bias):
    active = _active(n, k)
    inputs = _out_inputs(lead, d, n, torch.float64, bias)
    y_ref, g_ref = _run(linear_active_out, inputs, active, "reference")
    # the reference itself against the definition
    expected = inputs[0] @ inputs[1][active].T + (inputs[2][active] if bias else 0)
    torch.testing.assert_close(y_ref, expected, rtol=1e-12, atol=1e-12)
    assert y_ref.shape == (*lead, k)
    for path, dtype, tol in (("compact", torch.float64, 1e-12), ("triton", torch.float32, 1e-4)):
        y, g = _run(linear_active_out, [t.to(dtype) if t is not None else None for t in inputs], active, path)
        torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
        for got, want in zip(g, g_ref):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        inactive = torch.ones(n, dtype=torch.bool)
        inactive[active] = False
        assert torch.count_nonzero(g[1][inactive]) == 0
        if bias:
            assert torch.count_nonzero(g[2][inactive]) == 0


@pytest.mark.parametrize("lead,d,n,k", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_active_in_matches_reference(lead, d, n, k, bias):
    active = _active(n, k)
    inputs = _in_inputs(lead, k, d, n, torch.float64, bias)
    y_ref, g_ref = _run(linear_active_in, inputs, active, "reference")
    expected = inputs[0] @ inputs[1][:, active].T + (inputs[2] if bias else 0)
    torch.testing.assert_close(y_ref, expected, rtol=1e-12, atol=1e-12)
    assert y_ref.shape == (*lead, d)
    for path, dtype, tol in (("compact", torch.float64, 1e-12), ("triton", torch.float32, 1e-4)):
        y, g = _run(linear_active_in, [t.to(dtype) if t is not None else None for t in inputs], active, path)
        torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
        for got, want in zip(g, g_ref):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        inactive = torch.ones(n, dtype=torch.bool)
        inactive[active] = False
        assert torch.count_nonzero(g[1][:, inactive]) == 0


@pytest.mark.parametrize("path", ("reference", "compact"))
def test_gradcheck_float64(path):
    active = _active(12, 5)
    x, w, b = (t.requires_grad_() for t in _out_inputs((3,), 6, 12, torch.float64))
    assert torch.autograd.gradcheck(lambda x, w, b: linear_active_out(x, w, b, active, path=path), (x, w, b))
    h, w2, b2 = (t.requires_grad_() for t in _in_inputs((3,), 5, 6, 12, torch.float64))
    assert torch.autograd.gradcheck(lambda h, w, b: linear_active_in(h, w, b, active, path=path), (h, w2, b2))


def test_k_zero_gives_bias_and_zero_grads():
    active = torch.zeros(0, dtype=torch.long)
    for path in PATHS:
        h, w, b = _in_inputs((4,), 0, 8, 12, torch.float32)
        y, (gh, gw, gb) = _run(linear_active_in, [h, w, b], active, path)
        torch.testing.assert_close(y, b.expand(4, 8))
        assert torch.count_nonzero(gw) == 0 and gw.shape == w.shape
        x, w, b = _out_inputs((4,), 8, 12, torch.float32)
        y, (gx, gw, gb) = _run(linear_active_out, [x, w, b], active, path)
        assert y.shape == (4, 0)
        assert torch.count_nonzero(gx) == 0 and torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0


def test_kernels_with_many_blocks_and_strided_weight():
    """Small forced blocks: several programs per axis and several reduction steps, partial edge tiles,
    and a weight that is a transposed (non-contiguous) view."""
    blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_R": 16}
    M, D, N, K = 37, 40, 50, 19
    active = _active(N, K)
    x = torch.randn(M, D)
    w = torch.randn(D, N).t()  # [N, D] non-contiguous
    b = torch.randn(N)
    y = kernels.active_out_forward(x, w, b, active, blocks=blocks)
    torch.testing.assert_close(y, x @ w[active].T + b[active], rtol=1e-5, atol=1e-4)
    gy = torch.randn(M, K)
    torch.testing.assert_close(kernels.active_out_backward_input(gy, w, active, blocks=blocks),
                               gy @ w[active], rtol=1e-5, atol=1e-4)
    dw, db = kernels.active_out_backward_weight(gy, x, active, N, True, blocks=blocks)
    want = torch.zeros(N, D)
    want[active] = gy.T @ x
    torch.testing.assert_close(dw, want, rtol=1e-5, atol=1e-4)
    want_b = torch.zeros(N)
    want_b[active] = gy.sum(0)
    torch.testing.assert_close(db, want_b, rtol=1e-5, atol=1e-5)

    w2 = torch.randn(N, D).t()  # [D, N] non-contiguous
    h = torch.randn(M, K)
    torch.testing.assert_close(kernels.active_in_forward(h, w2, b[:D], active, blocks=blocks),
                               h @ w2[:, active].T + b[:D], rtol=1e-5, atol=1e-4)
    gy2 = torch.randn(M, D)
    torch.testing.assert_close(kernels.active_in_backward_input(gy2, w2, active, blocks=blocks),
                               gy2 @ w2[:, active], rtol=1e-5, atol=1e-4)
    dw2, db2 = kernels.active_in_backward_weight(gy2, h, active, N, True, blocks=blocks)
    want2 = torch.zeros(D, N)
    want2[:, active] = gy2.T @ h
    torch.testing.assert_close(dw2, want2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(db2, gy2.sum(0), rtol=1e-5, atol=1e-5)


def test_triton_bf16_accumulates_in_fp32():
    active = _active(24, 9)
    x, w, b = _out_inputs((2, 5), 32, 24, torch.float32)
    ref = linear_active_out(x, w, b, active, path="reference")
    got = linear_active_out(x.bfloat16(), w.bfloat16(), b.bfloat16(), active, path="triton")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


def test_errors_name_the_argument():
    x, w, b = _out_inputs((3,), 8, 12, torch.float32)
    with pytest.raises(ValueError, match="active"):
        linear_active_out(x, w, b, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="last dim"):
        linear_active_out(x[:, :5], w, b, _active(12, 3))
    with pytest.raises(ValueError, match="path"):
        linear_active_out(x, w, b, _active(12, 3), path="fast")
    with pytest.raises(TypeError, match="dtype"):
        linear_active_out(x.double(), w, b, _active(12, 3))
    with pytest.raises(ValueError, match="bias"):
        linear_active_in(torch.randn(3, 3), w.T, torch.randn(5), _active(12, 3))
