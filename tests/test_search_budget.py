"""Budget losses: the multiplier trick, a toy search driven to the target, impossible targets."""
import pytest
import torch

from ddk_fast.search import (CostModel, LagrangianBudget, OneSidedBudget, build_budget, build_search, check_target)

L, H, I = 4, 4, 32
CM = CostModel(16, 4, [H] * L, [I] * L, seq_len=8)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lagrangian_value_and_gradient_ascent_on_multipliers():
    budget = LagrangianBudget(0.5, lambda_1_init=2.0, lambda_2_init=3.0)
    ratio = torch.tensor(0.7, requires_grad=True)
    loss = budget(ratio)
    assert loss.item() == pytest.approx(2.0 * 0.2 + 3.0 * 0.04)
    loss.backward()
    assert ratio.grad.item() == pytest.approx(2.0 + 2 * 3.0 * 0.2)  # the model side descends normally
    assert budget.lambda_1.grad.item() == pytest.approx(-0.2)      # reversed: a descent step raises lambda_1
    assert budget.lambda_2.grad.item() == pytest.approx(-0.04)
    opt = torch.optim.SGD(budget.parameters(), lr=1.0)
    opt.step()
    assert budget.lambda_1.item() == pytest.approx(2.2) and budget.lambda_2.item() == pytest.approx(3.04)


def test_warmup_moves_target_from_one():
    budget = LagrangianBudget(0.4, warmup_steps=10)
    assert budget.target_at(0) == 1.0 and budget.target_at(5) == pytest.approx(0.7)
    assert budget.target_at(10) == pytest.approx(0.4) and budget.target_at(None) == 0.4


def test_one_sided_only_penalises_exceeding():
    budget = OneSidedBudget(0.5, weight=4.0)
    assert budget(torch.tensor(0.3)).item() == 0.0
    assert budget(torch.tensor(0.75)).item() == pytest.approx(4.0 * 0.25 ** 2)
    assert list(budget.parameters()) == []


def _toy_search(kind, budget_kind, target, steps=300, seed=0):
    """Task loss that always wants more units, budget that wants ``target``; the fused ops' contract
    (no gradient through gates that are exactly 0) is imitated with hooks."""
    torch.manual_seed(seed)
    search = build_search(kind, [H] * L, [I] * L, **({"granularity": 4} if kind == "gumbel" else {}))
    budget = build_budget(budget_kind, target, cost_model=CM)
    opt = torch.optim.Adam([{"params": search.arch_parameters(), "lr": 0.1},
                            {"params": list(budget.parameters()), "lr": 0.1}])
    w_head, w_ffn = torch.rand(L, H), torch.rand(L, I)
    ratios = []
    for _ in range(steps):
        head_gates, ffn_gates = search.sample(tau=1.0)
        for g in (head_gates, ffn_gates):
            g.register_hook(lambda grad, g=g: grad * (g.detach() != 0))
        task = -(head_gates * w_head).mean() - (ffn_gates * w_ffn).mean()
        ratio = search.expected_ratio(CM)
        loss = task + budget(ratio)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append(ratio.item())
    return search, sum(ratios[-20:]) / 20


@pytest.mark.parametrize("kind", ["gumbel", "hard_concrete"])
@pytest.mark.parametrize("target", [0.3, 0.6])
def test_lagrangian_drives_expected_ratio_to_target(kind, target):
    search, final = _toy_search(kind, "lagrangian", target)
    assert final == pytest.approx(target, abs=0.03)
    structure = search.derive(CM, target=target)
    assert target - 0.12 < structure.ratio(CM) <= target


def test_one_sided_keeps_ratio_at_or_below_target_with_a_greedy_task():
    _, final = _toy_search("gumbel", "one_sided", 0.4)
    assert 0.3 < final < 0.45


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.01, float("nan"), "half", None])
def test_targets_outside_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match="target="):
        check_target(bad)
    with pytest.raises(ValueError, match="target="):
        build_budget("lagrangian", bad)


def test_target_below_minimum_achievable_cost_is_rejected():
    too_low = CM.min_ratio() * 0.5
    for kind in ("lagrangian", "one_sided"):
        with pytest.raises(ValueError, match="minimum achievable"):
            build_budget(kind, too_low, cost_model=CM)
    for search_kind in ("gumbel", "hard_concrete"):
        with pytest.raises(ValueError, match="minimum achievable"):
            build_search(search_kind, [H] * L, [I] * L).derive(CM, target=too_low)
    assert check_target(CM.min_ratio(), CM.min_ratio()) == CM.min_ratio()
    with pytest.raises(ValueError, match="kind='l1'"):
        build_budget("l1", 0.5)
