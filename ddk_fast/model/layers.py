"""The modules of one masked post-LN encoder layer, and the embeddings.

Each block holds plain nn.Linear / nn.LayerNorm parameters (nn.Linear layout) and calls one fused op
from ``ddk_fast.ops``; the op computes only the units whose gate is non-zero, and the residual add with
the LayerNorm after it is one pass on the compact CPU path (``ddk_fast.ops.fused_cpu``). A block with
0 units (after physical pruning) keeps its output bias and LayerNorm: with every unit gated off, the
op's output is exactly that bias, so the pruned block computes LayerNorm(x + dropout(bias)).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ddk_fast.ops.fused_cpu import residual_layer_norm
from ddk_fast.ops.gated_attention import masked_self_attention
from ddk_fast.ops.masked_ffn import masked_ffn


def linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear that may have a zero-size weight (a block pruned to 0 units), without a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


@dataclass
class BlockOutput:
    """What a block returns besides its hidden state; fields are None unless asked for."""

    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    intermediate: torch.Tensor | None = None
    output: torch.Tensor | None = None


class Embeddings(nn.Module):
    """word + token type + position embeddings -> LayerNorm -> dropout [-> project] (BERT family).

    No token-type table when type_vocab_size is 0 (DistilBERT); ``project`` (ELECTRA) maps embeddings
    narrower than the encoder (embedding_size) up to hidden_size, after the dropout as ELECTRA does.
    """

    def __init__(self, config):
        super().__init__()
        e = config.embedding_width
        self.position_style = config.position_style
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.project = linear(e, config.hidden_size) if e != config.hidden_size else None

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.position_style == "padding_offset":
            # RoBERTa/fairseq: real tokens count up from pad_token_id + 1, pads get pad_token_id.
            real = input_ids.ne(self.pad_token_id).int()
            return (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        offset = self.pad_token_id + 1 if self.position_style == "padding_offset" else 0
        if seq_len + offset > self.position_embeddings.num_embeddings:
            raise ValueError(f"input_ids has sequence length {seq_len}; this model takes at most "
                             f"{self.position_embeddings.num_embeddings - offset} tokens")
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(input_ids))
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.norm(x))
        return x if self.project is None else self.project(x)


class MaskedSelfAttention(nn.Module):
    """Gated multi-head self-attention + output projection, then LayerNorm(x + dropout(out))."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, layer_norm_eps: float,
                 dropout: float, causal: bool = False):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.causal = num_heads, head_dim, causal
        self.query = linear(hidden_size, inner)
        self.key = linear(hidden_size, inner)
        self.value = linear(hidden_size, inner)
        self.output = linear(inner, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, attention_mask=None, gate=None, path="auto", want_qkv=False, want_scores=False,
                want_probs=False, active=None) -> tuple[torch.Tensor, BlockOutput]:
        extras = BlockOutput()
        if self.num_heads == 0:
            out = self.output.bias.expand_as(x)
            if want_qkv or want_scores or want_probs:
                b, s = x.shape[:2]
                empty = x.new_zeros(b, 0, s, self.head_dim)
                extras = BlockOutput(q=empty, k=empty, v=empty, scores=x.new_zeros(b, 0, s, s),
                                     probs=x.new_zeros(b, 0, s, s))
        else:
            if gate is None:
                gate = torch.ones(self.num_heads, dtype=x.dtype, device=x.device)
            res = masked_self_attention(
                x, self.query.weight, self.query.bias, self.key.weight, self.key.bias,
                self.value.weight, self.value.bias, self.output.weight, self.output.bias,
                gate, self.num_heads, attention_mask=attention_mask, causal=self.causal, path=path,
                return_qkv=want_qkv, return_scores=want_scores, return_probs=want_probs, active=active)
            out = res.out
            extras = BlockOutput(q=res.q, k=res.k, v=res.v, scores=res.scores, probs=res.probs)
        norm = self.norm
        return residual_layer_norm(x, self.dropout(out), norm.weight, norm.bias, norm.eps, path), extras


class MaskedFFN(nn.Module):
    """Gated feed-forward block: LayerNorm(x + dropout((act(x W_in^T + b_in) * gate) W_out^T + b_out))."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, layer_norm_eps: float,
                 dropout: float):
        super().__init__()
        self.intermediate_size, self.activation = intermediate_size, op_activation(activation)
        self.up = linear(hidden_size, intermediate_size)
        self.down = linear(intermediate_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, gate=None, path="auto", want_intermediate=False, want_output=False, active=None
                ) -> tuple[torch.Tensor, BlockOutput]:
        extras = BlockOutput()
        if self.intermediate_size == 0:
            y = self.down.bias.expand_as(x)
            if want_intermediate:
                extras.intermediate = x.new_zeros(*x.shape[:-1], 0)
        else:
            if gate is None:
                gate = torch.ones(self.intermediate_size, dtype=x.dtype, device=x.device)
            y = masked_ffn(x, self.up.weight, self.up.bias, self.down.weight, self.down.bias, gate,
                           activation=self.activation, path=path, return_intermediate=want_intermediate,
                           active=active)
            if want_intermediate:
                y, inter = y
                extras.intermediate = inter.full()
        if want_output:
            extras.output = y
        norm = self.norm
        return residual_layer_norm(x, self.dropout(y), norm.weight, norm.bias, norm.eps, path), extras


# transformers' activation names -> the fused ops' names.
OP_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu"}


def op_activation(hf_name: str) -> str:
    try:
        return OP_ACTIVATIONS[hf_name]
    except KeyError:
        raise ValueError(f"hidden_act {hf_name!r} is not supported; expected one of {sorted(OP_ACTIVATIONS)}") from None


class MaskedLayer(nn.Module):
    """One post-LN encoder layer: attention block, then FFN block."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.attention = MaskedSelfAttention(d, config.num_heads[layer_idx], config.head_dim,
                                             config.layer_norm_eps,
                                             config.hidden_dropout_prob if config.attention_output_dropout else 0.0,
                                             config.causal)
        self.ffn = MaskedFFN(d, config.intermediate_sizes[layer_idx], config.hidden_act, config.layer_norm_eps,
                             config.hidden_dropout_prob)

    def forward(self, x, attention_mask=None, head_gate=None, ffn_gate=None, path="auto", want_qkv=False,
                want_scores=False, want_probs=False, want_ffn=False, head_active=None, ffn_active=None):
        """``head_active`` / ``ffn_active``: sorted indices of the non-zero gates (found by the ops if None)."""
        h, attn = self.attention(x, attention_mask, head_gate, path, want_qkv, want_scores, want_probs,
                                 active=head_active)
        y, ffn = self.ffn(h, ffn_gate, path, want_intermediate=want_ffn, want_output=want_ffn, active=ffn_active)
        attn.intermediate, attn.output = ffn.intermediate, ffn.output
        return y, attn
