"""Progressive indicators (GPP, Zhang et al. 2024 family): no architecture parameters; units are
ranked by importance and the least important ones fade out on a schedule.

At every call the plan is recomputed from the current importance scores: for each block type
(heads, FFN channels), the units with the lowest importance across all layers are marked for removal
until the cost that type can lose has shrunk by the fraction that reaches ``target`` (both types give
up the same fraction of their prunable cost; importance is compared within a type only, since Taylor
scores of heads and of channels live on different scales).  Marked units get the indicator
``1 - level(step)``, kept units 1, where the level follows Zhu & Gupta's cubic schedule

    level(t) = 1 - (1 - t / T) ** 3       (or "linear": t / T, "cosine": ((1 - cos(pi t / T)) / 2) ** 2)

so the model adapts while the marked units fade; from step T on the indicators are exactly 0/1 (the
pruned units are skipped by the kernels).  A unit whose importance recovers while it fades can leave
the plan again.
"""
import math
from typing import Optional, Sequence

import torch

from ddk_fast.search.base import DerivedStructure, RankedUnitsMixin, StructureSearch
from ddk_fast.search.budget import check_target
from ddk_fast.search.cost import CostModel

SCHEDULES = ("cubic", "linear", "cosine")


class ProgressiveSearch(RankedUnitsMixin, StructureSearch):
    """Args:
        num_heads, intermediate: per-layer sizes.
        cost_model, target: the budget (ratio of the full cost) reached at ``total_steps``.
        total_steps: length of the fade-out; ``set_step(step)`` (or ``step()``) moves along it.
        schedule: "cubic" (default), "linear" or "cosine".
        granularity: kept FFN widths are rounded down to multiples of it (or the full width).
        importance_momentum, head_importance, ffn_importance: as in ``GumbelWidthSearch``.
    """

    def __init__(self, num_heads: Sequence[int], intermediate: Sequence[int], cost_model: CostModel, target: float,
                 total_steps: int, schedule: str = "cubic", granularity: int = 1, importance_momentum: float = 0.9,
                 head_importance=None, ffn_importance=None):
        super().__init__(num_heads, intermediate)
        self._init_importance(importance_momentum, head_importance, ffn_importance)
        self.check_cost_model(cost_model)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")
        if int(granularity) <= 0:
            raise ValueError(f"granularity={granularity}: expected a positive integer")
        if int(total_steps) <= 0:
            raise ValueError(f"total_steps={total_steps}: expected a positive integer")
        self.cost_model, self.schedule, self.total_steps = cost_model, schedule, int(total_steps)
        self.target = check_target(target, cost_model.min_ratio())
        self.granularity = int(granularity)
        self.register_buffer("current_step", torch.zeros((), dtype=torch.long))

    def arch_parameters(self):
        """None: the indicators follow the schedule and the importance ranking."""
        return []

    # --- schedule -------------------------------------------------------------------------------------
    def on_step(self, step: int, temperature: float) -> None:
        """The fade-out follows the loop's step (no temperature: the indicators are not sampled)."""
        self.set_step(step)

    def set_step(self, step: int):
        self.current_step.fill_(int(step))

    def step(self):
        self.current_step.add_(1)

    def level(self, step: Optional[int] = None) -> float:
        """Fraction of the fade-out done at ``step`` (default: the current step), in [0, 1]."""
        t = min(max(int(self.current_step if step is None else step), 0) / self.total_steps, 1.0)
        if self.schedule == "cubic":
            return 1.0 - (1.0 - t) ** 3
        if self.schedule == "linear":
            return t
        return ((1.0 - math.cos(math.pi * t)) / 2.0) ** 2

    # --- plan -----------------------------------------------------------------------------------------
    def _plan_counts(self, cost_model: CostModel, target: float, metric: Optional[str]):
        """Kept units per layer: per type, drop the globally least important units."""
        full, fixed = cost_model.full_cost(metric), cost_model.min_cost(metric)
        keep_fraction = (target * full - fixed) / (full - fixed)
        counts = {}
        for kind, sizes in (("head", self.num_heads), ("ffn", self.intermediate)):
            importance = getattr(self, f"{kind}_importance")
            valid = getattr(self, f"{kind}_unit_valid")
            total = sum(sizes)
            keep = int(math.floor(keep_fraction * total + 1e-9))
            scores = importance.masked_fill(~valid, -math.inf).flatten()
            order = torch.argsort(scores, descending=True, stable=True)[:keep]
            kept = torch.zeros_like(scores, dtype=torch.bool)
            kept[order] = True
            counts[kind] = kept.reshape(valid.shape).sum(1).tolist()
        ffn = [n if n == size else (n // self.granularity) * self.granularity
               for n, size in zip(counts["ffn"], self.intermediate)]
        return counts["head"], ffn

    @torch.no_grad()
    def derive(self, cost_model: Optional[CostModel] = None, target: Optional[float] = None,
               metric: Optional[str] = None) -> DerivedStructure:
        """The final structure of the current plan (or for another ``target``)."""
        cost_model = self.cost_model if cost_model is None else cost_model
        self.check_cost_model(cost_model)
        target = self.target if target is None else check_target(target, cost_model.min_ratio(metric))
        heads, ffn = self._plan_counts(cost_model, target, metric)
        return self._keep_top(heads, ffn)

    def sample(self, tau: Optional[float] = None, hard: bool = True):
        """Indicators ``([L, max H], [L, max I])``: 1 for kept units, ``1 - level`` for the fading ones
        (exactly 0 from ``total_steps`` on).  ``tau`` / ``hard`` are ignored."""
        keep_heads, keep_ffn = self.derive().gates(self.num_heads, self.intermediate,
                                                   device=self.head_importance.device)
        fade = 1.0 - self.level()
        head = torch.where(keep_heads > 0, keep_heads, fade * self.head_unit_valid.float())
        ffn = torch.where(keep_ffn > 0, keep_ffn, fade * self.ffn_unit_valid.float())
        return head, ffn

    def expected_cost(self, cost_model: Optional[CostModel] = None, metric: Optional[str] = None) -> torch.Tensor:
        """Cost with fading units counted at their indicator value (a constant: nothing to learn)."""
        cost_model = self.cost_model if cost_model is None else cost_model
        head, ffn = self.sample()
        return cost_model.expected_cost_from_counts(head.sum(1).double(), ffn.sum(1).double(), metric)

    def extra_repr(self):
        return (f"num_heads={self.num_heads}, intermediate={self.intermediate}, target={self.target}, "
                f"schedule={self.schedule!r}, total_steps={self.total_steps}")
