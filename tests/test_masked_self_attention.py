"""masked_self_attention against an independent per-head formula: output, returned q/k/v/scores/probs,
and gradients to x, every weight and bias, and the head gate."""
import importlib
import math

import pytest
import torch

from ddk_fast.ops.gated_attention import AttentionOutput, masked_self_attention

# the module itself (ddk_fast.ops binds the op function under the same name)
ga = importlib.import_module("ddk_fast.ops.gated_attention")
WEIGHT_NAMES = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")


def make_block(B, S, d, H, D, dtype=torch.float64):
    torch.manual_seed(1)
    x = torch.randn(B, S, d, dtype=dtype)
    inner = H * D
    params = {
        "wq": torch.randn(inner, d, dtype=dtype) / math.sqrt(d), "bq": torch.randn(inner, dtype=dtype) * 0.1,
        "wk": torch.randn(inner, d, dtype=dtype) / math.sqrt(d), "bk": torch.randn(inner, dtype=dtype) * 0.1,
        "wv": torch.randn(inner, d, dtype=dtype) / math.sqrt(d), "bv": torch.randn(inner, dtype=dtype) * 0.1,
        "wo": torch.randn(d, inner, dtype=dtype) / math.sqrt(inner), "bo": torch.randn(d, dtype=dtype) * 0.1,
    }
    return x, params


def formula(x, p, gate, H, mask=None, causal=False):
    """Full projections, a Python loop over heads with an additive mask bias, gate, output projection.
    A head whose gate is 0 is skipped (so it contributes nothing and receives no gradient)."""
    B, S, _ = x.shape
    D = p["wq"].shape[0] // H
    q = x @ p["wq"].T + p["bq"]
    k = x @ p["wk"].T + p["bk"]
    v = x @ p["wv"].T + p["bv"]
    bias = torch.zeros(B, S, S, dtype=x.dtype)
    if mask is not None:
        bias = bias + (1.0 - mask[:, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
    if causal:
        bias = bias.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), torch.finfo(x.dtype).min)
    out = p["bo"].expand(B, S, -1)
    extras = {name: torch.zeros(B, H, S, n, dtype=x.dtype) for name, n in
              (("q", D), ("k", D), ("v", D), ("scores", S), ("probs", S))}
    parts = {name: [] for name in extras}
    for h in range(H):
        cols = slice(h * D, (h + 1) * D)
        qh, kh, vh = q[..., cols], k[..., cols], v[..., cols]
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(D)
        probs = torch.softmax(scores + bias, dim=-1)
        on = bool(gate[h] != 0)
        for name, t in (("q", qh), ("k", kh), ("v", vh), ("scores", scores), ("probs", probs)):
            parts[name].append(t if on else torch.zeros_like(t))
        if on:
            out = out + (gate[h] * probs @ vh) @ p["wo"][:, cols].T
    for name in extras:
        extras[name] = torch.stack(parts[name], dim=1)
    return out, extras


def loss_of(out, extras, probes):
    """A loss that reaches every returned tensor, so their gradients are checked too."""
    total = (out * probes["out"]).sum()
    for name in ("q", "k", "v", "scores", "probs"):
        total = total + (extras[name] * probes[name]).sum()
    return total


def grads_of(fn, x, params, gate, probes):
    leaves = {"x": x, **params, "gate": gate}
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in leaves.items()}
    out, extras = fn(leaves)
    names = list(leaves)
    g = torch.autograd.grad(loss_of(out, extras, probes), [leaves[n] for n in names], allow_unused=True)
    grads = {n: (gi if gi is not None else torch.zeros_like(leaves[n])) for n, gi in zip(names, g)}
    return out.detach(), {n: t.detach() for n, t in extras.items()}, grads


def run_block(path, mask, causal, H):
    def fn(l):
        res = masked_self_attention(l["x"], *(l[n] for n in WEIGHT_NAMES), l["gate"], H, attention_mask=mask,
                                    causal=causal, path=path, return_qkv=True, return_scores=True,
                                    return_probs=True)
        assert isinstance(res, AttentionOutput)
        return res.out, {n: getattr(res, n) for n in ("q", "k", "v", "scores", "probs")}
    return fn


def run_formula(mask, causal, H):
    def fn(l):
        return formula(l["x"], {n: l[n] for n in WEIGHT_NAMES}, l["gate"], H, mask, causal)
    return fn


def make_probes(out_shape, B, H, S, D, dtype):
    shapes = {"out": out_shape, "q": (B, H, S, D), "k": (B, H, S, D), "v": (B, H, S, D),
              "scores": (B, H, S, S), "probs": (B, H, S, S)}
    return {n: torch.randn(s, dtype=dtype) for n, s in shapes.items()}


# (B, S, d, H, D, gate, mask lengths, causal)
CASES = {
    "one-pruned-padding": (2, 7, 40, 3, 16, [0.5, 0.0, 2.0], [7, 3], False),
    "uneven-heads-D8-causal": (2, 9, 24, 5, 8, [1.0, -0.4, 0.0, 1.3, 0.0], [9, 6], True),
    "one-head-kept": (2, 6, 32, 4, 16, [0.0, 0.0, 0.7, 0.0], None, False),
    "all-on": (1, 5, 16, 2, 32, [1.0, 1.0], [4], False),
}


def _compare(path, case, dtype, rtol, atol):
    B, S, d, H, D, gate, lengths, causal = CASES[case]
    x, params = make_block(B, S, d, H, D, dtype=torch.float64)
    gate = torch.tensor(gate, dtype=torch.float64)
    mask = None
    if lengths is not None:
        mask = torch.zeros(B, S, dtype=torch.long)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1
    probes = make_probes((B, S, d), B, H, S, D, torch.float64)
    ref_out, ref_extras, ref_grads = grads_of(run_formula(mask, causal, H), x, params, gate, probes)
    low = {n: t.to(dtype) for n, t in probes.items()}
    out, extras, grads = grads_of(run_block(path, mask, causal, H), x.to(dtype),
                                  {n: t.to(dtype) for n, t in params.items()}, gate.to(dtype), low)
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol)
    for n in ref_extras:
        torch.testing.assert_close(extras[n].double(), ref_extras[n], rtol=rtol, atol=atol, msg=lambda m: f"{n}: {m}")
    for n in ref_grads:
        torch.testing.assert_close(grads[n].double(), ref_grads[n], rtol=rtol, atol=atol,
                                   msg=lambda m: f"grad {n}: {m}")
    # pruned heads: their projection rows / output columns get exactly zero gradient
    for h in range(H):
        if gate[h] == 0:
            rows = slice(h * D, (h + 1) * D)
            for n in ("wq", "bq", "wk", "bk", "wv", "bv"):
                assert torch.equal(grads[n][rows], torch.zeros_like(grads[n][rows])), n
            assert torch.equal(grads["wo"][:, rows], torch.zeros_like(grads["wo"][:, rows]))
            assert grads["gate"][h].item() == 0.0


@pytest.mark.parametrize("path", ("compact", "reference"))
@pytest.mark.parametrize("case", sorted(CASES))
def test_block_matches_formula_float64(path, case):
    _compare(path, case, torch.float64, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", ("one-pruned-padding", "uneven-heads-D8-causal"))
def test_block_triton_float32(case):
    """The triton path (masked GEMMs + attention kernels) in float32 against the float64 formula."""
    _compare("triton", case, torch.float32, rtol=1e-4, atol=2e-5)


def test_block_compact_float32():
    _compare("compact", "uneven-heads-D8-causal", torch.float32, rtol=1e-4, atol=2e-5)


def test_block_gradcheck_compact():
    B, S, d, H, D = 2, 3, 6, 3, 2
    x, params = make_block(B, S, d, H, D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    gate = torch.tensor([0.6, 0.0, -1.1], dtype=torch.float64)
    leaves = [x] + [params[n] for n in WEIGHT_NAMES]
    leaves = [t.clone().requires_grad_(True) for t in leaves]

    def fn(x, *w):
        res = masked_self_attention(x, *w, gate, H, attention_mask=mask, path="compact", return_probs=True)
        return res.out, res.probs
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@pytest.mark.parametrize("path", ("compact", "triton"))
def test_plain_call_does_not_build_probabilities(path, monkeypatch):
    """Asking for nothing must not take the explicit-softmax route."""
    def forbidden(*args, **kwargs):
        raise AssertionError("masked_softmax called although no scores/probs were asked for")
    monkeypatch.setattr(ga, "masked_softmax", forbidden)
    x, p = make_block(2, 5, 16, 2, 16, dtype=torch.float32)
    res = masked_self_attention(x, *(p[n] for n in WEIGHT_NAMES), torch.tensor([1.0, 0.0]), 2, path=path)
    assert res.q is None and res.scores is None and res.probs is None
    assert torch.isfinite(res.out).all()


@pytest.mark.parametrize("path", ("compact", "triton"))
def test_pruned_head_weights_are_never_read(path):
    """NaN in a pruned head's projection rows / output columns cannot reach the output."""
    H, D = 3, 16
    x, p = make_block(2, 6, 24, H, D, dtype=torch.float32)
    for n in ("wq", "wk", "wv", "bq", "bk", "bv"):
        p[n][D:2 * D] = float("nan")
    p["wo"][:, D:2 * D] = float("nan")
    gate = torch.tensor([0.9, 0.0, 1.2])
    res = masked_self_attention(x, *(p[n] for n in WEIGHT_NAMES), gate, H, path=path, return_qkv=True)
    assert torch.isfinite(res.out).all()
    assert torch.equal(res.q[:, 1], torch.zeros_like(res.q[:, 1]))


@pytest.mark.parametrize("path", ("compact", "triton", "reference"))
def test_all_heads_off_gives_output_bias(path):
    x, p = make_block(2, 4, 16, 2, 16, dtype=torch.float32)
    params = {n: t.clone().requires_grad_(True) for n, t in p.items()}
    res = masked_self_attention(x, *(params[n] for n in WEIGHT_NAMES), torch.zeros(2), 2, path=path,
                                return_qkv=True, return_probs=True)
    torch.testing.assert_close(res.out, p["bo"].expand(2, 4, -1), rtol=0, atol=0)
    assert torch.equal(res.probs, torch.zeros(2, 2, 4, 4)) and torch.equal(res.v, torch.zeros(2, 2, 4, 16))
    res.out.sum().backward()
    assert torch.equal(params["bo"].grad, torch.full((16,), 8.0))
    for n in ("wq", "wk", "wv", "wo"):
        assert params[n].grad is None or torch.equal(params[n].grad, torch.zeros_like(p[n]))


def test_bad_arguments_are_named():
    x, p = make_block(1, 3, 6, 2, 4)
    w = [p[n] for n in WEIGHT_NAMES]
    with pytest.raises(ValueError, match="num_heads"):
        masked_self_attention(x, *w, torch.ones(3, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="head_gate"):
        masked_self_attention(x, *w, torch.ones(3, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="wo"):
        masked_self_attention(x, *w[:6], w[6].T, w[7], torch.ones(2, dtype=torch.float64), 2)
