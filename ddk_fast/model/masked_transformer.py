"""MaskedTransformer: a BERT-family encoder + task head whose heads and FFN channels are gated.

Why: the search and the distillation need one model that (a) reproduces the stock checkpoint exactly
when every gate is 1, (b) takes per-layer gates that the fused ops use to skip pruned units, and
(c) exposes the internals distillation losses need (hidden states, attention scores/probabilities,
Q/K/V, FFN activations) only when asked, so that asking for nothing keeps the fast path.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ddk_fast.model.active import ActiveUnits
from ddk_fast.model.adapters import adapter_for
from ddk_fast.model.adapters.base import HEAD_KEYS
from ddk_fast.model.backbone import MaskedBackbone
from ddk_fast.model.config import QUESTION_ANSWERING, TOKEN_CLASSIFICATION, TransformerConfig
from ddk_fast.model.layers import Embeddings, MaskedLayer, linear
from ddk_fast.model.structure import Structure
from ddk_fast.model.weights import load_weights, read_checkpoint

logger = logging.getLogger(__name__)

DDK_MODEL_TYPE = "ddk_bert"  # model_type of folders written by ddk_fast.export.save_pruned
# TransformerConfig.head_activation -> the function (ELECTRA's head uses exact, erf-based GELU).
_HEAD_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu}


@dataclass
class MaskedTransformerOutput:
    """Forward results; optional fields are None unless asked for (see MaskedTransformer.forward)."""

    logits: torch.Tensor
    pooled: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None
    attention_probs: tuple[torch.Tensor, ...] | None = None
    qkv: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] | None = None
    ffn_intermediate: tuple[torch.Tensor, ...] | None = None
    ffn_output: tuple[torch.Tensor, ...] | None = None


class MaskedTransformer(MaskedBackbone):
    """Embeddings -> L masked post-LN layers -> first-token head (pooler + tanh/relu/gelu) -> classifier;
    with ``task_type="token_classification"`` the classifier reads every token instead (logits [B, S, C]),
    with ``task_type="qa"`` it is the span head: a start and an end logit per token (logits [B, S, 2])."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(MaskedLayer(config, i) for i in range(config.num_layers))
        self.pooler = linear(config.hidden_size, config.hidden_size)
        self.classifier = linear(config.hidden_size, config.num_labels)
        self.classifier_dropout = nn.Dropout(config.classifier_dropout_prob)
        self.pruned_from: Structure | None = None
        self.apply(self._init_module)

    # ---- shape (the per-layer sizes and gates come from MaskedBackbone) ---------------------------
    @property
    def anchor_weight(self) -> torch.Tensor:
        return self.classifier.weight

    @property
    def head_reads_first_token_only(self) -> bool:
        """Whether the task head reads only the first token's last hidden state (sequence tasks), not
        every token's (token classification, QA spans): what a reconstruction of the last layer has to match."""
        return self.config.task_type not in (TOKEN_CLASSIFICATION, QUESTION_ANSWERING)

    # ---- init -----------------------------------------------------------------------------------
    def _init_module(self, module: nn.Module) -> None:
        """BERT's initialisation: normal(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, head_gates=None, ffn_gates=None, path: str = "auto",
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                output_attention_probs: bool = False, output_qkv: bool = False,
                output_ffn: bool = False, active_units: ActiveUnits | None = None) -> MaskedTransformerOutput:
        """input_ids [B, S] (long); attention_mask [B, S] (1 = real token, 0 = padding) or None.

        See the package docstring (ddk_fast.model) for gates, paths and the optional outputs.
        ``active_units``: :meth:`active_units` of the same gates, when the caller has them; None finds
        them here (one host read when gates are given, none without gates).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        x, trace = self.run_layers(self.embeddings(input_ids, token_type_ids), attention_mask, head_gates, ffn_gates,
                                   path, active_units, output_hidden_states, output_attention_scores,
                                   output_attention_probs, output_qkv, output_ffn)
        first = x[:, 0]
        if self.config.task_type == TOKEN_CLASSIFICATION:
            # BertForTokenClassification: dropout + linear on every token's last hidden state [B, S, C];
            # the pooler is unused (kept so every task type has the same parameters)
            pooled, logits = first, self.classifier(self.classifier_dropout(x))
        elif self.config.task_type == QUESTION_ANSWERING:
            # BertForQuestionAnswering's qa_outputs: a linear layer on every token, no dropout (DistilBERT's
            # QA head has dropout before it: the same in eval mode); [..., 0] start logits, [..., 1] end
            pooled, logits = first, self.classifier(x)
        else:
            if self.config.head_dropout_first:
                first = self.classifier_dropout(first)
            pooled = _HEAD_ACTIVATIONS[self.config.head_activation](self.pooler(first))
            logits = self.classifier(self.classifier_dropout(pooled))
        return MaskedTransformerOutput(logits=logits, pooled=pooled, last_hidden_state=x, **trace.as_tuples())

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_model, num_labels: int | None = None, task_type: str | None = None,
                        dtype: torch.dtype = torch.float32) -> "MaskedTransformer":
        """Build from a stock checkpoint folder, a loaded transformers model, or a save_pruned folder.

        num_labels: default = the checkpoint's classifier rows, else 1 for regression, else 2.
        task_type: default = "regression" when num_labels is 1 (or the config says so), "token_classification"
        for a ``...ForTokenClassification`` checkpoint, "qa" (2 labels: start, end) for a
        ``...ForQuestionAnswering`` one, else "classification".
        A checkpoint classifier whose row count differs from num_labels is replaced by a fresh one.
        """
        hf_config, state_dict = read_checkpoint(path_or_model)
        if hf_config.get("model_type") == DDK_MODEL_TYPE:
            return _from_ddk_export(cls, hf_config, state_dict, dtype)
        adapter = adapter_for(hf_config.get("model_type", ""))
        ckpt_labels = adapter.checkpoint_num_labels(state_dict)
        architectures = hf_config.get("architectures") or (
            [type(path_or_model).__name__] if isinstance(path_or_model, nn.Module) else [])
        if task_type is None and any(str(a).endswith("ForTokenClassification") for a in architectures):
            task_type = TOKEN_CLASSIFICATION
        if task_type is None and any(str(a).endswith("ForQuestionAnswering") for a in architectures):
            task_type = QUESTION_ANSWERING
        if task_type is None:
            regression = (num_labels == 1 or hf_config.get("problem_type") == "regression"
                          or (num_labels is None and ckpt_labels == 1))
            multilabel = hf_config.get("problem_type") == "multi_label_classification"
            task_type = "regression" if regression else ("multilabel" if multilabel else "classification")
        if num_labels is None:
            num_labels = 1 if task_type == "regression" else (ckpt_labels or 2)
        config = adapter.config_from_hf(hf_config, num_labels=num_labels, task_type=task_type)
        weights, unused = adapter.convert_state_dict(state_dict, config)
        if unused:
            logger.warning("MaskedTransformer.from_pretrained: ignoring %d checkpoint tensors: %s",
                           len(unused), unused[:8])
        model = cls(config)
        if "classifier.weight" in weights and weights["classifier.weight"].shape[0] != num_labels:
            logger.warning("checkpoint classifier has %d labels, num_labels=%d: using a fresh classifier",
                           weights["classifier.weight"].shape[0], num_labels)
            weights.pop("classifier.weight")
            weights.pop("classifier.bias", None)
        load_weights(model, weights, allow_missing=HEAD_KEYS)
        return model.to(dtype)


def _from_ddk_export(cls, hf_config: dict, state_dict: dict, dtype) -> "MaskedTransformer":
    """A folder written by ddk_fast.export.save_pruned: its config.json carries TransformerConfig fields."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)} - {"num_labels", "id2label", "extra"}
    kwargs = {k: hf_config[k] for k in fields if k in hf_config}
    id2label = hf_config.get("id2label")
    kwargs["num_labels"] = len(id2label) if id2label else int(hf_config.get("num_labels", 2))
    kwargs["id2label"] = id2label
    model = cls(TransformerConfig(**kwargs))
    prefix = "model."
    weights = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    load_weights(model, weights)
    return model.to(dtype)
