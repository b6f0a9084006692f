"""MaKD aspects against plain formulas written here: Q/K/V relations (different head counts, uneven
pruned widths, causal models), attention distributions, FFN intermediate (low-rank map) and output."""
import math

import pytest
import torch

from ddk_fast.distill.makd import LowRankProjection, concat_heads, relation_scores
from ddk_fast.distill.objectives import KDObjective
from ddk_fast.distill.tinybert import make_student
from ddk_fast.model import MaskedTransformer, Structure, TransformerConfig, prune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine


def ref_relation_scores(x, r):
    """Loop over relation heads: X_r X_r^T / sqrt(d_r), features zero-padded to a multiple of r."""
    b, s, w = x.shape
    d_r = math.ceil(w / r)
    padded = torch.zeros(b, s, d_r * r, dtype=x.dtype)
    padded[..., :w] = x
    out = torch.empty(b, r, s, s, dtype=x.dtype)
    for i in range(r):
        xi = padded[..., i * d_r:(i + 1) * d_r]
        out[:, i] = xi @ xi.transpose(1, 2) / math.sqrt(d_r)
    return out


def ref_relation_kl(s_x, t_x, r, mask, causal=False):
    """mean over valid (batch, relation head, query) of KL(softmax(T_r T_r^T) || softmax(S_r S_r^T)) over
    visible keys."""
    s_sc, t_sc = ref_relation_scores(s_x, r), ref_relation_scores(t_x, r)
    total, rows = 0.0, 0
    n = s_x.shape[1]
    for b in range(s_x.shape[0]):
        for h in range(r):
            for q in range(n):
                if not mask[b, q]:
                    continue
                keys = mask[b].bool().clone()
                if causal:
                    keys[q + 1:] = False
                p_t = torch.softmax(t_sc[b, h, q][keys], -1)
                log_p_s = torch.log_softmax(s_sc[b, h, q][keys], -1)
                total = total + (p_t * (p_t.log() - log_p_s)).sum()
                rows += 1
    return total / rows


def ref_attention_kl(s, t, mask, causal=False):
    """Per-head attention KL over visible keys, mean over valid (batch, head, query) rows."""
    total, rows = 0.0, 0
    n = s.shape[-1]
    for b in range(s.shape[0]):
        for h in range(s.shape[1]):
            for q in range(n):
                if not mask[b, q]:
                    continue
                keys = mask[b].bool().clone()
                if causal:
                    keys[q + 1:] = False
                p_t = torch.softmax(t[b, h, q][keys], -1)
                total = total + (p_t * (p_t.log() - torch.log_softmax(s[b, h, q][keys], -1))).sum()
                rows += 1
    return total / rows


def ref_masked_mse(a, b, mask):
    valid = mask.bool()
    return ((a - b) ** 2).sum(-1)[valid].sum() / (valid.sum() * a.shape[-1])


def _close(a, b, tol=2e-5):
    torch.testing.assert_close(torch.as_tensor(float(torch.as_tensor(a).detach())),
                               torch.as_tensor(float(torch.as_tensor(b).detach())), atol=tol, rtol=1e-4)


def _teacher(layers=4, heads=4, head_dim=8, inter=48):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, hidden_size=heads * head_dim, head_dim=head_dim, num_heads=[heads] * layers,
                            intermediate_sizes=[inter] * layers, initializer_range=0.2)
    return MaskedTransformer(cfg).eval()


def _batch():
    torch.manual_seed(2)
    ids = torch.randint(1, 50, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}


def _run(options, student, teacher, batch, task_type="classification"):
    torch.manual_seed(5)
    obj = KDObjective.from_config(dict(options, path="reference"), student, teacher, task_type)
    kw = obj.forward_kwargs()
    with torch.no_grad():
        t_out = teacher(batch["input_ids"], batch["attention_mask"], **kw)
    s_out = student(batch["input_ids"], batch["attention_mask"], **kw)
    loss, parts = obj(s_out, t_out, batch)
    return obj, s_out, t_out, loss, parts


# ------------------------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("width,r", [(32, 4), (24, 4), (20, 6), (7, 3)])
def test_relation_scores_match_the_loop(width, r):
    x = torch.randn(2, 5, width, dtype=torch.float64)
    torch.testing.assert_close(relation_scores(x, r), ref_relation_scores(x, r))
    assert relation_scores(x, r).shape == (2, r, 5, 5)
    per_head = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(concat_heads(per_head), per_head.permute(0, 2, 1, 3).reshape(2, 5, 12))
    with pytest.raises(ValueError, match="num_relation_heads"):
        relation_scores(x, 0)


def test_relation_gradients_in_float64():
    x = torch.randn(2, 4, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: relation_scores(t, 3), (x,))


def test_low_rank_projection():
    ident = LowRankProjection(16, 16, rank=4)
    x = torch.randn(2, 3, 16)
    assert ident(x) is x and not list(ident.parameters())
    proj = LowRankProjection(12, 40, rank=5)
    y = proj(torch.randn(2, 3, 12))
    assert y.shape == (2, 3, 40)
    assert torch.linalg.matrix_rank(proj.up.weight @ proj.down.weight) == 5
    with pytest.raises(ValueError, match="expected last dim 12"):
        proj(torch.randn(2, 3, 13))


# -------------------------------------------------------------------------------------------- terms
@pytest.mark.parametrize("which,index", [("query", 0), ("key", 1), ("value", 2)])
def test_relation_term_with_different_head_counts(which, index):
    teacher = _teacher(heads=4)
    student = make_student(teacher, 2, layer_init="scratch", num_heads=2, intermediate_size=24)
    batch = _batch()
    mask = batch["attention_mask"]
    _, s, t, _, parts = _run({f"{which}_relation_weight": 1.0, "relation_heads": 4, "pred_weight": 0},
                             student, teacher, batch)
    ref = sum(ref_relation_kl(concat_heads(s.qkv[m][index]), concat_heads(t.qkv[2 * m + 1][index]), 4, mask)
              for m in range(2)) / 2
    _close(parts[f"{which}_relation"], ref)
    assert parts[f"{which}_relation"] > 1e-4


def test_relation_term_on_a_pruned_student_with_uneven_widths():
    teacher = _teacher(heads=4)
    student = prune(teacher, Structure.from_indices([(0, 1, 3), (2,), (0, 1, 2, 3), (1, 2)],
                                                    [tuple(range(48))] * 4, teacher))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    mask = batch["attention_mask"]
    _, s, t, _, parts = _run({"value_relation_weight": 1.0, "relation_heads": 4, "pred_weight": 0}, student, teacher,
                             batch)
    # student widths 24, 8, 32, 16 split into 4 relation heads (zero-padded where not a multiple)
    ref = sum(ref_relation_kl(concat_heads(s.qkv[m][2]), concat_heads(t.qkv[m][2]), 4, mask) for m in range(4)) / 4
    _close(parts["value_relation"], ref)


def test_ffn_intermediate_and_output_terms():
    teacher = _teacher(inter=48)
    student = make_student(teacher, 2, intermediate_size=[20, 12])
    batch = _batch()
    mask = batch["attention_mask"]
    obj, s, t, loss, parts = _run({"ffn_intermediate_weight": 1.0, "ffn_output_weight": 1.0, "ffn_rank": 6,
                                   "pred_weight": 0}, student, teacher, batch)
    inter_term = next(term for term in obj.terms if term.name == "ffn_intermediate")
    maps = inter_term.maps
    assert [m.in_dim for m in maps] == [20, 12] and all(m.out_dim == 48 and not m.identity for m in maps)
    with torch.no_grad():
        ref_i = sum(ref_masked_mse(maps[m](s.ffn_intermediate[m]), t.ffn_intermediate[2 * m + 1], mask)
                    for m in range(2)) / 2
        ref_o = sum(ref_masked_mse(s.ffn_output[m], t.ffn_output[2 * m + 1], mask) for m in range(2)) / 2
    _close(parts["ffn_intermediate"], ref_i)
    _close(parts["ffn_output"], ref_o)
    loss.backward()
    assert maps[0].down.weight.grad.abs().sum() > 0 and maps[1].up.weight.grad.abs().sum() > 0
    assert student.layers[1].ffn.up.weight.grad.abs().sum() > 0


def test_makd_aspects_on_a_causal_model():
    """GPT-2: attention and relation distributions leave out future keys; logits KD is per token."""
    transformers = pytest.importorskip("transformers")
    from ddk_fast.distill.tinybert import make_student as mk
    from ddk_fast.model.gpt2 import MaskedGPT2, stock_gpt2_config

    torch.manual_seed(0)
    stock = transformers.GPT2LMHeadModel(stock_gpt2_config(vocab_size=50, n_embd=32, n_layer=4, n_head=4,
                                                           n_positions=16, bos_token_id=1, eos_token_id=2))
    teacher = MaskedGPT2.from_pretrained(stock).eval()
    student = mk(teacher, 2, num_heads=2)
    batch = _batch()
    mask = batch["attention_mask"]
    opts = {"query_relation_weight": 1.0, "relation_heads": 4, "pred_weight": 1.0, "temperature": 2.0,
            "ffn_output_weight": 1.0}
    _, s, t, loss, parts = _run(opts, student, teacher, batch, task_type="lm")
    ref_q = sum(ref_relation_kl(concat_heads(s.qkv[m][0]), concat_heads(t.qkv[2 * m + 1][0]), 4, mask, causal=True)
                for m in range(2)) / 2
    _close(parts["query_relation"], ref_q)
    valid = mask.bool()
    s_l, t_l = s.logits[valid] / 2.0, t.logits[valid] / 2.0
    ref_pred = -(torch.softmax(t_l, -1) * torch.log_softmax(s_l, -1)).sum(-1).mean() * 4.0
    _close(parts["pred"], ref_pred)
    # attention KL on a causal model with equal heads
    same = mk(teacher, 2)
    _, s, t, _, parts = _run({"attention_weight": 1.0, "pred_weight": 0}, same, teacher, batch, task_type="lm")
    ref_a = sum(ref_attention_kl(s.attention_scores[m], t.attention_scores[2 * m + 1], mask, causal=True)
                for m in range(2)) / 2
    _close(parts["attention"], ref_a)
