"""MaskedBackbone: what the BERT-family encoder and GPT-2 share -- per-layer shapes, gates, and which
layer tensors lose which slices when units are pruned.

Why one base: both models keep their layers as ``layers.{l}.attention.{query,key,value,output,norm}``
and ``layers.{l}.ffn.{up,down,norm}`` in nn.Linear layout, heads head-major in the Q/K/V rows (GPT-2's
transposed Conv1D weights and fused ``c_attn`` are split and transposed once, when its checkpoint is
read). So the shape questions, the gate normalisation and physical pruning are one piece of code for
both; the subclasses differ only in embeddings, block order (post-LN / pre-LN) and the task head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ddk_fast.model.active import ActiveUnits, check_active_units, find_active_units
from ddk_fast.model.config import TransformerConfig
from ddk_fast.model.structure import Structure

HEADS = "heads"        # cut in head_dim-wide blocks, one per kept head
CHANNELS = "channels"  # cut one index per kept FFN channel


@dataclass(frozen=True)
class Cut:
    """A layer tensor that keeps only the kept units' slices along ``dim``.

    ``name`` is relative to ``layers.{l}.``; ``units`` is HEADS or CHANNELS. Every layer tensor not
    named by a cut (output biases, LayerNorms) is kept whole: a unit reaches the residual stream only
    through its slice of the output (down) projection, so cutting these slices is exact.
    """

    name: str
    dim: int
    units: str


LAYER_CUTS: tuple[Cut, ...] = (
    *(Cut(f"attention.{proj}.{part}", 0, HEADS) for proj in ("query", "key", "value") for part in ("weight", "bias")),
    Cut("attention.output.weight", 1, HEADS),
    Cut("ffn.up.weight", 0, CHANNELS),
    Cut("ffn.up.bias", 0, CHANNELS),
    Cut("ffn.down.weight", 1, CHANNELS),
)


def per_layer_gates(gates, sizes: Sequence[int], name: str) -> list[torch.Tensor | None]:
    """Normalise gates to one entry per layer: None, a list of [size_l] tensors, or a [L, >= max size] tensor."""
    n = len(sizes)
    if gates is None:
        return [None] * n
    if isinstance(gates, torch.Tensor):
        if gates.dim() != 2 or gates.shape[0] != n or gates.shape[1] < max(sizes, default=0):
            raise ValueError(f"{name}: a tensor must be [num_layers={n}, >= {max(sizes, default=0)}], "
                             f"got shape {tuple(gates.shape)}")
        return [gates[i, :s] for i, s in enumerate(sizes)]
    gates = list(gates)
    if len(gates) != n:
        raise ValueError(f"{name}: expected {n} per-layer entries, got {len(gates)}")
    for i, (g, s) in enumerate(zip(gates, sizes)):
        if g is not None and (g.dim() != 1 or g.shape[0] != s):
            raise ValueError(f"{name}[{i}]: expected shape [{s}], got {tuple(g.shape)}")
    return gates


@dataclass
class LayerTrace:
    """What a pass through the layer stack collected besides its output, per layer (None: not asked)."""

    hidden_states: list | None
    attention_scores: list | None
    attention_probs: list | None
    qkv: list | None
    ffn_intermediate: list | None
    ffn_output: list | None

    def as_tuples(self) -> dict:
        """The output fields of the models' forward: tuples, or None where not asked for."""
        return {name: None if v is None else tuple(v) for name, v in vars(self).items()}


class MaskedBackbone(nn.Module):
    """Base of the masked models: ``config`` (TransformerConfig), ``layers`` and ``pruned_from``.

    Subclasses build the modules and say which parameter stands for the model's dtype and device
    (``anchor_weight``); ``layer_cuts`` is what ``ddk_fast.model.prune`` slices in every layer.
    """

    config: TransformerConfig
    pruned_from: Structure | None
    layer_cuts: tuple[Cut, ...] = LAYER_CUTS

    @property
    def anchor_weight(self) -> torch.Tensor:
        """A parameter whose dtype and device are the model's: gates and pruned copies are made to match it."""
        raise NotImplementedError(f"{type(self).__name__} must define anchor_weight")

    # ---- shape ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def num_heads(self) -> list[int]:
        return list(self.config.num_heads)

    @property
    def intermediate_sizes(self) -> list[int]:
        return list(self.config.intermediate_sizes)

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    # ---- gates ----------------------------------------------------------------------------------
    def structure(self, head_gates=None, ffn_gates=None) -> Structure:
        """All units (no gates), or the units whose gate is 1 (gates must be exactly 0/1)."""
        if head_gates is None and ffn_gates is None:
            return Structure.full(self)
        hg = [torch.ones(h) if g is None else g for g, h in
              zip(per_layer_gates(head_gates, self.num_heads, "head_gates"), self.num_heads)]
        fg = [torch.ones(i) if g is None else g for g, i in
              zip(per_layer_gates(ffn_gates, self.intermediate_sizes, "ffn_gates"), self.intermediate_sizes)]
        return Structure.from_gates(hg, fg)

    def active_units(self, head_gates=None, ffn_gates=None) -> ActiveUnits:
        """Indices of the units whose gate is non-zero, per layer (one host read for all layers).

        Pass the result as ``active_units=`` to forward calls with the same gates: they then read
        nothing back from the device (and ``torch.compile(fullgraph=True)`` can trace them)."""
        return find_active_units(per_layer_gates(head_gates, self.num_heads, "head_gates"),
                                 per_layer_gates(ffn_gates, self.intermediate_sizes, "ffn_gates"),
                                 self.num_heads, self.intermediate_sizes, self.anchor_weight.device)

    def full_gates(self, dtype=None, device=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer gates of ones (a starting point for soft gates)."""
        p = self.anchor_weight
        dtype, device = dtype or p.dtype, device or p.device
        return ([torch.ones(h, dtype=dtype, device=device) for h in self.num_heads],
                [torch.ones(i, dtype=dtype, device=device) for i in self.intermediate_sizes])

    def run_layers(self, x: torch.Tensor, attention_mask, head_gates, ffn_gates, path: str,
                   active_units: ActiveUnits | None, output_hidden_states: bool = False,
                   output_attention_scores: bool = False, output_attention_probs: bool = False,
                   output_qkv: bool = False, output_ffn: bool = False) -> tuple[torch.Tensor, LayerTrace]:
        """The embedding output ``x`` through every layer with its gates; what the flags ask for is
        collected on the way (hidden states start with ``x``). Shared by BERT and GPT-2: only the
        embeddings before and the head after differ."""
        hgates = per_layer_gates(head_gates, self.num_heads, "head_gates")
        fgates = per_layer_gates(ffn_gates, self.intermediate_sizes, "ffn_gates")
        if active_units is None:
            active_units = find_active_units(hgates, fgates, self.num_heads, self.intermediate_sizes, x.device)
        units = check_active_units(active_units, self.num_layers)
        trace = LayerTrace(*([] if flag else None for flag in (
            output_hidden_states, output_attention_scores, output_attention_probs, output_qkv, output_ffn,
            output_ffn)))
        if trace.hidden_states is not None:
            trace.hidden_states.append(x)
        for layer, hg, fg, h_act, f_act in zip(self.layers, hgates, fgates, units.heads, units.ffn):
            x, extra = layer(x, attention_mask, hg, fg, path, want_qkv=output_qkv, want_scores=output_attention_scores,
                             want_probs=output_attention_probs, want_ffn=output_ffn, head_active=h_act,
                             ffn_active=f_act)
            if trace.hidden_states is not None:
                trace.hidden_states.append(x)
            if trace.attention_scores is not None:
                trace.attention_scores.append(extra.scores)
            if trace.attention_probs is not None:
                trace.attention_probs.append(extra.probs)
            if trace.qkv is not None:
                trace.qkv.append((extra.q, extra.k, extra.v))
            if trace.ffn_intermediate is not None:
                trace.ffn_intermediate.append(extra.intermediate)
                trace.ffn_output.append(extra.output)
        return x, trace
