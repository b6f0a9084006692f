"""A GPT-2 style causal LM whose layers have their own head count and FFN width (a pruned GPT-2).

Shipped beside config.json by ``ddk_fast.export.gpt2.save_causal_lm`` and loaded by transformers with
``trust_remote_code=True``. Depends only on torch and transformers, so it runs without ddk_fast:

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    model.generate(input_ids, max_new_tokens=8, do_sample=False)

Each block is pre-LayerNorm GPT-2: x + attn(LN(x)), then x + mlp(LN(x)); a final LayerNorm; the LM
head is the token embedding matrix (tied). Attention runs through torch SDPA with a causal mask and
an optional key-padding mask; ``past_key_values`` (a transformers Cache) is supported, so generation
reuses earlier keys and values. A layer with 0 heads (0 FFN channels) adds only that block's output
bias, which is what the full block adds with every unit removed.
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def linear(in_features, out_features):
    """nn.Linear that may be zero-size (a layer pruned to 0 heads or channels), without torch's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


class DdkGPT2Config(PretrainedConfig):
    """GPT-2 config with per-layer ``num_heads`` and ``intermediate_sizes`` lists (``head_dim`` shared)."""

    model_type = "ddk_gpt2"

    def __init__(self, vocab_size=50257, hidden_size=768, head_dim=64, num_heads=None, intermediate_sizes=None,
                 hidden_act="gelu_tanh", layer_norm_eps=1e-5, max_position_embeddings=1024, hidden_dropout_prob=0.1,
                 embd_pdrop=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02, bos_token_id=None,
                 eos_token_id=None, pad_token_id=None, tie_word_embeddings=True, **kwargs):
        num_heads = [12] * 12 if num_heads is None else [int(h) for h in num_heads]
        intermediate_sizes = ([4 * hidden_size] * len(num_heads) if intermediate_sizes is None
                              else [int(i) for i in intermediate_sizes])
        if len(num_heads) != len(intermediate_sizes):
            raise ValueError(f"num_heads ({len(num_heads)} layers) and intermediate_sizes "
                             f"({len(intermediate_sizes)} layers) must have one entry per layer")
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.vocab_size, self.hidden_size, self.head_dim = vocab_size, hidden_size, head_dim
        self.num_heads, self.intermediate_sizes = num_heads, intermediate_sizes
        # Uniform-model names for generic tools (caches, generation); the per-layer lists rule the model.
        self.num_hidden_layers = len(num_heads)
        self.num_attention_heads = max(num_heads, default=0)
        self.intermediate_size = max(intermediate_sizes, default=0)
        self.hidden_act, self.layer_norm_eps = hidden_act, layer_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob, self.embd_pdrop = hidden_dropout_prob, embd_pdrop
        self.attention_probs_dropout_prob, self.initializer_range = attention_probs_dropout_prob, initializer_range
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class DdkGPT2Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.embd_pdrop)

    def forward(self, input_ids, position_ids):
        return self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))


class DdkGPT2Attention(nn.Module):
    def __init__(self, config, num_heads, layer_idx):
        super().__init__()
        d, inner = config.hidden_size, num_heads * config.head_dim
        self.num_heads, self.head_dim, self.layer_idx = num_heads, config.head_dim, layer_idx
        self.attention_dropout = config.attention_probs_dropout_prob
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.query, self.key, self.value = linear(d, inner), linear(d, inner), linear(d, inner)
        self.output = linear(inner, d)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask, is_causal, cache):
        if self.num_heads == 0:
            return x + self.dropout(self.output.bias.expand_as(x))
        b, s, _ = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = self.output(ctx.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))
        return x + self.dropout(out)


class DdkGPT2FFN(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.width, self.act = width, ACTIVATIONS[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.up, self.down = linear(config.hidden_size, width), linear(width, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        y = self.down.bias.expand_as(x) if self.width == 0 else self.down(self.act(self.up(self.norm(x))))
        return x + self.dropout(y)


class DdkGPT2Layer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention = DdkGPT2Attention(config, config.num_heads[layer_idx], layer_idx)
        self.ffn = DdkGPT2FFN(config, config.intermediate_sizes[layer_idx])

    def forward(self, x, mask, is_causal, cache):
        return self.ffn(self.attention(x, mask, is_causal, cache))


class DdkGPT2PreTrainedModel(PreTrainedModel):
    config_class = DdkGPT2Config
    base_model_prefix = "model"
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def attention_mask_for_sdpa(attention_mask, query_len, past_len, device):
    """(bool mask [B, 1, q, past+q] or None, is_causal) for SDPA.

    Query i (absolute position past_len + i) may see key j when j <= past_len + i and key j is not
    padding. A query row with no visible key (left padding) is opened to all keys: its output is
    never used, and an all-False row would make SDPA return NaN. The branches look only at whether a
    mask was given and at shapes, never at the mask's values, so a traced graph (ONNX) is right for
    padded and unpadded batches alike.
    """
    total = past_len + query_len
    if attention_mask is None:
        if past_len == 0:
            return None, query_len > 1
        if query_len == 1:
            return None, False
    rows = torch.arange(past_len, total, device=device)[:, None]
    allowed = (torch.arange(total, device=device)[None, :] <= rows)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -total:].bool()
        empty = ~allowed.any(-1, keepdim=True)
        allowed = allowed | empty
    return allowed, False


class DdkGPT2Model(DdkGPT2PreTrainedModel):
    """Embeddings -> pre-LN blocks -> final LayerNorm. Returns BaseModelOutputWithPast."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = DdkGPT2Embeddings(config)
        self.layers = nn.ModuleList(DdkGPT2Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        b, s = input_ids.shape
        if use_cache and past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache()
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + s, device=input_ids.device).unsqueeze(0)
        x = self.embeddings(input_ids, position_ids)
        mask, is_causal = attention_mask_for_sdpa(attention_mask, s, past_len, input_ids.device)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask, is_causal, past_key_values)
            if hidden is not None:
                hidden.append(x)
        x = self.final_norm(x)
        if hidden is not None:
            hidden[-1] = x
        out = BaseModelOutputWithPast(last_hidden_state=x, past_key_values=past_key_values if use_cache else None,
                                      hidden_states=tuple(hidden) if hidden is not None else None)
        return out if return_dict is not False else out.to_tuple()


class DdkGPT2ForCausalLM(DdkGPT2PreTrainedModel, GenerationMixin):
    """DdkGPT2Model + LM head tied to the token embeddings; next-token cross-entropy when given labels."""

    def __init__(self, config):
        super().__init__(config)
        self.model = DdkGPT2Model(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                labels=None, output_hidden_states=None, return_dict=None, logits_to_keep=0, **kwargs):
        base = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=use_cache,
                          output_hidden_states=output_hidden_states, return_dict=True)
        h = base.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = F.linear(h, self.model.embeddings.word_embeddings.weight)
        loss = None
        if labels is not None:
            shift = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shift, labels[:, 1:].reshape(-1), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=base.past_key_values,
                                     hidden_states=base.hidden_states)
        return out if return_dict is not False else out.to_tuple()
