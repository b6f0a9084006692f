"""Exact parameter counts from shapes.

"Encoder" means the transformer layers only: attention (Q, K, V, output projection, their biases,
LayerNorm) and FFN (up/down projections, biases, LayerNorm) of every layer. Embeddings, pooler and
classifier are not counted: they do not shrink with pruning, and budgets in the literature (CoFi,
DDK) are stated over encoder weights. A block with 0 units still holds its output bias and LayerNorm
(3 * hidden parameters), exactly like the module.
"""
from __future__ import annotations


def attention_params(hidden_size: int, num_heads: int, head_dim: int) -> int:
    """Parameters of one attention block with ``num_heads`` heads (incl. output bias and LayerNorm)."""
    inner = num_heads * head_dim
    return 3 * (hidden_size * inner + inner) + inner * hidden_size + hidden_size + 2 * hidden_size


def ffn_params(hidden_size: int, width: int) -> int:
    """Parameters of one FFN block with ``width`` channels (incl. output bias and LayerNorm)."""
    return hidden_size * width + width + width * hidden_size + hidden_size + 2 * hidden_size


def _config(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def layer_param_counts(model_or_config) -> list[dict[str, int]]:
    """Per layer {"attention": n, "ffn": n, "total": n} for a MaskedTransformer or TransformerConfig."""
    cfg = _config(model_or_config)
    out = []
    for h, i in zip(cfg.num_heads, cfg.intermediate_sizes):
        a = attention_params(cfg.hidden_size, h, cfg.head_dim)
        f = ffn_params(cfg.hidden_size, i)
        out.append({"attention": a, "ffn": f, "total": a + f})
    return out


def encoder_param_count(model_or_config) -> int:
    """Encoder parameters (transformer layers only; see the module docstring)."""
    return sum(layer["total"] for layer in layer_param_counts(model_or_config))


def prunable_param_count(model_or_config) -> int:
    """Encoder parameters that belong to heads or channels (what pruning can remove).

    Equals encoder_param_count minus the per-block output bias and LayerNorm that always stay.
    """
    cfg = _config(model_or_config)
    return encoder_param_count(cfg) - cfg.num_layers * 2 * 3 * cfg.hidden_size
