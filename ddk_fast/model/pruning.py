"""Physical pruning: slice the kept heads and channels out of a masked model (BERT family or GPT-2).

Why exact: a head's output reaches the rest of the network only through its D columns of the output
projection, and an FFN channel only through its column of the down projection. Dropping the matching
rows of Q/K/V (or the up projection) and those columns computes the same function as gating the unit
to 0, biases and LayerNorms unchanged. Which tensors are cut along which dim is the model's
``layer_cuts`` (ddk_fast.model.backbone); both functions here only walk it.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ddk_fast.model.backbone import CHANNELS, HEADS, MaskedBackbone
from ddk_fast.model.structure import Structure


def _head_rows(heads: tuple[int, ...], head_dim: int, device) -> torch.Tensor:
    """Row indices of the kept heads in a [H*D, ...] projection (head-major, as in stock BERT)."""
    if not heads:
        return torch.zeros(0, dtype=torch.long, device=device)
    h = torch.tensor(heads, dtype=torch.long, device=device)
    return (h[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


def _check_sizes(what: str, structure: Structure, model: MaskedBackbone) -> None:
    if list(structure.total_heads) != model.num_heads or list(structure.total_channels) != model.intermediate_sizes:
        raise ValueError(
            f"{what}: structure sizes (heads {list(structure.total_heads)}, channels {list(structure.total_channels)}) "
            f"do not match the model (heads {model.num_heads}, channels {model.intermediate_sizes})")


def _cut_tensors(model: MaskedBackbone, structure: Structure) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(state-dict key, dim, kept indices along dim) for every tensor that ``model.layer_cuts`` cuts."""
    device = model.anchor_weight.device
    for i, (heads, channels) in enumerate(zip(structure.heads, structure.channels)):
        kept = {HEADS: _head_rows(heads, model.head_dim, device),
                CHANNELS: torch.tensor(channels, dtype=torch.long, device=device)}
        for cut in model.layer_cuts:
            yield f"layers.{i}.{cut.name}", cut.dim, kept[cut.units]


@torch.no_grad()
def prune(model: MaskedBackbone, structure: Structure) -> MaskedBackbone:
    """A new model of ``model``'s class holding only ``structure``'s units (same dtype, device and
    train/eval mode); works alike for MaskedTransformer and MaskedGPT2.

    Output equals ``model(..., head_gates=g_h, ffn_gates=g_f)`` with ``g_h, g_f = structure.to_gates()``.
    ``structure`` indexes ``model``'s current units; the result's ``pruned_from`` is relative to the
    original model (composed with ``model.pruned_from`` when pruning a pruned model).
    """
    _check_sizes("prune", structure, model)
    ref = model.anchor_weight
    new = type(model)(model.config.with_widths(structure.num_heads, structure.intermediate_sizes))
    new.to(device=ref.device, dtype=ref.dtype)
    old_sd = model.state_dict()
    new_sd = {key: old_sd[key].index_select(dim, index) for key, dim, index in _cut_tensors(model, structure)}
    for key, value in old_sd.items():
        if key not in new_sd:
            new_sd[key] = value.clone()
    new.load_state_dict(new_sd, strict=True)
    new.pruned_from = structure if model.pruned_from is None else model.pruned_from.compose(structure)
    new.train(model.training)
    return new


@torch.no_grad()
def write_back(full: MaskedBackbone, pruned: MaskedBackbone) -> MaskedBackbone:
    """Copy ``pruned``'s weights into the units of ``full`` it was cut from (in place; returns ``full``).

    The inverse of ``prune`` on the kept units: removed units of ``full`` are left as they are, every
    shared tensor (embeddings, biases of the blocks' outputs, LayerNorms, task head) is copied. So
    ``prune(write_back(full, p), p.pruned_from)`` equals ``p``. Used to start a search over the full
    model from a pruned and re-weighted one (``compress --init oneshot``)."""
    structure = pruned.pruned_from
    if structure is None or full.pruned_from is not None:
        raise ValueError("write_back: expected a pruned model and the unpruned model it was cut from")
    if list(structure.total_heads) != full.num_heads or list(structure.total_channels) != full.intermediate_sizes:
        raise ValueError(f"write_back: the pruned model was cut from heads {list(structure.total_heads)}, "
                         f"channels {list(structure.total_channels)}; this model has {full.num_heads}, "
                         f"{full.intermediate_sizes}")
    small, big = pruned.state_dict(), full.state_dict()
    cut = set()
    for key, dim, index in _cut_tensors(full, structure):
        big[key].index_copy_(dim, index, small[key])
        cut.add(key)
    for key, value in small.items():
        if key not in cut:
            big[key].copy_(value)
    return full
