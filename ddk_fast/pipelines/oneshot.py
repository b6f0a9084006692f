"""One-shot, retraining-free pruning of a fine-tuned teacher: importance from calibration data, a
global mask search under the budget, rearrangement, physical pruning and least-squares unit scales.

Shared by ``ddk-fast prune`` (the result is the product) and ``ddk-fast compress --init oneshot``
(the result is the search's starting point). Every stage is timed, and the structure after each
stage is kept so that the caller can evaluate what each stage bought.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from ddk_fast.model import Structure, prune
from ddk_fast.model.reconstruct import TuningReport, tune_unit_scales
from ddk_fast.ops.label_losses import IGNORE_INDEX, task_loss
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


def unit_scores(teacher, batches: list[dict], importance: str, path: str = "auto", structure=None):
    """(head scores [L, H], FFN scores [L, I], per-batch gate gradients or None).

    With a ``structure`` (Fisher only) the scores are those of the model pruned to it, and units it
    removed score -1, below every kept unit (Fisher scores are >= 0), so a search never brings them back."""
    if importance == "fisher":
        head_mask = ffn_mask = None
        if structure is not None:
            head_mask, ffn_mask = _masks(structure, teacher)
        grads = gate_gradients(teacher, batches, path=path, head_mask=head_mask, ffn_mask=ffn_mask)
        head, ffn = grads.fisher()
        if structure is not None:
            head = torch.where(head_mask.bool(), head, torch.full_like(head, -1.0))
            ffn = torch.where(ffn_mask.bool(), ffn, torch.full_like(ffn, -1.0))
        return head, ffn, grads
    if importance == "activation":
        head, ffn = activation_importance(teacher, batches, path=path)
        return head, ffn, None
    raise ValueError(f"importance={importance!r}: expected one of {IMPORTANCE_KINDS}")


def _masks(structure: DerivedStructure, teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 gate masks [L, max H], [L, max I] keeping ``structure``'s units."""
    heads, sizes = teacher.num_heads, teacher.intermediate_sizes
    head_mask = torch.zeros(len(heads), max(heads), dtype=torch.float64)
    ffn_mask = torch.zeros(len(sizes), max(sizes), dtype=torch.float64)
    for l, (h, f) in enumerate(zip(structure.heads, structure.ffn)):
        head_mask[l, list(h)] = 1.0
        ffn_mask[l, list(f)] = 1.0
    return head_mask, ffn_mask


def spread_subset(batches: list, examples: int) -> list:
    """Every k-th batch, so that about ``examples`` examples remain. Calibration batches are sorted by
    length; a stride keeps short and long ones alike, where the first few batches would all be long."""
    per_batch = max(1, len(batches[0]["input_ids"])) if batches else 1
    wanted = max(1, -(-int(examples) // per_batch))
    if wanted >= len(batches):
        return list(batches)
    stride = len(batches) / wanted
    return [batches[int(i * stride)] for i in range(wanted)]


def _scored_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """How many items ``task_loss`` averages over: labelled tokens for per-token labels (token
    classification), examples otherwise."""
    if logits.dim() == 3 and labels.dim() == 2 and tuple(labels.shape) == tuple(logits.shape[:2]):
        return int((labels != IGNORE_INDEX).sum())
    return len(labels)


@torch.no_grad()
def held_out_eval(model, batches: list[dict], score_logits=None, path: str = "auto") -> tuple[float, float | None]:
    """(mean task loss, task score or None) of ``model`` (eval mode, restored) over ``batches``, from one
    forward pass per batch: the tuning check needs both for two students, and the forwards are its cost.

    The loss weights each batch by what it averages over (examples, or labelled tokens); batches with
    nothing to score are skipped (nan when none is left). The score is ``score_logits(logits, labels)``
    (higher is better) over all rows pooled, None without ``score_logits``, where the task has no
    per-example score (per-token or span logits), or where the score is nan."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    logits, labels, per_example = [], [], score_logits is not None
    try:
        for b in batches:
            out = model(b["input_ids"], attention_mask=b.get("attention_mask"),
                        token_type_ids=b.get("token_type_ids"), path=path)
            n = _scored_count(out.logits, b["labels"])
            if n:
                total += float(task_loss(out.logits, b["labels"])) * n
                count += n
            per_example = per_example and out.logits.dim() == 2
            if per_example:
                logits.append(out.logits.float().cpu())
                labels.append(b["labels"].cpu())
    finally:
        model.train(was_training)
    loss = total / count if count else float("nan")
    if not (per_example and logits):
        return loss, None
    value = float(score_logits(torch.cat(logits), torch.cat(labels)))
    return loss, None if math.isnan(value) else value


def held_out_loss(model, batches: list[dict], path: str = "auto") -> float:
    """Mean task loss of ``model`` over ``batches`` (see :func:`held_out_eval`)."""
    return held_out_eval(model, batches, None, path)[0]


def _tune_checked(student, teacher, batches: list[dict], tuning_examples: int, check_examples: int,
                  path: str, ridge: float, score_logits=None):
    """Least-squares tuning kept only when it helps on calibration examples it did not see. The least
    squares match each sublayer's output, not the prediction, so nothing guarantees that the
    prediction improves. With ``score_logits`` (the task's own score of a set of logits, e.g. MCC or
    F1/accuracy) the held-out score decides, the task loss breaking a tie: the loss can fall while
    the decisions get worse (CoLA: held-out loss 0.542 -> 0.494 with dev MCC 26.3 -> 20.8). Without
    it (token and span tasks, or an API caller that gives none) the held-out task loss decides.
    No examples left over (the tuning used them all) or none with a label to score: the tuned student
    is kept unchecked."""
    tuning_batches = spread_subset(batches, tuning_examples)
    used = {id(b) for b in tuning_batches}
    rest = [b for b in batches if id(b) not in used]
    untuned = copy.deepcopy(student) if rest and check_examples > 0 else None
    tuning = tune_unit_scales(student, teacher, tuning_batches, path=path, ridge=ridge)
    if untuned is None:
        return student, tuning
    check = spread_subset(rest, check_examples)
    before, score_before = held_out_eval(untuned, check, score_logits, path)
    after, score_after = held_out_eval(student, check, score_logits, path)
    if math.isnan(before) or math.isnan(after):
        return student, tuning
    tuning.held_out_loss_untuned, tuning.held_out_loss_tuned = before, after
    tuning.kept = after < before
    if score_before is not None and score_after is not None:
        tuning.held_out_score_untuned, tuning.held_out_score_tuned = score_before, score_after
        tuning.kept = score_after > score_before or (score_after == score_before and after < before)
    return (student if tuning.kept else untuned), tuning


def one_shot(teacher, batches: list[dict], cost_model, metric: str, ratio: float, granularity: int = 1,
             importance: str = "fisher", rearrange_units: bool = True, tune: bool = True,
             build_student: bool = True, path: str = "auto", ridge: float = 1e-3,
             tuning_examples: int = 512, importance_iterations: int = 1,
             tuning_check_examples: int = 512, score_logits=None) -> OneShotResult:
    """Run the stages on ``teacher`` (left unchanged) with calibration ``batches`` (on its device).

    Rearrangement needs the per-batch gradients, so it runs only with Fisher importance. The least
    squares use ``tuning_examples`` of the calibration examples (``spread_subset``): with a few hundred
    unknowns per sublayer, 512 examples (tens of thousands of tokens) already over-determine them, and
    the tuning costs about three forward passes per example. ``tuning_check_examples`` of the other
    calibration examples decide whether the tuned scales are kept (``_tune_checked``; 0: always kept), by
    ``score_logits(logits, labels)`` (the task's score) when given, else by the task loss.

    ``importance_iterations`` k > 1 (Fisher only) prunes in k steps of the budget, 1 -> ``ratio``:
    each step scores the units of the model pruned so far (a unit's importance depends on which
    others remain) and removed units stay removed; each step costs one importance pass."""
    if int(importance_iterations) < 1:
        raise ValueError(f"importance_iterations={importance_iterations}: expected >= 1")
    if importance_iterations > 1 and importance != "fisher":
        raise ValueError("importance_iterations > 1 needs importance='fisher'")
    timings = {}
    t0 = time.perf_counter()
    current = None
    for step in range(1, int(importance_iterations)):
        head_scores, ffn_scores, _ = unit_scores(teacher, batches, importance, path, structure=current)
        step_ratio = 1.0 - (1.0 - ratio) * step / importance_iterations
        current = fisher_mask_search(cost_model, head_scores, ffn_scores, step_ratio, metric, granularity)
    head_scores, ffn_scores, grads = unit_scores(teacher, batches, importance, path, structure=current)
    timings["importance_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    searched = fisher_mask_search(cost_model, head_scores, ffn_scores, ratio, metric, granularity)
    structure, stats = searched, None
    if rearrange_units and grads is not None:
        head_grads, ffn_grads = grads.heads, grads.ffn
        if current is not None:
            # units removed by earlier steps have gate 0: skipped by the engine, no gradient; keep it so
            head_mask, ffn_mask = _masks(current, teacher)
            head_grads, ffn_grads = head_grads * head_mask, ffn_grads * ffn_mask
        structure, stats = rearrange(searched, head_grads, ffn_grads, teacher.num_heads, teacher.intermediate_sizes)
    timings["mask_search_s"] = time.perf_counter() - t0

    student, tuning = None, None
    if build_student:
        t0 = time.perf_counter()
        base = copy.deepcopy(teacher)
        student = prune(base, Structure.from_indices(structure.heads, structure.ffn, teacher))
        if tune:
            student, tuning = _tune_checked(student, teacher, batches, tuning_examples,
                                            int(tuning_check_examples), path, ridge, score_logits)
        timings["tuning_s"] = time.perf_counter() - t0
    return OneShotResult(head_scores, ffn_scores, searched, structure, student, grads, stats, tuning, timings)


__all__ = ["IMPORTANCE_KINDS", "OneShotResult", "held_out_eval", "held_out_loss", "one_shot", "unit_scores"]
