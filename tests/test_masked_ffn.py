"""masked_ffn: every path against the plain reference, forward and backward, and the zero-gate rule.

Tolerances: float64 compact vs float64 reference 1e-10 (same math, different association); fp32 compact
vs float64 reference 1e-4; triton runs in fp32 (interpreter on CPU) vs the float64 reference at 1e-4
(fp32 rounding over <= 50-term sums of O(1) values is ~1e-6); bf16 triton 3e-2 of the output scale.
"""
import pytest
import torch
import torch.nn.functional as F

from ddk_fast.kernels import masked_ffn as ffn_kernels
from ddk_fast.ops.activations import activation, activation_backward
from ddk_fast.ops.masked_ffn import FFNIntermediate, masked_ffn

ACTS = ("gelu", "gelu_tanh", "relu")


def _params(d, n_ch, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_in = torch.randn(n_ch, d, generator=g, dtype=dtype) / d ** 0.5
    b_in = torch.randn(n_ch, generator=g, dtype=dtype)
    w_out = torch.randn(d, n_ch, generator=g, dtype=dtype) / n_ch ** 0.5
    b_out = torch.randn(d, generator=g, dtype=dtype)
    return [w_in, b_in, w_out, b_out]


def _gate(n_ch, kind):
    g = torch.Generator().manual_seed(3)
    if kind == "mixed":  # zeros, fractional and negative values
        gate = torch.randn(n_ch, generator=g, dtype=torch.float64)
        gate[::3] = 0.0
        gate[1] = 0.3
        gate[2] = -1.2
        return gate
    if kind == "one":
        gate = torch.zeros(n_ch, dtype=torch.float64)
        gate[n_ch // 2] = 0.7
        return gate
    if kind == "all_on":
        return torch.rand(n_ch, generator=g, dtype=torch.float64) + 0.5
    if kind == "all_off":
        return torch.zeros(n_ch, dtype=torch.float64)
    raise ValueError(kind)


def _run(inputs, act, path, dtype, use_intermediate):
    """Forward + backward of sum(y * gy) (+ sum(h * gh)); returns outputs and grads as float64."""
    leaves = [t.detach().to(dtype).clone().requires_grad_(True) for t in inputs]
    y, inter = masked_ffn(*leaves, activation=act, path=path, return_intermediate=True)
    assert isinstance(inter, FFNIntermediate)
    gen = torch.Generator().manual_seed(11)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)
    loss = (y * gy).sum() * 2.0  # not the last op of the graph
    if use_intermediate:
        gh = torch.randn(inter.full().shape, generator=gen, dtype=torch.float64).to(dtype)
        loss = loss + (inter.full() * gh).sum()
    loss.backward()
    return y.detach().double(), inter.full().detach().double(), [t.grad.double() for t in leaves]


CASES = [  # lead shape, d, I, gate kind
    ((2, 5), 20, 36, "mixed"),     # tokens not a multiple of the block, d not a power of 2
    ((10,), 16, 24, "one"),        # a single channel kept
    ((3,), 17, 24, "all_on"),      # nothing pruned (no gather)
    ((2, 3, 2), 18, 24, "all_off"),  # 3-D x, every channel off
]
NAMES = ("x", "w_in", "b_in", "w_out", "b_out", "gate")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lead,d,n_ch,gate_kind", CASES)
def test_paths_match_reference(act, lead, d, n_ch, gate_kind):
    x = torch.randn(*lead, d, dtype=torch.float64)
    inputs = [x] + _params(d, n_ch) + [_gate(n_ch, gate_kind)]
    use_inter = gate_kind != "all_on"
    y_ref, h_ref, g_ref = _run(inputs, act, "reference", torch.float64, use_inter)

    # the reference against the definition
    gate = inputs[5]
    z = x @ inputs[1].T + inputs[2]
    a = {"gelu": F.gelu(z), "gelu_tanh": F.gelu(z, approximate="tanh"), "relu": F.relu(z)}[act]
    torch.testing.assert_close(y_ref, (a * gate) @ inputs[3].T + inputs[4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_ref, a * gate, rtol=1e-12, atol=1e-12)

    for path, dtype, tol in (("compact", torch.float64, 1e-10), ("compact", torch.float32, 1e-4),
                             ("triton", torch.float32, 1e-4)):
        y, h, grads = _run(inputs, act, path, dtype, use_inter)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol, msg=f"{path} {dtype} y")
        torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol, msg=f"{path} {dtype} intermediate")
        for name, got, want in zip(NAMES, grads, g_ref):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"{path} {dtype} d{name}")


@pytest.mark.parametrize("path,dtype", [("reference", torch.float64), ("compact", torch.float64),
                                        ("triton", torch.float32)])
def test_zero_gate_means_zero_gradient(path, dtype):
    """A gate exactly 0 switches its unit off: no output, zero grad for the gate and the unit's weights;
    non-zero gates (0.3, -1.2, ...) get non-zero gradients."""
    d, n_ch = 12, 24
    gate = _gate(n_ch, "mixed")
    off = gate == 0
    x = torch.randn(2, 5, d, dtype=torch.float64)
    _, h, (gx, gw_in, gb_in, gw_out, gb_out, ggate) = _run([x] + _params(d, n_ch) + [gate], "gelu", path,
                                                           dtype, True)
    assert torch.count_nonzero(h[..., off]) == 0
    assert torch.count_nonzero(ggate[off]) == 0
    assert torch.count_nonzero(gw_in[off]) == 0
    assert torch.count_nonzero(gb_in[off]) == 0
    assert torch.count_nonzero(gw_out[:, off]) == 0
    assert torch.all(ggate[~off] != 0)
    assert torch.all(gw_in[~off].abs().sum(1) > 0)


def test_all_off_gives_bias_and_zero_weight_grads():
    d, n_ch = 10, 24
    inputs = [torch.randn(4, d, dtype=torch.float64)] + _params(d, n_ch) + [_gate(n_ch, "all_off")]
    for path, dtype in (("reference", torch.float64), ("compact", torch.float64), ("triton", torch.float32)):
        y, h, (gx, gw_in, gb_in, gw_out, gb_out, ggate) = _run(inputs, "gelu", path, dtype, False)
        torch.testing.assert_close(y, inputs[4].expand(4, d), rtol=1e-6, atol=1e-6)
        for g in (gx, gw_in, gb_in, gw_out, ggate):
            assert torch.count_nonzero(g) == 0, path
        assert torch.count_nonzero(gb_out) > 0


@pytest.mark.parametrize("path", ("reference", "compact"))
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_float64(path, act):
    d, n_ch = 5, 8
    x = torch.randn(3, d, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in _params(d, n_ch)]
    if act == "relu":  # keep pre-activations away from the kink so finite differences are valid
        with torch.no_grad():
            params[1].copy_(torch.where(params[1] >= 0, params[1] + 3, params[1] - 3))
            params[0].mul_(0.1)
    gate_on = _gate(n_ch, "all_on").requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *t: masked_ffn(*t, activation=act, path=path), (x, *params, gate_on))
    # with zero gates the gate is held fixed: nudging a zero gate would switch its unit on (by design)
    gate_mixed = _gate(n_ch, "mixed")
    assert torch.autograd.gradcheck(
        lambda *t: masked_ffn(*t, gate_mixed, activation=act, path=path), (x, *params))


@pytest.mark.parametrize("act", ACTS)
def test_activation_and_backward_match_torch(act):
    z = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_()
    torch_fn = {"gelu": lambda t: F.gelu(t, approximate="none"),
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu}[act]
    want = torch_fn(z)
    grad = torch.randn(241, dtype=torch.float64)
    (want_grad,) = torch.autograd.grad(want, z, grad)
    torch.testing.assert_close(activation(z.detach(), act), want.detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(activation_backward(grad, z.detach(), act), want_grad, rtol=1e-12, atol=1e-12)
    if act == "gelu":  # BERT's exact erf GELU, spelled out
        exact = 0.5 * z * (1 + torch.erf(z / 2 ** 0.5))
        torch.testing.assert_close(activation(z.detach(), act), exact.detach(), rtol=1e-13, atol=1e-13)


def test_triton_kernels_many_blocks():
    """Forced 16-wide blocks: several row blocks feed the gate-gradient partial sums, edge tiles are
    partial, and the weights are non-contiguous views."""
    blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_R": 16}
    M, d, n_ch = 37, 40, 50
    gate = torch.randn(n_ch)
    gate[::4] = 0
    active = torch.nonzero(gate).flatten()
    x = torch.randn(M, d)
    w_in = (torch.randn(d, n_ch) / d ** 0.5).t()
    b_in = torch.randn(n_ch)
    w_out = (torch.randn(n_ch, d) / n_ch ** 0.5).t()
    for act in ACTS:
        h, z = ffn_kernels.ffn_up_forward(x, w_in, b_in, gate, active, act, blocks=blocks)
        z_want = x @ w_in[active].T + b_in[active]
        a_want = activation(z_want, act)
        slope_want = activation_backward(torch.ones_like(z_want), z_want, act)
        torch.testing.assert_close(z, z_want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, a_want * gate[active], rtol=1e-5, atol=1e-5)
        gy = torch.randn(M, d)
        gh = torch.randn(M, active.numel())
        dz, h2, dgate = ffn_kernels.ffn_dh_backward(gy, w_out, z, gate, active, act, grad_h=gh, blocks=blocks)
        dh_want = gy @ w_out[:, active] + gh
        torch.testing.assert_close(h2, h, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dz, dh_want * gate[active] * slope_want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dgate, (dh_want * a_want).sum(0), rtol=1e-4, atol=1e-4)


def test_triton_bf16_forward():
    d, n_ch = 32, 48
    x = torch.randn(2, 5, d)
    params = _params(d, n_ch, torch.float32)
    gate = _gate(n_ch, "mixed").float()
    ref = masked_ffn(x, *params, gate, path="reference")
    got = masked_ffn(x.bfloat16(), *(p.bfloat16() for p in params), gate, path="triton")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


def test_intermediate_layout_is_the_same_on_every_path():
    d, n_ch = 8, 24
    gate = _gate(n_ch, "mixed")
    args = [torch.randn(3, d, dtype=torch.float64)] + _params(d, n_ch) + [gate]
    for path in ("reference", "compact"):
        y, inter = masked_ffn(*args, path=path, return_intermediate=True)
        assert inter.values.shape == (3, int((gate != 0).sum()))
        assert torch.equal(inter.active, torch.nonzero(gate).flatten())
        assert inter.num_channels == n_ch and inter.full().shape == (3, n_ch)
        assert torch.equal(masked_ffn(*args, path=path), y)


def test_errors_name_the_argument():
    d, n_ch = 8, 12
    args = [torch.randn(3, d)] + _params(d, n_ch, torch.float32) + [torch.ones(n_ch)]
    with pytest.raises(ValueError, match="activation"):
        masked_ffn(*args, activation="swish")
    with pytest.raises(ValueError, match="w_out"):
        masked_ffn(args[0], args[1], args[2], args[3].T, args[4], args[5])
    with pytest.raises(ValueError, match="channel_gate"):
        masked_ffn(*args[:5], torch.ones(n_ch + 1))
    with pytest.raises(TypeError, match="w_in"):
        masked_ffn(args[0], args[1].double(), *args[2:])
    with pytest.raises(ValueError, match="path"):
        masked_ffn(*args, path="fast")


def test_loss_on_intermediate_only():
    """Distilling the FFN activations alone: y unused, gradients come only through the intermediate."""
    d, n_ch = 12, 24
    inputs = [torch.randn(2, 5, d, dtype=torch.float64)] + _params(d, n_ch) + [_gate(n_ch, "mixed")]
    target = torch.randn(2, 5, n_ch, dtype=torch.float64)
    grads = {}
    for path, dtype in (("reference", torch.float64), ("compact", torch.float64), ("triton", torch.float32)):
        leaves = [t.detach().to(dtype).clone().requires_grad_(True) for t in inputs]
        _, inter = masked_ffn(*leaves, path=path, return_intermediate=True)
        ((inter.full() - target.to(dtype)) ** 2).sum().backward()
        grads[path] = [t.grad for t in leaves]
    for path, tol in (("compact", 1e-10), ("triton", 1e-4)):
        for name, got, want in zip(NAMES, grads[path], grads["reference"]):
            if name in ("w_out", "b_out"):  # y unused: no gradient reaches the down-projection
                assert got is None or torch.count_nonzero(got) == 0
                assert want is None or torch.count_nonzero(want) == 0
                continue
            assert got is not None, f"{path} d{name}"
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=f"{path} d{name}")
