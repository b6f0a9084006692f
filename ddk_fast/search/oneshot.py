"""Retraining-free structure choice under a budget (after Kwon et al. 2022): a global mask search over
importance scores, then a per-layer rearrangement with the block-diagonal Fisher.

Mask search
    Every head costs the same in every layer, and so does every FFN channel (``CostModel`` slopes do not
    depend on the layer), so the problem is: choose ``n_h`` heads and ``n_f`` channel groups anywhere in
    the network with ``n_h * c_head + n_f * c_group <= budget`` keeping the largest total score. For a
    fixed ``n_h`` the best heads are the ``n_h`` highest-scoring ones and the best channels the
    highest-scoring groups that fit, so trying every ``n_h`` (0 .. all heads) is exact up to the group
    granularity. Groups: within a layer channels are sorted by score and cut into runs of
    ``granularity`` (the last may be shorter); a group's score is its sum. Because groups of one layer
    are taken best first, every layer keeps a prefix of its ranking.

Rearrangement
    The sum of scores assumes units are independent. With per-batch gradients ``g_b`` of the loss w.r.t.
    the gates, removing the set ``P`` of a layer raises the loss by about ``sum_b (sum_{i in P} g_bi)^2``
    (block-diagonal Fisher: units of one layer interact, layers do not). ``rearrange`` keeps each layer's
    count and greedily swaps one kept and one removed unit while that lowers this quantity; the Gram
    matrix of the gradients makes every candidate swap an O(1) update.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ddk_fast.search.base import DerivedStructure
from ddk_fast.search.budget import check_target
from ddk_fast.search.cost import CostModel


def _ranked(scores: torch.Tensor, size: int) -> list[int]:
    """Indices of one layer's first ``size`` units, best first (ties: lower index first)."""
    row = scores[:size].double()
    return torch.argsort(-row, stable=True).tolist()


def _groups(scores: torch.Tensor, sizes: Sequence[int], granularity: int):
    """Per layer, channel groups best first: list of (score, layer, unit indices)."""
    out = []
    for l, n in enumerate(sizes):
        order = _ranked(scores[l], n)
        for start in range(0, n, granularity):
            units = order[start:start + granularity]
            out.append((float(scores[l, units].double().sum()), l, units))
    return out


def fisher_mask_search(cost_model: CostModel, head_scores: torch.Tensor, ffn_scores: torch.Tensor,
                       target: float, metric: Optional[str] = None, granularity: int = 1) -> DerivedStructure:
    """The structure with the largest total score whose ``metric`` cost is ``<= target * full cost``.

    ``head_scores`` ``[L, >= max H]``, ``ffn_scores`` ``[L, >= max I]`` (e.g. the Fisher of
    ``calibration.gate_gradients``); FFN widths are multiples of ``granularity`` except a layer kept whole."""
    if int(granularity) <= 0:
        raise ValueError(f"granularity={granularity}: expected a positive integer")
    target = check_target(target, cost_model.min_ratio(metric))
    heads, sizes = cost_model.num_heads, cost_model.intermediate
    budget = target * cost_model.full_cost(metric) * (1 + 1e-12) - cost_model.min_cost(metric)
    c_head, c_chan = cost_model.head_unit_cost(metric), cost_model.channel_unit_cost(metric)

    head_list = sorted(((float(head_scores[l, h]), l, h) for l in range(len(heads)) for h in range(heads[l])),
                       key=lambda t: (-t[0], t[1], t[2]))
    groups = sorted(_groups(ffn_scores, sizes, int(granularity)), key=lambda t: -t[0])
    # stable sort keeps each layer's groups in best-first order when scores tie
    head_prefix = [0.0]
    for s, _, _ in head_list:
        head_prefix.append(head_prefix[-1] + s)
    group_cost = torch.tensor([len(u) * c_chan for _, _, u in groups], dtype=torch.float64)
    cost_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), group_cost.cumsum(0)])
    score_prefix = [0.0]
    for s, _, _ in groups:
        score_prefix.append(score_prefix[-1] + s)

    best = None
    for n_heads in range(len(head_list) + 1):
        room = budget - n_heads * c_head
        if room < 0:
            break
        n_groups = int(torch.searchsorted(cost_prefix, torch.tensor(room, dtype=torch.float64), right=True)) - 1
        total = head_prefix[n_heads] + score_prefix[n_groups]
        if best is None or total > best[0]:
            best = (total, n_heads, n_groups)
    _, n_heads, n_groups = best
    kept_heads = [[] for _ in heads]
    for _, l, h in head_list[:n_heads]:
        kept_heads[l].append(h)
    kept_ffn = [[] for _ in sizes]
    for _, l, units in groups[:n_groups]:
        kept_ffn[l].extend(units)
    return DerivedStructure(heads=kept_heads, ffn=kept_ffn)


def _swap_objective_gain(gram: torch.Tensor, rg: torch.Tensor, pruned: torch.Tensor, kept: torch.Tensor):
    """Change of ``||r||^2`` (r = sum of the pruned units' gradient vectors) for every swap
    "kept unit j leaves, removed unit i comes back": ``r' = r - g_i + g_j``. Returns [|P|, |K|]."""
    diag = gram.diagonal()
    return (diag[pruned][:, None] + diag[kept][None, :] - 2 * rg[pruned][:, None] + 2 * rg[kept][None, :]
            - 2 * gram[pruned][:, kept])


def rearrange_layer(grads: torch.Tensor, kept: Sequence[int], max_swaps: int = 256) -> tuple[list[int], float, float]:
    """Greedy swaps inside one layer. ``grads`` ``[N batches, U units]``; returns (kept indices,
    objective before, objective after) with objective ``sum_b (sum_{i removed} g_bi)^2``; the count
    of kept units never changes."""
    grads = grads.double()
    units = grads.shape[1]
    keep = torch.zeros(units, dtype=torch.bool)
    keep[list(kept)] = True
    gram = grads.T @ grads  # [U, U]
    removed_sum = grads[:, ~keep].sum(1)  # r [N]
    before = float(removed_sum.pow(2).sum())
    if keep.all() or not keep.any():
        return sorted(int(i) for i in kept), before, before
    rg = grads.T @ removed_sum  # g_i . r for every unit
    objective = before
    for _ in range(int(max_swaps)):
        pruned_idx, kept_idx = torch.nonzero(~keep).flatten(), torch.nonzero(keep).flatten()
        gain = _swap_objective_gain(gram, rg, pruned_idx, kept_idx)
        flat = int(torch.argmin(gain))
        best = float(gain.flatten()[flat])
        if not best < -1e-12 * max(objective, 1e-300):
            break
        i, j = int(pruned_idx[flat // len(kept_idx)]), int(kept_idx[flat % len(kept_idx)])
        keep[i], keep[j] = True, False
        rg = rg - gram[:, i] + gram[:, j]
        objective += best
    after = float(grads[:, ~keep].sum(1).pow(2).sum())
    if not math.isfinite(after) or after > before:  # numerical safety: never return a worse set
        return sorted(int(i) for i in kept), before, before
    return torch.nonzero(keep).flatten().tolist(), before, after


def rearrange(structure: DerivedStructure, head_grads: torch.Tensor, ffn_grads: torch.Tensor,
              num_heads: Sequence[int], intermediate: Sequence[int],
              max_swaps: int = 256) -> tuple[DerivedStructure, dict]:
    """``rearrange_layer`` on every layer's heads and channels (same counts, so the cost is unchanged).

    ``head_grads`` ``[N, L, >= max H]``, ``ffn_grads`` ``[N, L, >= max I]``. FFN channels are swapped
    one at a time (the count, which carries the granularity, is kept). Returns the new structure and
    the summed objective before/after for heads and channels."""
    new_heads, new_ffn = [], []
    stats = {"heads_before": 0.0, "heads_after": 0.0, "ffn_before": 0.0, "ffn_after": 0.0}
    for l in range(structure.num_layers):
        kept, b, a = rearrange_layer(head_grads[:, l, :num_heads[l]], structure.heads[l], max_swaps)
        new_heads.append(kept)
        stats["heads_before"] += b
        stats["heads_after"] += a
        kept, b, a = rearrange_layer(ffn_grads[:, l, :intermediate[l]], structure.ffn[l], max_swaps)
        new_ffn.append(kept)
        stats["ffn_before"] += b
        stats["ffn_after"] += a
    return DerivedStructure(heads=new_heads, ffn=new_ffn), stats


__all__ = ["fisher_mask_search", "rearrange", "rearrange_layer"]
