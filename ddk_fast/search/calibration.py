"""Data-driven importance of every attention head and FFN channel, from a few calibration batches.

Why from data: weight norms say how large a unit *could* be, not how much the task needs it; a
fine-tuned model keeps many large but useless units. Two scores, both measured with the engine's gates
as the mask variables (all gates 1, so the model computes exactly the teacher):

Fisher (Kwon et al. 2022)
    ``g_b = dL_b / d gate`` for calibration batch ``b`` (``L_b``: the batch-mean task loss);
    ``fisher = sum_b g_b ** 2``. Second order: removing unit ``i`` raises the loss by about
    ``fisher_i / 2`` (the empirical Fisher approximates the Hessian at a converged model). The per-batch
    gradients are kept too: the rearrangement step (``oneshot.rearrange``) needs them.
Activation (Minitron, label-free)
    mean over real (non-padding) tokens of the norm of what the unit adds to the residual stream: for a
    head ``|| ctx_h W_o[:, h] ||``, for an FFN channel ``|a_i| * || W_down[:, i] ||``. No labels and
    no backward pass; useful when the labels of the calibration data are not trusted.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ddk_fast.ops._dispatch import dense_path
from ddk_fast.ops.label_losses import task_loss  # per-sequence and per-token (NER) logits


@dataclass
class GateGradients:
    """Per-batch gradients of the task loss w.r.t. all-ones gates: ``heads [N, L, max H]``,
    ``ffn [N, L, max I]`` (padding columns 0), float64 on the CPU."""

    heads: torch.Tensor
    ffn: torch.Tensor

    @property
    def num_batches(self) -> int:
        return self.heads.shape[0]

    def fisher(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Diagonal empirical Fisher ``sum_b g_b ** 2``: ``([L, max H], [L, max I])``."""
        return self.heads.pow(2).sum(0), self.ffn.pow(2).sum(0)


@contextlib.contextmanager
def _frozen_eval(model):
    """Eval mode (no dropout) and no weight gradients for the duration; restores both."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _forward(model, batch: dict, path: str, **kwargs):
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 token_type_ids=batch.get("token_type_ids"), path=path, **kwargs)


def gate_gradients(model, batches: Iterable[dict], loss_fn: Callable = task_loss, path: str = "auto",
                   device=None, head_mask: torch.Tensor | None = None,
                   ffn_mask: torch.Tensor | None = None) -> GateGradients:
    """Gradient of ``loss_fn(logits, labels)`` w.r.t. every gate for each batch, the gates set to
    ``head_mask [L, max H]`` / ``ffn_mask [L, max I]`` (default: all 1, the whole model).

    ``model``: a MaskedTransformer; ``batches``: dicts with input_ids, attention_mask, labels
    (token_type_ids optional). Weights get no gradient and are left untouched. A 0/1 mask gives the
    importance of every unit in the model pruned so far (iterative pruning)."""
    device = device or next(model.parameters()).device
    path = dense_path(path, device)
    heads, sizes = model.num_heads, model.intermediate_sizes
    per_head, per_ffn = [], []
    with _frozen_eval(model):
        for batch in batches:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            hg = _gate_values(head_mask, (len(heads), max(heads)), device)
            fg = _gate_values(ffn_mask, (len(sizes), max(sizes)), device)
            out = _forward(model, batch, path, head_gates=hg, ffn_gates=fg)
            gh, gf = torch.autograd.grad(loss_fn(out.logits, batch["labels"]), (hg, fg), allow_unused=True)
            per_head.append(torch.zeros_like(hg) if gh is None else gh.detach())
            per_ffn.append(torch.zeros_like(fg) if gf is None else gf.detach())
    if not per_head:
        raise ValueError("gate_gradients: no calibration batch")
    return GateGradients(torch.stack(per_head).double().cpu(), torch.stack(per_ffn).double().cpu())


def _gate_values(mask: torch.Tensor | None, shape: tuple, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, device=device, requires_grad=True)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"gate mask of shape {tuple(mask.shape)}: expected {tuple(shape)}")
    return mask.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)


@torch.no_grad()
def activation_importance(model, batches: Iterable[dict], path: str = "auto",
                          device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean contribution norm per real token of every head ``[L, max H]`` and channel ``[L, max I]``
    (see the module docstring); padding columns 0, float64 on the CPU."""
    device = device or next(model.parameters()).device
    path = dense_path(path, device)
    heads, sizes, dim = model.num_heads, model.intermediate_sizes, model.head_dim
    head_sum = torch.zeros(len(heads), max(heads), dtype=torch.float64)
    ffn_sum = torch.zeros(len(sizes), max(sizes), dtype=torch.float64)
    tokens = 0
    with _frozen_eval(model):
        for batch in batches:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            out = _forward(model, batch, path, output_qkv=True, output_attention_probs=True, output_ffn=True)
            mask = batch.get("attention_mask")
            real = (torch.ones_like(batch["input_ids"]) if mask is None else mask).to(torch.float64)  # [B, S]
            tokens += float(real.sum())
            for l, layer in enumerate(model.layers):
                if heads[l]:
                    ctx = out.attention_probs[l] @ out.qkv[l][2]  # [B, H, S, D]
                    w_o = layer.attention.output.weight.reshape(-1, heads[l], dim)  # [d, H, D]
                    contrib = torch.einsum("bhsd,ehd->bhse", ctx, w_o).norm(dim=-1)  # [B, H, S]
                    head_sum[l, :heads[l]] += (contrib.double() * real[:, None]).sum((0, 2)).cpu()
                if sizes[l]:
                    act = out.ffn_intermediate[l].abs().double()  # [B, S, I]
                    per_token = (act * real[..., None]).sum((0, 1)).cpu()
                    ffn_sum[l, :sizes[l]] += per_token * layer.ffn.down.weight.double().norm(dim=0).cpu()
    if tokens == 0:
        raise ValueError("activation_importance: no calibration token")
    return head_sum / tokens, ffn_sum / tokens


__all__ = ["GateGradients", "activation_importance", "gate_gradients", "task_loss"]
