"""Losses against labels and per-token logit rows, shared by importance scoring, training and KD.

Per-sequence logits are ``[B, C]``; per-token logits (token classification, causal LMs) are
``[B, S, C]``; extractive QA's are ``[B, S, 2]`` (each token's start and end logit) with ``[B, 2]``
labels (the answer's start and end positions). One function per question, so a new head shape is
handled in one place: ``task_loss`` (hard labels; tokens labelled ``IGNORE_INDEX`` -- later word pieces,
special tokens, padding -- are not scored), ``token_rows`` (the ``[N, C]`` rows of real tokens, for
per-token KD) and ``span_rows`` (QA's start and end distributions over the real tokens, for span KD).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# the logit of a padding position in span distributions: zero probability, yet finite (no 0 * inf)
SPAN_PAD_LOGIT = -1.0e4


def is_span_batch(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """QA: ``[B, S, 2]`` logits with ``[B, 2]`` start/end positions (not one label per token)."""
    return (logits.dim() == 3 and logits.shape[-1] == 2 and labels.dim() == 2 and labels.shape[1] == 2
            and tuple(labels.shape) != tuple(logits.shape[:2]))


def span_loss(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross entropies over the sequence (BertForQuestionAnswering's loss):
    ``logits`` [B, S, 2], ``positions`` [B, 2] (start, end token)."""
    logits = logits.float()
    return (F.cross_entropy(logits[..., 0], positions[:, 0].long())
            + F.cross_entropy(logits[..., 1], positions[:, 1].long())) / 2


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross entropy (classification; per token for ``[B, S, C]`` logits, ``IGNORE_INDEX``
    labels skipped), binary cross entropy (multi-hot float labels ``[B, C]``: multi-label), squared
    error (one output: regression) or the span loss (QA: ``[B, S, 2]`` logits, ``[B, 2]`` positions)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if labels.dim() == 2 and labels.is_floating_point() and logits.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if is_span_batch(logits, labels):
        return span_loss(logits, labels)
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


def span_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None):
    """QA ``[B, S, 2]`` student/teacher logits -> ``[2B, S]`` rows: every sequence's start logits, then its
    end logits, padding positions (``mask`` [B, S] zero) set to ``SPAN_PAD_LOGIT`` in both, so a softmax
    over a row is a distribution over the real tokens."""
    rows_s, rows_t = (torch.cat([x[..., 0], x[..., 1]], 0) for x in (student, teacher))
    if mask is None:
        return rows_s, rows_t
    pad = ~mask.bool().repeat(2, 1)
    return rows_s.masked_fill(pad, SPAN_PAD_LOGIT), rows_t.masked_fill(pad, SPAN_PAD_LOGIT)


__all__ = ["IGNORE_INDEX", "SPAN_PAD_LOGIT", "is_span_batch", "span_loss", "span_rows", "task_loss", "token_rows"]
