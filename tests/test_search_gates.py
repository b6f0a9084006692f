"""Gumbel width search and hard-concrete gates: forward values, gradients, costs, derived structures."""
import pytest
import torch

from ddk_fast.search import (CostModel, DerivedStructure, GumbelWidthSearch, HardConcreteSearch, TemperatureSchedule,
                             build_search)
from ddk_fast.search.importance import ffn_importance_from_weights, head_importance_from_weights, taylor_importance
from ddk_fast.search.width import width_candidates

L, H, I, D, HIDDEN = 3, 4, 20, 4, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cost_model(num_heads=(H,) * L, intermediate=(I,) * L, **kw):
    return CostModel(HIDDEN, D, list(num_heads), list(intermediate), seq_len=8, **kw)


def _zero_grad_where_gate_is_zero(gates):
    """The fused ops' contract: a unit whose gate is exactly 0 gets no gradient, not even its gate."""
    gates.register_hook(lambda g: g * (gates.detach() != 0))
    return gates


def test_candidates_include_the_full_width_when_not_a_multiple():
    assert width_candidates(20, 8) == [0, 8, 16, 20]
    assert width_candidates(16, 8) == [0, 8, 16]
    assert width_candidates(4, 1) == [0, 1, 2, 3, 4]


def test_gumbel_gates_are_exactly_binary_and_match_the_sampled_count():
    search = GumbelWidthSearch([H] * L, [I] * L, granularity=8)
    torch.nn.init.normal_(search.head_logits, std=2.0)
    torch.nn.init.normal_(search.ffn_logits, std=2.0)
    search.set_importance(torch.randn(L, H), torch.randn(L, I))
    seen_head_counts = set()
    for _ in range(30):
        head_gates, ffn_gates = search.sample(tau=0.7)
        for gates in (head_gates, ffn_gates):
            assert torch.all((gates == 0) | (gates == 1))
        head_counts, ffn_counts = search.last_counts
        assert head_gates.sum(1).long().tolist() == head_counts.tolist()
        assert ffn_gates.sum(1).long().tolist() == ffn_counts.tolist()
        assert set(ffn_counts.tolist()) <= {0, 8, 16, 20}
        seen_head_counts.update(head_counts.tolist())
        # the kept units are the most important ones
        for l in range(L):
            k = int(head_counts[l])
            top = torch.argsort(search.head_importance[l], descending=True)[:k]
            assert torch.all(head_gates[l, top] == 1)
    assert len(seen_head_counts) > 1  # really sampling


def test_gumbel_gradient_reaches_the_logits():
    search = GumbelWidthSearch([H] * L, [I] * L, granularity=4)
    head_gates, ffn_gates = search.sample(tau=1.0)
    (head_gates * torch.randn(L, H)).sum().backward(retain_graph=True)
    (ffn_gates * torch.randn(L, I)).sum().backward()
    # layers whose sampled count is > 0 carry gradient to every candidate's logit
    assert search.head_logits.grad.abs().sum() > 0
    assert search.ffn_logits.grad.abs().sum() > 0


def _train_counts(sign, steps=100):
    search = GumbelWidthSearch([H] * L, [I] * L, granularity=4)
    search.set_importance(torch.arange(H, 0, -1.0).expand(L, -1), torch.arange(I, 0, -1.0).expand(L, -1))
    opt = torch.optim.Adam(search.arch_parameters(), lr=0.05)
    start = [c.sum().item() for c in search.expected_counts()]
    for _ in range(steps):
        head_gates, ffn_gates = search.sample(tau=1.0)
        head_gates, ffn_gates = _zero_grad_where_gate_is_zero(head_gates), _zero_grad_where_gate_is_zero(ffn_gates)
        loss = sign * (head_gates.sum() + 0.25 * ffn_gates.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = [c.sum().item() for c in search.expected_counts()]
    return start, end


def test_loss_preferring_more_units_moves_logits_up_even_with_zero_gate_gradients():
    (h0, f0), (h1, f1) = _train_counts(sign=-1.0)
    assert h1 > h0 + 0.5 * (L * H - h0) and f1 > f0 + 0.5 * (L * I - f0)


def test_loss_preferring_fewer_units_moves_logits_down():
    (h0, f0), (h1, f1) = _train_counts(sign=+1.0)
    assert h1 < 0.5 * h0 and f1 < 0.5 * f0


def test_gumbel_expected_cost_is_the_mean_cost_of_samples():
    search = GumbelWidthSearch([H, 3, H], [I, 12, I], granularity=8)
    torch.nn.init.normal_(search.head_logits, std=1.5)
    torch.nn.init.normal_(search.ffn_logits, std=1.5)
    cm = _cost_model([H, 3, H], [I, 12, I])
    costs = []
    with torch.no_grad():
        for _ in range(2000):
            search.sample(tau=5.0)  # the temperature must not change the distribution of the sample
            heads, ffn = search.last_counts
            costs.append(cm.attention_cost(heads).sum() + cm.ffn_cost(ffn).sum())
    mean = torch.stack(costs).double().mean().item()
    assert cm.structure_cost(heads.tolist(), ffn.tolist()) == costs[-1].item()
    assert search.expected_cost(cm).item() == pytest.approx(mean, rel=0.02)


def test_uneven_layers_never_open_padding_units():
    search = GumbelWidthSearch([H, 2], [I, 9], granularity=4, init="full", init_scale=20.0)
    for _ in range(5):
        head_gates, ffn_gates = search.sample()
        assert torch.all(head_gates[1, 2:] == 0) and torch.all(ffn_gates[1, 9:] == 0)
        assert head_gates[1].sum() <= 2 and ffn_gates[1].sum() <= 9
    assert search.derive().head_counts[1] == 2 and search.derive().ffn_counts[1] == 9


def test_eval_mode_is_deterministic_and_equals_derive():
    search = GumbelWidthSearch([H] * L, [I] * L, granularity=8)
    torch.nn.init.normal_(search.head_logits, std=2.0)
    torch.nn.init.normal_(search.ffn_logits, std=2.0)
    search.set_importance(torch.randn(L, H), torch.randn(L, I))
    search.eval()
    first, second = search.sample(), search.sample()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    derived = search.derive().gates([H] * L, [I] * L)
    assert torch.equal(first[0].detach(), derived[0]) and torch.equal(first[1].detach(), derived[1])
    assert search.derive().head_counts == search.head_logits.argmax(-1).tolist()


def test_derive_with_target_meets_it():
    search = GumbelWidthSearch([H] * L, [I] * L, granularity=4, init="full", init_scale=5.0)
    cm = _cost_model()
    assert search.derive(cm).ratio(cm) == pytest.approx(1.0)
    unit = max(cm.head_unit_cost(), 4 * cm.channel_unit_cost()) / cm.full_cost()  # largest single step
    for target in (0.9, 0.5, 0.2, cm.min_ratio()):
        ratio = search.derive(cm, target=target).ratio(cm)
        assert target - unit <= ratio <= target + 1e-12
    # from below: the argmax structure (here: everything removed) is grown onto the budget
    small = GumbelWidthSearch([H] * L, [I] * L, granularity=4)
    assert small.derive(cm).ratio(cm) == pytest.approx(cm.min_ratio())
    assert 0.5 - unit <= small.derive(cm, target=0.5).ratio(cm) <= 0.5
    assert small.derive(cm, target=0.5, fill=False).ratio(cm) == pytest.approx(cm.min_ratio())
    # shrinking takes the least likely steps first: a layer whose mass sits on "full" keeps it
    peaked = GumbelWidthSearch([H] * L, [I] * L, granularity=4, init="full", init_scale=5.0)
    with torch.no_grad():
        peaked.head_logits[0, -1] = 50.0
    assert peaked.derive(cm, target=0.5).head_counts[0] == H


def test_update_importance_ema_and_active_mask():
    search = GumbelWidthSearch([H] * L, [I] * L, importance_momentum=0.5)
    search.set_importance(torch.ones(L, H), torch.ones(L, I))
    active = torch.zeros(L, H, dtype=torch.bool)
    active[:, 0] = True
    search.update_importance(head_scores=torch.full((L, H), 3.0), head_active=active)
    assert torch.allclose(search.head_importance[:, 0], torch.full((L,), 2.0))
    assert torch.all(search.head_importance[:, 1:] == 1.0)
    assert torch.all(search.ffn_importance == 1.0)
    # the ranking follows the importance: the derived top-1 head is the one with the largest score
    search.head_logits.data.zero_()
    search.head_logits.data[:, 1] = 10.0  # count 1 most likely
    assert search.derive().heads == [[0]] * L
    with pytest.raises(ValueError, match="head_scores"):
        search.update_importance(head_scores=torch.ones(L, H + 1))


def test_temperature_schedule():
    schedule = TemperatureSchedule(10.0, 0.1, total_steps=100)
    assert schedule(0) == pytest.approx(10.0) and schedule(100) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(1.0) and schedule(1000) == pytest.approx(0.1)
    values = [schedule(s) for s in range(0, 101, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="tau_min"):
        TemperatureSchedule(0.1, 1.0, 10)


def test_hard_concrete_expected_l0_matches_monte_carlo():
    search = HardConcreteSearch([H] * L, [I] * L)
    with torch.no_grad():
        search.head_log_alpha.copy_(torch.linspace(-3, 3, L * H).reshape(L, H))
        search.ffn_log_alpha.copy_(torch.randn(L, I) * 2)
        n = 20000
        head_nonzero = torch.zeros(L, H)
        ffn_nonzero = torch.zeros(L, I)
        for _ in range(n // 1000):
            heads = search._sample_gates(search.head_log_alpha.expand(1000, L, H), search.head_unit_valid)
            ffn = search._sample_gates(search.ffn_log_alpha.expand(1000, L, I), search.ffn_unit_valid)
            head_nonzero += (heads > 0).float().sum(0)
            ffn_nonzero += (ffn > 0).float().sum(0)
        p_head = search.prob_nonzero(search.head_log_alpha)
        assert torch.allclose(head_nonzero / n, p_head, atol=0.015)
        assert torch.allclose(ffn_nonzero / n, search.prob_nonzero(search.ffn_log_alpha), atol=0.015)
        expected_heads, _ = search.expected_counts()
        assert torch.allclose(expected_heads, p_head.sum(-1))


def test_hard_concrete_gates_in_range_with_exact_zeros_and_gradient():
    search = HardConcreteSearch([H, 2], [I, 7], init_drop_rate=0.5)
    head_gates, ffn_gates = search.sample()
    assert head_gates.shape == (2, H) and ffn_gates.shape == (2, I)
    assert torch.all(head_gates[1, 2:] == 0) and torch.all(ffn_gates[1, 7:] == 0)
    assert torch.all((ffn_gates >= 0) & (ffn_gates <= 1))
    many = search._sample_gates(search.ffn_log_alpha.detach().expand(200, 2, I), search.ffn_unit_valid)
    assert (many[:, 0] == 0).any() and (many[:, 0] == 1).any()
    (ffn_gates.sum() + head_gates.sum()).backward()
    assert search.ffn_log_alpha.grad.abs().sum() > 0
    assert torch.all(search.ffn_log_alpha.grad[1, 7:] == 0)
    cm = _cost_model([H, 2], [I, 7])
    ratio = search.expected_ratio(cm)
    heads, channels = search.expected_counts()
    assert ratio.item() == pytest.approx(sum(cm.layer_cost(None, h, c) for h, c in zip(heads.tolist(), channels.tolist()))
                                         / cm.full_cost(), rel=1e-5)


def test_hard_concrete_eval_is_deterministic_and_derive_meets_target():
    search = HardConcreteSearch([H] * L, [I] * L, granularity=4)
    torch.nn.init.normal_(search.head_log_alpha, std=3.0)
    torch.nn.init.normal_(search.ffn_log_alpha, std=3.0)
    search.eval()
    a, b = search.sample(), search.sample()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.all((a[0] == 0) | (a[0] == 1))
    derived = search.derive()
    assert derived.head_counts == [min(round(x), H) for x in search.expected_counts()[0].tolist()]
    # kept heads are those with the largest log_alpha
    for l in range(L):
        k = derived.head_counts[l]
        assert set(derived.heads[l]) == set(torch.argsort(search.head_log_alpha[l], descending=True)[:k].tolist())
    cm = _cost_model()
    for target in (0.8, 0.4, 0.1):
        structure = search.derive(cm, target=target)
        assert structure.ratio(cm) <= target
        assert all(n % 4 == 0 or n == I for n in structure.ffn_counts)
    louizos = HardConcreteSearch([H] * L, [I] * L, eval_gates="louizos").eval()
    g = louizos.sample()[0]
    assert torch.all((g >= 0) & (g <= 1))


def test_derived_structure_helpers():
    s = DerivedStructure(heads=[[2, 0], []], ffn=[[1], [0, 3]])
    assert s.heads == [[0, 2], []] and s.head_counts == [2, 0] and s.ffn_counts == [1, 2]
    assert s.pruned_heads([3, 3]) == {0: [1], 1: [0, 1, 2]}
    head_gates, ffn_gates = s.gates([3, 3], [4, 4])
    assert head_gates.tolist() == [[1, 0, 1], [0, 0, 0]] and ffn_gates.tolist() == [[0, 1, 0, 0], [1, 0, 0, 1]]
    assert DerivedStructure.from_dict(s.to_dict()) == s


def test_build_search_registry():
    assert isinstance(build_search("gumbel", [H], [I], granularity=4), GumbelWidthSearch)
    assert isinstance(build_search("hard_concrete", [H], [I]), HardConcreteSearch)
    with pytest.raises(ValueError, match="kind=.annealing."):
        build_search("annealing", [H], [I])
    search = build_search("gumbel", [H], [I])
    assert {id(p) for p in search.arch_parameters()} == {id(search.head_logits), id(search.ffn_logits)}


def test_importance_from_weights_and_taylor():
    w_o = torch.zeros(HIDDEN, H * D)
    w_o[:, 2 * D:3 * D] = 1.0  # head 2 is the only one with weight
    scores = head_importance_from_weights([w_o], D)
    assert scores.argmax().item() == 2 and scores[0, 0] == 0
    up, down = torch.randn(I, HIDDEN), torch.randn(HIDDEN, I)
    up[5] *= 100
    f = ffn_importance_from_weights([up, up[:9]], [down, down[:, :9]])
    assert f.shape == (2, I) and f[0].argmax().item() == 5 and torch.all(f[1, 9:] == 0)
    gates = torch.tensor([1.0, 0.0, 1.0], requires_grad=True)
    (gates * torch.tensor([2.0, 3.0, -4.0])).sum().backward()
    assert taylor_importance(gates).tolist() == [2.0, 0.0, 4.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["gumbel", "hard_concrete"])
def test_search_runs_on_cuda(kind):
    search = build_search(kind, [H, 2], [I, 9]).cuda()
    cm = _cost_model([H, 2], [I, 9])
    head_gates, ffn_gates = search.sample()
    assert head_gates.is_cuda and ffn_gates.is_cuda
    (head_gates.sum() + ffn_gates.sum() + search.expected_ratio(cm)).backward()
    assert search.derive(cm, target=0.5).ratio(cm) <= 0.5
    search.eval()
    assert search.sample()[0].is_cuda


@pytest.mark.parametrize("kind", ["gumbel", "hard_concrete", "progressive"])
def test_on_step_is_how_a_loop_drives_every_search(kind):
    """Loops call ``on_step(step, temperature)`` on any search: Gumbel samples at that temperature, the
    progressive search moves along its fade-out, hard-concrete gates ignore both."""
    extra = {"progressive": dict(cost_model=_cost_model(), target=0.5, total_steps=10)}.get(kind, {})
    search = build_search(kind, [H] * L, [I] * L, **extra)
    before = {k: v.clone() for k, v in search.state_dict().items()}
    search.on_step(7, 0.25)
    after = search.state_dict()
    if kind == "gumbel":
        assert search.tau == 0.25
        with pytest.raises(ValueError, match="positive temperature"):
            search.on_step(8, 0.0)
    if kind == "progressive":
        assert int(search.current_step) == 7 and search.level() > 0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == ({"current_step"} if kind == "progressive" else set())
