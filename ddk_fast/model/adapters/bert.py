"""BERT and RoBERTa checkpoints (post-LayerNorm encoders with a first-token classifier).

RoBERTa differs only in position ids (counted from pad_token_id + 1, see TransformerConfig) and in its
classification head (classifier.dense / classifier.out_proj, which map onto pooler / classifier).
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ddk_fast.model.adapters.base import register_adapter
from ddk_fast.model.config import TransformerConfig

_LAYER_MAP = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention.norm",
    "intermediate.dense": "ffn.up",
    "output.dense": "ffn.down",
    "output.LayerNorm": "ffn.norm",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_LEGACY = {"gamma": "weight", "beta": "bias"}
# Present in some checkpoints, never needed: buffers and pre-training heads.
_IGNORED_PREFIXES = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.", "lm_head.")


class BertFamilyAdapter:
    def __init__(self, name: str, model_types: tuple[str, ...], prefix: str, position_style: str,
                 head_style: str):
        self.name = name
        self.model_types = model_types
        self.prefix = prefix  # the base-model attribute of the *For* classes: "bert." / "roberta."
        self.position_style = position_style
        self.head_style = head_style

    # ---- config ---------------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], num_labels: int, task_type: str) -> TransformerConfig:
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError(f"{self.name}: decoder / cross-attention checkpoints are not supported "
                             f"(is_decoder={hf.get('is_decoder')}, add_cross_attention={hf.get('add_cross_attention')})")
        pos = hf.get("position_embedding_type", "absolute") or "absolute"
        if pos != "absolute":
            raise ValueError(f"{self.name}: position_embedding_type={pos!r} is not supported; expected 'absolute'")
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        if hidden % heads:
            raise ValueError(f"{self.name}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        layers = int(hf["num_hidden_layers"])
        id2label = hf.get("id2label")
        if id2label is not None and len(id2label) != num_labels:
            id2label = None
        act = hf.get("hidden_act", "gelu")
        if not isinstance(act, str):
            raise ValueError(f"{self.name}: hidden_act must be a string name, got {act!r}")
        return TransformerConfig(
            family=self.name,
            vocab_size=int(hf["vocab_size"]), hidden_size=hidden, head_dim=hidden // heads,
            num_heads=[heads] * layers, intermediate_sizes=[int(hf["intermediate_size"])] * layers,
            hidden_act=act, layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            pad_token_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0),
            position_style=self.position_style, head_style=self.head_style,
            hidden_dropout_prob=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(hf.get("attention_probs_dropout_prob", 0.1)),
            classifier_dropout=hf.get("classifier_dropout"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            num_labels=num_labels, task_type=task_type, id2label=id2label)

    # ---- weights --------------------------------------------------------------------------------
    def _strip(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the *For* classes' base-model prefix from encoder keys; head keys keep their names."""
        if not any(k.startswith(self.prefix) for k in state_dict):
            return dict(state_dict)
        return {(k[len(self.prefix):] if k.startswith(self.prefix) else k): v for k, v in state_dict.items()}

    def checkpoint_num_labels(self, state_dict: dict[str, torch.Tensor]) -> int | None:
        sd = self._strip(state_dict)
        for key in ("classifier.out_proj.weight", "classifier.weight"):
            if key in sd:
                return int(sd[key].shape[0])
        return None

    def convert_state_dict(self, state_dict, config):
        sd = self._strip(state_dict)
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()

        def take(src: str, dst: str):
            out[dst] = sd[src]
            used.add(src)

        for src in list(sd):
            m = _LAYER_RE.match(src)
            if m:
                layer, module, kind = m.groups()
                if module in _LAYER_MAP:
                    take(src, f"layers.{layer}.{_LAYER_MAP[module]}.{_LEGACY.get(kind, kind)}")
                continue
            if src.startswith("embeddings."):
                name = src[len("embeddings."):]
                if name.startswith("LayerNorm."):
                    kind = name.split(".", 1)[1]
                    take(src, f"embeddings.norm.{_LEGACY.get(kind, kind)}")
                elif name in ("word_embeddings.weight", "position_embeddings.weight",
                              "token_type_embeddings.weight"):
                    take(src, src)
        if self.head_style == "roberta":
            # RobertaForSequenceClassification's head; a bare RobertaModel's pretrained pooler is a
            # better start than a random dense layer, so it fills in when there is no head.
            head = [("classifier.dense", "pooler"), ("classifier.out_proj", "classifier")]
            if "classifier.dense.weight" not in sd:
                head.append(("pooler.dense", "pooler"))
        else:
            head = [("pooler.dense", "pooler"), ("classifier", "classifier")]
        for src_mod, dst_mod in head:
            for kind in ("weight", "bias"):
                if f"{src_mod}.{kind}" in sd:
                    take(f"{src_mod}.{kind}", f"{dst_mod}.{kind}")
        unused = sorted(k for k in sd if k not in used and not k.startswith(_IGNORED_PREFIXES))
        return out, unused


BERT = BertFamilyAdapter("bert", ("bert",), "bert.", position_style="absolute", head_style="bert")
ROBERTA = BertFamilyAdapter("roberta", ("roberta",), "roberta.", position_style="padding_offset",
                            head_style="roberta")
register_adapter(BERT)
register_adapter(ROBERTA)
