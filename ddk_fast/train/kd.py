"""The DDK training objective: recursive adaptive hidden-state KD + prediction KD + task loss.

Pieces come from their own modules (fusion and adaptive weights from ``ddk_fast.distill``, the fused
losses from ``ddk_fast.ops``); this module only wires them together and owns the few learned pieces
(the highway fusion gate) so that they live in one ``nn.Module`` the optimizer and checkpoints see.

Width pruning keeps the hidden size and the depth, so student state l (embeddings = 0) is matched to
the fused teacher target F_l one to one; no projection is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddk_fast.distill.objectives import sigmoid_kd_loss
from ddk_fast.ops.label_losses import span_rows, task_loss, token_rows

FUSIONS = ("param_free", "learned", "none")
WEIGHTINGS = ("adaptive", "uniform")


@dataclass
class KDWeights:
    hidden: float = 1.0
    pred: float = 1.0
    task: float = 0.5
    temperature: float = 2.0


class DistillObjective(nn.Module):
    """``loss, parts = objective(student_out, teacher_out, labels, token_mask)``.

    student_out / teacher_out: ``MaskedTransformerOutput`` with ``hidden_states`` (L+1 states) and
    ``logits``. ``parts`` holds detached 0-d tensors for logging (hidden, pred, task, total), left on the
    device: the loops read them at log steps only.
    """

    def __init__(self, num_states: int, hidden_size: int, is_regression: bool, weights: KDWeights,
                 fusion: str = "param_free", layer_weighting: str = "adaptive", hidden_loss: str = "mse",
                 path: str = "auto", multilabel: bool = False, qa: bool = False):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: expected one of {FUSIONS}")
        if layer_weighting not in WEIGHTINGS:
            raise ValueError(f"layer_weighting={layer_weighting!r}: expected one of {WEIGHTINGS}")
        self.num_states, self.is_regression, self.weights = num_states, is_regression, weights
        self.multilabel = bool(multilabel)  # multi-hot labels: sigmoid KD and BCE instead of softmax
        self.qa = bool(qa)  # [B, S, 2] span logits: KD on the start and end distributions over tokens
        self.fusion_kind, self.weighting, self.hidden_loss = fusion, layer_weighting, hidden_loss
        # the model's kernel paths (compact/triton/reference) vs the loss ops' paths (fused/reference)
        self.loss_path = "reference" if path == "reference" else "auto"
        self.fusion = None
        if fusion == "learned":
            from ddk_fast.distill import HighwayFusion

            self.fusion = HighwayFusion(hidden_size, num_states)
        self.layer_weights = None
        if layer_weighting == "adaptive":
            from ddk_fast.distill import LossShareWeights

            self.layer_weights = LossShareWeights(num_states, momentum=0.9)

    reads_padded_queries = False  # hidden states and logits only (same contract as KDObjective)

    def forward_kwargs(self) -> dict:
        """The ``output_*`` flags both forward passes need (same contract as the KD catalog's objective)."""
        return {"output_hidden_states": True}

    # --- targets ------------------------------------------------------------------------------------
    def targets(self, teacher_states, token_mask):
        states = list(teacher_states)
        if self.fusion_kind == "none":
            return states
        if self.fusion_kind == "learned":
            return list(self.fusion(states))
        from ddk_fast.distill import recursive_fusion

        return list(recursive_fusion(states, token_mask=token_mask))

    def _current_layer_weights(self, like: torch.Tensor) -> torch.Tensor:
        """Loss-share weights from the EMA of the previous steps' per-layer losses (uniform at first).

        Using the previous steps' values (the fused op returns them for free) avoids a second pass
        over every hidden state just to weight this step's loss."""
        ones = torch.ones(self.num_states, device=like.device, dtype=torch.float32)
        if self.layer_weights is None:
            return ones
        from ddk_fast.distill import loss_share_weights

        lw = self.layer_weights
        # chosen on the device: reading ``initialized`` on the host would be a sync every step
        shares = loss_share_weights(lw.ema, lw.power, lw.normalize).to(like.device)
        return torch.where(lw.initialized.to(like.device), shares, ones)

    # --- loss ---------------------------------------------------------------------------------------
    def forward(self, student_out, teacher_out, labels, token_mask):
        from ddk_fast.ops import hidden_distill_loss, soft_cross_entropy

        w = self.weights
        total = student_out.logits.new_zeros(())
        parts = {}
        if w.hidden > 0:
            student = list(student_out.hidden_states)
            targets = self.targets(teacher_out.hidden_states, token_mask)
            if len(student) != len(targets):
                raise ValueError(f"student has {len(student)} hidden states, teacher targets {len(targets)}")
            lw = self._current_layer_weights(student[0])
            if self.fusion is not None:
                # a learned fusion gate needs gradients on the target side, which the fused op refuses
                from ddk_fast.ops.distill_losses import hidden_distill_loss_reference

                hidden, per_layer = hidden_distill_loss_reference(student, targets, lw, token_mask,
                                                                  kind=self.hidden_loss)
                per_layer = per_layer.detach()
            else:
                hidden, per_layer = hidden_distill_loss(student, [t.detach() for t in targets], lw, token_mask,
                                                        kind=self.hidden_loss, path=self.loss_path,
                                                        return_per_layer=True, check_finite=False)
            if self.layer_weights is not None and self.training:
                self.layer_weights(per_layer)
            total = total + w.hidden * hidden
            parts["hidden"] = hidden.detach()
        s_logits, t_logits = student_out.logits, teacher_out.logits.detach()
        if w.pred > 0:
            if self.is_regression:
                pred = F.mse_loss(s_logits.float(), t_logits.float())
            elif self.multilabel:
                pred = sigmoid_kd_loss(s_logits, t_logits, w.temperature)
            elif self.qa:  # extractive QA: soft CE of the start and the end distributions over real tokens
                rows = span_rows(s_logits, t_logits, token_mask)
                pred = soft_cross_entropy(*rows, w.temperature, path=self.loss_path, check_finite=False)
            else:  # per-token logits (NER): one soft CE row per real token
                rows = token_rows(s_logits, t_logits, token_mask)
                pred = soft_cross_entropy(*rows, w.temperature, path=self.loss_path, check_finite=False)
            total = total + w.pred * pred
            parts["pred"] = pred.detach()
        if w.task > 0:
            task = task_loss(s_logits.float(), labels)
            total = total + w.task * task
            parts["task"] = task.detach()
        parts["kd_total"] = total.detach()
        return total, parts
