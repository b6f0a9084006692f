"""Losses against labels and per-token logit rows, shared by importance scoring, training and KD.

Per-sequence logits are ``[B, C]``; per-token logits (token classification, causal LMs) are
``[B, S, C]``. One function per question, so a new head shape is handled in one place: ``task_loss``
(hard labels; tokens labelled ``IGNORE_INDEX`` -- later word pieces, special tokens, padding -- are not
scored) and ``token_rows`` (the ``[N, C]`` rows of real tokens, for per-token KD).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross entropy (classification; per token for ``[B, S, C]`` logits, ``IGNORE_INDEX``
    labels skipped), binary cross entropy (multi-hot float labels ``[B, C]``: multi-label) or squared
    error (one output: regression)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if labels.dim() == 2 and labels.is_floating_point() and logits.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
                               ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, labels.long())


def token_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None):
    """``[B, S, C]`` student/teacher logits -> their ``[N, C]`` rows where ``mask`` [B, S] is non-zero
    (None: every row); ``[B, C]`` logits come back unchanged."""
    if student.dim() != 3:
        return student, teacher
    flat_s, flat_t = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    if mask is None:
        return flat_s, flat_t
    keep = mask.reshape(-1).bool()
    return flat_s[keep], flat_t[keep]


__all__ = ["IGNORE_INDEX", "task_loss", "token_rows"]
