"""The fused CPU layer kernels (bias + erf GELU, residual + LayerNorm) against their plain-PyTorch
references: float64 gradcheck through the hand-written backwards, float32 forward and backward
within stated tolerances, odd shapes, every instruction-set variant, and the compact FFN / layer
still matching the reference path."""
import pytest
import torch
import torch.nn.functional as F

from ddk_fast._ext import extension
from ddk_fast.ops import fused_cpu
from ddk_fast.ops.fused_cpu import gelu_bias, gelu_bias_reference, residual_layer_norm, residual_layer_norm_reference
from ddk_fast.model.config import TransformerConfig
from ddk_fast.model.layers import MaskedLayer
from ddk_fast.ops.masked_ffn import masked_ffn

pytestmark = pytest.mark.skipif(fused_cpu.fused_cpu_kernels() is None,
                                reason="ddk_fast._C with the fused layer kernels is not built")

F64 = (torch.float64,)
# float32 tolerances: GELU uses a polynomial erf (abs error <= 1.5e-7 in Phi) and exp; LayerNorm sums
# rows of <= 1536 values in float.
GELU_TOL = dict(rtol=1e-5, atol=2e-6)
LN_TOL = dict(rtol=1e-4, atol=1e-5)
ODD_SHAPES = [(1, 1), (3, 1), (1, 17), (5, 7), (33, 19), (2, 3, 31), (64, 1536)]


def _isas():
    ext = extension()
    order = ["avx512", "avx2", "base"]
    best = ext.cpu_isa()
    return order[order.index(best):]


@pytest.fixture(params=_isas() if extension() is not None else ["base"])
def isa(request):
    ext = extension()
    before = ext.cpu_isa()
    ext.set_cpu_isa(request.param)
    yield request.param
    ext.set_cpu_isa(before)


def _leaf(*shape, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()


# ---- bias + GELU -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (2, 3, 9)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gelu_bias_gradcheck_float64(isa, shape, with_bias):
    z = _leaf(*shape, scale=2.0)
    b = _leaf(shape[-1], seed=1) if with_bias else None
    inputs = (z, b) if with_bias else (z,)
    assert torch.autograd.gradcheck(lambda *t: gelu_bias(*t, dtypes=F64), inputs)


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_gelu_bias_float32_matches_reference(isa, shape):
    z, b = _leaf(*shape, dtype=torch.float32, scale=3.0), _leaf(shape[-1], dtype=torch.float32, seed=1)
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    out = gelu_bias(z, b)
    assert out.grad_fn is not None and "GeluBias" in type(out.grad_fn).__name__  # the fused op ran
    dz, db = torch.autograd.grad(out, (z, b), grad)
    ref = gelu_bias_reference(z, b)
    rdz, rdb = torch.autograd.grad(ref, (z, b), grad)
    torch.testing.assert_close(out, ref, **GELU_TOL)
    torch.testing.assert_close(dz, rdz, **GELU_TOL)
    torch.testing.assert_close(db, rdb, rtol=1e-4, atol=1e-4)  # a sum over up to 64 rows


def test_gelu_tails_and_zero():
    z = torch.tensor([[-30.0, -9.0, -1e-8, 0.0, 1e-8, 9.0, 30.0, 100.0]])
    torch.testing.assert_close(gelu_bias(z), F.gelu(z), **GELU_TOL)
    assert gelu_bias(z)[0, 3].item() == 0.0


def test_gelu_bias_does_not_modify_its_input():
    z = torch.randn(4, 6)
    before = z.clone()
    gelu_bias(z, torch.ones(6))
    assert torch.equal(z, before)


def test_gelu_bias_falls_back_off_float32():
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = gelu_bias(z)  # float64 is not on the fused list by default
    assert "GeluBias" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, F.gelu(z))


def test_gelu_bias_rejects_a_bias_of_the_wrong_width():
    with pytest.raises(ValueError, match="bias must have shape"):
        gelu_bias(torch.randn(3, 4), torch.randn(5))


# ---- residual + LayerNorm ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (4, 7), (2, 3, 17)])
def test_residual_layer_norm_gradcheck_float64(isa, shape):
    x, y = _leaf(*shape), _leaf(*shape, seed=1)
    w, b = _leaf(shape[-1], seed=2), _leaf(shape[-1], seed=3)
    assert torch.autograd.gradcheck(
        lambda *t: residual_layer_norm(*t, 1e-5, "compact", dtypes=F64), (x, y, w, b))


@pytest.mark.parametrize("shape", ODD_SHAPES + [(4, 128, 384)])
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_residual_layer_norm_float32_matches_reference(isa, shape, eps):
    if eps < 1e-6 and shape[-1] < 7:
        # a row of 1-2 values has (nearly) zero variance: 1/std ~ 1e6 multiplies float rounding, and
        # the two backwards differ by that noise around a true gradient of 0
        pytest.skip("ill-conditioned: near-constant rows with eps 1e-12")
    x, y = _leaf(*shape, dtype=torch.float32, scale=2.0), _leaf(*shape, dtype=torch.float32, seed=1)
    w, b = _leaf(shape[-1], dtype=torch.float32, seed=2), _leaf(shape[-1], dtype=torch.float32, seed=3)
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    out = residual_layer_norm(x, y, w, b, eps, "compact")
    assert "ResidualLayerNorm" in type(out.grad_fn).__name__
    got = torch.autograd.grad(out, (x, y, w, b), grad)
    # the reference in float64 on the same float32 inputs: torch's own float32 LayerNorm is off by as
    # much as the fused one on narrow rows (its mean is not exact there)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, y, w, b)]
    ref = residual_layer_norm_reference(*leaves64, eps)
    want = torch.autograd.grad(ref, leaves64, grad.double())
    torch.testing.assert_close(out, ref.float(), **LN_TOL)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r.float(), **LN_TOL)


def test_residual_layer_norm_large_offset_rows():
    """Rows whose mean is far from 0 (the variance is taken around the mean, not as E[h^2] - mean^2)."""
    x = torch.randn(8, 384) * 0.01 + 1000.0
    y = torch.zeros(8, 384)
    w, b = torch.ones(384), torch.zeros(384)
    exact = residual_layer_norm_reference(x.double(), y.double(), w.double(), b.double(), 1e-12).float()
    # a float32 mean near 1000 is itself rounded by up to 3e-5, 0.3 % of the rows' std of 0.01 (torch's
    # own float32 LayerNorm is off by ~6e-3 here); a plain float sum of the row would be off by ~1e-2
    torch.testing.assert_close(residual_layer_norm(x, y, w, b, 1e-12, "compact"), exact, rtol=0, atol=4e-3)


def test_residual_layer_norm_reference_path_and_no_affine_stay_plain():
    x, y = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)
    w, b = torch.ones(5), torch.zeros(5)
    assert "ResidualLayerNorm" not in type(residual_layer_norm(x, y, w, b, 1e-5, "reference").grad_fn).__name__
    assert "ResidualLayerNorm" not in type(residual_layer_norm(x, y, None, None, 1e-5, "compact").grad_fn).__name__


def test_isa_variants_agree_within_tolerance():
    x, y = torch.randn(37, 385), torch.randn(37, 385)
    w, b = torch.randn(385), torch.randn(385)
    ext = extension()
    before = ext.cpu_isa()
    outs = []
    try:
        for name in _isas():
            ext.set_cpu_isa(name)
            outs.append((residual_layer_norm(x, y, w, b, 1e-5, "compact"), gelu_bias(x, w)))
    finally:
        ext.set_cpu_isa(before)
    for ln, ge in outs[1:]:
        torch.testing.assert_close(ln, outs[0][0], **LN_TOL)
        torch.testing.assert_close(ge, outs[0][1], **GELU_TOL)


def test_results_do_not_depend_on_the_thread_count():
    x, y = torch.randn(300, 384), torch.randn(300, 384)
    w, b = torch.randn(384), torch.randn(384)
    grad = torch.randn(300, 384)
    before = torch.get_num_threads()

    def run():
        xs = x.clone().requires_grad_()
        ws = w.clone().requires_grad_()
        out = residual_layer_norm(xs, y, ws, b, 1e-5, "compact")
        gx, gw = torch.autograd.grad(out, (xs, ws), grad)
        return out, gx, gw

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(before)
    for a, b_ in zip(one, two):
        assert torch.equal(a, b_)


# ---- the compact FFN and the layer use them and still match the reference -------------------------

@pytest.mark.parametrize("keep_all", [True, False])
def test_compact_ffn_with_fused_gelu_matches_reference(keep_all):
    gen = torch.Generator().manual_seed(0)
    d, n_ch, rows = 24, 37, 29
    x = torch.randn(rows, d, generator=gen).requires_grad_()
    w_in, b_in = torch.randn(n_ch, d, generator=gen) * 0.3, torch.randn(n_ch, generator=gen)
    w_out, b_out = torch.randn(d, n_ch, generator=gen) * 0.3, torch.randn(d, generator=gen)
    gate = torch.rand(n_ch, generator=gen) + 0.5
    if not keep_all:
        gate[::3] = 0
    params = [t.requires_grad_() for t in (w_in, b_in, w_out, b_out, gate)]
    grad = torch.randn(rows, d, generator=gen)
    outs = {}
    for path in ("compact", "reference"):
        y, inter = masked_ffn(x, *params[:4], params[4], "gelu", path, return_intermediate=True)
        loss = (y * grad).sum() + inter.values.square().sum()
        outs[path] = (y, inter.values, *torch.autograd.grad(loss, [x, *params]))
    for got, want in zip(outs["compact"], outs["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compact_ffn_calls_the_fused_gelu_kernels(monkeypatch):
    calls = []
    real = fused_cpu.fused_cpu_kernels

    def spy(*tensors, **kw):
        ext = real(*tensors, **kw)
        calls.append(ext is not None)
        return ext

    monkeypatch.setattr(fused_cpu, "fused_cpu_kernels", spy)
    x = torch.randn(5, 8, requires_grad=True)
    masked_ffn(x, torch.randn(6, 8), torch.randn(6), torch.randn(8, 6), torch.randn(8), torch.ones(6),
               "gelu", "compact").sum().backward()
    assert calls == [True]


@pytest.mark.parametrize("seq, fully_padded_row", [(1, False), (7, True), (16, False)])
def test_compact_layer_with_fused_ops_matches_reference_layer(seq, fully_padded_row):
    """One MaskedLayer (both residual LayerNorms and the erf-GELU FFN fused on "compact") against the
    reference path, forward and every gradient, with padding (a row with no token at all) and S=1."""
    config = TransformerConfig(vocab_size=11, hidden_size=24, head_dim=6, num_heads=[4], intermediate_sizes=[40],
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    layer = MaskedLayer(config, 0)
    batch = 3
    x = torch.randn(batch, seq, 24).requires_grad_()
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, seq // 2 + 1:] = 0
    if fully_padded_row:
        mask[2] = 0
    head_gate = torch.tensor([1.0, 0.0, 0.7, 1.3], requires_grad=True)
    ffn_gate = (torch.rand(40) + 0.5).masked_fill(torch.arange(40) % 4 == 0, 0.0).requires_grad_()
    grad = torch.randn(batch, seq, 24)
    leaves = [x, head_gate, ffn_gate, *layer.parameters()]
    results = {}
    for path in ("compact", "reference"):
        y = layer(x, mask, head_gate, ffn_gate, path=path)[0]
        results[path] = (y, *torch.autograd.grad(y, leaves, grad))
    for got, want in zip(results["compact"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
