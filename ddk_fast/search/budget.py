"""Budget losses that push the expected cost ratio s = E[C] / C_full to a target t.

``LagrangianBudget`` (CoFi, Xia et al. 2022): ``lambda1 * (s - t) + lambda2 * (s - t)^2``.  The
multipliers solve ``min_theta max_lambda``: they must go *up* the gradient while everything else goes
down.  CoFi gives them an optimizer with a negative learning rate, which current ``torch.optim``
rejects.  Here the multipliers enter the loss through a gradient reversal (value ``lambda``,
gradient ``-dL/dlambda``), so one ordinary optimizer minimising the total loss performs gradient
*ascent* on them: while s > t, lambda1 grows and pushes s down; once s < t it shrinks and lets s
rise; lambda2 only grows, stiffening the constraint.  The result is an equality constraint: s -> t.

Damping: with both multipliers starting at 0 (CoFi), the min-max dynamics oscillate around the
target for a long time (in a 200-step toy search: +-10 % of the ratio).  The quadratic term is a
proportional restoring force that damps them, so lambda2 starts at ``lambda_2_init = 10`` by default
(the same toy then settles within ~1-2 %); pass 0 for CoFi's exact initialisation.

``OneSidedBudget``: ``weight * relu(s - t)^2`` -- no extra parameters, only penalises exceeding the
budget (the task loss decides how far below it to go).
"""
from typing import Optional

import torch
from torch import nn

from ddk_fast.search.cost import CostModel


def check_target(target, min_ratio: float = 0.0) -> float:
    """Validate a budget ratio: in (0, 1] and not below what the search space can reach."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise ValueError(f"target={target!r}: expected a number, the fraction of the full cost to keep") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"target={target}: expected a cost ratio in (0, 1] (fraction of the full model's "
                         f"cost to keep, e.g. 0.4)")
    if value < min_ratio:
        raise ValueError(f"target={target} is below the minimum achievable cost ratio {min_ratio:.6f} "
                         f"(with every head and FFN channel removed the biases and LayerNorms remain); "
                         f"expected a target >= {min_ratio:.6f}")
    return value


def _gradient_ascent(parameter: torch.Tensor) -> torch.Tensor:
    """Same value, negated gradient: minimising the loss maximises it w.r.t. ``parameter``."""
    return 2 * parameter.detach() - parameter


def _min_ratio(cost_model: Optional[CostModel], metric: Optional[str], min_ratio: float) -> float:
    return cost_model.min_ratio(metric) if cost_model is not None else float(min_ratio)


class LagrangianBudget(nn.Module):
    """``loss = budget(ratio)``; put ``budget.parameters()`` in the optimizer (no weight decay).

    Args:
        target: cost ratio to reach, in (0, 1].
        cost_model / min_ratio: the lowest reachable ratio, to reject impossible targets.
        warmup_steps: if > 0, the target moves linearly from 1 to ``target`` over that many steps
            (``forward(ratio, step)``), as CoFi does, so the model is not cut abruptly.
    """

    def __init__(self, target: float, cost_model: Optional[CostModel] = None, metric: Optional[str] = None,
                 min_ratio: float = 0.0, warmup_steps: int = 0, lambda_1_init: float = 0.0,
                 lambda_2_init: float = 10.0):
        super().__init__()
        self.target = check_target(target, _min_ratio(cost_model, metric, min_ratio))
        self.warmup_steps = int(warmup_steps)
        self.lambda_1 = nn.Parameter(torch.tensor(float(lambda_1_init)))
        self.lambda_2 = nn.Parameter(torch.tensor(float(lambda_2_init)))

    def target_at(self, step: Optional[int] = None) -> float:
        if step is None or self.warmup_steps <= 0:
            return self.target
        progress = min(max(step, 0) / self.warmup_steps, 1.0)
        return 1.0 - (1.0 - self.target) * progress

    def forward(self, ratio: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        gap = ratio - self.target_at(step)
        return _gradient_ascent(self.lambda_1) * gap + _gradient_ascent(self.lambda_2) * gap * gap

    def extra_repr(self):
        return f"target={self.target}, warmup_steps={self.warmup_steps}"


class OneSidedBudget(nn.Module):
    """``weight * relu(ratio - target) ** power``: no penalty under the budget."""

    def __init__(self, target: float, weight: float = 10.0, power: float = 2.0, cost_model: Optional[CostModel] = None,
                 metric: Optional[str] = None, min_ratio: float = 0.0, warmup_steps: int = 0):
        super().__init__()
        if weight <= 0 or power <= 0:
            raise ValueError(f"weight={weight}, power={power}: expected positive numbers")
        self.target = check_target(target, _min_ratio(cost_model, metric, min_ratio))
        self.weight, self.power, self.warmup_steps = float(weight), float(power), int(warmup_steps)

    target_at = LagrangianBudget.target_at

    def forward(self, ratio: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        return self.weight * torch.relu(ratio - self.target_at(step)) ** self.power

    def extra_repr(self):
        return f"target={self.target}, weight={self.weight}, power={self.power}"


BUDGETS = {"lagrangian": LagrangianBudget, "one_sided": OneSidedBudget}


def build_budget(kind: str = "lagrangian", target: float = 0.5, cost_model: Optional[CostModel] = None, **kwargs):
    """``build_budget("lagrangian" | "one_sided", target, cost_model=None, **kwargs)``."""
    if kind not in BUDGETS:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(BUDGETS)}")
    return BUDGETS[kind](target, cost_model=cost_model, **kwargs)
