"""torch.compile traces the engine without a graph break (``fullgraph=True``) and matches eager.

Why it can: the fused ops are torch.library custom ops with fake implementations (opaque nodes with
known output shapes), the data-dependent branches that read a tensor on the host are skipped while
compiling, and the active units of a structure are found once, outside the graph
(``model.active_units``), instead of by ``torch.nonzero`` inside every op.
"""
import pytest
import torch

from ddk_fast import _ext
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.ops import distill_losses as D
from ddk_fast.ops.gated_attention import masked_self_attention
from ddk_fast.ops.masked_ffn import masked_ffn

LAYERS, HIDDEN, HEADS, FFN, VOCAB, BATCH, SEQ = 2, 32, 4, 64, 97, 3, 12


@pytest.fixture(autouse=True)
def _fresh_compile_state(one_thread):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tiny_model():
    config = TransformerConfig(vocab_size=VOCAB, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS,
                               num_heads=[HEADS] * LAYERS, intermediate_sizes=[FFN] * LAYERS,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    return MaskedTransformer(config).train()


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids, mask


def _gates():
    heads = torch.tensor([[1.0, 0.0, 0.7, 1.0], [0.0, 1.0, 1.0, 0.0]], requires_grad=True)
    ffn = (torch.arange(LAYERS * FFN).reshape(LAYERS, FFN) % 3 != 0).float().requires_grad_(True)
    return heads, ffn


def _loss_and_grads(model, call, *leaves):
    out = call()
    loss = out.logits.square().sum() + sum(h.square().mean() for h in out.hidden_states)
    params = [p for p in model.parameters()] + list(leaves)
    grads = torch.autograd.grad(loss, params)
    return out.logits.detach(), [h.detach() for h in out.hidden_states], grads


def _assert_same(eager, compiled):
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_model_with_gates_compiles_fullgraph_and_matches_eager():
    """Compact path, padding mask, gates with zeros (pruned heads and channels), forward + backward."""
    model = _tiny_model()
    ids, mask = _batch()
    heads, ffn = _gates()
    units = model.active_units(heads, ffn)
    assert [u.numel() for u in units.heads] == [3, 2]  # the zeros really prune something

    def run(m):
        return lambda: m(ids, attention_mask=mask, head_gates=heads, ffn_gates=ffn, path="compact",
                         output_hidden_states=True, active_units=units)

    eager = _loss_and_grads(model, run(model), heads, ffn)
    compiled_model = torch.compile(model, fullgraph=True)
    compiled = _loss_and_grads(model, run(compiled_model), heads, ffn)
    _assert_same(eager, compiled)


def test_model_without_gates_compiles_fullgraph_and_matches_eager():
    """No gates (a teacher, a physically pruned student): nothing to find, nothing read back."""
    model = _tiny_model()
    ids, mask = _batch()

    def run(m):
        return lambda: m(ids, attention_mask=mask, path="compact", output_hidden_states=True)

    eager = _loss_and_grads(model, run(model))
    compiled = _loss_and_grads(model, run(torch.compile(model, fullgraph=True)))
    _assert_same(eager, compiled)


@pytest.mark.skipif(_ext.extension() is None, reason="ddk_fast._C is not built")
def test_fused_losses_compile_fullgraph_and_match_eager():
    """The three fused KD losses (extension custom ops), forward and backward, in one compiled graph."""
    gen = torch.Generator().manual_seed(2)
    hs = [torch.randn(BATCH, SEQ, HIDDEN, generator=gen, requires_grad=True) for _ in range(3)]
    ht = [torch.randn(BATCH, SEQ, HIDDEN, generator=gen) for _ in range(3)]
    att_s = torch.randn(2, BATCH, HEADS, SEQ, SEQ, generator=gen, requires_grad=True)
    att_t = torch.randn(2, BATCH, HEADS, SEQ, SEQ, generator=gen)
    logits_s = torch.randn(BATCH, 5, generator=gen, requires_grad=True)
    logits_t = torch.randn(BATCH, 5, generator=gen)
    weights = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    _, mask = _batch()

    def losses(hs, att_s, logits_s, weights):
        hidden = D.hidden_distill_loss(hs, ht, weights, mask, path="fused", check_finite=False)
        attention = D.attention_distill_loss(att_s, att_t, torch.ones(2), mask, path="fused", check_finite=False)
        pred = D.soft_cross_entropy(logits_s, logits_t, 2.0, path="fused", check_finite=False)
        return 2.0 * hidden + attention + pred

    leaves = [*hs, att_s, logits_s, weights]
    eager = losses(hs, att_s, logits_s, weights)
    eager_grads = torch.autograd.grad(eager, leaves)
    compiled_fn = torch.compile(losses, fullgraph=True)
    got = compiled_fn(hs, att_s, logits_s, weights)
    got_grads = torch.autograd.grad(got, leaves)
    torch.testing.assert_close(got, eager)
    for a, b in zip(got_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_triton_ops_compile_fullgraph_and_match_eager():
    """The Triton custom ops (interpreted on CPU here) inside one compiled graph: attention block + FFN."""
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape, scale=0.3):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_(True)

    x = leaf(2, 8, HIDDEN, scale=1.0)
    attn = [t for _ in range(4) for t in (leaf(HIDDEN, HIDDEN), leaf(HIDDEN))]
    ffn = [leaf(FFN, HIDDEN), leaf(FFN), leaf(HIDDEN, FFN), leaf(HIDDEN)]
    head_gate = torch.tensor([1.0, 0.0, 0.5, 1.0], requires_grad=True)
    ffn_gate = (torch.arange(FFN) % 4 != 1).float().requires_grad_(True)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    head_active, ffn_active = torch.tensor([0, 2, 3]), torch.nonzero(ffn_gate.detach()).flatten()

    def block(x, head_gate, ffn_gate, *weights):
        h = masked_self_attention(x, *weights[:8], head_gate, HEADS, attention_mask=mask, path="triton",
                                  active=head_active).out
        return masked_ffn(h, *weights[8:], ffn_gate, path="triton", active=ffn_active)

    leaves = [x, head_gate, ffn_gate, *attn, *ffn]
    eager = block(*leaves)
    eager_grads = torch.autograd.grad(eager.square().sum(), leaves)
    compiled = torch.compile(block, fullgraph=True)(*leaves)
    got_grads = torch.autograd.grad(compiled.square().sum(), leaves)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(got_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
