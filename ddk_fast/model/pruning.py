"""Physical pruning: slice the kept heads and channels out of a MaskedTransformer.

Why exact: a head's output reaches the rest of the network only through its D columns of the output
projection, and an FFN channel only through its column of the down projection. Dropping the matching
rows of Q/K/V (or the up projection) and those columns computes the same function as gating the unit
to 0, biases and LayerNorms unchanged.
"""
from __future__ import annotations

import torch

from ddk_fast.model.masked_transformer import MaskedTransformer
from ddk_fast.model.structure import Structure


def _head_rows(heads: tuple[int, ...], head_dim: int, device) -> torch.Tensor:
    """Row indices of the kept heads in a [H*D, ...] projection (head-major, as in stock BERT)."""
    if not heads:
        return torch.zeros(0, dtype=torch.long, device=device)
    h = torch.tensor(heads, dtype=torch.long, device=device)
    return (h[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


@torch.no_grad()
def prune(model: MaskedTransformer, structure: Structure) -> MaskedTransformer:
    """A new MaskedTransformer holding only ``structure``'s units (same dtype, device and train/eval mode).

    Output equals ``model(..., head_gates=g_h, ffn_gates=g_f)`` with ``g_h, g_f = structure.to_gates()``.
    ``structure`` indexes ``model``'s current units; the result's ``pruned_from`` is relative to the
    original model (composed with ``model.pruned_from`` when pruning a pruned model).
    """
    if list(structure.total_heads) != model.num_heads or list(structure.total_channels) != model.intermediate_sizes:
        raise ValueError(
            f"prune: structure sizes (heads {list(structure.total_heads)}, channels {list(structure.total_channels)}) "
            f"do not match the model (heads {model.num_heads}, channels {model.intermediate_sizes})")
    ref = model.classifier.weight
    new = MaskedTransformer(model.config.with_widths(structure.num_heads, structure.intermediate_sizes))
    new.to(device=ref.device, dtype=ref.dtype)

    old_sd = model.state_dict()
    new_sd = {k: v.clone() for k, v in old_sd.items() if not k.startswith("layers.")}
    for i, (heads, channels) in enumerate(zip(structure.heads, structure.channels)):
        rows = _head_rows(heads, model.head_dim, ref.device)
        chans = torch.tensor(channels, dtype=torch.long, device=ref.device)
        p = f"layers.{i}."
        for name in ("query", "key", "value"):
            new_sd[p + f"attention.{name}.weight"] = old_sd[p + f"attention.{name}.weight"].index_select(0, rows)
            new_sd[p + f"attention.{name}.bias"] = old_sd[p + f"attention.{name}.bias"].index_select(0, rows)
        new_sd[p + "attention.output.weight"] = old_sd[p + "attention.output.weight"].index_select(1, rows)
        new_sd[p + "ffn.up.weight"] = old_sd[p + "ffn.up.weight"].index_select(0, chans)
        new_sd[p + "ffn.up.bias"] = old_sd[p + "ffn.up.bias"].index_select(0, chans)
        new_sd[p + "ffn.down.weight"] = old_sd[p + "ffn.down.weight"].index_select(1, chans)
        for name in ("attention.output.bias", "attention.norm.weight", "attention.norm.bias",
                     "ffn.down.bias", "ffn.norm.weight", "ffn.norm.bias"):
            new_sd[p + name] = old_sd[p + name].clone()
    new.load_state_dict(new_sd, strict=True)
    new.pruned_from = structure if model.pruned_from is None else model.pruned_from.compose(structure)
    new.train(model.training)
    return new


@torch.no_grad()
def write_back(full: MaskedTransformer, pruned: MaskedTransformer) -> MaskedTransformer:
    """Copy ``pruned``'s weights into the units of ``full`` it was cut from (in place; returns ``full``).

    The inverse of ``prune`` on the kept units: removed units of ``full`` are left as they are, every
    shared tensor (embeddings, biases of the blocks' outputs, LayerNorms, classifier) is copied. So
    ``prune(write_back(full, p), p.pruned_from)`` equals ``p``. Used to start a search over the full
    model from a pruned and re-weighted one (``compress --init oneshot``)."""
    structure = pruned.pruned_from
    if structure is None or full.pruned_from is not None:
        raise ValueError("write_back: expected a pruned model and the unpruned model it was cut from")
    if list(structure.total_heads) != full.num_heads or list(structure.total_channels) != full.intermediate_sizes:
        raise ValueError(f"write_back: the pruned model was cut from heads {list(structure.total_heads)}, "
                         f"channels {list(structure.total_channels)}; this model has {full.num_heads}, "
                         f"{full.intermediate_sizes}")
    ref = full.classifier.weight
    small, big = pruned.state_dict(), full.state_dict()
    for key, value in small.items():
        if not key.startswith("layers."):
            big[key].copy_(value)
    for i, (heads, channels) in enumerate(zip(structure.heads, structure.channels)):
        rows = _head_rows(heads, full.head_dim, ref.device)
        chans = torch.tensor(channels, dtype=torch.long, device=ref.device)
        p = f"layers.{i}."
        for name in ("query", "key", "value"):
            for part in ("weight", "bias"):
                big[p + f"attention.{name}.{part}"].index_copy_(0, rows, small[p + f"attention.{name}.{part}"])
        big[p + "attention.output.weight"].index_copy_(1, rows, small[p + "attention.output.weight"])
        big[p + "ffn.up.weight"].index_copy_(0, chans, small[p + "ffn.up.weight"])
        big[p + "ffn.up.bias"].index_copy_(0, chans, small[p + "ffn.up.bias"])
        big[p + "ffn.down.weight"].index_copy_(1, chans, small[p + "ffn.down.weight"])
        for name in ("attention.output.bias", "attention.norm.weight", "attention.norm.bias",
                     "ffn.down.bias", "ffn.norm.weight", "ffn.norm.bias"):
            big[p + name].copy_(small[p + name])
    return full
