"""BERT-layout checkpoints: BERT, RoBERTa, XLM-RoBERTa and ELECTRA (post-LayerNorm encoders with a
first-token classifier and BERT's weight names under a family prefix).

RoBERTa and XLM-RoBERTa differ only in position ids (counted from pad_token_id + 1, see
TransformerConfig) and in their classification head (classifier.dense / classifier.out_proj, which map
onto pooler / classifier). ELECTRA's discriminator has RoBERTa's head names with GELU in place of tanh,
absolute positions, and embeddings of width ``embedding_size`` projected to hidden_size by
``embeddings_project`` when the two differ (ELECTRA-small).
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
# Present in some checkpoints, never needed: buffers and pre-training heads (ELECTRA's discriminator /
# generator heads and DistilBERT's masked-LM head included).
_IGNORED_PREFIXES = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.", "lm_head.",
                     "discriminator_predictions.", "generator_predictions.", "generator_lm_head.",
                     "vocab_transform.", "vocab_layer_norm.", "vocab_projector.")
# the span head of every *ForQuestionAnswering class (start and end logit per token); the engine's
# classifier plays its part when task_type is "qa"
QA_HEAD = ("qa_outputs", "classifier")
# head_style -> (stock module, MaskedTransformer module) pairs of the sequence-classification head.
_HEAD_MAP = {"bert": (("pooler.dense", "pooler"), ("classifier", "classifier")),
             "roberta": (("classifier.dense", "pooler"), ("classifier.out_proj", "classifier")),
             "electra": (("classifier.dense", "pooler"), ("classifier.out_proj", "classifier")),
             "distilbert": (("pre_classifier", "pooler"), ("classifier", "classifier"))}


def string_activation(family: str, key: str, act) -> str:
    """The config's activation name (a callable stored in a config cannot be exported)."""
    if not isinstance(act, str):
        raise ValueError(f"{family}: {key} must be a string name, got {act!r}")
    return act


def matching_labels(hf: dict[str, Any], num_labels: int) -> dict | None:
    """The checkpoint's id2label when it names exactly num_labels labels, else None."""
    id2label = hf.get("id2label")
    return id2label if id2label is not None and len(id2label) == num_labels else None


def pad_token_id(hf: dict[str, Any]) -> int:
    return int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0)


class BertFamilyAdapter:
    """One BERT-layout family; subclasses with other weight names override the two class attributes."""

    layer_re = _LAYER_RE  # stock per-layer key -> (layer, module, kind)
    layer_map = _LAYER_MAP  # stock per-layer module -> MaskedTransformer module

    def __init__(self, name: str, model_types: tuple[str, ...], prefix: str, position_style: str,
                 head_style: str):
        self.name = name
        self.model_types = model_types
        self.prefix = prefix  # the base-model attribute of the *For* classes: "bert." / "roberta." / "electra."
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
        embedding_size = int(hf.get("embedding_size") or hidden)
        act = string_activation(self.name, "hidden_act", hf.get("hidden_act", "gelu"))
        return TransformerConfig(
            family=self.name,
            vocab_size=int(hf["vocab_size"]), hidden_size=hidden, head_dim=hidden // heads,
            num_heads=[heads] * layers, intermediate_sizes=[int(hf["intermediate_size"])] * layers,
            hidden_act=act, layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            pad_token_id=pad_token_id(hf),
            position_style=self.position_style, head_style=self.head_style,
            embedding_size=None if embedding_size == hidden else embedding_size,
            hidden_dropout_prob=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(hf.get("attention_probs_dropout_prob", 0.1)),
            classifier_dropout=hf.get("classifier_dropout"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            num_labels=num_labels, task_type=task_type, id2label=matching_labels(hf, num_labels))

    # ---- weights --------------------------------------------------------------------------------
    def _strip(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the *For* classes' base-model prefix from encoder keys; head keys keep their names."""
        if not any(k.startswith(self.prefix) for k in state_dict):
            return dict(state_dict)
        return {(k[len(self.prefix):] if k.startswith(self.prefix) else k): v for k, v in state_dict.items()}

    def checkpoint_num_labels(self, state_dict: dict[str, torch.Tensor]) -> int | None:
        sd = self._strip(state_dict)
        for key in ("classifier.out_proj.weight", "classifier.weight", "qa_outputs.weight"):
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
            m = self.layer_re.match(src)
            if m:
                layer, module, kind = m.groups()
                if module in self.layer_map:
                    take(src, f"layers.{layer}.{self.layer_map[module]}.{_LEGACY.get(kind, kind)}")
                continue
            if src.startswith("embeddings."):
                name = src[len("embeddings."):]
                if name.startswith("LayerNorm."):
                    kind = name.split(".", 1)[1]
                    take(src, f"embeddings.norm.{_LEGACY.get(kind, kind)}")
                elif name in ("word_embeddings.weight", "position_embeddings.weight",
                              "token_type_embeddings.weight"):
                    take(src, src)
            elif src.startswith("embeddings_project."):  # ELECTRA with embedding_size != hidden_size
                take(src, "embeddings.project." + src.split(".", 1)[1])
        head = list(_HEAD_MAP[self.head_style]) + [QA_HEAD]
        if self.head_style == "roberta" and "classifier.dense.weight" not in sd:
            # a bare RobertaModel's pretrained pooler is a better start than a random dense layer
            head.append(("pooler.dense", "pooler"))
        for src_mod, dst_mod in head:
            for kind in ("weight", "bias"):
                if f"{src_mod}.{kind}" in sd:
                    take(f"{src_mod}.{kind}", f"{dst_mod}.{kind}")
        unused = sorted(k for k in sd if k not in used and not k.startswith(_IGNORED_PREFIXES))
        return out, unused


BERT = BertFamilyAdapter("bert", ("bert",), "bert.", position_style="absolute", head_style="bert")
ROBERTA = BertFamilyAdapter("roberta", ("roberta",), "roberta.", position_style="padding_offset",
                            head_style="roberta")
XLM_ROBERTA = BertFamilyAdapter("xlm-roberta", ("xlm-roberta",), "roberta.", position_style="padding_offset",
                                head_style="roberta")
ELECTRA = BertFamilyAdapter("electra", ("electra",), "electra.", position_style="absolute", head_style="electra")
for _adapter in (BERT, ROBERTA, XLM_ROBERTA, ELECTRA):
    register_adapter(_adapter)
