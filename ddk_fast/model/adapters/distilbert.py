"""DistilBERT checkpoints: BERT's post-LayerNorm encoder under other names.

What differs from BERT (transformers' modeling_distilbert): config keys dim / n_heads / hidden_dim /
n_layers / activation / dropout / attention_dropout / seq_classif_dropout; weights under
``transformer.layer.{l}`` named attention.{q,k,v,out}_lin, sa_layer_norm, ffn.lin1 / lin2 and
output_layer_norm; no token-type embeddings; LayerNorm eps fixed at 1e-12; and the head
pre_classifier -> ReLU -> dropout -> classifier on the first token (no tanh pooler). Sinusoidal
position embeddings (sinusoidal_pos_embds) are stored in the checkpoint like learned ones.
DistilBERT has no dropout after the attention output (attention_output_dropout=False).
"""
from __future__ import annotations

import re
from typing import Any

from ddk_fast.model.adapters.base import register_adapter
from ddk_fast.model.adapters.bert import BertFamilyAdapter, matching_labels, pad_token_id, string_activation
from ddk_fast.model.config import TransformerConfig

_LAYER_MAP = {
    "attention.q_lin": "attention.query",
    "attention.k_lin": "attention.key",
    "attention.v_lin": "attention.value",
    "attention.out_lin": "attention.output",
    "sa_layer_norm": "attention.norm",
    "ffn.lin1": "ffn.up",
    "ffn.lin2": "ffn.down",
    "output_layer_norm": "ffn.norm",
}
_LAYER_RE = re.compile(r"^transformer\.layer\.(\d+)\.(.+)\.(weight|bias)$")
LAYER_NORM_EPS = 1e-12  # hard-coded in every DistilBERT LayerNorm


class DistilBertAdapter(BertFamilyAdapter):
    layer_re = _LAYER_RE
    layer_map = _LAYER_MAP

    def __init__(self):
        super().__init__("distilbert", ("distilbert",), "distilbert.", position_style="absolute",
                         head_style="distilbert")

    def config_from_hf(self, hf: dict[str, Any], num_labels: int, task_type: str) -> TransformerConfig:
        hidden, heads = int(hf.get("dim", 768)), int(hf.get("n_heads", 12))
        if hidden % heads:
            raise ValueError(f"{self.name}: dim {hidden} is not a multiple of n_heads {heads}")
        layers = int(hf.get("n_layers", 6))
        act = string_activation(self.name, "activation", hf.get("activation", "gelu"))
        return TransformerConfig(
            family=self.name,
            vocab_size=int(hf["vocab_size"]), hidden_size=hidden, head_dim=hidden // heads,
            num_heads=[heads] * layers, intermediate_sizes=[int(hf.get("hidden_dim", 4 * hidden))] * layers,
            hidden_act=act, layer_norm_eps=LAYER_NORM_EPS,
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=0, pad_token_id=pad_token_id(hf),
            position_style=self.position_style, head_style=self.head_style,
            hidden_dropout_prob=float(hf.get("dropout", 0.1)),
            attention_probs_dropout_prob=float(hf.get("attention_dropout", 0.1)), attention_output_dropout=False,
            classifier_dropout=float(hf.get("seq_classif_dropout", 0.2)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            num_labels=num_labels, task_type=task_type, id2label=matching_labels(hf, num_labels))


DISTILBERT = DistilBertAdapter()
register_adapter(DISTILBERT)
