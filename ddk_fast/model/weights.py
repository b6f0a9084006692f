"""Reading a checkpoint (a folder or a loaded transformers model) and copying its tensors into a model.

Why its own module: MaskedTransformer and MaskedGPT2 load checkpoints the same way, and neither model
module should reach into the other for it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], allow_missing: Sequence[str] = ()) -> None:
    """Copy ``weights`` into ``model``; shapes must match; only ``allow_missing`` keys may be absent."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in weights and k not in allow_missing)
    unexpected = sorted(k for k in weights if k not in own)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key, value in weights.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(own[key].shape)}")
    absent = [k for k in allow_missing if k in own and k not in weights]
    if absent:
        logger.info("fresh (randomly initialised) parameters: %s", absent)
    model.load_state_dict({k: v for k, v in weights.items()}, strict=False)


def read_checkpoint(path_or_model) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config as a plain dict, state dict) from a folder or a loaded transformers model."""
    if isinstance(path_or_model, nn.Module):
        cfg = getattr(path_or_model, "config", None)
        if cfg is None or not hasattr(cfg, "to_dict"):
            raise TypeError(f"path_or_model: a module must be a transformers PreTrainedModel with .config, "
                            f"got {type(path_or_model).__name__}")
        return cfg.to_dict(), {k: v.detach() for k, v in path_or_model.state_dict().items()}
    path = os.fspath(path_or_model)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path_or_model: {path!r} is not a folder (expected config.json + weights)")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    return config, read_weights(path)


def read_weights(folder: str) -> dict[str, torch.Tensor]:
    """model.safetensors (single or sharded), else pytorch_model.bin loaded with weights_only=True."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(load_file(os.path.join(folder, shard)))
        return out
    legacy = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(legacy):
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights in {folder!r}: expected model.safetensors, "
                            f"model.safetensors.index.json or pytorch_model.bin")
