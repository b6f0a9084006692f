"""Fused distillation losses (ddk_fast._C) against their plain-PyTorch references.

- float64: torch.autograd.gradcheck on both paths; the fused kernels are templated on the input
  type, so the fused path really computes in float64 there (not a reference stand-in).
- float32: fused vs reference on realistic and odd shapes. Tolerances: values rtol 1e-5; gradients
  rtol 1e-4 with atol 1e-5 * max|reference gradient| (gradients are ~1/N, so an absolute atol alone
  would say nothing).
- bfloat16/float16: both paths compute in float32 from the same rounded inputs, so the fused
  gradients must equal the reference's to within one rounding of the input dtype.
"""
import math

import pytest
import torch

from ddk_fast import _ext
from ddk_fast.ops import attention_distill_loss, hidden_distill_loss, soft_cross_entropy
from ddk_fast.ops.distill_losses import (
    attention_distill_loss_reference,
    hidden_distill_loss_reference,
    soft_cross_entropy_reference,
)

pytestmark = pytest.mark.skipif(_ext.extension() is None, reason=f"extension missing: {_ext.extension_error()}")

HIDDEN = ("hidden", ("mse", "cosine"))
ATTENTION = ("attention", ("kl", "mse"))
CASES = [("hidden", k) for k in HIDDEN[1]] + [("attention", k) for k in ATTENTION[1]]
OPS = {"hidden": hidden_distill_loss, "attention": attention_distill_loss}
REFS = {"hidden": hidden_distill_loss_reference, "attention": attention_distill_loss_reference}


def _ext_mod():
    return _ext.require_extension()


def make_layers(family, layers, batch, seq, width=16, heads=2, dtype=torch.float32, grad=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, seq, width) if family == "hidden" else (batch, heads, seq, seq)
    student = [(scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_(grad) for _ in range(layers)]
    # teacher close to the student for half the layers, unrelated for the others
    teacher = [(s.detach().float() + (0.3 if i % 2 else 2.0) * scale * torch.randn(*shape, generator=g)).to(dtype)
               for i, s in enumerate(student)]
    return student, teacher


def padding_mask(batch, seq, seed=0):
    """Random lengths; row 0 full, the last row a single token (when batch > 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    if batch > 1:
        lengths[-1] = 1
    return (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64)


def run(family, kind, path, student, teacher, weights, mask, scale_loss=1.0):
    """total, per_layer, student grads, weight grad after (scale_loss * total).backward()."""
    for s in student:
        s.grad = None
    weights = weights.detach().clone().requires_grad_(True)
    total, per_layer = OPS[family](student, teacher, weights, mask, kind=kind, path=path, return_per_layer=True)
    (total * scale_loss).backward()
    return total.detach(), per_layer, [s.grad.clone() for s in student], weights.grad.clone()


def assert_grads_close(got, want, rtol=1e-4):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        atol = 1e-5 * float(b.abs().max()) + 1e-30
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def compare_paths(family, kind, student, teacher, weights, mask, scale_loss=1.0):
    fused = run(family, kind, "fused", student, teacher, weights, mask, scale_loss)
    ref = run(family, kind, "reference", student, teacher, weights, mask, scale_loss)
    torch.testing.assert_close(fused[0], ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-7)
    assert_grads_close(fused[2], ref[2])
    torch.testing.assert_close(fused[3], ref[3], rtol=1e-5, atol=1e-7)
    return fused, ref


# ---- float64 gradcheck ----------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """gradcheck runs hundreds of tiny forwards; on a busy machine waking a second OpenMP thread for
    each tiny ATen op (log_softmax always opens a parallel region) costs ~15 ms, so use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("family,kind", CASES)
def test_gradcheck_float64(family, kind, path, one_thread):
    student, teacher = make_layers(family, layers=2, batch=3, seq=4, width=5, heads=2, dtype=torch.float64)
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    mask = padding_mask(3, 4)

    def fn(w, *s):
        return OPS[family](list(s), teacher, w, mask, kind=kind, path=path)

    assert torch.autograd.gradcheck(fn, (weights, *student), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_gradcheck_soft_cross_entropy_float64(path, one_thread):
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 7, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: soft_cross_entropy(s, teacher, 2.5, path=path), (student,))


@pytest.mark.parametrize("family,kind", CASES)
def test_float64_fused_equals_reference_exactly_enough(family, kind):
    """In float64 the two paths agree to ~1e-12: same math, no approximate exp."""
    student, teacher = make_layers(family, layers=3, batch=2, seq=6, width=8, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    mask = padding_mask(2, 6)
    fused = run(family, kind, "fused", student, teacher, weights, mask)
    ref = run(family, kind, "reference", student, teacher, weights, mask)
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-12, atol=1e-14)
    for a, b in zip(fused[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# ---- float32: fused vs reference ------------------------------------------------------------------

REALISTIC = {"hidden": dict(layers=3, batch=8, seq=128, width=384), "attention": dict(layers=2, batch=4, seq=128, heads=12)}


@pytest.mark.parametrize("family,kind", CASES)
def test_realistic_shape_with_padding(family, kind):
    cfg = REALISTIC[family]
    student, teacher = make_layers(family, **cfg)
    weights = torch.linspace(0.5, 1.5, cfg["layers"])
    compare_paths(family, kind, student, teacher, weights, padding_mask(cfg["batch"], cfg["seq"]))


@pytest.mark.parametrize("seq", [1, 2, 17, 127])
@pytest.mark.parametrize("family,kind", CASES)
def test_odd_sequence_lengths(family, kind, seq):
    student, teacher = make_layers(family, layers=2, batch=3, seq=seq, width=33, heads=3)
    compare_paths(family, kind, student, teacher, torch.tensor([0.3, 1.7]), padding_mask(3, seq))


@pytest.mark.parametrize("family,kind", CASES)
def test_single_layer_no_mask_and_odd_width(family, kind):
    student, teacher = make_layers(family, layers=1, batch=2, seq=9, width=7, heads=1)
    compare_paths(family, kind, student, teacher, torch.tensor([1.0]), None)


@pytest.mark.parametrize("family,kind", CASES)
def test_zero_weight_layer_is_finite_and_gets_no_gradient(family, kind):
    student, teacher = make_layers(family, layers=3, batch=2, seq=8)
    fused, _ = compare_paths(family, kind, student, teacher, torch.tensor([1.0, 0.0, 0.5]), padding_mask(2, 8))
    total, per_layer, grads, weight_grad = fused
    assert torch.isfinite(per_layer).all() and per_layer[1] > 0
    assert torch.count_nonzero(grads[1]) == 0
    assert torch.count_nonzero(grads[0]) > 0
    torch.testing.assert_close(weight_grad, per_layer)  # d total / d w = per-layer values


@pytest.mark.parametrize("family,kind", CASES)
def test_padding_positions_are_ignored_even_when_nan(family, kind):
    student, teacher = make_layers(family, layers=2, batch=2, seq=6)
    mask = padding_mask(2, 6)
    clean = run(family, kind, "fused", student, teacher, torch.ones(2), mask)
    pad_b, pad_i = (mask == 0).nonzero()[0].tolist()
    with torch.no_grad():
        for t in teacher:
            if family == "hidden":
                t[pad_b, pad_i] = float("nan")
            else:
                t[pad_b, :, pad_i, :] = float("nan")  # a padded query row
                t[pad_b, :, :, pad_i] = float("nan")  # a padded key column
    for path in ("fused", "reference"):
        dirty = run(family, kind, path, student, teacher, torch.ones(2), mask)
        torch.testing.assert_close(dirty[1], clean[1], rtol=1e-5, atol=1e-7)
        assert all(torch.isfinite(g).all() for g in dirty[2])


@pytest.mark.parametrize("family,kind", CASES)
def test_no_valid_token_gives_zero(family, kind):
    student, teacher = make_layers(family, layers=2, batch=2, seq=5)
    mask = torch.zeros(2, 5, dtype=torch.int64)
    for path in ("fused", "reference"):
        total, per_layer, grads, _ = run(family, kind, path, student, teacher, torch.ones(2), mask)
        assert float(total) == 0.0 and torch.count_nonzero(per_layer) == 0
        assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("family,kind", CASES)
def test_loss_not_last_node(family, kind):
    """(loss * 2).backward() and loss inside a larger graph scale the saved gradient correctly."""
    student, teacher = make_layers(family, layers=2, batch=2, seq=7)
    weights = torch.tensor([0.4, 1.1])
    mask = padding_mask(2, 7)
    fused, ref = compare_paths(family, kind, student, teacher, weights, mask, scale_loss=2.0)
    once = run(family, kind, "fused", student, teacher, weights, mask)
    assert_grads_close(fused[2], [2 * g for g in once[2]])
    # a tensor-valued factor that itself requires grad
    for s in student:
        s.grad = None
    factor = torch.tensor(-3.0, requires_grad=True)
    loss = OPS[family](student, teacher, weights, mask, kind=kind, path="fused")
    (loss * factor + loss.detach() ** 2).backward()
    assert_grads_close([s.grad for s in student], [-3 * g for g in once[2]])
    torch.testing.assert_close(factor.grad, loss.detach())


@pytest.mark.parametrize("family,kind", CASES)
def test_retain_graph_backward_twice_accumulates(family, kind):
    student, teacher = make_layers(family, layers=2, batch=2, seq=5)
    once = run(family, kind, "fused", student, teacher, torch.ones(2), None)
    for s in student:
        s.grad = None
    loss = OPS[family](student, teacher, torch.ones(2), None, kind=kind, path="fused")
    loss.backward(retain_graph=True)
    loss.backward()
    assert_grads_close([s.grad for s in student], [2 * g for g in once[2]])


@pytest.mark.parametrize("family,kind", CASES)
def test_stacked_and_list_inputs_agree(family, kind):
    student, teacher = make_layers(family, layers=3, batch=2, seq=6, grad=False)
    weights = torch.tensor([1.0, 2.0, 0.5])
    mask = padding_mask(2, 6)
    stacked = torch.stack(student).requires_grad_(True)
    total_s, per_s = OPS[family](stacked, torch.stack(teacher), weights, mask, kind=kind, path="fused",
                                 return_per_layer=True)
    total_s.backward()
    listed = [s.clone().requires_grad_(True) for s in student]
    total_l = OPS[family](listed, teacher, weights, mask, kind=kind, path="fused")  # teacher as a list
    total_l.backward()
    torch.testing.assert_close(total_s, total_l)
    torch.testing.assert_close(stacked.grad, torch.stack([s.grad for s in listed]))
    ref = run(family, kind, "reference", [s.clone().requires_grad_(True) for s in student], teacher, weights, mask)
    torch.testing.assert_close(per_s, ref[1], rtol=1e-5, atol=1e-7)
    assert not per_s.requires_grad


@pytest.mark.parametrize("family,kind", CASES)
def test_non_contiguous_inputs(family, kind):
    student, teacher = make_layers(family, layers=2, batch=3, seq=6, width=10, grad=False)
    # transposed storage, same logical values
    student_nc = [s.transpose(0, -1).contiguous().transpose(0, -1).requires_grad_(True) for s in student]
    assert not student_nc[0].is_contiguous()
    fused = run(family, kind, "fused", student_nc, teacher, torch.ones(2), padding_mask(3, 6))
    ref = run(family, kind, "reference", [s.clone().requires_grad_(True) for s in student], teacher,
              torch.ones(2), padding_mask(3, 6))
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-7)
    assert_grads_close(fused[2], ref[2])


@pytest.mark.parametrize("family,kind", CASES)
def test_every_cpu_instruction_set_variant(family, kind):
    """The AVX-512, AVX2 and baseline builds of the kernels give the same results."""
    ext = _ext_mod()
    best = ext.cpu_isa()
    variants = {"avx512": ["avx512", "avx2", "base"], "avx2": ["avx2", "base"], "base": ["base"]}[best]
    student, teacher = make_layers(family, layers=2, batch=3, seq=19, width=37, heads=2)
    mask = padding_mask(3, 19)
    ref = run(family, kind, "reference", student, teacher, torch.tensor([0.5, 1.5]), mask)
    try:
        for isa in variants:
            assert ext.set_cpu_isa(isa) == isa
            fused = run(family, kind, "fused", student, teacher, torch.tensor([0.5, 1.5]), mask)
            torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-7, msg=lambda m: f"{isa}: {m}")
            assert_grads_close(fused[2], ref[2])
    finally:
        ext.set_cpu_isa(best)


def test_weights_only_gradient_and_no_grad_mode():
    student, teacher = make_layers("attention", layers=2, batch=2, seq=6, grad=False)
    weights = torch.tensor([0.5, 2.0], requires_grad=True)
    total, per_layer = attention_distill_loss(student, teacher, weights, kind="kl", path="fused", return_per_layer=True)
    total.backward()
    torch.testing.assert_close(weights.grad, per_layer)
    with torch.no_grad():
        again = attention_distill_loss(student, teacher, weights, kind="kl", path="fused")
    torch.testing.assert_close(again, total.detach())


def test_learned_layer_weights_get_gradient_through_a_softmax():
    """Adaptive weighting: weights computed from parameters; gradient reaches the parameters."""
    student, teacher = make_layers("hidden", layers=3, batch=2, seq=5)
    logits = torch.tensor([0.1, -0.2, 0.3], requires_grad=True)
    grads = {}
    for path in ("fused", "reference"):
        logits.grad = None
        hidden_distill_loss(student, teacher, torch.softmax(logits, 0), path=path).backward()
        grads[path] = logits.grad.clone()
    torch.testing.assert_close(grads["fused"], grads["reference"], rtol=1e-5, atol=1e-7)


# ---- low precision --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family,kind", CASES)
def test_low_precision_inputs(family, kind, dtype):
    student, teacher = make_layers(family, layers=2, batch=3, seq=12, width=24, heads=2, dtype=dtype)
    mask = padding_mask(3, 12)
    fused = run(family, kind, "fused", student, teacher, torch.tensor([1.0, 0.5]), mask)
    ref = run(family, kind, "reference", student, teacher, torch.tensor([1.0, 0.5]), mask)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == torch.float32
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-7)
    eps = torch.finfo(dtype).eps
    for a, b in zip(fused[2], ref[2]):
        assert a.dtype == dtype
        # both are float32 results rounded once to dtype: at most one rounding step apart
        torch.testing.assert_close(a.float(), b.float(), rtol=2 * eps, atol=1e-6 * float(b.float().abs().max()))


def test_teacher_of_another_dtype_is_cast_to_the_student_dtype():
    student, teacher = make_layers("hidden", layers=2, batch=2, seq=4, dtype=torch.bfloat16)
    teacher32 = [t.float() for t in teacher]
    a = hidden_distill_loss(student, teacher32, torch.ones(2), path="fused")
    b = hidden_distill_loss(student, teacher, torch.ones(2), path="fused")
    torch.testing.assert_close(a, b)


# ---- soft cross-entropy ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,temperature", [((32, 2), 2.0), ((5, 3), 1.0), ((7, 1000), 4.0), ((1, 1), 1.0)])
def test_soft_cross_entropy_fused_vs_reference(shape, temperature):
    g = torch.Generator().manual_seed(2)
    student = torch.randn(*shape, generator=g).mul(3).requires_grad_(True)
    teacher = torch.randn(*shape, generator=g).mul(3)
    out = {}
    for path in ("fused", "reference"):
        student.grad = None
        loss = soft_cross_entropy(student, teacher, temperature, path=path)
        (loss * 3).backward()
        out[path] = (loss.detach(), student.grad.clone())
    torch.testing.assert_close(out["fused"][0], out["reference"][0], rtol=1e-5, atol=1e-6)
    assert_grads_close([out["fused"][1]], [out["reference"][1]])


def test_soft_cross_entropy_bf16():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(6, 9, generator=g).bfloat16().requires_grad_(True)
    teacher = torch.randn(6, 9, generator=g).bfloat16()
    loss = soft_cross_entropy(student, teacher, 2.0, path="fused")
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16
    ref = soft_cross_entropy_reference(student.detach().float(), teacher.float(), 2.0)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


# ---- gradient buffer pool -------------------------------------------------------------------------

def test_gradient_buffers_are_reused_and_never_shared_while_alive():
    ext = _ext_mod()
    student, teacher = make_layers("hidden", layers=2, batch=32, seq=64, width=256)  # 4 MiB of gradients

    def grads_of(weight):
        for s in student:
            s.grad = None
        hidden_distill_loss(student, teacher, torch.full((2,), weight), path="fused").backward()
        out = [s.grad for s in student]
        for s in student:
            s.grad = None
        return out

    first = grads_of(1.0)
    hits = ext.cpu_pool_stats()["hits"]
    second = grads_of(3.0)
    # `first` is alive: its buffer must not have been handed out again
    assert first[0].data_ptr() != second[0].data_ptr()
    assert_grads_close(second, [3 * g for g in first])
    del first
    third = grads_of(2.0)
    assert ext.cpu_pool_stats()["hits"] > hits
    assert_grads_close(third, [g * (2.0 / 3.0) for g in second])


# ---- errors ---------------------------------------------------------------------------------------

def test_error_messages_name_the_argument():
    student, teacher = make_layers("hidden", layers=2, batch=2, seq=4, width=8)
    w = torch.ones(2)
    with pytest.raises(ValueError, match=r"student\[1\] must be \[B, S, d\], got shape \(2, 4\)"):
        hidden_distill_loss([student[0], student[1][:, :, 0]], teacher, w)
    with pytest.raises(ValueError, match="student has 2 layers but teacher has 1"):
        hidden_distill_loss(student, teacher[:1], w)
    with pytest.raises(ValueError, match=r"layer_weights must have shape \[2\].*got \[3\]"):
        hidden_distill_loss(student, teacher, torch.ones(3))
    with pytest.raises(ValueError, match=r"token_mask must have shape \[B, S\] = \[2, 4\], got \[2, 5\]"):
        hidden_distill_loss(student, teacher, w, torch.ones(2, 5))
    with pytest.raises(ValueError, match="hidden widths differ.*project the student"):
        hidden_distill_loss(student, [torch.randn(2, 4, 12)] * 2, w)
    with pytest.raises(ValueError, match=r"teacher\[0\] has shape \(2, 3, 8\) but student\[0\] has \(2, 4, 8\)"):
        hidden_distill_loss(student, [torch.randn(2, 3, 8)] * 2, w)
    with pytest.raises(ValueError, match="kind must be one of"):
        hidden_distill_loss(student, teacher, w, kind="kl")
    with pytest.raises(ValueError, match=r"teacher\[0\] requires grad.*detach"):
        hidden_distill_loss(student, [t.clone().requires_grad_(True) for t in teacher], w)
    with pytest.raises(ValueError, match="path must be one of"):
        hidden_distill_loss(student, teacher, w, path="fast")
    with pytest.raises(ValueError, match="at least one layer"):
        hidden_distill_loss([], [], torch.ones(0))
    with pytest.raises(ValueError, match=r"stacked \[L, B, S, d\]"):
        hidden_distill_loss(torch.randn(2, 4, 8), teacher, w)

    a_s, a_t = make_layers("attention", layers=2, batch=2, seq=4, heads=2)
    with pytest.raises(ValueError, match="head counts differ"):
        attention_distill_loss(a_s, [torch.randn(2, 3, 4, 4)] * 2, w)
    with pytest.raises(ValueError, match=r"student\[0\] must be \[B, A, S, S\]"):
        attention_distill_loss([torch.randn(2, 2, 4)] * 2, a_t, w)
    with pytest.raises(ValueError, match=r"attention scores \[B, A, S, S\]"):
        attention_distill_loss([torch.randn(2, 2, 4, 5)] * 2, [torch.randn(2, 2, 4, 5)] * 2, w)

    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_cross_entropy(logits, logits, 0.0)
    with pytest.raises(ValueError, match=r"teacher_logits has shape \(3, 5\)"):
        soft_cross_entropy(logits, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"student_logits must be \[B, C\]"):
        soft_cross_entropy(torch.randn(3), torch.randn(3))


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("family,kind", CASES)
def test_non_finite_inputs_are_named(family, kind, path):
    student, teacher = make_layers(family, layers=3, batch=2, seq=4)
    w = torch.ones(3)
    bad = [t.clone() for t in teacher]
    bad[2].view(-1)[0] = float("nan")  # batch 0, token 0: always valid
    with pytest.raises(ValueError, match=r"NaN/inf in teacher\[2\]"):
        OPS[family](student, bad, w, kind=kind, path=path)
    bad_s = [s.detach().clone() for s in student]
    bad_s[1].view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/inf in student\[1\]"):
        OPS[family](bad_s, teacher, w, kind=kind, path=path)
    with pytest.raises(ValueError, match="layer_weights contains NaN/inf"):
        OPS[family](student, teacher, torch.tensor([1.0, float("nan"), 1.0]), kind=kind, path=path)
    # opting out returns the non-finite value instead
    assert not math.isfinite(float(OPS[family](student, bad, w, kind=kind, path=path, check_finite=False).detach()))


def test_soft_cross_entropy_non_finite_is_named():
    logits = torch.randn(3, 4)
    bad = logits.clone()
    bad[1, 2] = float("nan")
    for path in ("fused", "reference"):
        with pytest.raises(ValueError, match="NaN/inf in teacher_logits"):
            soft_cross_entropy(logits, bad, path=path)


def test_extension_checks_shapes_itself():
    """The _C entry point validates too (it is callable directly)."""
    ext = _ext_mod()
    s = [torch.randn(2, 3, 4)]
    with pytest.raises(RuntimeError, match="teacher has 2 layers but student has 1"):
        ext.layer_loss(s, s * 2, torch.ones(1), None, "hidden_mse", False)
    with pytest.raises(RuntimeError, match="op must be one of"):
        ext.layer_loss(s, s, torch.ones(1), None, "hidden_l1", False)
    with pytest.raises(RuntimeError, match="token_mask must have shape"):
        ext.layer_loss(s, s, torch.ones(1), torch.ones(2, 2), "hidden_mse", False)


# ---- CUDA (runs where a GPU is present) -----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.has_cuda_kernels(), reason="needs CUDA kernels and a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("family,kind", CASES)
def test_cuda_matches_cpu_reference(family, kind, dtype):
    student, teacher = make_layers(family, layers=3, batch=3, seq=37, width=70, heads=3, dtype=dtype)
    mask = padding_mask(3, 37)
    weights = torch.tensor([1.0, 0.0, 0.5])
    ref = run(family, kind, "reference", student, teacher, weights, mask, scale_loss=2.0)
    cuda_student = [s.detach().cuda().requires_grad_(True) for s in student]
    got = run(family, kind, "fused", cuda_student, [t.cuda() for t in teacher], weights.cuda(), mask.cuda(), 2.0)
    torch.testing.assert_close(got[1].cpu(), ref[1], rtol=1e-4, atol=1e-6)
    for a, b in zip(got[2], ref[2]):
        tol = 2 * torch.finfo(dtype).eps if dtype != torch.float32 else 1e-4
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=1e-5 * float(b.float().abs().max()))
