"""Write a MaskedTransformer as a self-contained transformers folder, and read it back.

Why this layout: stock BertConfig cannot say "layer 3 has 5 heads and 700 FFN channels", and
transformers 5 has no prune_heads. A small modeling file shipped in the folder (auto_map +
trust_remote_code) is the portable answer; ddk_fast reads the same folder without executing it.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import torch

from ddk_fast._io import write_directory
from ddk_fast._version import __version__
from ddk_fast.model.masked_transformer import DDK_MODEL_TYPE, MaskedTransformer
from ddk_fast.model.structure import Structure

MODEL_TYPE = DDK_MODEL_TYPE
MODELING_FILE = "modeling_ddk_bert.py"
STRUCTURE_FILE = "structure.json"
AUTO_MAP = {
    "AutoConfig": "modeling_ddk_bert.DdkBertConfig",
    "AutoModel": "modeling_ddk_bert.DdkBertModel",
    "AutoModelForSequenceClassification": "modeling_ddk_bert.DdkBertForSequenceClassification",
}
# token classification exports name the per-token class instead: the same classifier shape read as the
# other kind would load silently and mean something else
TOKEN_AUTO_MAP = {"AutoConfig": AUTO_MAP["AutoConfig"], "AutoModel": AUTO_MAP["AutoModel"],
                  "AutoModelForTokenClassification": "modeling_ddk_bert.DdkBertForTokenClassification"}
QA_AUTO_MAP = {"AutoConfig": AUTO_MAP["AutoConfig"], "AutoModel": AUTO_MAP["AutoModel"],
               "AutoModelForQuestionAnswering": "modeling_ddk_bert.DdkBertForQuestionAnswering"}
# task_type of the engine -> (architecture, auto_map) of its export
HEADS = {"token_classification": ("DdkBertForTokenClassification", TOKEN_AUTO_MAP),
         "qa": ("DdkBertForQuestionAnswering", QA_AUTO_MAP)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


# task_type of the engine -> transformers' problem_type (which loss a stock model applies to labels);
# QA models have none (their loss is the span loss whatever the config says)
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression",
                 "multilabel": "multi_label_classification",
                 "token_classification": "single_label_classification",  # one label per token
                 "qa": None}


def _config_json(model: MaskedTransformer) -> dict[str, Any]:
    cfg = model.config.to_dict()
    for key in ("extra", "num_labels", "id2label"):
        cfg.pop(key)
    id2label = model.config.id2label or {i: f"LABEL_{i}" for i in range(model.config.num_labels)}
    dtype = str(model.classifier.weight.dtype).replace("torch.", "")
    architecture, auto_map = HEADS.get(model.config.task_type, ("DdkBertForSequenceClassification", AUTO_MAP))
    return {
        "model_type": MODEL_TYPE,
        "architectures": [architecture],
        "auto_map": dict(auto_map),
        **cfg,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": max(model.num_heads, default=0),
        "intermediate_size": max(model.intermediate_sizes, default=0),
        "id2label": {str(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
        "problem_type": PROBLEM_TYPES[model.config.task_type],
        "dtype": dtype,
        "ddk_fast_version": __version__,
    }


def _hf_state_dict(model: MaskedTransformer) -> dict[str, torch.Tensor]:
    """MaskedTransformer keys -> the shipped classes' keys: the encoder and pooler live under "model."."""
    out = {}
    for key, value in model.state_dict().items():
        name = key if key.startswith("classifier.") else "model." + key
        out[name] = value.detach().to("cpu").contiguous().clone()
    return out


def _write_tokenizer(tokenizer, folder: str) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
        return
    src = os.fspath(tokenizer)
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if not found:
        raise FileNotFoundError(f"tokenizer: no tokenizer files in {src!r}; expected some of {list(TOKENIZER_FILES)}")
    for name in found:
        shutil.copy2(os.path.join(src, name), os.path.join(folder, name))


def _write_extra(folder: str, name: str, content, reserved: tuple[str, ...]) -> None:
    rel = pathlib.PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"extra_files: name {name!r} must be a relative path inside the folder")
    if str(rel) in reserved:
        raise ValueError(f"extra_files: {name!r} would overwrite a file the export writes itself")
    path = os.path.join(folder, *rel.parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(content, os.PathLike):
        shutil.copy2(os.fspath(content), path)
    elif isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    elif isinstance(content, str):
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    elif isinstance(content, (dict, list)):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
    else:
        raise TypeError(f"extra_files[{name!r}]: expected str, bytes, dict/list or pathlib.Path, "
                        f"got {type(content).__name__}")


def write_model_folder(out_dir: str | os.PathLike, overwrite: bool, config: dict, modeling_file: str,
                       weights: dict[str, torch.Tensor], structure: Structure | None, tokenizer,
                       extra_files: Mapping[str, Any] | None) -> str:
    """The one way an export folder is written (``ddk_fast._io.write_directory``: atomic, a non-empty
    ``out_dir`` refused without ``overwrite``): config.json, the standalone modeling file,
    model.safetensors, structure.json (pruned models), the tokenizer and any extra files."""
    from safetensors.torch import save_file

    def fill(tmp: str) -> None:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        shutil.copy2(os.path.join(os.path.dirname(os.path.abspath(__file__)), modeling_file),
                     os.path.join(tmp, modeling_file))
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if structure is not None:
            structure.save(os.path.join(tmp, STRUCTURE_FILE))
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp)
        reserved = ("config.json", modeling_file, "model.safetensors", STRUCTURE_FILE)
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content, reserved)

    return write_directory(out_dir, fill, overwrite)


def restore_pruned_from(model, folder: str):
    """``model`` with ``pruned_from`` read from the folder's structure.json, when the export has one."""
    structure_path = os.path.join(folder, STRUCTURE_FILE)
    if os.path.isfile(structure_path):
        model.pruned_from = Structure.load(structure_path)
    return model


def save_pruned(model: MaskedTransformer, out_dir: str | os.PathLike, tokenizer=None,
                extra_files: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
    """Write ``model`` to ``out_dir`` atomically (see ddk_fast.export). Returns the folder path."""
    if not isinstance(model, MaskedTransformer):
        raise TypeError(f"model: expected a ddk_fast MaskedTransformer, got {type(model).__name__}")
    return write_model_folder(out_dir, overwrite, _config_json(model), MODELING_FILE, _hf_state_dict(model),
                              model.pruned_from, tokenizer, extra_files)


def load_pruned(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> MaskedTransformer:
    """The MaskedTransformer saved in ``folder`` by save_pruned (with ``pruned_from`` when recorded)."""
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"load_pruned: no config.json in {folder!r}")
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != MODEL_TYPE:
        raise ValueError(f"load_pruned: {folder!r} has model_type {model_type!r}, expected {MODEL_TYPE!r} "
                         f"(for a stock checkpoint use MaskedTransformer.from_pretrained)")
    return restore_pruned_from(MaskedTransformer.from_pretrained(folder, dtype=dtype), folder)
