"""Which attention heads and FFN channels each layer keeps.

Why a separate object: the search produces gates, pruning consumes indices, the export records
provenance and the cost model counts units. A Structure is the one hand-off between them: per layer,
sorted kept head indices and kept channel indices, plus the layer sizes they index into.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch


def _sorted_unique(indices, size: int, what: str, layer: int) -> tuple[int, ...]:
    out = tuple(sorted(int(i) for i in indices))
    if len(set(out)) != len(out):
        raise ValueError(f"Structure: layer {layer} {what} indices contain duplicates: {list(out)}")
    if out and (out[0] < 0 or out[-1] >= size):
        raise ValueError(f"Structure: layer {layer} {what} indices {list(out)} out of range [0, {size})")
    return out


@dataclass(frozen=True)
class Structure:
    """Kept units per layer.

    heads[l]: sorted kept head indices of layer l, each in [0, total_heads[l]).
    channels[l]: sorted kept FFN channel indices of layer l, each in [0, total_channels[l]).
    A layer with no heads (or no channels) keeps only that block's output bias and LayerNorm.
    """

    heads: tuple[tuple[int, ...], ...]
    channels: tuple[tuple[int, ...], ...]
    total_heads: tuple[int, ...]
    total_channels: tuple[int, ...]

    def __post_init__(self):
        n = len(self.total_heads)
        if not (len(self.heads) == len(self.channels) == len(self.total_channels) == n):
            raise ValueError(
                f"Structure: per-layer lists disagree on the layer count: heads={len(self.heads)}, "
                f"channels={len(self.channels)}, total_heads={n}, total_channels={len(self.total_channels)}")
        object.__setattr__(self, "total_heads", tuple(int(h) for h in self.total_heads))
        object.__setattr__(self, "total_channels", tuple(int(c) for c in self.total_channels))
        object.__setattr__(self, "heads", tuple(
            _sorted_unique(h, self.total_heads[i], "head", i) for i, h in enumerate(self.heads)))
        object.__setattr__(self, "channels", tuple(
            _sorted_unique(c, self.total_channels[i], "channel", i) for i, c in enumerate(self.channels)))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def full(cls, model_or_config) -> "Structure":
        """Every unit kept, for a MaskedTransformer or a TransformerConfig."""
        cfg = getattr(model_or_config, "config", model_or_config)
        return cls(heads=tuple(tuple(range(h)) for h in cfg.num_heads),
                   channels=tuple(tuple(range(i)) for i in cfg.intermediate_sizes),
                   total_heads=tuple(cfg.num_heads), total_channels=tuple(cfg.intermediate_sizes))

    @classmethod
    def from_indices(cls, heads, channels, model_or_config) -> "Structure":
        """From kept-index lists (e.g. a search's derived structure) for a model or config's sizes."""
        cfg = getattr(model_or_config, "config", model_or_config)
        return cls(heads=tuple(tuple(h) for h in heads), channels=tuple(tuple(c) for c in channels),
                   total_heads=tuple(cfg.num_heads), total_channels=tuple(cfg.intermediate_sizes))

    @classmethod
    def from_gates(cls, head_gates: Sequence[torch.Tensor], ffn_gates: Sequence[torch.Tensor]) -> "Structure":
        """From per-layer 0/1 gates (a list of [H_l] and a list of [I_l], or [L, H] / [L, I] tensors).

        Gates must be exactly 0 or 1: a unit with a soft gate cannot be removed without changing the
        function, so a soft gate is an error here (threshold it first).
        """
        if len(head_gates) != len(ffn_gates):
            raise ValueError(f"Structure.from_gates: {len(head_gates)} head-gate layers but {len(ffn_gates)} "
                             f"FFN-gate layers; expected the same count")

        def kept(gates, what):
            out, totals = [], []
            for layer, g in enumerate(gates):
                g = torch.as_tensor(g).detach().reshape(-1).to("cpu", torch.float64)
                bad = g[(g != 0) & (g != 1)]
                if bad.numel():
                    raise ValueError(f"Structure.from_gates: layer {layer} {what} gates must be 0 or 1, "
                                     f"found {bad[:4].tolist()}")
                out.append(tuple(torch.nonzero(g).reshape(-1).tolist()))
                totals.append(g.numel())
            return tuple(out), tuple(totals)

        heads, th = kept(head_gates, "head")
        channels, tc = kept(ffn_gates, "FFN")
        return cls(heads=heads, channels=channels, total_heads=th, total_channels=tc)

    # ---- views ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.total_heads)

    @property
    def num_heads(self) -> list[int]:
        """Kept heads per layer."""
        return [len(h) for h in self.heads]

    @property
    def intermediate_sizes(self) -> list[int]:
        """Kept FFN channels per layer."""
        return [len(c) for c in self.channels]

    @property
    def total_kept_heads(self) -> int:
        return sum(self.num_heads)

    @property
    def total_kept_channels(self) -> int:
        return sum(self.intermediate_sizes)

    def is_full(self) -> bool:
        return self.num_heads == list(self.total_heads) and self.intermediate_sizes == list(self.total_channels)

    def to_gates(self, dtype=torch.float32, device=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(head_gates, ffn_gates): per-layer 0/1 tensors, what MaskedTransformer.forward takes."""
        def gates(kept, totals):
            out = []
            for idx, total in zip(kept, totals):
                g = torch.zeros(total, dtype=dtype, device=device)
                if idx:
                    g[list(idx)] = 1
                out.append(g)
            return out
        return gates(self.heads, self.total_heads), gates(self.channels, self.total_channels)

    def compose(self, inner: "Structure") -> "Structure":
        """Pruning twice: ``inner`` indexes into this structure's kept units; the result indexes the original.

        For a model pruned with ``self`` and then pruned again with ``inner``.
        """
        if list(inner.total_heads) != self.num_heads or list(inner.total_channels) != self.intermediate_sizes:
            raise ValueError(
                f"Structure.compose: inner structure sizes (heads {list(inner.total_heads)}, channels "
                f"{list(inner.total_channels)}) must equal this structure's kept counts (heads {self.num_heads}, "
                f"channels {self.intermediate_sizes})")
        return Structure(
            heads=tuple(tuple(outer[i] for i in sub) for outer, sub in zip(self.heads, inner.heads)),
            channels=tuple(tuple(outer[i] for i in sub) for outer, sub in zip(self.channels, inner.channels)),
            total_heads=self.total_heads, total_channels=self.total_channels)

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "ddk_fast.structure/1",
                "layers": [{"heads": list(h), "channels": list(c), "total_heads": th, "total_channels": tc}
                           for h, c, th, tc in zip(self.heads, self.channels, self.total_heads, self.total_channels)]}

    @classmethod
    def from_dict(cls, data: dict) -> "Structure":
        if data.get("format") != "ddk_fast.structure/1" or "layers" not in data:
            raise ValueError(f"Structure.from_dict: expected format 'ddk_fast.structure/1' with 'layers', "
                             f"got format={data.get('format')!r}, keys={sorted(data)}")
        layers = data["layers"]
        return cls(heads=tuple(tuple(x["heads"]) for x in layers),
                   channels=tuple(tuple(x["channels"]) for x in layers),
                   total_heads=tuple(x["total_heads"] for x in layers),
                   total_channels=tuple(x["total_channels"] for x in layers))

    def to_json(self) -> str:
        """Compact JSON, one layer per line (readable even with thousands of channels)."""
        layers = ",\n  ".join(json.dumps(layer) for layer in self.to_dict()["layers"])
        return '{"format": "ddk_fast.structure/1", "layers": [\n  ' + layers + "\n]}\n"

    @classmethod
    def from_json(cls, text: str) -> "Structure":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Structure":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def summary(self) -> str:
        """One line per layer: kept/total heads and channels."""
        return "\n".join(f"layer {i}: heads {len(h)}/{th}, channels {len(c)}/{tc}"
                         for i, (h, c, th, tc) in enumerate(zip(self.heads, self.channels,
                                                                self.total_heads, self.total_channels)))
