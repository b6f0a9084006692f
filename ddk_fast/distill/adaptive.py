"""Adaptive per-layer loss weights: the ``layer_weights [L]`` tensor for the fused distillation ops
(``ddk_fast.ops.hidden_distill_loss(student_list, teacher_list, layer_weights, token_mask, kind)``).

Two opposite philosophies, both selectable:

* ``LossShareWeights`` -- weight proportional to each layer's current loss share (detached): the
  layers the student matches worst get the most attention.  ``power`` sharpens (>1) or flattens (<1)
  the shares, ``momentum`` smooths them over steps.
* ``UncertaintyWeights`` -- learned homoscedastic-uncertainty weights (Kendall, Gal & Cipolla 2018):
  ``sum_l exp(-s_l) L_l + s_l``.  At the optimum s_l = log L_l, i.e. weight 1 / L_l: every layer
  contributes about equally, however different the scales of their losses.

Normalisation (``normalize``): "mean" (default) -- weights average 1, so the total is on the same
scale as the unweighted sum of layer losses; "sum" -- weights sum to 1; None -- raw.
"""
from typing import Optional

import torch
from torch import nn

NORMALIZE = ("mean", "sum", None)


def _normalize(weights: torch.Tensor, normalize: Optional[str]) -> torch.Tensor:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZE}")
    if normalize is None:
        return weights
    total = weights.sum()
    scale = weights.numel() if normalize == "mean" else 1.0
    return weights * (scale / total)


def _check_losses(layer_losses) -> torch.Tensor:
    losses = torch.stack(list(layer_losses)) if isinstance(layer_losses, (list, tuple)) else layer_losses
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"layer_losses shape {tuple(losses.shape)}: expected a non-empty 1-D tensor [L]")
    return losses


def loss_share_weights(layer_losses, power: float = 1.0, normalize: Optional[str] = "mean",
                       eps: float = 1e-12) -> torch.Tensor:
    """Detached weights proportional to ``layer_losses ** power``; uniform when all losses are ~0."""
    losses = _check_losses(layer_losses).detach().float().clamp_min(0)
    shares = losses.pow(power)
    # chosen on the device (no host read: these weights are recomputed every training step)
    shares = torch.where(shares.sum() <= eps, torch.ones_like(shares), shares)
    return _normalize(shares / shares.sum(), normalize)


class LossShareWeights(nn.Module):
    """``weights = module(layer_losses)``: loss-share weights, optionally an EMA over steps.

    The EMA is kept over the (detached) losses; the first call initialises it.
    """

    def __init__(self, num_layers: int, power: float = 1.0, momentum: float = 0.0, normalize: Optional[str] = "mean"):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum}: expected a value in [0, 1)")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZE}")
        self.num_layers, self.power, self.momentum, self.normalize = int(num_layers), float(power), float(momentum), normalize
        self.register_buffer("ema", torch.zeros(self.num_layers))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(self, layer_losses) -> torch.Tensor:
        losses = _check_losses(layer_losses).detach().float()
        if losses.numel() != self.num_layers:
            raise ValueError(f"layer_losses has {losses.numel()} entries: expected {self.num_layers}")
        losses = losses.to(self.ema.device)
        # the first call initialises the EMA; chosen on the device, not by reading the flag on the host
        self.ema.copy_(torch.where(self.initialized, self.ema * self.momentum + (1 - self.momentum) * losses, losses))
        self.initialized.fill_(True)
        return loss_share_weights(self.ema, self.power, self.normalize)


class UncertaintyWeights(nn.Module):
    """Learned log-variances ``s`` [L] (init 0 -> weights 1).

    ``weights()`` -> exp(-s), differentiable: pass as ``layer_weights`` to an op that gives gradients to
    its weights and add ``regularizer()`` (= sum s) to the loss; or call ``combine(layer_losses)`` ->
    sum exp(-s_l) L_l + s_l directly.  Put ``parameters()`` in the optimizer.
    """

    def __init__(self, num_layers: int, init: float = 0.0):
        super().__init__()
        self.log_vars = nn.Parameter(torch.full((int(num_layers),), float(init)))

    def weights(self) -> torch.Tensor:
        return torch.exp(-self.log_vars)

    def regularizer(self) -> torch.Tensor:
        return self.log_vars.sum()

    def combine(self, layer_losses) -> torch.Tensor:
        losses = _check_losses(layer_losses)
        if losses.numel() != self.log_vars.numel():
            raise ValueError(f"layer_losses has {losses.numel()} entries: expected {self.log_vars.numel()}")
        return (self.weights().to(losses.dtype) * losses).sum() + self.regularizer()

    def forward(self, layer_losses) -> torch.Tensor:
        return self.combine(layer_losses)
