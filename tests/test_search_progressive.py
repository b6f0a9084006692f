"""Progressive indicators: schedule, fading of the least important units, final structure on budget."""
import pytest
import torch

from ddk_fast.search import CostModel, build_search
from ddk_fast.search.progressive import ProgressiveSearch

L, H, I = 3, 4, 16
CM = CostModel(16, 4, [H] * L, [I] * L, seq_len=8)


def _search(target=0.5, schedule="cubic", **kw):
    search = ProgressiveSearch([H] * L, [I] * L, CM, target, total_steps=10, schedule=schedule, **kw)
    search.set_importance(torch.randn(L, H), torch.randn(L, I))
    return search


def test_schedules():
    cubic = _search()
    assert cubic.level(0) == 0.0 and cubic.level(10) == 1.0 and cubic.level(99) == 1.0
    assert cubic.level(5) == pytest.approx(1 - 0.5 ** 3)
    assert _search(schedule="linear").level(3) == pytest.approx(0.3)
    assert _search(schedule="cosine").level(5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule"):
        _search(schedule="step")


def test_fading_units_are_the_least_important_and_reach_exact_zero():
    search = _search(target=0.5)
    final = search.derive()
    assert final.ratio(CM) <= 0.5 and final.ratio(CM) > 0.4
    # heads: the globally least important heads (across layers) are dropped
    kept = {(l, h) for l in range(L) for h in final.heads[l]}
    flat = [(search.head_importance[l, h].item(), (l, h)) for l in range(L) for h in range(H)]
    ranked = [u for _, u in sorted(flat, reverse=True)]
    assert kept == set(ranked[:len(kept)])
    keep_heads, _ = final.gates([H] * L, [I] * L)
    for step, fade in ((0, 1.0), (5, 0.5 ** 3), (10, 0.0)):
        search.set_step(step)
        heads, ffn = search.sample()
        assert torch.all(heads[keep_heads > 0] == 1)
        assert torch.allclose(heads[keep_heads == 0], torch.full_like(heads[keep_heads == 0], fade))
        assert search.expected_cost().item() == pytest.approx(
            CM.structure_cost([H] * L, [I] * L) * (1 - search.level()) + final.cost(CM) * search.level())
    assert torch.all((heads == 0) | (heads == 1)) and torch.all((ffn == 0) | (ffn == 1))
    assert search.arch_parameters() == []


def test_importance_updates_change_the_plan_and_other_targets():
    search = _search(target=0.6, granularity=4)
    search.update_importance(ffn_scores=torch.zeros(L, I))
    before = search.derive()
    boosted = torch.zeros(L, I)
    boosted[0] = 100.0
    search.importance_momentum = 0.0
    search.update_importance(ffn_scores=boosted)
    after = search.derive()
    assert after.ffn_counts[0] == I and after.ffn_counts != before.ffn_counts
    assert all(n % 4 == 0 or n == I for n in after.ffn_counts)
    assert search.derive(target=0.3).ratio(CM) <= 0.3
    with pytest.raises(ValueError, match="minimum achievable"):
        _search(target=CM.min_ratio() / 2)


def test_registry_builds_progressive():
    search = build_search("progressive", [H] * L, [I] * L, cost_model=CM, target=0.5, total_steps=4)
    search.step()
    assert int(search.current_step) == 1 and search.needs_importance
