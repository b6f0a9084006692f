"""Exact encoder cost of a (possibly pruned) BERT-style layer stack, counted from shapes.

Why exact: the budget asks for "E[C]/C_full = target", and the derived model is checked against the
same number, so the cost model must agree with ``numel()`` of the pruned model, not approximate it.

What one layer with ``k`` heads (head_dim ``D``, hidden ``d``) and ``n`` FFN channels costs:

Parameters ("params")
    attention block: q, k, v weights and biases ``3*(d*k*D + k*D)``, output weight ``k*D*d``,
                     output bias ``d``, LayerNorm ``2d``            -> ``4*d*k*D + 3*k*D + 3*d``
    FFN block:       up weight+bias ``d*n + n``, down weight ``n*d``, down bias ``d``, LayerNorm ``2d``
                                                                      -> ``2*d*n + n + 3*d``
    A block with 0 heads (0 channels) *keeps* its output bias and LayerNorm: that is what stock
    transformers does after ``prune_heads`` of every head (the output is ``LayerNorm(x + b_o)``),
    and what a masked model with all gates 0 computes, so pruning never changes the function.
    Embeddings, pooler and classifier are not encoder parameters and are not counted.

FLOPs ("flops"), per example at sequence length ``S``, counted as 2 * multiply-adds of the matmuls:
    q, k, v projections ``2*S*d*3*k*D``; scores Q K^T ``2*S*S*k*D``; context A V ``2*S*S*k*D``;
    output projection ``2*S*k*D*d``; FFN up and down ``2*2*S*d*n``.
    Not counted (lower order, and not skipped by pruning): bias additions, softmax, GELU,
    LayerNorm, residual additions, attention masking.  A block with 0 units therefore costs 0 FLOPs.

Latency ("latency", only with a measured ``LatencyFit``), milliseconds of one forward pass of the
whole model at the fit's batch size and sequence length on the machine and runtime it was measured on:
    ``fixed_ms + head_ms * (heads kept, all layers) + channel_ms * (channels kept, all layers)``, a
    least-squares fit to timed uniform-width models (``ddk_fast.runs.latency_table``). The constant
    (embeddings, classifier, LayerNorms, residuals) is spread evenly over the 2 * L blocks as their
    fixed cost, so ``structure_cost / full_cost`` is the predicted whole-model latency ratio.

All three costs are affine in ``k`` and in ``n``, so expectations are exact: E[cost(k)] = cost(E[k]),
and every search method and the one-shot mask search take any of them unchanged.
"""
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch

Number = Union[int, float, torch.Tensor]

METRICS = ("params", "flops", "latency")


@dataclass(frozen=True)
class LatencyFit:
    """Measured whole-model latency as an affine function of the kept heads and channels (all layers).

    ``points``: the timed structures, each {"heads": per-layer count, "channels": per-layer count,
    "ms": median}; ``max_rel_error``: the fit's largest |predicted - measured| / measured over them."""

    fixed_ms: float
    head_ms: float
    channel_ms: float
    batch_size: int
    seq_len: int
    threads: int
    runtime: str = "torch"
    max_rel_error: float = 0.0
    points: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_metric(metric, latency=None):
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    if metric == "latency" and latency is None:
        raise ValueError("metric='latency' needs a measured LatencyFit (CostModel(..., latency=fit))")
    return metric


def _as_int_list(name, values, num_layers=None):
    values = [int(v) for v in values]
    if any(v < 0 for v in values):
        raise ValueError(f"{name}={values}: expected non-negative integers")
    if num_layers is not None and len(values) != num_layers:
        raise ValueError(f"{name} has {len(values)} entries: expected one per layer ({num_layers})")
    return values


class CostModel:
    """Cost of an encoder with ``len(num_heads)`` layers; layer ``l`` has at most ``num_heads[l]``
    heads and ``intermediate[l]`` FFN channels (uneven stacks are fine).

    ``metric`` picks the default for every method ("params" or "flops"); each method also takes an
    explicit ``metric``.  Counts may be Python numbers or tensors (elementwise, differentiable).
    """

    def __init__(self, hidden: int, head_dim: int, num_heads: Sequence[int], intermediate: Sequence[int],
                 seq_len: int = 128, metric: str = "params", latency: Optional[LatencyFit] = None):
        if int(hidden) <= 0 or int(head_dim) <= 0:
            raise ValueError(f"hidden={hidden}, head_dim={head_dim}: expected positive integers")
        if int(seq_len) <= 0:
            raise ValueError(f"seq_len={seq_len}: expected a positive integer")
        self.hidden = int(hidden)
        self.head_dim = int(head_dim)
        self.num_heads = _as_int_list("num_heads", num_heads)
        self.intermediate = _as_int_list("intermediate", intermediate, len(self.num_heads))
        if not self.num_heads:
            raise ValueError("num_heads=[]: expected at least one layer")
        self.seq_len = int(seq_len)
        self.latency = latency
        self.metric = self._metric(metric)

    @classmethod
    def from_config(cls, config, seq_len: int = 128, metric: str = "params") -> "CostModel":
        """From a ``ddk_fast.model`` TransformerConfig / MaskedTransformer (per-layer ``num_heads`` and
        ``intermediate_sizes``), or a transformers BERT-style config (``hidden_size``,
        ``num_attention_heads``, ``intermediate_size``, ``num_hidden_layers``, optional ``pruned_heads``)."""
        config = getattr(config, "config", config)
        if isinstance(getattr(config, "num_heads", None), (list, tuple)):
            return cls(config.hidden_size, config.head_dim, config.num_heads, config.intermediate_sizes,
                       seq_len=seq_len, metric=metric)
        num_layers = config.num_hidden_layers
        heads = config.num_attention_heads
        pruned = getattr(config, "pruned_heads", None) or {}
        num_heads = [heads - len(set(pruned.get(l, pruned.get(str(l), [])))) for l in range(num_layers)]
        inter = config.intermediate_size
        intermediate = list(inter) if isinstance(inter, (list, tuple)) else [inter] * num_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, head_dim, num_heads, intermediate, seq_len=seq_len, metric=metric)

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    def _metric(self, metric: Optional[str]) -> str:
        return _check_metric(metric or getattr(self, "metric", None), self.latency)

    # --- per-unit slopes and fixed parts: cost(k) = fixed + k * per_unit -------------------------
    def head_unit_cost(self, metric: Optional[str] = None) -> float:
        """Cost of one more attention head (slope of ``attention_cost``)."""
        d, D, S = self.hidden, self.head_dim, self.seq_len
        metric = self._metric(metric)
        if metric == "latency":
            return self.latency.head_ms
        if metric == "params":
            return 4 * d * D + 3 * D
        return 8 * S * d * D + 4 * S * S * D

    def channel_unit_cost(self, metric: Optional[str] = None) -> float:
        """Cost of one more FFN channel (slope of ``ffn_cost``)."""
        d, S = self.hidden, self.seq_len
        metric = self._metric(metric)
        if metric == "latency":
            return self.latency.channel_ms
        if metric == "params":
            return 2 * d + 1
        return 4 * S * d

    def block_fixed_cost(self, metric: Optional[str] = None) -> float:
        """Cost an attention (or FFN) block keeps at 0 units: output bias + LayerNorm (params), 0 (FLOPs),
        the model's constant latency shared out over its 2 * L blocks (latency)."""
        metric = self._metric(metric)
        if metric == "latency":
            return self.latency.fixed_ms / (2 * self.num_layers)
        return 3 * self.hidden if metric == "params" else 0

    # --- blocks, layers, stacks -------------------------------------------------------------------
    def attention_cost(self, heads: Number, metric: Optional[str] = None) -> Number:
        """Attention block with ``heads`` heads."""
        return self.block_fixed_cost(metric) + heads * self.head_unit_cost(metric)

    def ffn_cost(self, channels: Number, metric: Optional[str] = None) -> Number:
        """FFN block with ``channels`` intermediate channels."""
        return self.block_fixed_cost(metric) + channels * self.channel_unit_cost(metric)

    def layer_cost(self, kind: Optional[str], heads: Number, channels: Number) -> Number:
        """One layer with ``heads`` heads and ``channels`` FFN channels; ``kind`` = "params" | "flops"
        (None: the model's default metric)."""
        return self.attention_cost(heads, kind) + self.ffn_cost(channels, kind)

    def structure_cost(self, heads: Sequence[int], channels: Sequence[int], metric: Optional[str] = None) -> float:
        """Whole stack with per-layer head and channel counts."""
        heads = _as_int_list("heads", heads, self.num_layers)
        channels = _as_int_list("channels", channels, self.num_layers)
        for l, (k, n) in enumerate(zip(heads, channels)):
            if k > self.num_heads[l] or n > self.intermediate[l]:
                raise ValueError(f"layer {l}: heads={k}, channels={n} exceed the layer's "
                                 f"{self.num_heads[l]} heads / {self.intermediate[l]} channels")
        return sum(self.layer_cost(metric, k, n) for k, n in zip(heads, channels))

    def full_cost(self, metric: Optional[str] = None) -> float:
        """Every unit kept."""
        return self.structure_cost(self.num_heads, self.intermediate, metric)

    def min_cost(self, metric: Optional[str] = None) -> float:
        """Every head and channel removed (what any search space with a 0 candidate can reach)."""
        return self.num_layers * 2 * self.block_fixed_cost(metric)

    def min_ratio(self, metric: Optional[str] = None) -> float:
        """``min_cost / full_cost``: the lowest budget ratio that can be met."""
        return self.min_cost(metric) / self.full_cost(metric)

    def expected_cost(self, head_probs: torch.Tensor, head_counts: torch.Tensor,
                      ffn_probs: torch.Tensor, ffn_counts: torch.Tensor, metric: Optional[str] = None) -> torch.Tensor:
        """Exact E[C] = sum over layers and candidates of p(candidate) * cost(candidate).

        ``head_probs`` [L, Ch] (rows sum to 1, padded candidates with probability 0) over the counts
        ``head_counts`` [L, Ch]; the same for the FFN.  Differentiable w.r.t. the probabilities.
        """
        for name, p, c in (("head", head_probs, head_counts), ("ffn", ffn_probs, ffn_counts)):
            if p.dim() != 2 or p.shape[0] != self.num_layers or p.shape != c.shape:
                raise ValueError(f"{name}_probs {tuple(p.shape)} / {name}_counts {tuple(c.shape)}: expected "
                                 f"equal shapes [num_layers={self.num_layers}, num_candidates]")
        head_costs = self.attention_cost(head_counts.to(head_probs.dtype), metric)
        ffn_costs = self.ffn_cost(ffn_counts.to(ffn_probs.dtype), metric)
        return (head_probs * head_costs).sum() + (ffn_probs * ffn_costs).sum()

    def expected_cost_from_counts(self, expected_heads: torch.Tensor, expected_channels: torch.Tensor,
                                  metric: Optional[str] = None) -> torch.Tensor:
        """Exact E[C] from per-layer expected counts [L] (valid because the cost is affine in counts)."""
        return (self.attention_cost(expected_heads, metric).sum()
                + self.ffn_cost(expected_channels, metric).sum())

    def __repr__(self):
        return (f"CostModel(hidden={self.hidden}, head_dim={self.head_dim}, num_heads={self.num_heads}, "
                f"intermediate={self.intermediate}, seq_len={self.seq_len}, metric={self.metric!r}"
                + (f", latency={self.latency}" if self.latency is not None else "") + ")")
