"""gated_attention: every path against the plain reference (and the reference against a by-hand formula),
forward and backward, float64 exactly and float32/16 within the flash-attention tolerance rule.

Shapes stay tiny: the Triton path runs in the CPU interpreter here (~1 ms per program instance).
"""
import math

import pytest
import torch

from ddk_fast.kernels import gated_attention as kern
from ddk_fast.ops._dispatch import resolve_path
from ddk_fast.ops.gated_attention import gated_attention, gated_attention_reference

FAST_PATHS = ("compact", "triton")
ALL_PATHS = ("reference",) + FAST_PATHS


def make_qkv(B, H, S, D, dtype=torch.float64, device="cpu"):
    return [torch.randn(B, H, S, D, dtype=dtype, device=device) for _ in range(3)]


def run(path, q, k, v, gate, mask=None, causal=False, dout=None):
    """Output and gradients (q, k, v, gate) of one path for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, gate)]
    out = gated_attention(*leaves, attention_mask=mask, causal=causal, path=path)
    if dout is None:
        dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    return (out.detach(),) + grads


def padding_mask(B, S, lengths, left=False):
    mask = torch.zeros(B, S, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, S - n:] = 1
        else:
            mask[b, :n] = 1
    return mask


# (S, D, gate, mask lengths or None, left padding, causal)
CASES = {
    "odd-S-one-pruned": (19, 32, [0.5, 0.0, 2.0], None, False, False),
    "D64-non01-gates-padding": (7, 64, [1.3, -0.7, 0.25], [7, 3], False, False),
    "one-token-row": (19, 64, [0.0, 1.5, 0.0], [19, 1], False, False),
    "causal-left-padding": (17, 32, [0.9, 1.1, 0.0], [17, 11], True, True),
    "causal-no-mask-S-equals-block": (16, 32, [1.0, 1.0, 1.0], None, False, True),
}


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_float64(path, case):
    S, D, gate, lengths, left, causal = CASES[case]
    B, H = 2, 3
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor(gate, dtype=torch.float64)
    mask = None if lengths is None else padding_mask(B, S, lengths, left)
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    ref = run("reference", q, k, v, gate, mask, causal, dout)
    got = run(path, q, k, v, gate, mask, causal, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv", "dgate"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=lambda m: f"{path} {case} {name}: {m}")


def test_reference_matches_by_hand_formula():
    """The reference itself, against softmax over an explicit slice of valid keys, head by head."""
    B, H, S, D = 2, 3, 9, 8
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.3, 0.0, -1.2], dtype=torch.float64)
    lengths = [9, 4]
    out = gated_attention_reference(q, k, v, gate, padding_mask(B, S, lengths))
    for b in range(B):
        n = lengths[b]
        for h in range(H):
            probs = torch.softmax(q[b, h] @ k[b, h, :n].T / math.sqrt(D), -1)
            expect = gate[h] * probs @ v[b, h, :n]  # padding query rows included: softmax over valid keys
            torch.testing.assert_close(out[b, h], expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ("reference", "compact"))
def test_gradcheck(path):
    B, H, S, D = 2, 3, 4, 4
    q, k, v = [t.requires_grad_(True) for t in make_qkv(B, H, S, D)]
    mask = padding_mask(B, S, [4, 2])
    gate = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64, requires_grad=True)
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda *a: gated_attention(*a, attention_mask=mask, causal=causal, path=path), (q, k, v, gate),
            fast_mode=True)
    # a zero gate is a switch, not a differentiable point: check q/k/v with the gate held fixed
    off = torch.tensor([0.7, 0.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b, c: gated_attention(a, b, c, off, attention_mask=mask, path=path), (q, k, v), fast_mode=True)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_zero_gate_switches_head_off(path):
    B, H, S, D = 2, 3, 11, 32
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.0, 1.5, 0.7], dtype=torch.float64)
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    out, dq, dk, dv, dgate = run(path, q, k, v, gate, padding_mask(B, S, [11, 6]), False, dout)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    for g in (dq, dk, dv):
        assert torch.equal(g[:, 0], torch.zeros_like(g[:, 0]))
        assert g[:, 1:].abs().sum() > 0
    assert dgate[0].item() == 0.0
    # non-zero gates get the true gradient: the ungated head output against dout
    ungated = gated_attention_reference(q, k, v, torch.ones(H, dtype=torch.float64), padding_mask(B, S, [11, 6]))
    expect = (ungated * dout).sum(dim=(0, 2, 3))
    torch.testing.assert_close(dgate[1:], expect[1:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_pruned_heads_are_never_read(path):
    """NaN in a pruned head's q/k/v cannot reach anything: that head is not computed at all."""
    B, H, S, D = 2, 3, 13, 32
    q, k, v = make_qkv(B, H, S, D)
    for t in (q, k, v):
        t[:, 1] = float("nan")
    gate = torch.tensor([0.8, 0.0, 1.2], dtype=torch.float64)
    out, dq, dk, dv, dgate = run(path, q, k, v, gate)
    for t in (out, dq, dk, dv, dgate):
        assert torch.isfinite(t).all()
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    ref = gated_attention_reference(q[:, [0, 2]], k[:, [0, 2]], v[:, [0, 2]], gate[[0, 2]])
    torch.testing.assert_close(out[:, [0, 2]], ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_all_heads_off(path):
    B, H, S, D = 2, 3, 6, 32
    q, k, v = make_qkv(B, H, S, D)
    out, dq, dk, dv, dgate = run(path, q, k, v, torch.zeros(H, dtype=torch.float64))
    for t in (out, dq, dk, dv, dgate):
        assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("causal", (False, True))
def test_rows_without_keys_are_zero_not_nan(path, causal):
    """A batch row that is all padding (and, causal, query rows before the first real key) give zeros."""
    B, H, S, D = 2, 3, 10, 32
    q, k, v = make_qkv(B, H, S, D)
    mask = padding_mask(B, S, [0, 6], left=True)  # batch 0: no token at all; batch 1: 4 left pads
    gate = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    out, dq, dk, dv, dgate = run(path, q, k, v, gate, mask, causal)
    for t in (out, dq, dk, dv, dgate):
        assert torch.isfinite(t).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(dq[0], torch.zeros_like(dq[0]))
    if causal:
        assert torch.equal(out[1, :, :4], torch.zeros_like(out[1, :, :4]))
        assert out[1, :, 4:].abs().min() >= 0 and out[1, :, 4:].abs().sum() > 0
    else:
        assert out[1].abs().sum(-1).min() > 0  # padding query rows still attend to the 6 real keys


def _tolerance_rule(got, ref64, ref_lowp, atol):
    """flash-attention's rule: our error <= 2x the error plain PyTorch makes in the same precision, plus
    ``atol`` relative to the magnitude (the gate gradient is one sum over B*S*D rounded products, whose
    plain-PyTorch error can be small by luck)."""
    ours = (got.double() - ref64).abs().max().item()
    plain = (ref_lowp.double() - ref64).abs().max().item()
    slack = atol * max(1.0, ref64.abs().max().item())
    assert ours <= 2 * plain + slack, f"error {ours:.3g} vs plain-PyTorch error {plain:.3g} (+{slack:.3g})"


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_low_precision_tolerance(path, dtype):
    B, H, S, D = 2, 3, 19, 64
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.6, 0.0, 1.7], dtype=torch.float64)
    mask = padding_mask(B, S, [19, 9])
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    low = [t.to(dtype) for t in (q, k, v)]
    ref64 = run("reference", q, k, v, gate, mask, True, dout)
    # the reference evaluated in low precision, on the same rounded inputs
    ref_low = run("reference", *low, gate.float(), mask, True, dout.to(dtype))
    got = run(path, *low, gate.float(), mask, True, dout.to(dtype))
    atol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for a, r64, rl in zip(got, ref64, ref_low):
        assert a.dtype == rl.dtype
        _tolerance_rule(a, r64, rl, atol)


def test_float32_stated_tolerance():
    """float32 paths agree with the float64 reference to rtol 1e-5 / atol 1e-5 at a realistic-ish shape."""
    B, H, S, D = 2, 3, 33, 32
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.6, 0.0, 1.7], dtype=torch.float64)
    mask = padding_mask(B, S, [33, 20])
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    ref = run("reference", q, k, v, gate, mask, False, dout)
    for path in ALL_PATHS:
        got = run(path, *(t.float() for t in (q, k, v, gate)), mask, False, dout.float())
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("D", (16, 48, 128))
def test_other_head_sizes_triton(D):
    """Powers of two up to 128, and a non-power of two (the head dim is masked to BLOCK_D)."""
    B, H, S = 1, 2, 9
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([1.1, 0.4], dtype=torch.float64)
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    ref = run("reference", q, k, v, gate, None, True, dout)
    got = run("triton", q, k, v, gate, None, True, dout)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("block_m,block_n", ((16, 32), (32, 16)))
def test_triton_unequal_blocks_causal(block_m, block_n):
    """Causal loop bounds hold when query and key blocks differ; S=37 leaves partial blocks."""
    B, H, S, D = 1, 2, 37, 16
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.0, 1.3], dtype=torch.float64)
    head_index = torch.tensor([1])
    mask = padding_mask(B, S, [30], left=True)
    key_valid = mask.to(torch.int32)
    out = torch.zeros_like(q)
    lse = kern.gated_attention_forward(q, k, v, gate, head_index, key_valid, True, out, block_m=block_m,
                                       block_n=block_n)
    dout = torch.randn_like(q)
    dq, dk, dv = (torch.zeros_like(q) for _ in range(3))
    delta = kern.gated_attention_backward(q, k, v, gate, head_index, key_valid, True, out, lse, dout, dq, dk, dv,
                                          block_m=block_m, block_n=block_n)
    ref = run("reference", q, k, v, gate, mask, True, dout)
    for a, b in zip((out, dq, dk, dv), ref[:4]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(delta.sum() / gate[1], ref[4][1], rtol=1e-10, atol=1e-11)


def test_triton_strided_inputs_and_layout():
    """q/k/v as views of a [B, S, H*D] projection (no copy); the output is stored as [B, S, H, D]."""
    B, H, S, D = 2, 3, 12, 32
    proj = [torch.randn(B, S, H * D, dtype=torch.float64) for _ in range(3)]
    q, k, v = (p.view(B, S, H, D).transpose(1, 2) for p in proj)
    gate = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    dout = torch.randn(B, H, S, D, dtype=torch.float64)
    got = run("triton", q, k, v, gate, None, False, dout)
    ref = run("reference", q.contiguous(), k.contiguous(), v.contiguous(), gate, None, False, dout)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    out = gated_attention(q, k, v, gate, path="triton")
    assert out.transpose(1, 2).is_contiguous()


def test_auto_is_compact_on_cpu_and_bad_arguments_are_named():
    assert resolve_path("gated_attention", "engine", "auto", torch.device("cpu")) == "compact"
    q, k, v = make_qkv(1, 2, 3, 4)
    with pytest.raises(ValueError, match="head_gate"):
        gated_attention(q, k, v, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="attention_mask"):
        gated_attention(q, k, v, torch.ones(2, dtype=torch.float64), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="k must have"):
        gated_attention(q, k[:, :1], v, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="path"):
        gated_attention(q, k, v, torch.ones(2, dtype=torch.float64), path="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 tl.dot is wrong in the interpreter)")
@pytest.mark.parametrize("D", (32, 64, 128))
def test_triton_bf16_cuda(D):
    B, H, S = 4, 6, 200
    q, k, v = make_qkv(B, H, S, D, device="cuda")
    gate = torch.tensor([0.5, 0.0, 1.0, 2.0, 0.0, 0.3], dtype=torch.float64, device="cuda")
    mask = padding_mask(B, S, [200, 150, 1, 77]).cuda()
    dout = torch.randn(B, H, S, D, dtype=torch.float64, device="cuda")
    for causal in (False, True):
        ref64 = run("reference", q, k, v, gate, mask, causal, dout)
        low = [t.bfloat16() for t in (q, k, v)]
        ref_low = run("reference", *low, gate.float(), mask, causal, dout.bfloat16())
        got = run("triton", *low, gate.float(), mask, causal, dout.bfloat16())
        for a, r64, rl in zip(got, ref64, ref_low):
            _tolerance_rule(a, r64, rl, 1e-2)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_broadcast_upstream_gradient(path):
    """``out.sum().backward()`` hands backward an expanded (stride-0) gradient; it must read correctly."""
    B, H, S, D = 1, 2, 7, 16
    q, k, v = make_qkv(B, H, S, D)
    gate = torch.tensor([0.0, 0.8], dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, gate)]
    gated_attention(*leaves, causal=True, path=path).sum().backward()
    ref = run("reference", q, k, v, gate, None, True, torch.ones(B, H, S, D, dtype=torch.float64))
    for leaf, r in zip(leaves, ref[1:]):
        torch.testing.assert_close(leaf.grad, r, rtol=1e-10, atol=1e-11)
