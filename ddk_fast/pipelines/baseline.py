"""The ``--fixed-structure uniform`` baseline: the same budget met with the same widths in every
layer, no search. Units are kept by weight-norm importance, as the search's initial ranking does."""
from __future__ import annotations

import torch


def uniform_counts(cost_model, target: float, metric: str, granularity: int) -> tuple[list[int], list[int]]:
    """Per-layer (heads, channels), the same fraction f of every layer, f as large as the budget allows.

    Heads = floor(f * H), channels = floor(f * I / g) * g; the cost is monotone in f, so a bisection
    on f finds the largest uniform structure costing at most ``target`` of the full model."""
    H, I = cost_model.num_heads, cost_model.intermediate
    budget = target * cost_model.full_cost(metric)

    def counts(f):
        heads = [int(f * h + 1e-9) for h in H]
        chans = [min(i, int(f * i / granularity + 1e-9) * granularity) for i in I]
        return heads, chans

    def cost(f):
        heads, chans = counts(f)
        return cost_model.structure_cost(heads, chans, metric)

    if cost(1.0) <= budget * (1 + 1e-12):
        return counts(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(mid) <= budget * (1 + 1e-12):
            lo = mid
        else:
            hi = mid
    return counts(lo)


def keep_top(scores: torch.Tensor, counts: list[int], sizes: list[int]) -> list[list[int]]:
    """Indices of the ``counts[l]`` highest-scoring units of each layer (ties: lower index first)."""
    kept = []
    for l, (k, n) in enumerate(zip(counts, sizes)):
        row = scores[l, :n].float()
        order = torch.argsort(-row, stable=True)[:k]
        kept.append(sorted(int(i) for i in order))
    return kept
