"""Recursive adaptive fusion against hand-written loops; stability of the weights; learned gates."""
import pytest
import torch

from ddk_fast.distill import HighwayFusion, fusion_weights, recursive_fusion, window_fusion

B, S, D = 3, 5, 7


def _states(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, D, generator=g, dtype=dtype) * (1 + i) for i in range(n)]


def _loop_fusion(states, measure, per_example, mask=None):
    """Plain loops over examples: F_L = T_L, F_l = a T_l + (1 - a) F_(l+1)."""
    fused = [None] * len(states)
    fused[-1] = states[-1].clone()
    for l in range(len(states) - 2, -1, -1):
        out = torch.empty_like(states[l])
        if per_example:
            for b in range(B):
                keep = slice(None) if mask is None else mask[b].bool()
                m_low, m_up = measure(states[l][b][keep]), measure(fused[l + 1][b][keep])
                a = m_low / (m_low + m_up)
                out[b] = a * states[l][b] + (1 - a) * fused[l + 1][b]
        else:
            m_low, m_up = measure(states[l]), measure(fused[l + 1])
            a = m_low / (m_low + m_up)
            out = a * states[l] + (1 - a) * fused[l + 1]
        fused[l] = out
    return fused


@pytest.mark.parametrize("weighting", ["norm", "sum"])
@pytest.mark.parametrize("per", ["example", "batch"])
def test_recursive_fusion_matches_loops(weighting, per):
    states = [s.abs() + 0.1 for s in _states(4)] if weighting == "sum" else _states(4)
    measure = (lambda x: x.sum()) if weighting == "sum" else (lambda x: x.pow(2).sum().sqrt())
    got = recursive_fusion(states, weighting=weighting, per=per)
    want = _loop_fusion(states, measure, per == "example")
    assert len(got) == 4 and torch.equal(got[-1], states[-1])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_token_mask_excludes_padding_from_the_weights():
    states = _states(3)
    mask = torch.ones(B, S)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    got = recursive_fusion(states, token_mask=mask)
    want = _loop_fusion(states, lambda x: x.pow(2).sum().sqrt(), True, mask)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # changing padded positions does not change the fused real tokens
    states2 = [s.clone() for s in states]
    states2[0][0, 4] += 100.0
    got2 = recursive_fusion(states2, token_mask=mask)
    torch.testing.assert_close(got2[0][0, :3], got[0][0, :3])


def test_per_example_weights_do_not_depend_on_the_rest_of_the_batch():
    states = _states(3)
    alone = recursive_fusion([s[:1] for s in states])
    together = recursive_fusion(states)
    torch.testing.assert_close(alone[0], together[0][:1])


def test_weights_are_guarded_and_bounded():
    zero = torch.zeros(B, S, D)
    # 0/0 -> an even mix, no NaN
    assert torch.all(fusion_weights(zero, zero) == 0.5)
    assert torch.all(fusion_weights(zero, zero, weighting="sum") == 0.5)
    # sums that cancel: GPP-DFD's rule would divide by ~0; guarded to 1/2
    x = torch.randn(B, S, D, dtype=torch.float64)
    a = fusion_weights(x, -x, weighting="sum")
    assert torch.all(a == 0.5)
    # the norm rule stays in [0, 1] for any signs and scales
    for scale in (1e-20, 1.0, 1e20):
        a = fusion_weights(torch.randn(B, S, D) * scale, -torch.randn(B, S, D))
        assert torch.all((a >= 0) & (a <= 1)) and torch.isfinite(a).all()
    assert fusion_weights(torch.ones(B, S, D), torch.zeros(B, S, D)).shape == (B, 1, 1)
    assert fusion_weights(torch.ones(B, S, D), torch.zeros(B, S, D), per="batch").shape == ()


def test_fusion_weights_are_detached_by_default_and_gradients_flow_to_states():
    states = [s.float().requires_grad_() for s in _states(3)]
    fused = recursive_fusion(states)
    fused[0].sum().backward()
    # with detached weights, dF_0/dT_0 is exactly a_0 everywhere in example b
    a0 = fusion_weights(states[0], recursive_fusion(states)[1]).detach()
    torch.testing.assert_close(states[0].grad, a0.expand(B, S, D))
    states2 = [s.detach().clone().requires_grad_() for s in states]
    recursive_fusion(states2, detach_weights=False)[0].sum().backward()
    assert not torch.allclose(states2[0].grad, states[0].grad)


def test_low_precision_states_keep_their_dtype():
    states = [s.to(torch.bfloat16) for s in _states(3)]
    fused = recursive_fusion(states)
    assert all(f.dtype == torch.bfloat16 for f in fused)
    ref = recursive_fusion([s.double() for s in states])
    torch.testing.assert_close(fused[0].double(), ref[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("weighting", ["norm", "sum"])
def test_window_fusion_flat_matches_loops(weighting):
    states = [s.abs() + 0.1 for s in _states(4)]
    measure = (lambda x: x.sum()) if weighting == "sum" else (lambda x: x.pow(2).sum().sqrt())
    got = window_fusion(states, 3, weighting=weighting, per="batch")
    padded = states + [states[-1]] * 2
    assert len(got) == 4
    for i in range(4):
        group = padded[i:i + 3]
        total = sum(measure(s) for s in group)
        want = sum(measure(s) / total * s for s in group)
        torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)
    # window 1 is the identity; recursive mode's first entry is the recursive fusion of the window
    assert all(torch.equal(a, b) for a, b in zip(window_fusion(states, 1), states))
    rec = window_fusion(states, 2, mode="recursive")
    torch.testing.assert_close(rec[0], recursive_fusion(states[:2])[0])


def test_highway_fusion_gates_and_learning():
    states = [s.float() for s in _states(4)]
    fuser = HighwayFusion(D, 4)
    fused = fuser(states)
    torch.testing.assert_close(fused[2], 0.5 * states[2] + 0.5 * states[3])  # zero-initialised gate: even mix
    # by hand with random gate weights, per channel
    fuser = HighwayFusion(D, 4, per_channel=True)
    for gate in fuser.gates:
        torch.nn.init.normal_(gate.weight)
    fused = fuser(states)
    f = states[3]
    for l in (2, 1, 0):
        lin = fuser.gates[l]
        a = torch.sigmoid(torch.cat([states[l], f], -1) @ lin.weight.T + lin.bias)
        f = a * states[l] + (1 - a) * f
        torch.testing.assert_close(fused[l], f)
    fused[0].pow(2).mean().backward()
    assert all(g.weight.grad is not None and g.weight.grad.abs().sum() > 0 for g in fuser.gates)
    with pytest.raises(ValueError, match="expected 4 of width"):
        fuser(states[:3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="weighting"):
        recursive_fusion(_states(2), weighting="mean")
    with pytest.raises(ValueError, match="per="):
        recursive_fusion(_states(2), per="token")
    with pytest.raises(ValueError, match=r"states\[1\]"):
        recursive_fusion([torch.zeros(B, S, D), torch.zeros(B, S, D + 1)])
    with pytest.raises(ValueError, match="window"):
        window_fusion(_states(2), 0)
