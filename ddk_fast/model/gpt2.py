"""GPT-2 (pre-LayerNorm causal decoder) on the masked engine: gated heads and FFN channels.

Why a model class of its own: GPT-2 differs from the BERT family in where the LayerNorms sit
(before each block, plus a final one), in its causal attention, in its tied LM head and in its
checkpoint layout (Conv1D weights stored [in, out], Q/K/V fused in ``c_attn``). Everything the
engine and the distillation need is kept the same: per-layer ``head_gates`` / ``ffn_gates``,
``TransformerConfig`` (``family="gpt2"``, ``causal=True``), ``Structure``, the same parameter names
(``layers.{l}.attention.{query,key,value,output,norm}``, ``layers.{l}.ffn.{up,down,norm}``) and the
same optional outputs as ``MaskedTransformer`` (hidden states, attention scores/probs, q/k/v, FFN
activations), so losses, searches, cost models and pruning read both alike.

    model = MaskedGPT2.from_pretrained(folder_or_GPT2LMHeadModel)
    out = model(input_ids, attention_mask=None, head_gates=None, ffn_gates=None, ...)
    out.logits  # [B, S, vocab]; with every gate 1 equal to stock GPT2LMHeadModel's logits
    small = prune(model, structure)  # ddk_fast.model.prune

Hidden states follow transformers' convention: ``hidden_states[0]`` is the embedding output,
``hidden_states[l]`` the residual stream after block l, and the last entry has the final LayerNorm
applied (it is what the LM head reads).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddk_fast import _runtime
from ddk_fast.ops.gated_attention import masked_self_attention
from ddk_fast.ops.masked_ffn import masked_ffn
from ddk_fast.model.active import ActiveUnits
from ddk_fast.model.backbone import MaskedBackbone
from ddk_fast.model.config import TransformerConfig
from ddk_fast.model.layers import BlockOutput, linear
from ddk_fast.model.pruning import prune
from ddk_fast.model.structure import Structure
from ddk_fast.model.weights import load_weights, read_checkpoint

FAMILY = "gpt2"
EXPORT_MODEL_TYPE = "ddk_gpt2"  # model_type of folders written by save_gpt2

# transformers' GPT-2 activation names -> the fused FFN's names.
_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


# ----------------------------------------------------------------------------------------------------
# checkpoint adapter (stock GPT-2 layout -> the masked layout)
# ----------------------------------------------------------------------------------------------------

class GPT2Adapter:
    """Reads stock ``gpt2`` checkpoints (GPT2Model / GPT2LMHeadModel)."""

    name = FAMILY
    model_types = ("gpt2",)
    _layer_re = re.compile(r"^h\.(\d+)\.(.+)$")

    def config_from_hf(self, hf: dict[str, Any], num_labels: int = 2, task_type: str = "classification"
                       ) -> TransformerConfig:
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if hf.get(flag):
                raise ValueError(f"gpt2: {flag}=True is not supported; expected False")
        if hf.get("scale_attn_weights", True) is False:
            raise ValueError("gpt2: scale_attn_weights=False is not supported; expected True (1/sqrt(head_dim))")
        act = hf.get("activation_function", "gelu_new")
        if act not in _ACT:
            raise ValueError(f"gpt2: activation_function={act!r} is not supported; expected one of {sorted(_ACT)}")
        hidden = int(hf.get("n_embd", hf.get("hidden_size", 768)))
        heads = int(hf.get("n_head", hf.get("num_attention_heads", 12)))
        layers = int(hf.get("n_layer", hf.get("num_hidden_layers", 12)))
        if hidden % heads:
            raise ValueError(f"gpt2: n_embd {hidden} is not a multiple of n_head {heads}")
        inner = hf.get("n_inner")
        inner = 4 * hidden if inner is None else int(inner)
        eos = hf.get("eos_token_id")
        pad = hf.get("pad_token_id")
        return TransformerConfig(
            family=FAMILY, vocab_size=int(hf["vocab_size"]), hidden_size=hidden, head_dim=hidden // heads,
            num_heads=[heads] * layers, intermediate_sizes=[inner] * layers, hidden_act=_ACT[act],
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            max_position_embeddings=int(hf.get("n_positions", hf.get("max_position_embeddings", 1024))),
            type_vocab_size=0, pad_token_id=int(pad if pad is not None else (eos if eos is not None else 0)),
            causal=True, hidden_dropout_prob=float(hf.get("resid_pdrop", 0.1)),
            attention_probs_dropout_prob=float(hf.get("attn_pdrop", 0.1)),
            initializer_range=float(hf.get("initializer_range", 0.02)), num_labels=max(int(num_labels), 1),
            task_type="classification",
            extra={"embd_pdrop": float(hf.get("embd_pdrop", 0.1)),
                   "bos_token_id": hf.get("bos_token_id"), "eos_token_id": eos})

    def checkpoint_num_labels(self, state_dict) -> None:
        return None

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor], config: TransformerConfig
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
        sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in state_dict.items()}
        d = config.hidden_size
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()

        def take(src: str) -> torch.Tensor:
            used.add(src)
            return sd[src]

        out["embeddings.word_embeddings.weight"] = take("wte.weight")
        out["embeddings.position_embeddings.weight"] = take("wpe.weight")
        out["final_norm.weight"] = take("ln_f.weight")
        out["final_norm.bias"] = take("ln_f.bias")
        for layer in range(config.num_layers):
            p, q = f"h.{layer}.", f"layers.{layer}."
            w_qkv, b_qkv = take(p + "attn.c_attn.weight"), take(p + "attn.c_attn.bias")  # [d, 3d] (Conv1D), [3d]
            for i, name in enumerate(("query", "key", "value")):
                out[q + f"attention.{name}.weight"] = w_qkv[:, i * d:(i + 1) * d].t().contiguous()
                out[q + f"attention.{name}.bias"] = b_qkv[i * d:(i + 1) * d].clone()
            out[q + "attention.output.weight"] = take(p + "attn.c_proj.weight").t().contiguous()
            out[q + "attention.output.bias"] = take(p + "attn.c_proj.bias")
            out[q + "attention.norm.weight"] = take(p + "ln_1.weight")
            out[q + "attention.norm.bias"] = take(p + "ln_1.bias")
            out[q + "ffn.up.weight"] = take(p + "mlp.c_fc.weight").t().contiguous()
            out[q + "ffn.up.bias"] = take(p + "mlp.c_fc.bias")
            out[q + "ffn.down.weight"] = take(p + "mlp.c_proj.weight").t().contiguous()
            out[q + "ffn.down.bias"] = take(p + "mlp.c_proj.bias")
            out[q + "ffn.norm.weight"] = take(p + "ln_2.weight")
            out[q + "ffn.norm.bias"] = take(p + "ln_2.bias")
        ignored = re.compile(r"^(lm_head\.weight|h\.\d+\.attn\.(bias|masked_bias))$")
        unused = sorted(k for k in sd if k not in used and not ignored.match(k))
        return out, unused


GPT2 = GPT2Adapter()


# ----------------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------------

@dataclass
class CausalLMOutput:
    """Forward results of MaskedGPT2; optional fields are None unless asked for (as MaskedTransformerOutput)."""

    logits: torch.Tensor                       # [B, S, vocab]
    last_hidden_state: torch.Tensor            # [B, S, d], after the final LayerNorm
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None
    attention_probs: tuple[torch.Tensor, ...] | None = None
    qkv: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] | None = None
    ffn_intermediate: tuple[torch.Tensor, ...] | None = None
    ffn_output: tuple[torch.Tensor, ...] | None = None
    pooled: None = None


class GPT2Embeddings(nn.Module):
    """token + absolute position embeddings -> dropout (no LayerNorm, no token types)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.extra.get("embd_pdrop", config.hidden_dropout_prob))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if position_ids is None:
            if seq_len > self.position_embeddings.num_embeddings:
                raise ValueError(f"input_ids has sequence length {seq_len}, more than n_positions "
                                 f"{self.position_embeddings.num_embeddings}")
            position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)
        return self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))


class PreLNAttention(nn.Module):
    """x + dropout(gated causal self-attention(LayerNorm(x)))."""

    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        d, self.num_heads, self.head_dim = config.hidden_size, config.num_heads[layer], config.head_dim
        inner = self.num_heads * self.head_dim
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.query, self.key, self.value = linear(d, inner), linear(d, inner), linear(d, inner)
        self.output = linear(inner, d)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, attention_mask=None, gate=None, path="auto", want_qkv=False, want_scores=False,
                want_probs=False, active=None):
        h = self.norm(x)
        extras = BlockOutput()
        if self.num_heads == 0:
            out = self.output.bias.expand_as(x)
            b, s = x.shape[:2]
            if want_qkv or want_scores or want_probs:
                empty = x.new_zeros(b, 0, s, self.head_dim)
                extras = BlockOutput(q=empty, k=empty, v=empty, scores=x.new_zeros(b, 0, s, s),
                                     probs=x.new_zeros(b, 0, s, s))
        else:
            if gate is None:
                gate = torch.ones(self.num_heads, dtype=x.dtype, device=x.device)
            res = masked_self_attention(
                h, self.query.weight, self.query.bias, self.key.weight, self.key.bias, self.value.weight,
                self.value.bias, self.output.weight, self.output.bias, gate, self.num_heads,
                attention_mask=attention_mask, causal=True, path=path, return_qkv=want_qkv,
                return_scores=want_scores, return_probs=want_probs, active=active)
            out = res.out
            extras = BlockOutput(q=res.q, k=res.k, v=res.v, scores=res.scores, probs=res.probs)
        return x + self.dropout(out), extras


class PreLNFFN(nn.Module):
    """x + dropout(gated MLP(LayerNorm(x)))."""

    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        d, self.activation = config.hidden_size, config.hidden_act
        self.intermediate_size = config.intermediate_sizes[layer]
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.up = linear(d, self.intermediate_size)
        self.down = linear(self.intermediate_size, d)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, gate=None, path="auto", want_ffn=False, active=None):
        h = self.norm(x)
        extras = BlockOutput()
        if self.intermediate_size == 0:
            y = self.down.bias.expand_as(x)
            if want_ffn:
                extras.intermediate = x.new_zeros(*x.shape[:-1], 0)
        else:
            if gate is None:
                gate = torch.ones(self.intermediate_size, dtype=x.dtype, device=x.device)
            if want_ffn:
                y, inter = masked_ffn(h, self.up.weight, self.up.bias, self.down.weight, self.down.bias, gate,
                                      activation=self.activation, path=path, return_intermediate=True, active=active)
                extras.intermediate = inter.full()
            else:
                y = masked_ffn(h, self.up.weight, self.up.bias, self.down.weight, self.down.bias, gate,
                               activation=self.activation, path=path, active=active)
        if want_ffn:
            extras.output = y
        return x + self.dropout(y), extras


class GPT2Layer(nn.Module):
    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        self.attention = PreLNAttention(config, layer)
        self.ffn = PreLNFFN(config, layer)

    def forward(self, x, attention_mask=None, head_gate=None, ffn_gate=None, path="auto", want_qkv=False,
                want_scores=False, want_probs=False, want_ffn=False, head_active=None, ffn_active=None):
        h, attn = self.attention(x, attention_mask, head_gate, path, want_qkv, want_scores, want_probs,
                                 active=head_active)
        y, ffn = self.ffn(h, ffn_gate, path, want_ffn, active=ffn_active)
        attn.intermediate, attn.output = ffn.intermediate, ffn.output
        return y, attn


class MaskedGPT2(MaskedBackbone):
    """Embeddings -> L pre-LN gated blocks -> final LayerNorm -> LM head tied to the token embeddings."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.family != FAMILY or not config.causal:
            raise ValueError(f"MaskedGPT2: config must have family='gpt2' and causal=True, "
                             f"got family={config.family!r}, causal={config.causal}")
        self.config = config
        self.embeddings = GPT2Embeddings(config)
        self.layers = nn.ModuleList(GPT2Layer(config, i) for i in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pruned_from: Structure | None = None
        self.apply(self._init_module)
        residual_std = config.initializer_range / math.sqrt(2 * max(config.num_layers, 1))
        for layer in self.layers:  # GPT-2's scaled init of the two residual projections
            nn.init.normal_(layer.attention.output.weight, std=residual_std)
            nn.init.normal_(layer.ffn.down.weight, std=residual_std)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- shape (the per-layer sizes and gates come from MaskedBackbone) ---------------------------
    @property
    def anchor_weight(self) -> torch.Tensor:
        return self.final_norm.weight

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embeddings.word_embeddings.weight

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, head_gates=None, ffn_gates=None, path: str = "auto",
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                output_attention_probs: bool = False, output_qkv: bool = False, output_ffn: bool = False,
                position_ids: torch.Tensor | None = None, active_units: ActiveUnits | None = None) -> CausalLMOutput:
        """input_ids [B, S]; attention_mask [B, S] (1 = token). ``token_type_ids`` is accepted and ignored
        (GLUE batches carry zeros; GPT-2 has no segment embeddings). ``active_units``: as in
        ``MaskedTransformer.forward``."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if (attention_mask is not None and _runtime.may_read_on_host(attention_mask)
                and bool((attention_mask != 0).all())):
            attention_mask = None  # no padding: the plain causal path is faster and identical
        x, trace = self.run_layers(self.embeddings(input_ids, position_ids), attention_mask, head_gates, ffn_gates,
                                   path, active_units, output_hidden_states, output_attention_scores,
                                   output_attention_probs, output_qkv, output_ffn)
        x = self.final_norm(x)
        if trace.hidden_states is not None:
            trace.hidden_states[-1] = x
        logits = F.linear(x, self.lm_head_weight)
        return CausalLMOutput(logits=logits, last_hidden_state=x, **trace.as_tuples())

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_model, dtype: torch.dtype = torch.float32, **_ignored) -> "MaskedGPT2":
        """From a stock GPT-2 folder / GPT2LMHeadModel object, or a folder written by ``save_gpt2``."""
        hf_config, state_dict = read_checkpoint(path_or_model)
        if hf_config.get("model_type") == EXPORT_MODEL_TYPE:
            return _from_export(cls, hf_config, state_dict, dtype)
        if hf_config.get("model_type") not in GPT2.model_types:
            raise ValueError(f"MaskedGPT2.from_pretrained: model_type {hf_config.get('model_type')!r} is not a "
                             f"GPT-2 checkpoint; expected one of {GPT2.model_types + (EXPORT_MODEL_TYPE,)}")
        config = GPT2.config_from_hf(hf_config)
        weights, unused = GPT2.convert_state_dict(state_dict, config)
        if unused:
            raise ValueError(f"MaskedGPT2.from_pretrained: checkpoint tensors not understood: {unused[:8]}")
        model = cls(config)
        load_weights(model, weights)
        return model.to(dtype)


def _from_export(cls, hf_config: dict, state_dict: dict, dtype) -> MaskedGPT2:
    config = TransformerConfig.from_dict(hf_config["ddk_config"])
    model = cls(config)
    weights = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}
    weights.pop("lm_head.weight", None)
    load_weights(model, weights)
    return model.to(dtype)


def is_gpt2_checkpoint(path_or_model) -> bool:
    """True for a stock GPT-2 folder/model or a ``save_gpt2`` export (used to pick the LM code path)."""
    if isinstance(path_or_model, MaskedGPT2):
        return True
    if isinstance(path_or_model, nn.Module):
        cfg = getattr(path_or_model, "config", None)
        return getattr(cfg, "model_type", None) in GPT2.model_types + (EXPORT_MODEL_TYPE,)
    config = os.path.join(os.fspath(path_or_model), "config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") in GPT2.model_types + (EXPORT_MODEL_TYPE,)


# the name GPT-2 callers have used: ``prune`` slices every MaskedBackbone alike
prune_gpt2 = prune


def stock_gpt2_config(vocab_size: int, n_embd: int = 64, n_layer: int = 4, n_head: int = 4, n_positions: int = 128,
                      **kw):
    """A small stock ``GPT2Config`` (tests and the examples build teachers from it; nothing is downloaded)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                      **kw)


__all__ = ["CausalLMOutput", "GPT2", "GPT2Adapter", "MaskedGPT2", "prune_gpt2", "is_gpt2_checkpoint",
           "stock_gpt2_config", "EXPORT_MODEL_TYPE"]
