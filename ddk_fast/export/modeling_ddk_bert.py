"""A BERT-family encoder (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA) whose layers have their own head count
and FFN width (a pruned model).

Shipped beside config.json by ``ddk_fast.export.save_pruned`` and loaded by transformers with
``trust_remote_code=True``. Depends only on torch and transformers, so it runs without ddk_fast:

    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

(``AutoModelForTokenClassification`` for a token classification export, ``AutoModelForQuestionAnswering``
for an extractive-QA one: config.json's architecture says which).

Each layer is post-LayerNorm BERT: attention (torch scaled_dot_product_attention) then FFN. A layer
with 0 heads (or 0 FFN channels) keeps only that block's output bias and LayerNorm: the block
computes LayerNorm(x + bias), which is what the full block computes with every unit removed.
In train mode the usual BERT dropouts apply, attention-probability dropout included (none after the
attention output when attention_output_dropout is False, as in DistilBERT).
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (BaseModelOutputWithPooling, QuestionAnsweringModelOutput,
                                           SequenceClassifierOutput, TokenClassifierOutput)

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
# head_style -> (dropout on the first token before the head's dense layer too, activation after it):
# BERT's pooler (tanh), RoBERTa / XLM-R (dropout + tanh), DistilBERT's pre_classifier (ReLU), ELECTRA (dropout + GELU).
HEADS = {"bert": (False, torch.tanh), "roberta": (True, torch.tanh), "distilbert": (False, F.relu),
         "electra": (True, F.gelu)}


def linear(in_features, out_features):
    """nn.Linear that may be zero-size (a layer pruned to 0 heads or channels), without torch's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


class DdkBertConfig(PretrainedConfig):
    """BERT config with per-layer ``num_heads`` and ``intermediate_sizes`` lists (``head_dim`` shared)."""

    model_type = "ddk_bert"

    def __init__(self, vocab_size=30522, hidden_size=768, head_dim=64, num_heads=None, intermediate_sizes=None,
                 hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=512, type_vocab_size=2,
                 pad_token_id=0, position_style="absolute", head_style="bert", embedding_size=None, causal=False,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, attention_output_dropout=True,
                 classifier_dropout=None,
                 initializer_range=0.02, task_type="classification", family="bert", **kwargs):
        num_heads = [12] * 12 if num_heads is None else [int(h) for h in num_heads]
        intermediate_sizes = [3072] * len(num_heads) if intermediate_sizes is None else [int(i) for i in intermediate_sizes]
        if len(num_heads) != len(intermediate_sizes):
            raise ValueError(f"num_heads ({len(num_heads)} layers) and intermediate_sizes "
                             f"({len(intermediate_sizes)} layers) must have one entry per layer")
        self.vocab_size, self.hidden_size, self.head_dim = vocab_size, hidden_size, head_dim
        self.num_heads, self.intermediate_sizes = num_heads, intermediate_sizes
        # Uniform-model names for generic tools; the per-layer lists above are what the model uses.
        self.num_hidden_layers = len(num_heads)
        self.num_attention_heads = max(num_heads, default=0)
        self.intermediate_size = max(intermediate_sizes, default=0)
        self.hidden_act, self.layer_norm_eps = hidden_act, layer_norm_eps
        self.max_position_embeddings, self.type_vocab_size = max_position_embeddings, type_vocab_size
        self.position_style, self.head_style, self.causal = position_style, head_style, causal
        self.embedding_size = embedding_size  # None = hidden_size; else embeddings are projected up (ELECTRA)
        self.hidden_dropout_prob, self.attention_probs_dropout_prob = hidden_dropout_prob, attention_probs_dropout_prob
        self.attention_output_dropout = attention_output_dropout  # False: none after attention output (DistilBERT)
        self.classifier_dropout, self.initializer_range = classifier_dropout, initializer_range
        self.task_type, self.family = task_type, family
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)
        self.pad_token_id = pad_token_id


class DdkBertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.position_style, self.pad_token_id = config.position_style, config.pad_token_id
        e = getattr(config, "embedding_size", None) or config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = nn.Linear(e, config.hidden_size) if e != config.hidden_size else None

    def forward(self, input_ids, token_type_ids=None):
        if self.position_style == "padding_offset":  # RoBERTa: real tokens count from pad_token_id + 1
            real = input_ids.ne(self.pad_token_id).int()
            positions = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.pad_token_id
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        x = self.dropout(self.norm(x))
        return x if self.project is None else self.project(x)


class DdkBertAttention(nn.Module):
    def __init__(self, config, num_heads):
        super().__init__()
        d, inner = config.hidden_size, num_heads * config.head_dim
        self.num_heads, self.head_dim, self.causal = num_heads, config.head_dim, config.causal
        self.attention_dropout = config.attention_probs_dropout_prob
        self.query, self.key, self.value = linear(d, inner), linear(d, inner), linear(d, inner)
        self.output = linear(inner, d)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if getattr(config, "attention_output_dropout", True)
                                  else 0.0)

    def forward(self, x, mask):
        if self.num_heads == 0:
            return self.norm(x + self.dropout(self.output.bias.expand_as(x)))
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = self.output(ctx.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))
        return self.norm(x + self.dropout(out))


class DdkBertFFN(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.width, self.act = width, ACTIVATIONS[config.hidden_act]
        self.up, self.down = linear(config.hidden_size, width), linear(width, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        y = self.down.bias.expand_as(x) if self.width == 0 else self.down(self.act(self.up(x)))
        return self.norm(x + self.dropout(y))


class DdkBertLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention = DdkBertAttention(config, config.num_heads[layer_idx])
        self.ffn = DdkBertFFN(config, config.intermediate_sizes[layer_idx])

    def forward(self, x, mask):
        return self.ffn(self.attention(x, mask))


class DdkBertPreTrainedModel(PreTrainedModel):
    config_class = DdkBertConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def attention_mask_for_sdpa(attention_mask, seq_len, causal):
    """[B, S] 1/0 padding mask -> bool [B, 1, 1|S, S] (True = attend), or None when no mask is given.

    No Python branch on the mask's values: a tracer (torch.onnx.export, torch.jit.trace) records one
    graph for every batch, so an all-ones mask takes the same path as a padded one.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.bool()[:, None, None, :]
    if causal:
        mask = mask & torch.ones(seq_len, seq_len, dtype=torch.bool, device=mask.device).tril()
    return mask


class DdkBertModel(DdkBertPreTrainedModel):
    """Encoder + first-token pooler (dense + the head_style's activation). Returns BaseModelOutputWithPooling."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = DdkBertEmbeddings(config)
        self.layers = nn.ModuleList(DdkBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.pooler_dropout = nn.Dropout(
            config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        x = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask_for_sdpa(attention_mask, input_ids.shape[1], self.config.causal)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        first = x[:, 0]
        dropout_first, activation = HEADS[self.config.head_style]
        if dropout_first:  # RoBERTa's and ELECTRA's heads have dropout before their dense layer too
            first = self.pooler_dropout(first)
        pooled = activation(self.pooler(first))
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                         hidden_states=tuple(hidden) if hidden is not None else None)
        return out if return_dict is not False else out.to_tuple()


class _DdkBertWithClassifier(DdkBertPreTrainedModel):
    """DdkBertModel + dropout + linear classifier; a subclass says what the classifier reads
    (``_features``), its loss and its output class."""

    output_class = SequenceClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = DdkBertModel(config)
        self.dropout = nn.Dropout(
            config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        base = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(self._features(base)))
        loss = None if labels is None else self._loss(logits, labels)
        out = self.output_class(loss=loss, logits=logits, hidden_states=base.hidden_states)
        return out if return_dict is not False else out.to_tuple()


class DdkBertForSequenceClassification(_DdkBertWithClassifier):
    """DdkBertModel + dropout + linear classifier on the pooled first token; regression (MSE) when
    num_labels == 1."""

    def _features(self, base):
        return base.pooler_output

    def _loss(self, logits, labels):
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
        if getattr(self.config, "problem_type", None) == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))


class DdkBertForTokenClassification(_DdkBertWithClassifier):
    """DdkBertModel + dropout + linear classifier on every token (BertForTokenClassification's head);
    the loss is cross entropy over the tokens whose label is not -100."""

    output_class = TokenClassifierOutput

    def _features(self, base):
        return base.last_hidden_state

    def _loss(self, logits, labels):
        return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)


class DdkBertForQuestionAnswering(DdkBertPreTrainedModel):
    """DdkBertModel + a linear span head on every token (BertForQuestionAnswering's qa_outputs, no dropout),
    stored as ``classifier`` with 2 rows: start and end logits. The loss is the mean of the start and end
    cross entropies; positions outside the sequence are ignored, as in transformers."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = DdkBertModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_hidden_states=None, return_dict=None, **kwargs):
        base = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(base.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start = start_positions.view(-1).clamp(0, ignored)
            end = end_positions.view(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                           hidden_states=base.hidden_states)
        return out if return_dict is not False else out.to_tuple()
