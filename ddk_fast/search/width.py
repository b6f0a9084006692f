"""Gumbel-softmax width search (TAS, Dong & Yang 2019; DAP-BERT 2021): learn how many units each
layer keeps, not which ones.

For layer l there are architecture logits over head-count candidates {0, 1, ..., H_l} and FFN-width
candidates {0, g, 2g, ..., I_l} (I_l added when it is not a multiple of g).  A sample picks one
candidate per layer and block; the gate keeps the top-``count`` units of an importance ranking:

    h        = onehot(argmax((alpha + Gumbel) / tau)) + (soft - soft.detach()),   soft = softmax(...)
    gate_i   = sum_k h_k * 1[rank_i < count_k]

The forward value of ``h`` is exactly the one-hot vector, so every gate is exactly 0 or 1 and units
beyond the sampled count are exactly 0 (kernels skip them).  The backward pass is that of the soft
gate ``P(count > rank_i) = sum_{k: count_k > rank_i} soft_k``, so the logits learn through the kept
units: with ``G_k = dL/dsoft_k = sum_{rank_i < min(count_k, sampled)} dL/dgate_i``, candidates at or
above the sampled count all see the full sum of the kept units' gate gradients and smaller ones see
partial sums; if the loss wants more units (negative gate gradients) the mass moves upward, if it wants
fewer it moves downward.  Units whose gate is 0 get no gradient (the fused ops' contract), which is
why no signal is needed from them.

Because the sample is the argmax of Gumbel-perturbed logits, it is distributed exactly as
softmax(alpha) whatever ``tau`` is; ``expected_cost`` therefore uses softmax(alpha), and ``tau`` only
shapes the gradient (high early: smooth, low late: close to the sampled candidate).
"""
import math
from typing import Optional, Sequence

import torch
from torch import nn

from ddk_fast.search.base import DerivedStructure, RankedUnitsMixin, StructureSearch, rank_units
from ddk_fast.search.budget import check_target
from ddk_fast.search.cost import CostModel, _as_int_list


def width_candidates(size: int, granularity: int) -> list:
    """Candidate unit counts {0, g, 2g, ..., size}; ``size`` is always the last candidate."""
    if int(granularity) <= 0:
        raise ValueError(f"granularity={granularity}: expected a positive integer")
    counts = list(range(0, size + 1, int(granularity)))
    if counts[-1] != size:
        counts.append(size)
    return counts


class TemperatureSchedule:
    """Exponential anneal ``tau(step) = tau_max * (tau_min / tau_max) ** (step / total_steps)``,
    held at ``tau_min`` after ``total_steps``."""

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, total_steps: int = 1000):
        if not (tau_max >= tau_min > 0):
            raise ValueError(f"tau_max={tau_max}, tau_min={tau_min}: expected tau_max >= tau_min > 0")
        if int(total_steps) <= 0:
            raise ValueError(f"total_steps={total_steps}: expected a positive integer")
        self.tau_max, self.tau_min, self.total_steps = float(tau_max), float(tau_min), int(total_steps)

    def __call__(self, step: int) -> float:
        progress = min(max(step, 0) / self.total_steps, 1.0)
        return self.tau_max * (self.tau_min / self.tau_max) ** progress


def _straight_through_gates(logits, valid, counts, ranks, tau, stochastic, hard):
    """Gates [L, U] and the chosen counts [L] for one block type (see the module docstring)."""
    logits = logits.masked_fill(~valid, -math.inf)
    if stochastic:
        gumbel = -torch.empty_like(logits).exponential_().log()
        scores = (logits + gumbel) / tau
    else:
        scores = logits / tau
    soft = torch.softmax(scores, dim=-1)
    index = scores.argmax(dim=-1, keepdim=True)
    chosen = counts.gather(1, index)
    # P(count > rank) under ``soft``: tail sums over candidates sorted by count (padding sorts last).
    tail = torch.cat([soft.flip(-1).cumsum(-1).flip(-1), soft.new_zeros(soft.shape[0], 1)], dim=1)
    first_larger = torch.searchsorted(counts, ranks.contiguous(), right=True)
    soft_gate = tail.gather(1, first_larger)
    if not hard:
        return soft_gate, chosen.squeeze(1)
    hard_gate = (ranks < chosen).to(soft.dtype)
    return hard_gate + (soft_gate - soft_gate.detach()), chosen.squeeze(1)


class GumbelWidthSearch(RankedUnitsMixin, StructureSearch):
    """Per-layer distributions over head counts and FFN widths; see the module docstring.

    Args:
        num_heads, intermediate: per-layer sizes of the model being searched.
        granularity: FFN width step g (multiples of 8 keep the result fast on tensor cores).
        head_granularity: head-count step (1: every count).
        tau: initial temperature (set it each step from a ``TemperatureSchedule``).
        importance_momentum: EMA momentum of ``update_importance``.
        init: "uniform" (all candidates equally likely) or "full" (logits rise linearly with the
            count, by ``init_scale`` from the smallest to the largest candidate).
        head_importance, ffn_importance: initial ranking scores ([L, H] / [L, I] or per-layer lists),
            e.g. from ``importance.head_importance_from_weights``; default: keep the lowest indices.
    """

    def __init__(self, num_heads: Sequence[int], intermediate: Sequence[int], granularity: int = 8,
                 head_granularity: int = 1, tau: float = 1.0, importance_momentum: float = 0.9,
                 init: str = "uniform", init_scale: float = 2.0, head_importance=None, ffn_importance=None):
        super().__init__(num_heads, intermediate)
        if init not in ("uniform", "full"):
            raise ValueError(f"init={init!r}: expected 'uniform' or 'full'")
        self.granularity = int(granularity)
        self.head_granularity = int(head_granularity)
        self.tau = float(tau)
        for kind, sizes, step in (("head", self.num_heads, self.head_granularity),
                                  ("ffn", self.intermediate, self.granularity)):
            cands = [width_candidates(n, step) for n in sizes]
            width = max(len(c) for c in cands)
            sentinel = max(sizes) + 1  # padding candidates sort after every real count
            counts = torch.full((len(sizes), width), sentinel, dtype=torch.long)
            valid = torch.zeros(len(sizes), width, dtype=torch.bool)
            for l, c in enumerate(cands):
                counts[l, :len(c)] = torch.tensor(c)
                valid[l, :len(c)] = True
            self.register_buffer(f"{kind}_candidates", counts, persistent=False)
            self.register_buffer(f"{kind}_candidate_valid", valid, persistent=False)
            logits = torch.zeros(len(sizes), width)
            if init == "full":
                logits = init_scale * counts.float() / torch.tensor(sizes, dtype=torch.float).clamp(min=1)[:, None]
                logits = logits.masked_fill(~valid, 0.0)
            setattr(self, f"{kind}_logits", nn.Parameter(logits))
        self._init_importance(importance_momentum, head_importance, ffn_importance)
        self.last_counts = None

    @torch.no_grad()
    def centre_on(self, head_counts: Sequence[int], ffn_counts: Sequence[int], sharpness: float = 2.0):
        """Make the given per-layer counts the most likely candidates: ``logit = -sharpness * |j - j*|``
        in candidate-index space (``j*``: the candidate nearest the count). A search started from a
        known good structure then samples it and its neighbours instead of arbitrary widths."""
        if not sharpness > 0:
            raise ValueError(f"sharpness={sharpness}: expected a positive number")
        for kind, counts in (("head", head_counts), ("ffn", ffn_counts)):
            cands, valid = getattr(self, f"{kind}_candidates"), getattr(self, f"{kind}_candidate_valid")
            counts = _as_int_list(f"{kind}_counts", counts, self.num_layers)
            index = torch.arange(cands.shape[1], dtype=torch.float)
            logits = torch.zeros(cands.shape, dtype=torch.float)
            for l, k in enumerate(counts):
                distance = (cands[l].float() - k).abs().masked_fill(~valid[l], math.inf)
                logits[l] = -sharpness * (index - float(torch.argmin(distance))).abs()
            getattr(self, f"{kind}_logits").copy_(logits.masked_fill(~valid, 0.0))

    # --- sampling -----------------------------------------------------------------------------------
    def on_step(self, step: int, temperature: float) -> None:
        """The Gumbel samples of this step are drawn at the annealed ``temperature``."""
        self.set_temperature(temperature)

    def set_temperature(self, tau: float):
        if not tau > 0:
            raise ValueError(f"tau={tau}: expected a positive temperature")
        self.tau = float(tau)

    def sample(self, tau: Optional[float] = None, hard: bool = True):
        """Gates ``([L, max H], [L, max I])``.  Training mode: a Gumbel sample (hard: exactly 0/1 in the
        forward pass, straight-through gradient to the logits); eval mode: the argmax structure."""
        tau = self.tau if tau is None else float(tau)
        if not tau > 0:
            raise ValueError(f"tau={tau}: expected a positive temperature")
        head_gates, head_counts = _straight_through_gates(
            self.head_logits, self.head_candidate_valid, self.head_candidates,
            rank_units(self.head_importance, self.head_unit_valid), tau, self.training, hard)
        ffn_gates, ffn_counts = _straight_through_gates(
            self.ffn_logits, self.ffn_candidate_valid, self.ffn_candidates,
            rank_units(self.ffn_importance, self.ffn_unit_valid), tau, self.training, hard)
        self.last_counts = (head_counts.detach(), ffn_counts.detach())
        return head_gates, ffn_gates

    # --- probabilities and cost ---------------------------------------------------------------------
    def candidate_probs(self):
        """softmax(alpha) over the valid candidates: ``(head_probs [L, Ch], ffn_probs [L, Cf])``."""
        return (torch.softmax(self.head_logits.masked_fill(~self.head_candidate_valid, -math.inf), -1),
                torch.softmax(self.ffn_logits.masked_fill(~self.ffn_candidate_valid, -math.inf), -1))

    def _cost_counts(self, kind):
        counts, valid = getattr(self, f"{kind}_candidates"), getattr(self, f"{kind}_candidate_valid")
        return torch.where(valid, counts, torch.zeros_like(counts))

    def expected_cost(self, cost_model: CostModel, metric: Optional[str] = None) -> torch.Tensor:
        """Exact E[C] of the sampled structure (the sample is distributed as softmax(alpha))."""
        self.check_cost_model(cost_model)
        head_probs, ffn_probs = self.candidate_probs()
        return cost_model.expected_cost(head_probs, self._cost_counts("head"),
                                        ffn_probs, self._cost_counts("ffn"), metric)

    def expected_counts(self):
        """Expected head count and FFN width per layer, ``([L], [L])``."""
        head_probs, ffn_probs = self.candidate_probs()
        return ((head_probs * self._cost_counts("head")).sum(-1), (ffn_probs * self._cost_counts("ffn")).sum(-1))

    # --- deriving the final structure ---------------------------------------------------------------
    @torch.no_grad()
    def derive(self, cost_model: Optional[CostModel] = None, target: Optional[float] = None,
               metric: Optional[str] = None, fill: bool = True) -> DerivedStructure:
        """Most likely structure: argmax candidate per layer and block, top units by importance.

        With ``target`` (a ratio of the full cost; needs ``cost_model``) the argmax structure is then
        moved onto the budget one candidate step at a time, always taking the step that costs the
        least log-probability per unit of cost: while it is over budget, blocks shrink (always
        possible once the target passed ``budget.check_target``); then, with ``fill``, blocks grow
        while a step still fits, so that structures compared "at equal budget" really use it."""
        head_probs, ffn_probs = self.candidate_probs()
        logp = {"head": head_probs.clamp_min(1e-30).log().tolist(), "ffn": ffn_probs.clamp_min(1e-30).log().tolist()}
        choice = {"head": head_probs.argmax(-1).tolist(), "ffn": ffn_probs.argmax(-1).tolist()}
        counts = {kind: self._cost_counts(kind).tolist() for kind in ("head", "ffn")}
        last = {kind: (getattr(self, f"{kind}_candidate_valid").sum(-1) - 1).tolist() for kind in ("head", "ffn")}

        def current(kind):
            return [counts[kind][l][choice[kind][l]] for l in range(self.num_layers)]

        if target is not None:
            if cost_model is None:
                raise ValueError("derive(target=...) needs a cost_model")
            self.check_cost_model(cost_model)
            check_target(target, cost_model.min_ratio(metric))
            budget = target * cost_model.full_cost(metric) * (1 + 1e-12)
            unit_cost = {"head": cost_model.head_unit_cost(metric), "ffn": cost_model.channel_unit_cost(metric)}
            cost = cost_model.structure_cost(current("head"), current("ffn"), metric)

            def best_step(direction, room=math.inf):
                """(kind, layer, cost change) of the cheapest step in log-probability per unit cost."""
                best = None
                for kind in ("head", "ffn"):
                    for l in range(self.num_layers):
                        c = choice[kind][l]
                        n = c + direction
                        if n < 0 or n > last[kind][l]:
                            continue
                        delta = abs(counts[kind][l][n] - counts[kind][l][c]) * unit_cost[kind]
                        if delta <= 0 or (direction > 0 and delta > room):
                            continue
                        key = (logp[kind][l][c] - logp[kind][l][n]) / delta
                        if best is None or key < best[0]:
                            best = (key, kind, l, delta)
                return best

            while cost > budget:
                _, kind, l, delta = best_step(-1)
                choice[kind][l] -= 1
                cost -= delta
            while fill:
                step = best_step(+1, room=budget - cost)
                if step is None:
                    break
                _, kind, l, delta = step
                choice[kind][l] += 1
                cost += delta
        return self._keep_top(current("head"), current("ffn"))

    def extra_repr(self):
        return (f"num_heads={self.num_heads}, intermediate={self.intermediate}, granularity={self.granularity}, "
                f"tau={self.tau}")
