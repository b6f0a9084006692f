"""One-shot, retraining-free pruning of a fine-tuned teacher: importance from calibration data, a
global mask search under the budget, rearrangement, physical pruning and least-squares unit scales.

Shared by ``ddk-fast prune`` (the result is the product) and ``ddk-fast compress --init oneshot``
(the result is the search's starting point). Every stage is timed, and the structure after each
stage is kept so that the caller can evaluate what each stage bought.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch

from ddk_fast.model import Structure, prune
from ddk_fast.model.reconstruct import TuningReport, tune_unit_scales
from ddk_fast.search.base import DerivedStructure
from ddk_fast.search.calibration import GateGradients, activation_importance, gate_gradients
from ddk_fast.search.oneshot import fisher_mask_search, rearrange

IMPORTANCE_KINDS = ("fisher", "activation")


@dataclass
class OneShotResult:
    """What ``one_shot`` found; ``student`` is the pruned, tuned model (None when ``build_student``
    was off)."""

    head_scores: torch.Tensor
    ffn_scores: torch.Tensor
    searched: DerivedStructure
    structure: DerivedStructure
    student: object | None
    gradients: GateGradients | None
    rearrangement: dict | None
    tuning: TuningReport | None
    timings: dict = field(default_factory=dict)

    def to_structure(self, model) -> Structure:
        return Structure.from_indices(self.structure.heads, self.structure.ffn, model)

    def to(self, device) -> "OneShotResult":
        """The same result with its scores and student on ``device`` (gradients stay on the CPU)."""
        student = None if self.student is None else self.student.to(device)
        return dataclasses.replace(self, head_scores=self.head_scores.to(device),
                                   ffn_scores=self.ffn_scores.to(device), student=student)


def unit_scores(teacher, batches: list[dict], importance: str, path: str = "auto"):
    """(head scores [L, H], FFN scores [L, I], per-batch gate gradients or None)."""
    if importance == "fisher":
        grads = gate_gradients(teacher, batches, path=path)
        head, ffn = grads.fisher()
        return head, ffn, grads
    if importance == "activation":
        head, ffn = activation_importance(teacher, batches, path=path)
        return head, ffn, None
    raise ValueError(f"importance={importance!r}: expected one of {IMPORTANCE_KINDS}")


def spread_subset(batches: list, examples: int) -> list:
    """Every k-th batch, so that about ``examples`` examples remain. Calibration batches are sorted by
    length; a stride keeps short and long ones alike, where the first few batches would all be long."""
    per_batch = max(1, len(batches[0]["input_ids"])) if batches else 1
    wanted = max(1, -(-int(examples) // per_batch))
    if wanted >= len(batches):
        return list(batches)
    stride = len(batches) / wanted
    return [batches[int(i * stride)] for i in range(wanted)]


def one_shot(teacher, batches: list[dict], cost_model, metric: str, ratio: float, granularity: int = 1,
             importance: str = "fisher", rearrange_units: bool = True, tune: bool = True,
             build_student: bool = True, path: str = "auto", ridge: float = 1e-3,
             tuning_examples: int = 512) -> OneShotResult:
    """Run the stages on ``teacher`` (left unchanged) with calibration ``batches`` (on its device).

    Rearrangement needs the per-batch gradients, so it runs only with Fisher importance. The least
    squares use ``tuning_examples`` of the calibration examples (``spread_subset``): with a few hundred
    unknowns per sublayer, 512 examples (tens of thousands of tokens) already over-determine them, and
    the tuning costs about three forward passes per example."""
    timings = {}
    t0 = time.perf_counter()
    head_scores, ffn_scores, grads = unit_scores(teacher, batches, importance, path)
    timings["importance_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    searched = fisher_mask_search(cost_model, head_scores, ffn_scores, ratio, metric, granularity)
    structure, stats = searched, None
    if rearrange_units and grads is not None:
        structure, stats = rearrange(searched, grads.heads, grads.ffn, teacher.num_heads, teacher.intermediate_sizes)
    timings["mask_search_s"] = time.perf_counter() - t0

    student, tuning = None, None
    if build_student:
        t0 = time.perf_counter()
        base = copy.deepcopy(teacher)
        student = prune(base, Structure.from_indices(structure.heads, structure.ffn, teacher))
        if tune:
            tuning = tune_unit_scales(student, teacher, spread_subset(batches, tuning_examples), path=path,
                                      ridge=ridge)
        timings["tuning_s"] = time.perf_counter() - t0
    return OneShotResult(head_scores, ffn_scores, searched, structure, student, grads, stats, tuning, timings)


__all__ = ["IMPORTANCE_KINDS", "OneShotResult", "one_shot", "unit_scores"]
