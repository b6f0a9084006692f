"""MaskedGPT2 against stock GPT2LMHeadModel, pruning, and the standalone export (load + generate)."""
import os

import pytest
import torch

from ddk_fast.model.gpt2 import GPT2, MaskedGPT2, is_gpt2_checkpoint, prune_gpt2, stock_gpt2_config
from ddk_fast.model.structure import Structure

transformers = pytest.importorskip("transformers")

VOCAB = 97
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine


def _stock(n_layer=2, n_head=4, n_embd=64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = stock_gpt2_config(vocab_size=VOCAB, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=32,
                            bos_token_id=1, eos_token_id=2, **kw)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a swapped weight would show
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("path", ["reference", "compact"])
def test_all_gates_one_reproduces_stock_logits_and_hidden_states(path):
    stock = _stock()
    ours = MaskedGPT2.from_pretrained(stock).eval()
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        ref = stock(ids, output_hidden_states=True)
        out = ours(ids, path=path, output_hidden_states=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_mask_matches_stock_on_real_tokens():
    stock = _stock(n_layer=3, activation_function="gelu")
    ours = MaskedGPT2.from_pretrained(stock).eval()
    ids = torch.randint(0, VOCAB, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        ref = stock(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_optional_outputs_shapes_and_causality():
    ours = MaskedGPT2.from_pretrained(_stock()).eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    out = ours(ids, output_attention_probs=True, output_attention_scores=True, output_qkv=True, output_ffn=True)
    assert out.attention_probs[0].shape == (2, 4, 7, 7)
    assert torch.all(out.attention_probs[1].triu(1) == 0), "future keys must get zero probability"
    torch.testing.assert_close(out.attention_probs[0].sum(-1), torch.ones(2, 4, 7))
    assert out.qkv[0][0].shape == (2, 4, 7, 16)
    assert out.ffn_intermediate[1].shape == (2, 7, 256) and out.ffn_output[1].shape == (2, 7, 64)
    # changing a later token must not change earlier logits
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % VOCAB
    with torch.no_grad():
        a, b = ours(ids).logits, ours(ids2).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=0, rtol=0)


def test_gated_equals_pruned_and_gates_get_gradients():
    ours = MaskedGPT2.from_pretrained(_stock(n_layer=3)).eval()
    st = Structure.from_indices([(0, 2), (), (1, 2, 3)], [tuple(range(0, 256, 3)), (5, 7), ()], ours)
    hg, fg = st.to_gates()
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        gated = ours(ids, head_gates=hg, ffn_gates=fg).logits
        small = prune_gpt2(ours, st)
        pruned = small(ids).logits
    torch.testing.assert_close(pruned, gated, atol=1e-5, rtol=1e-5)
    assert small.num_heads == [2, 0, 3] and small.intermediate_sizes == [86, 2, 0]
    assert small.pruned_from == st
    soft_h = [torch.full((4,), 0.7, requires_grad=True) for _ in range(3)]
    soft_f = [torch.full((256,), 0.9, requires_grad=True) for _ in range(3)]
    ours(ids, head_gates=soft_h, ffn_gates=soft_f).logits.square().mean().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in soft_h + soft_f)


def test_adapter_rejects_unsupported_configs():
    hf = stock_gpt2_config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4).to_dict()
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        GPT2.config_from_hf(dict(hf, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation_function"):
        GPT2.config_from_hf(dict(hf, activation_function="swish"))
    with pytest.raises(ValueError, match="n_embd 64 is not a multiple of n_head 5"):
        GPT2.config_from_hf(dict(hf, n_head=5))


def test_export_loads_with_auto_class_and_generates(tmp_path):
    from ddk_fast.export.gpt2 import load_causal_lm, save_causal_lm

    ours = MaskedGPT2.from_pretrained(_stock(n_layer=3)).eval()
    st = Structure.from_indices([(1, 3), (), (0, 1, 2, 3)], [tuple(range(0, 256, 2)), (3,), ()], ours)
    small = prune_gpt2(ours, st)
    folder = save_causal_lm(small, tmp_path / "lm")
    assert is_gpt2_checkpoint(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.randint(3, VOCAB, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, small(ids).logits, atol=1e-5, rtol=1e-5)
        a = hf(ids, attention_mask=mask).logits[mask.bool()]
        torch.testing.assert_close(a, small(ids, attention_mask=mask).logits[mask.bool()], atol=1e-5, rtol=1e-5)
        greedy = ids[:1]
        for _ in range(4):
            greedy = torch.cat([greedy, small(greedy).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        cached = hf.generate(ids[:1], max_new_tokens=4, do_sample=False)
        uncached = hf.generate(ids[:1], max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, greedy) and torch.equal(uncached, greedy)
    back = load_causal_lm(folder).eval()
    assert back.pruned_from == st and back.num_heads == [2, 0, 4]
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, small(ids).logits, atol=0, rtol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        save_causal_lm(small, folder)
    assert os.path.isfile(os.path.join(folder, "modeling_ddk_gpt2.py"))
