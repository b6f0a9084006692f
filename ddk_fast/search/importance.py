"""Unit importance scores used to rank heads and FFN channels inside a layer.

Weight norms give a ranking before any gradient is seen; Taylor scores |a * dL/da| (for a gate g
multiplying a unit's output, ``|g * dL/dg|``) refine it during the search through
``GumbelWidthSearch.update_importance``.
"""
from typing import Optional, Sequence

import torch


def _pad(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    width = max(r.numel() for r in rows)
    out = torch.zeros(len(rows), width)
    for l, r in enumerate(rows):
        out[l, :r.numel()] = r.detach().float().cpu()
    return out


def head_importance_from_weights(output_weights: Sequence[torch.Tensor], head_dim: int,
                                 query_weights: Optional[Sequence[torch.Tensor]] = None,
                                 key_weights: Optional[Sequence[torch.Tensor]] = None,
                                 value_weights: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Per-head L2 norm of every weight that belongs to the head, ``[L, max heads]`` (padding 0).

    ``output_weights[l]``: attention output projection ``[d, k*D]`` (nn.Linear layout, head h owns
    columns h*D:(h+1)*D); optional q/k/v weights ``[k*D, d]`` (head h owns rows h*D:(h+1)*D).
    """
    rows = []
    for l, w_o in enumerate(output_weights):
        if w_o.shape[1] % head_dim:
            raise ValueError(f"output_weights[{l}] has {w_o.shape[1]} input columns: expected a multiple of "
                             f"head_dim={head_dim}")
        k = w_o.shape[1] // head_dim
        sq = w_o.detach().float().reshape(w_o.shape[0], k, head_dim).pow(2).sum(dim=(0, 2))
        for name, ws in (("query", query_weights), ("key", key_weights), ("value", value_weights)):
            if ws is not None:
                w = ws[l].detach().float()
                if w.shape[0] != k * head_dim:
                    raise ValueError(f"{name}_weights[{l}] has {w.shape[0]} rows: expected {k * head_dim}")
                sq = sq + w.reshape(k, head_dim, -1).pow(2).sum(dim=(1, 2))
        rows.append(sq.sqrt())
    return _pad(rows)


def ffn_importance_from_weights(up_weights: Sequence[torch.Tensor], down_weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-channel ``||up row|| * ||down column||``, ``[L, max channels]`` (padding 0).

    ``up_weights[l]``: ``[n, d]`` (intermediate dense), ``down_weights[l]``: ``[d, n]`` (output dense).
    The product is the largest gain the channel can have from input to output.
    """
    if len(up_weights) != len(down_weights):
        raise ValueError(f"{len(up_weights)} up weights vs {len(down_weights)} down weights: expected equal")
    rows = []
    for l, (up, down) in enumerate(zip(up_weights, down_weights)):
        if up.shape[0] != down.shape[1]:
            raise ValueError(f"layer {l}: up {tuple(up.shape)} and down {tuple(down.shape)} disagree on the width")
        rows.append(up.detach().float().norm(dim=1) * down.detach().float().norm(dim=0))
    return _pad(rows)


def taylor_importance(gates: torch.Tensor, grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """First-order Taylor score ``|g * dL/dg|`` of gates (``grad`` defaults to ``gates.grad``).

    For a gate on a unit's output a, ``dL/dg = sum(a * dL/d(g a))``, so at g = 1 this is |a * dL/da|
    summed over the unit; gated-off units score 0 (pass ``gates > 0`` as the active mask)."""
    grad = gates.grad if grad is None else grad
    if grad is None:
        raise ValueError("taylor_importance: gates have no gradient; call backward() first or pass grad")
    return (gates.detach() * grad.detach()).abs()
