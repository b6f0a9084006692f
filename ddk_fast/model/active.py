"""The active units of a model's gates, per layer, found once per structure.

Why: every layer's attention and FFN op needs the indices of its non-zero gates, and finding them
inside each op costs one device sync per op (2L per forward pass). A forward pass finds them all at
once (one sync; none for a model without gates), and a caller that runs one structure many times
(evaluating a derived structure, a compiled model) finds them once and passes them in.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ddk_fast.ops.active import active_units


class ActiveUnits(NamedTuple):
    """Sorted int64 indices of the kept heads and FFN channels of each layer."""

    heads: tuple[torch.Tensor, ...]
    ffn: tuple[torch.Tensor, ...]


def find_active_units(head_gates: Sequence[torch.Tensor | None], ffn_gates: Sequence[torch.Tensor | None],
                      num_heads: Sequence[int], intermediate: Sequence[int], device) -> ActiveUnits:
    """The units whose gate is non-zero (every unit of a None gate), one host read for all layers."""
    layers = len(num_heads)
    units = active_units(list(head_gates) + list(ffn_gates), list(num_heads) + list(intermediate), device)
    return ActiveUnits(tuple(units[:layers]), tuple(units[layers:]))


def check_active_units(units: ActiveUnits, num_layers: int) -> ActiveUnits:
    if not isinstance(units, ActiveUnits) or len(units.heads) != num_layers or len(units.ffn) != num_layers:
        raise ValueError(f"active_units must be the ActiveUnits of this model's {num_layers} layers "
                         "(from model.active_units(head_gates, ffn_gates))")
    return units
