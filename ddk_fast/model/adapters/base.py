"""The seam between checkpoint families and the masked transformer.

A family adapter knows one stock checkpoint layout (its config keys and weight names) and translates
it into a TransformerConfig plus a state dict in MaskedTransformer's layout:

    embeddings.word_embeddings.weight, embeddings.position_embeddings.weight,
    embeddings.token_type_embeddings.weight, embeddings.norm.{weight,bias}
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


def register_adapter(adapter: FamilyAdapter) -> None:
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


def adapter_for(model_type: str) -> FamilyAdapter:
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise ValueError(f"no checkpoint adapter for model_type {model_type!r}; "
                         f"supported: {sorted(_ADAPTERS)}") from None


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)
