"""The shape and behaviour of a masked transformer, independent of any checkpoint format.

Why a config of our own: stock configs hold one ``num_attention_heads`` and one ``intermediate_size``,
but a pruned model has its own head count and FFN width per layer. Everything that builds, prunes,
exports or costs a model reads this one dataclass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# token_classification: one logit row per token from the last hidden state (NER), no pooler
TOKEN_CLASSIFICATION = "token_classification"
# qa: extractive question answering, a start and an end logit per token (num_labels 2), no pooler
QUESTION_ANSWERING = "qa"
TASK_TYPES = ("classification", "regression", "multilabel", TOKEN_CLASSIFICATION, QUESTION_ANSWERING)
POSITION_STYLES = ("absolute", "padding_offset")
# head_style -> (dropout before the dense layer too, activation after it). Why a table: the four stock
# sequence-classification heads differ only in these two choices (see TransformerConfig.head_style).
_HEADS = {"bert": (False, "tanh"), "roberta": (True, "tanh"), "distilbert": (False, "relu"),
          "electra": (True, "gelu")}
HEAD_STYLES = tuple(_HEADS)


@dataclass
class TransformerConfig:
    """Per-layer shapes plus the few switches that differ between BERT-family checkpoints.

    ``num_heads[l]`` and ``intermediate_sizes[l]`` may differ per layer and may be 0 (the block is then
    reduced to its output bias + LayerNorm, exactly what a fully gated block computes). ``head_dim``
    is the same for every layer.

    position_style: "absolute" (BERT: positions 0..S-1) or "padding_offset" (RoBERTa: positions count
      non-pad tokens starting at pad_token_id + 1, pad tokens get pad_token_id).
    head_style: the first-token classification head (``pooler`` is its dense layer). "bert":
      classifier(dropout(tanh(pooler(h0)))); "roberta": classifier(dropout(tanh(pooler(dropout(h0)))));
      "distilbert": classifier(dropout(relu(pooler(h0)))) (pre_classifier); "electra":
      classifier(dropout(gelu(pooler(dropout(h0))))). Dropout placement matters in train mode only.
    embedding_size: width of the word / position / token-type embeddings and their LayerNorm when it
      differs from hidden_size (ELECTRA-small: 128 -> 256); a linear ``embeddings.project`` then maps
      them to hidden_size. None = hidden_size (no projection).
    attention_output_dropout: whether hidden dropout follows the attention output projection (BERT
      does; DistilBERT does not). Train mode only.
    attention_probs_dropout_prob: recorded for export only; the engine applies no dropout to attention
      probabilities (the fused ops have none, and distillation normally runs without it).
    """

    vocab_size: int
    hidden_size: int
    head_dim: int
    num_heads: list[int]
    intermediate_sizes: list[int]
    family: str = "bert"
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    position_style: str = "absolute"
    head_style: str = "bert"
    embedding_size: int | None = None
    causal: bool = False
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    attention_output_dropout: bool = True
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    num_labels: int = 2
    task_type: str = "classification"
    id2label: dict[int, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.num_heads = [int(h) for h in self.num_heads]
        self.intermediate_sizes = [int(i) for i in self.intermediate_sizes]
        if len(self.num_heads) != len(self.intermediate_sizes):
            raise ValueError(
                f"num_heads has {len(self.num_heads)} layers but intermediate_sizes has "
                f"{len(self.intermediate_sizes)}; expected one entry per layer in both")
        if any(h < 0 for h in self.num_heads) or any(i < 0 for i in self.intermediate_sizes):
            raise ValueError(f"head counts and FFN widths must be >= 0, got num_heads={self.num_heads}, "
                             f"intermediate_sizes={self.intermediate_sizes}")
        if self.head_dim <= 0:
            raise ValueError(f"head_dim must be > 0, got {self.head_dim}")
        if self.position_style not in POSITION_STYLES:
            raise ValueError(f"position_style must be one of {POSITION_STYLES}, got {self.position_style!r}")
        if self.head_style not in HEAD_STYLES:
            raise ValueError(f"head_style must be one of {HEAD_STYLES}, got {self.head_style!r}")
        if self.embedding_size is not None:
            self.embedding_size = int(self.embedding_size)
            if self.embedding_size <= 0:
                raise ValueError(f"embedding_size must be > 0 (or None), got {self.embedding_size}")
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        if self.task_type == "regression" and self.num_labels != 1:
            raise ValueError(f"task_type='regression' needs num_labels=1, got {self.num_labels}")
        if self.task_type == QUESTION_ANSWERING and self.num_labels != 2:
            raise ValueError(f"task_type='qa' needs num_labels=2 (start, end), got {self.num_labels}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    @property
    def embedding_width(self) -> int:
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def head_dropout_first(self) -> bool:
        """Whether the head applies dropout to the first token before its dense layer too."""
        return _HEADS[self.head_style][0]

    @property
    def head_activation(self) -> str:
        """"tanh" | "relu" | "gelu": the activation between the head's dense layer and the classifier."""
        return _HEADS[self.head_style][1]

    @property
    def classifier_dropout_prob(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    def with_widths(self, num_heads: list[int], intermediate_sizes: list[int]) -> "TransformerConfig":
        """A copy with other per-layer widths (what physical pruning produces)."""
        return dataclasses.replace(self, num_heads=list(num_heads), intermediate_sizes=list(intermediate_sizes),
                                   extra=dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["id2label"] is not None:
            out["id2label"] = {str(k): v for k, v in out["id2label"].items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TransformerConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
