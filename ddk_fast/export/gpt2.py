"""Export a (pruned) MaskedGPT2 as a folder that ``AutoModelForCausalLM`` loads with trust_remote_code.

``save_causal_lm(model, out_dir, tokenizer=None, extra_files=None, overwrite=False) -> str``
    config.json (model_type "ddk_gpt2", per-layer ``num_heads`` / ``intermediate_sizes``, ``auto_map``,
    and ``ddk_config``: the TransformerConfig, so ddk_fast reads the folder back exactly), the standalone
    ``modeling_ddk_gpt2.py``, model.safetensors, tokenizer files, structure.json when pruned. Atomic,
    same rules as ``save_pruned``.
``load_causal_lm(dir) -> MaskedGPT2``
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import torch

from ddk_fast._version import __version__
from ddk_fast.model.gpt2 import EXPORT_MODEL_TYPE, MaskedGPT2
from ddk_fast.model.structure import Structure

MODELING_FILE = "modeling_ddk_gpt2.py"
STRUCTURE_FILE = "structure.json"
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
    from safetensors.torch import save_file

    from ddk_fast.export.save import _swap_into_place, _write_extra, _write_tokenizer

    if not isinstance(model, MaskedGPT2):
        raise TypeError(f"model: expected a ddk_fast MaskedGPT2, got {type(model).__name__}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"out_dir {out_dir!r} exists and is not a folder")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"out_dir {out_dir!r} exists and is not empty; pass overwrite=True to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(_config_json(model), f, indent=2)
        shutil.copy2(os.path.join(os.path.dirname(os.path.abspath(__file__)), MODELING_FILE),
                     os.path.join(tmp, MODELING_FILE))
        weights = {"model." + k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if model.pruned_from is not None:
            model.pruned_from.save(os.path.join(tmp, STRUCTURE_FILE))
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp)
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_causal_lm(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> MaskedGPT2:
    """The MaskedGPT2 in ``folder`` (an export, or a stock GPT-2 checkpoint), ``pruned_from`` restored."""
    folder = os.fspath(folder)
    model = MaskedGPT2.from_pretrained(folder, dtype=dtype)
    structure_path = os.path.join(folder, STRUCTURE_FILE)
    if os.path.isfile(structure_path):
        model.pruned_from = Structure.load(structure_path)
    return model


__all__ = ["save_causal_lm", "load_causal_lm", "MODELING_FILE"]
