"""Export a (pruned) MaskedGPT2 as a folder that ``AutoModelForCausalLM`` loads with trust_remote_code.

``save_causal_lm(model, out_dir, tokenizer=None, extra_files=None, overwrite=False) -> str``
    config.json (model_type "ddk_gpt2", per-layer ``num_heads`` / ``intermediate_sizes``, ``auto_map``,
    and ``ddk_config``: the TransformerConfig, so ddk_fast reads the folder back exactly), the standalone
    ``modeling_ddk_gpt2.py``, model.safetensors, tokenizer files, structure.json when pruned. Atomic,
    same rules as ``save_pruned``.
``load_causal_lm(dir) -> MaskedGPT2``
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from ddk_fast._version import __version__
from ddk_fast.export.save import restore_pruned_from, write_model_folder
from ddk_fast.model.gpt2 import EXPORT_MODEL_TYPE, MaskedGPT2

MODELING_FILE = "modeling_ddk_gpt2.py"
AUTO_MAP = {
    "AutoConfig": "modeling_ddk_gpt2.DdkGPT2Config",
    "AutoModel": "modeling_ddk_gpt2.DdkGPT2Model",
    "AutoModelForCausalLM": "modeling_ddk_gpt2.DdkGPT2ForCausalLM",
}


def _config_json(model: MaskedGPT2) -> dict[str, Any]:
    cfg = model.config
    extra = cfg.extra or {}
    return {
        "model_type": EXPORT_MODEL_TYPE,
        "architectures": ["DdkGPT2ForCausalLM"],
        "auto_map": dict(AUTO_MAP),
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "head_dim": cfg.head_dim,
        "num_heads": list(cfg.num_heads), "intermediate_sizes": list(cfg.intermediate_sizes),
        "hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "embd_pdrop": extra.get("embd_pdrop", cfg.hidden_dropout_prob),
        "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": extra.get("bos_token_id"), "eos_token_id": extra.get("eos_token_id"),
        "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": max(cfg.num_heads, default=0),
        "intermediate_size": max(cfg.intermediate_sizes, default=0),
        "dtype": str(model.final_norm.weight.dtype).replace("torch.", ""),
        "ddk_config": cfg.to_dict(),
        "ddk_fast_version": __version__,
    }


def save_causal_lm(model: MaskedGPT2, out_dir: str | os.PathLike, tokenizer=None,
                   extra_files: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
    """Write ``model`` to ``out_dir`` atomically (see the module docstring). Returns the folder path."""
    if not isinstance(model, MaskedGPT2):
        raise TypeError(f"model: expected a ddk_fast MaskedGPT2, got {type(model).__name__}")
    weights = {"model." + k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return write_model_folder(out_dir, overwrite, _config_json(model), MODELING_FILE, weights, model.pruned_from,
                              tokenizer, extra_files)


def load_causal_lm(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> MaskedGPT2:
    """The MaskedGPT2 in ``folder`` (an export, or a stock GPT-2 checkpoint), ``pruned_from`` restored."""
    folder = os.fspath(folder)
    return restore_pruned_from(MaskedGPT2.from_pretrained(folder, dtype=dtype), folder)


__all__ = ["save_causal_lm", "load_causal_lm", "MODELING_FILE"]
