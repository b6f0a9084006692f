"""MaKD (multi-aspect KD) pieces: self-attention relations and FFN activations as distillation targets.

Why relations: attention maps can only be compared head by head when student and teacher have the
same head count. MiniLMv2 compares *relations* instead: the concatenated queries (or keys, values)
of all heads, [B, S, H*D], are split into R relation heads of width d_r = H*D / R, and
softmax(X_r X_r^T / sqrt(d_r)) is a distribution over keys per query. R is fixed by the loss, not by
either model, so a 12-head teacher teaches a 4-head (or pruned, uneven) student.

The relation scores X_r X_r^T / sqrt(d_r) are shaped like pre-softmax attention scores [B, R, S, S],
so the fused ``ops.attention_distill_loss(kind="kl", token_mask=...)`` computes exactly the masked-key
KL averaged over valid query rows; nothing here re-implements it.

    relation_scores(x, num_relation_heads)      -> [B, R, S, S]
    concat_heads(per_head)                      -> [B, S, H*D]
    LowRankProjection(in_dim, out_dim, rank)    -> learned map for FFN activations of other widths
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ASPECTS = ("attention", "query", "key", "value", "ffn_intermediate", "ffn_output")
RELATIONS = ("query", "key", "value")


def concat_heads(per_head: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [B, S, H*D] (heads side by side, the layout of the Q/K/V projections)."""
    if per_head.dim() != 4:
        raise ValueError(f"per_head must be [B, H, S, D], got shape {tuple(per_head.shape)}")
    b, h, s, d = per_head.shape
    return per_head.transpose(1, 2).reshape(b, s, h * d)


def relation_scores(x: torch.Tensor, num_relation_heads: int) -> torch.Tensor:
    """MiniLMv2 relation scores ``X_r X_r^T / sqrt(d_r)`` -> [B, R, S, S] (pre-softmax).

    x: [B, S, W] concatenated heads (or [B, H, S, D], concatenated first). When W is not a multiple of
    R (a pruned model with uneven heads) the features are zero-padded to the next multiple: the padding
    adds nothing to the dot products, only d_r in the scale grows to ceil(W / R).
    """
    if x.dim() == 4:
        x = concat_heads(x)
    if x.dim() != 3:
        raise ValueError(f"x must be [B, S, W] or [B, H, S, D], got shape {tuple(x.shape)}")
    if not isinstance(num_relation_heads, int) or num_relation_heads < 1:
        raise ValueError(f"num_relation_heads must be a positive int, got {num_relation_heads!r}")
    b, s, w = x.shape
    if w == 0:
        raise ValueError("x has width 0 (a layer with no heads has no relations); skip that layer")
    r = num_relation_heads
    d_r = -(-w // r)
    if d_r * r != w:
        x = F.pad(x, (0, d_r * r - w))
    xr = x.view(b, s, r, d_r).transpose(1, 2)  # [B, R, S, d_r]
    return (xr @ xr.transpose(-1, -2)) * (1.0 / math.sqrt(d_r))


class LowRankProjection(nn.Module):
    """Student activations [.., in_dim] -> teacher width [.., out_dim] through rank ``rank``: x A^T B^T.

    Identity (no parameters) when the widths are equal and ``force`` is False. Why low rank: FFN
    widths are large (4d); a full in x out map per layer would outweigh the student's own FFN.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int = 64, force: bool = False):
        super().__init__()
        self.in_dim, self.out_dim, self.rank = int(in_dim), int(out_dim), int(rank)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.identity = self.in_dim == self.out_dim and not force
        if not self.identity:
            r = min(self.rank, self.in_dim, self.out_dim) if self.in_dim and self.out_dim else self.rank
            self.down = nn.Linear(self.in_dim, r, bias=False)
            self.up = nn.Linear(r, self.out_dim, bias=False)
            nn.init.normal_(self.down.weight, std=1.0 / math.sqrt(max(self.in_dim, 1)))
            nn.init.normal_(self.up.weight, std=1.0 / math.sqrt(r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"LowRankProjection: expected last dim {self.in_dim}, got {tuple(x.shape)}")
        return x if self.identity else self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}, rank={self.rank}" + (" (identity)" if self.identity else "")


__all__ = ["ASPECTS", "RELATIONS", "concat_heads", "relation_scores", "LowRankProjection"]
