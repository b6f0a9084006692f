"""Optimizers and schedules used by every loop (AdamW without decay on biases/LayerNorm; linear
warmup then linear decay to zero)."""
from __future__ import annotations

import torch


def param_groups(named_params, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias")
         else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def adamw(model_or_named, lr: float, weight_decay: float) -> torch.optim.AdamW:
    named = model_or_named.named_parameters() if isinstance(model_or_named, torch.nn.Module) else model_or_named
    return torch.optim.AdamW(param_groups(named, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8)


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio * total_steps`` steps, then linear decay to 0 at ``total_steps``."""
    warmup = int(round(warmup_ratio * total_steps))
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
