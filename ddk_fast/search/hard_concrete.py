"""Hard-concrete L0 gates per attention head and per FFN channel (Louizos et al. 2018; CoFi, Xia et
al. 2022), behind the same interface as the Gumbel width search.

Each unit has ``log_alpha``.  A training sample draws u ~ U(0, 1) and computes

    s = sigmoid((log u - log(1 - u) + log_alpha) / beta),   z = clamp(s * (r - l) + l, 0, 1)

with beta = 2/3, l = -0.1, r = 1.1: the stretch past [0, 1] puts real probability mass on exactly 0
and exactly 1.  P(z != 0) = sigmoid(log_alpha - beta * log(-l / r)), so the expected number of kept
units (the L0 norm) is a closed-form sum and, the cost being affine in the counts, E[C] is exact.

Unlike the Gumbel search, training gates may take values strictly between 0 and 1 (the units are
then scaled); exact zeros are still skipped by the kernels.  At eval the gates are deterministic:
the 0/1 mask of ``derive()`` (default, so evaluation sees the structure that will be pruned) or the
Louizos test-time estimate ``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)``.
"""
import math
from typing import Optional, Sequence

import torch
from torch import nn

from ddk_fast.search.base import DerivedStructure, StructureSearch
from ddk_fast.search.budget import check_target
from ddk_fast.search.cost import CostModel


class HardConcreteSearch(StructureSearch):
    """Args:
        num_heads, intermediate: per-layer sizes of the model being searched.
        beta, limit_l, limit_r: hard-concrete temperature and stretch interval.
        init_drop_rate: initial P(gate = 0)-like rate; log_alpha ~ N(log((1-p)/p), init_std).
        granularity: derived FFN widths are rounded down to multiples of it (or the full width).
        eval_gates: "derived" (0/1 mask of ``derive()``) or "louizos" (test-time estimate).
    """

    def __init__(self, num_heads: Sequence[int], intermediate: Sequence[int], beta: float = 2.0 / 3.0,
                 limit_l: float = -0.1, limit_r: float = 1.1, init_drop_rate: float = 0.5, init_std: float = 0.01,
                 granularity: int = 1, eval_gates: str = "derived", eps: float = 1e-6):
        super().__init__(num_heads, intermediate)
        if not (limit_l < 0.0 and limit_r > 1.0 and beta > 0):
            raise ValueError(f"limit_l={limit_l}, limit_r={limit_r}, beta={beta}: expected l < 0 < 1 < r, beta > 0")
        if not 0.0 < init_drop_rate < 1.0:
            raise ValueError(f"init_drop_rate={init_drop_rate}: expected a value in (0, 1)")
        if eval_gates not in ("derived", "louizos"):
            raise ValueError(f"eval_gates={eval_gates!r}: expected 'derived' or 'louizos'")
        if int(granularity) <= 0:
            raise ValueError(f"granularity={granularity}: expected a positive integer")
        self.beta, self.limit_l, self.limit_r, self.eps = float(beta), float(limit_l), float(limit_r), float(eps)
        self.granularity, self.eval_gates = int(granularity), eval_gates
        mean = math.log(1.0 - init_drop_rate) - math.log(init_drop_rate)
        self.head_log_alpha = nn.Parameter(torch.randn(self.num_layers, max(self.num_heads)) * init_std + mean)
        self.ffn_log_alpha = nn.Parameter(torch.randn(self.num_layers, max(self.intermediate)) * init_std + mean)

    # --- gates ----------------------------------------------------------------------------------------
    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z != 0) = 1 - CDF(s_bar <= 0) = sigmoid(log_alpha - beta * log(-l / r))."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.limit_l / self.limit_r))

    def _sample_gates(self, log_alpha, valid):
        u = torch.empty_like(log_alpha).uniform_(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        z = (s * (self.limit_r - self.limit_l) + self.limit_l).clamp(0.0, 1.0)
        return z * valid

    def _louizos_gates(self, log_alpha, valid):
        z = (torch.sigmoid(log_alpha) * (self.limit_r - self.limit_l) + self.limit_l).clamp(0.0, 1.0)
        return z * valid

    def sample(self, tau: Optional[float] = None, hard: bool = True):
        """Gates ``([L, max H], [L, max I])``; ``tau`` and ``hard`` are accepted for interface
        compatibility and ignored (the hard-concrete temperature is ``beta``)."""
        if self.training:
            return (self._sample_gates(self.head_log_alpha, self.head_unit_valid),
                    self._sample_gates(self.ffn_log_alpha, self.ffn_unit_valid))
        if self.eval_gates == "louizos":
            return (self._louizos_gates(self.head_log_alpha, self.head_unit_valid),
                    self._louizos_gates(self.ffn_log_alpha, self.ffn_unit_valid))
        return self.derive().gates(self.num_heads, self.intermediate, dtype=self.head_log_alpha.dtype,
                                   device=self.head_log_alpha.device)

    # --- cost -----------------------------------------------------------------------------------------
    def expected_counts(self):
        """Expected L0 norm per layer, ``(heads [L], channels [L])``."""
        return ((self.prob_nonzero(self.head_log_alpha) * self.head_unit_valid).sum(-1),
                (self.prob_nonzero(self.ffn_log_alpha) * self.ffn_unit_valid).sum(-1))

    def expected_cost(self, cost_model: CostModel, metric: Optional[str] = None) -> torch.Tensor:
        self.check_cost_model(cost_model)
        heads, channels = self.expected_counts()
        return cost_model.expected_cost_from_counts(heads, channels, metric)

    # --- deriving -------------------------------------------------------------------------------------
    def _round_ffn(self, count, size):
        return count if count == size else (count // self.granularity) * self.granularity

    @torch.no_grad()
    def derive(self, cost_model: Optional[CostModel] = None, target: Optional[float] = None,
               metric: Optional[str] = None) -> DerivedStructure:
        """Without ``target``: per layer keep round(E[L0]) units with the largest log_alpha (CoFi).
        With ``target``: keep units in decreasing log_alpha over all layers while they fit in
        ``target * full_cost`` (cheaper units may still fit after a costlier one did not), then round
        FFN widths down to the granularity.  Ties go to the lower index."""
        order = {kind: torch.argsort(getattr(self, f"{kind}_log_alpha").masked_fill(
            ~getattr(self, f"{kind}_unit_valid"), -math.inf), dim=1, descending=True, stable=True)
            for kind in ("head", "ffn")}
        if target is None:
            heads, channels = self.expected_counts()
            head_counts = [min(int(round(h)), n) for h, n in zip(heads.tolist(), self.num_heads)]
            ffn_counts = [self._round_ffn(min(int(round(c)), n), n) for c, n in zip(channels.tolist(), self.intermediate)]
        else:
            if cost_model is None:
                raise ValueError("derive(target=...) needs a cost_model")
            self.check_cost_model(cost_model)
            check_target(target, cost_model.min_ratio(metric))
            head_counts, ffn_counts = self._greedy_counts(cost_model, target, metric)
        return DerivedStructure(
            heads=[order["head"][l, :k].tolist() for l, k in enumerate(head_counts)],
            ffn=[order["ffn"][l, :n].tolist() for l, n in enumerate(ffn_counts)])

    def _greedy_counts(self, cost_model, target, metric):
        scores, costs, layers, kinds = [], [], [], []
        for kind_id, (kind, unit_cost, sizes) in enumerate((
                ("head", cost_model.head_unit_cost(metric), self.num_heads),
                ("ffn", cost_model.channel_unit_cost(metric), self.intermediate))):
            log_alpha = getattr(self, f"{kind}_log_alpha")
            for l, n in enumerate(sizes):
                scores.append(log_alpha[l, :n])
                costs.append(torch.full((n,), float(unit_cost), dtype=torch.float64))
                layers.append(torch.full((n,), l, dtype=torch.long))
                kinds.append(torch.full((n,), kind_id, dtype=torch.long))
        scores, costs, layers, kinds = (torch.cat(x) for x in (scores, costs, layers, kinds))
        order = torch.argsort(scores.detach().cpu(), descending=True, stable=True)
        budget = target * cost_model.full_cost(metric) - cost_model.min_cost(metric)
        counts = [[0] * self.num_layers, [0] * self.num_layers]
        spent = 0.0
        for c, l, k in zip(costs[order].tolist(), layers[order].tolist(), kinds[order].tolist()):
            if spent + c <= budget * (1 + 1e-12):
                spent += c
                counts[k][l] += 1
        ffn = [self._round_ffn(n, size) for n, size in zip(counts[1], self.intermediate)]
        return counts[0], ffn

    def extra_repr(self):
        return (f"num_heads={self.num_heads}, intermediate={self.intermediate}, beta={self.beta:.4f}, "
                f"l={self.limit_l}, r={self.limit_r}, eval_gates={self.eval_gates!r}")
