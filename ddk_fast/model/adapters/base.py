"""The seam between checkpoint families and the masked transformer.

A family adapter knows one stock checkpoint layout (its config keys and weight names) and translates
it into a TransformerConfig plus a state dict in MaskedTransformer's layout:

    embeddings.word_embeddings.weight, embeddings.position_embeddings.weight,
    embeddings.token_type_embeddings.weight, embeddings.norm.{weight,bias}
    embeddings.project.{weight,bias}                            (only when embedding_size != hidden_size)
    layers.{l}.attention.{query,key,value,output}.{weight,bias}, layers.{l}.attention.norm.{weight,bias}
    layers.{l}.ffn.{up,down}.{weight,bias}, layers.{l}.ffn.norm.{weight,bias}
    pooler.{weight,bias}, classifier.{weight,bias}              (optional: fresh if absent)

All projection weights use nn.Linear layout ([out, in]); families stored otherwise (GPT-2's Conv1D is
[in, out], with Q/K/V fused) transpose and split here, so nothing downstream knows about them.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from ddk_fast.model.config import TransformerConfig

HEAD_KEYS = ("pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias")


class FamilyAdapter(Protocol):
    """What a checkpoint family provides. Register an instance with ``register_adapter``."""

    name: str
    model_types: tuple[str, ...]  # values of config.json's "model_type" this adapter reads

    def config_from_hf(self, hf_config: dict[str, Any], num_labels: int, task_type: str) -> TransformerConfig:
        """The TransformerConfig for a stock config (given as a plain dict, as in config.json)."""

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor], config: TransformerConfig
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(weights in MaskedTransformer layout, stock keys that were not used)."""

    def checkpoint_num_labels(self, state_dict: dict[str, torch.Tensor]) -> int | None:
        """Rows of the checkpoint's classifier, or None when it has no classifier."""


_ADAPTERS: dict[str, FamilyAdapter] = {}

# Families users ask for that the masked post-LN encoder cannot reproduce, and why (one line each).
REFUSED = {
    "albert": "ALBERT shares one set of layer weights across all layers, so heads and channels cannot be "
              "pruned per layer",
    "deberta": "DeBERTa's disentangled relative-position attention is not what the gated attention ops compute",
    "deberta-v2": "DeBERTa's disentangled relative-position attention is not what the gated attention ops compute",
    "longformer": "Longformer's sparse (sliding-window + global) attention is not what the gated attention "
                  "ops compute",
    "big_bird": "BigBird's sparse (block + random + global) attention is not what the gated attention ops compute",
    "funnel": "Funnel Transformer pools the sequence between blocks",
    "mobilebert": "MobileBERT has bottleneck layers, stacked FFNs and no LayerNorm",
    "xlnet": "XLNet uses two-stream relative attention",
    "modernbert": "ModernBERT is pre-LayerNorm with rotary positions, gated FFNs and local attention",
    "convbert": "ConvBERT mixes attention heads with span-based convolution heads",
    "megatron-bert": "Megatron-BERT is pre-LayerNorm",
    "gpt2": "GPT-2 is a causal decoder: use ddk_fast.model.MaskedGPT2 (ddk-fast --task lm)",
}


def register_adapter(adapter: FamilyAdapter) -> None:
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


def refusal(model_type: str) -> str | None:
    """None when model_type has an adapter; else the tail of a one-line refusal: why it is refused
    (when known) and which model types are supported."""
    if model_type in _ADAPTERS:
        return None
    why = f" ({REFUSED[model_type]})" if model_type in REFUSED else ""
    return f"{why}; supported: {', '.join(supported_model_types())}"


def adapter_for(model_type: str) -> FamilyAdapter:
    why = refusal(model_type)
    if why is not None:
        raise ValueError(f"no checkpoint adapter for model_type {model_type!r}{why}")
    return _ADAPTERS[model_type]


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)
