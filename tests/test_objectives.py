"""The KD term catalog against plain reference formulas written here; every layer mapping on a 6-layer
teacher -> 3-layer student and on a pruned same-depth student; TinyBERT students and recipes."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddk_fast.distill.objectives import KDObjective, layer_groups, next_token_loss
from ddk_fast.distill.tinybert import make_student, recipe_stages, teacher_layers_for
from ddk_fast.model import MaskedTransformer, Structure, TransformerConfig, prune

MAPPINGS = ("uniform", "last", "skip", "random", "mean", "argmin", "fusion")
EXPECTED_6_TO_3 = {"uniform": [[2], [4], [6]], "last": [[4], [5], [6]], "skip": [[1], [2], [3]],
                   "mean": [[1, 2], [3, 4], [5, 6]]}
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine


# ---------------------------------------------------------------------------------------------- setup
def _teacher(num_labels=3, task_type="classification", seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=60, hidden_size=32, head_dim=8, num_heads=[4] * 6, intermediate_sizes=[48] * 6,
                            num_labels=num_labels, task_type=task_type, initializer_range=0.2)
    return MaskedTransformer(cfg).eval()


def _batch(labels=(0, 2, 1)):
    torch.manual_seed(1)
    ids = torch.randint(1, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    lab = torch.tensor(labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def _run(options, student, teacher, batch, task_type="classification"):
    obj = KDObjective.from_config(dict(options, path="reference"), student, teacher, task_type)
    kw = obj.forward_kwargs()
    with torch.no_grad():
        t_out = teacher(batch["input_ids"], batch["attention_mask"], **kw)
    s_out = student(batch["input_ids"], batch["attention_mask"], **kw)
    loss, parts = obj(s_out, t_out, batch)
    return obj, s_out, t_out, loss, parts


# ----------------------------------------------------------------------------------------- references
def ref_mse(a, b, mask):
    valid = mask.bool()
    return ((a - b) ** 2).sum(-1)[valid].sum() / (valid.sum() * a.shape[-1])


def ref_cosine(a, b, mask):
    cos = (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(1e-8) * b.norm(dim=-1).clamp_min(1e-8))
    return (1 - cos)[mask.bool()].mean()


def ref_kl(s, t, mask, causal=False):
    """mean over valid (batch, head, query) rows of sum over visible keys p_t (log p_t - log p_s)."""
    b, h, n, _ = s.shape
    visible = mask.bool()[:, None, None, :].expand(b, h, n, n).clone()
    if causal:
        visible &= torch.ones(n, n, dtype=torch.bool).tril()
    total, rows = 0.0, 0
    for i in range(b):
        for j in range(h):
            for q in range(n):
                if not mask[i, q]:
                    continue
                keys = visible[i, j, q]
                p_t = torch.softmax(t[i, j, q][keys], -1)
                log_p_s = torch.log_softmax(s[i, j, q][keys], -1)
                total = total + (p_t * (p_t.log() - log_p_s)).sum()
                rows += 1
    return total / rows


def ref_tinybert_att_mse(s, t, mask):
    """TinyBERT: scores + (-10000 on padded keys), then entries <= -100 set to 0, MSELoss over all entries."""
    add = (1.0 - mask[:, None, None, :].float()) * -10000.0
    s2, t2 = s + add, t + add
    s2 = torch.where(s2 <= -1e2, torch.zeros_like(s2), s2)
    t2 = torch.where(t2 <= -1e2, torch.zeros_like(t2), t2)
    return F.mse_loss(s2, t2)


def ref_soft_ce(s, t, temperature):
    p = torch.softmax(t / temperature, -1)
    return -(p * torch.log_softmax(s / temperature, -1)).sum(-1).mean() * temperature ** 2


def _close(a, b, tol=2e-5):
    a, b = (torch.as_tensor(float(torch.as_tensor(x).detach())) for x in (a, b))
    torch.testing.assert_close(a, b, atol=tol, rtol=1e-4)


# ---------------------------------------------------------------------------------- individual terms
def test_each_term_against_its_reference_formula():
    teacher = _teacher()
    student = make_student(teacher, 3, layer_init="scratch", hidden_size=24, num_heads=4, intermediate_size=40)
    batch = _batch()
    mask = batch["attention_mask"]
    opts = dict(embedding_weight=0.3, hidden_weight=0.7, pred_weight=1.1, task_weight=0.4, temperature=3.0,
                mapping="uniform")
    obj, s, t, loss, parts = _run(opts, student, teacher, batch)
    proj = {term.name: term.projection for term in obj.terms if hasattr(term, "projection")}
    with torch.no_grad():
        emb = ref_mse(proj["embedding"](s.hidden_states[0]), t.hidden_states[0], mask)
        hid = sum(ref_mse(proj["hidden"](s.hidden_states[m]), t.hidden_states[2 * m], mask) for m in (1, 2, 3)) / 3
        pred = ref_soft_ce(s.logits, t.logits, 3.0)
        task = F.cross_entropy(s.logits, batch["labels"])
    for name, ref in (("embedding", emb), ("hidden", hid), ("pred", pred), ("task", task)):
        _close(parts[name], ref)
    _close(loss, 0.3 * emb + 0.7 * hid + 1.1 * pred + 0.4 * task)
    assert not proj["hidden"].is_identity  # 24 -> 32: TinyBERT's learned W_h
    loss.backward()
    assert proj["hidden"].maps[0].weight.grad.abs().sum() > 0
    assert student.layers[0].attention.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_hidden_cosine_and_attention_losses():
    teacher = _teacher()
    student = make_student(teacher, 3)
    batch = _batch()
    mask = batch["attention_mask"]
    _, s, t, _, parts = _run(dict(hidden_weight=1, hidden_loss="cosine", attention_weight=1, attention_loss="kl",
                                  pred_weight=0), student, teacher, batch)
    with torch.no_grad():
        cos = sum(ref_cosine(s.hidden_states[m], t.hidden_states[2 * m], mask) for m in (1, 2, 3)) / 3
        kl = sum(ref_kl(s.attention_scores[m], t.attention_scores[2 * m + 1], mask) for m in range(3)) / 3
    _close(parts["hidden"], cos)
    _close(parts["attention"], kl)
    _, s, t, _, parts = _run(dict(attention_weight=1, attention_loss="mse", pred_weight=0), student, teacher, batch)
    with torch.no_grad():
        mse = sum(ref_tinybert_att_mse(s.attention_scores[m], t.attention_scores[2 * m + 1], mask)
                  for m in range(3)) / 3
    _close(parts["attention"], mse)
    assert parts["attention"] > 0


def test_regression_prediction_is_mse_and_lm_helpers():
    teacher = _teacher(num_labels=1, task_type="regression")
    student = make_student(teacher, 2)
    batch = _batch(labels=(0.5, 3.0, 4.5))
    _, s, t, _, parts = _run(dict(pred_weight=1, task_weight=1), student, teacher, batch, "regression")
    _close(parts["pred"], F.mse_loss(s.logits, t.logits))
    _close(parts["task"], F.mse_loss(s.logits.squeeze(-1), batch["labels"]))
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    nll = [-torch.log_softmax(logits[b, i], -1)[ids[b, i + 1]] for b in range(2) for i in range(4) if mask[b, i + 1]]
    _close(next_token_loss(logits, ids, mask), torch.stack(nll).mean())


def test_tinybert_mse_counts_padded_entries_as_zeros():
    """The formula differs from a masked mean: the padded entries enter the denominator."""
    from ddk_fast.distill.objectives import tinybert_attention_mse

    s, t = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    allowed = mask.bool()[:, None, None, :]
    _close(tinybert_attention_mse(s, t, allowed), ref_tinybert_att_mse(s, t, mask))
    s64 = s.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tinybert_attention_mse(x, t.double(), allowed), (s64,))


# ------------------------------------------------------------------------------------------ mappings
@pytest.mark.parametrize("name", MAPPINGS)
def test_every_mapping_6_to_3(name):
    from ddk_fast.distill.fusion import recursive_fusion

    teacher = _teacher()
    student = make_student(teacher, 3, layer_init="first")
    batch = _batch()
    mask = batch["attention_mask"]
    obj, s, t, _, parts = _run(dict(hidden_weight=1, attention_weight=1, pred_weight=0, mapping=name,
                                    mapping_seed=3), student, teacher, batch)
    hidden_term = obj.terms[0]
    with torch.no_grad():
        if name in EXPECTED_6_TO_3:
            groups = EXPECTED_6_TO_3[name]
        elif name == "random":
            groups = [[x] for x in hidden_term.mapping.teacher_layers()]
            assert len(groups) == 3 and sorted(groups) == groups and all(1 <= g[0] <= 6 for g in groups)
        else:
            groups = EXPECTED_6_TO_3["uniform"]
        if name == "argmin":  # CoFi: each uniform teacher layer takes the closest student layer
            pairs = []
            for tl in (2, 4, 6):
                d = [ref_mse(s.hidden_states[m], t.hidden_states[tl], mask) for m in (1, 2, 3)]
                pairs.append((1 + min(range(3), key=lambda i: d[i]), tl))
            ref_h = sum(ref_mse(s.hidden_states[m], t.hidden_states[tl], mask) for m, tl in pairs) / 3
        elif name == "fusion":
            fused = recursive_fusion(list(t.hidden_states[1:]), token_mask=mask)
            ref_h = sum(ref_mse(s.hidden_states[m], fused[2 * m - 1], mask) for m in (1, 2, 3)) / 3
        else:
            targets = [torch.stack([t.hidden_states[g] for g in grp]).mean(0) for grp in groups]
            ref_h = sum(ref_mse(s.hidden_states[m + 1], targets[m], mask) for m in range(3)) / 3
        t_att = [torch.stack([t.attention_scores[g - 1] for g in grp]).mean(0) for grp in groups]
        ref_a = sum(ref_kl(s.attention_scores[m], t_att[m], mask) for m in range(3)) / 3
    _close(parts["hidden"], ref_h)
    _close(parts["attention"], ref_a)
    assert [[g + 1 for g in grp] for grp in layer_groups(hidden_term.mapping)] == groups


@pytest.mark.parametrize("name", MAPPINGS)
def test_every_mapping_on_a_pruned_same_depth_student(name):
    teacher = _teacher()
    keep_heads = [(0, 2), (1,), (0, 1, 2, 3), (3,), (1, 2), (0, 3)]
    structure = Structure.from_indices(keep_heads, [tuple(range(0, 48, 2))] * 6, teacher)
    student = prune(teacher, structure)
    with torch.no_grad():  # move the student away from the teacher so the losses are not ~0
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    mask = batch["attention_mask"]
    obj, s, t, _, parts = _run(dict(hidden_weight=1, attention_weight=1, pred_weight=0, mapping=name),
                               student, teacher, batch)
    mapping = obj.terms[0].mapping
    with torch.no_grad():
        if name == "random":
            layers = mapping.teacher_layers()
        else:
            layers = list(range(1, 7))  # same depth: every static mapping is the identity
        if name == "fusion":
            from ddk_fast.distill.fusion import recursive_fusion

            targets = recursive_fusion(list(t.hidden_states[1:]), token_mask=mask)
            ref_h = sum(ref_mse(s.hidden_states[m], targets[m - 1], mask) for m in range(1, 7)) / 6
        elif name == "argmin":  # each teacher layer takes its closest student layer
            ref_h = 0
            for tl in range(1, 7):
                ref_h = ref_h + min(ref_mse(s.hidden_states[m], t.hidden_states[tl], mask) for m in range(1, 7)) / 6
        else:
            ref_h = sum(ref_mse(s.hidden_states[m], t.hidden_states[layers[m - 1]], mask) for m in range(1, 7)) / 6
        # attention: kept heads compared with the same teacher heads (pruned_from)
        att_layers = layers if name in ("random",) else list(range(1, 7))
        ref_a = sum(ref_kl(s.attention_scores[m], t.attention_scores[att_layers[m] - 1][:, list(keep_heads[m])], mask)
                    for m in range(6)) / 6
    _close(parts["hidden"], ref_h)
    _close(parts["attention"], ref_a)


def test_attention_term_refuses_mismatched_heads_without_provenance():
    teacher = _teacher()
    student = make_student(teacher, 3, num_heads=2)
    with pytest.raises(ValueError, match="relation terms"):
        KDObjective.from_config(dict(attention_weight=1), student, teacher)
    KDObjective.from_config(dict(query_relation_weight=1), student, teacher)  # relations need no equal heads


def test_config_errors_name_the_option():
    teacher = _teacher()
    with pytest.raises(ValueError, match="unknown KD option"):
        KDObjective.from_config(dict(hiden_weight=1), teacher, teacher)
    with pytest.raises(ValueError, match="attention_loss='l2'"):
        KDObjective.from_config(dict(attention_weight=1, attention_loss="l2"), teacher, teacher)
    with pytest.raises(ValueError, match="every KD weight is 0"):
        KDObjective.from_config(dict(pred_weight=0), teacher, teacher)
    with pytest.raises(ValueError, match="hidden_weight=-1"):
        KDObjective.from_config(dict(hidden_weight=-1), teacher, teacher)


# ------------------------------------------------------------------------------- students and recipes
def test_make_student_layer_selection_and_narrowing():
    teacher = _teacher()
    assert teacher_layers_for(3, 6, "uniform") == [1, 3, 5]
    assert teacher_layers_for(3, 6, "first") == [0, 1, 2] and teacher_layers_for(2, 6, "last") == [4, 5]
    assert teacher_layers_for(4, 6, "uniform") == [0, 2, 3, 5]
    student = make_student(teacher, 3, layer_init="uniform")
    for dst, src in enumerate([1, 3, 5]):
        assert torch.equal(student.layers[dst].ffn.up.weight, teacher.layers[src].ffn.up.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    narrow = make_student(teacher, 3, num_heads=[2, 3, 1], intermediate_size=16).eval()
    assert narrow.num_heads == [2, 3, 1] and narrow.intermediate_sizes == [16] * 3
    # the narrow student computes what the full 3-layer student computes with the other units gated off
    batch = _batch()
    kept_h, kept_f = [], []
    for m, src in enumerate([1, 3, 5]):
        w = narrow.layers[m].attention.output.weight
        full_w = teacher.layers[src].attention.output.weight
        heads = [h for h in range(4) for k in range(w.shape[1] // 8)
                 if torch.equal(full_w[:, h * 8:(h + 1) * 8], w[:, k * 8:(k + 1) * 8])]
        kept_h.append(heads)
        up, full_up = narrow.layers[m].ffn.up.weight, teacher.layers[src].ffn.up.weight
        kept_f.append([c for c in range(48) if any(torch.equal(full_up[c], up[k]) for k in range(16))])
    hg, fg = Structure.from_indices(kept_h, kept_f, student).to_gates()
    with torch.no_grad():
        a = narrow(batch["input_ids"], batch["attention_mask"]).logits
        b = student.eval()(batch["input_ids"], batch["attention_mask"], head_gates=hg, ffn_gates=fg).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer_init='scratch'"):
        make_student(teacher, 3, hidden_size=16)
    scratch = make_student(teacher, 4, layer_init="scratch", hidden_size=16, num_heads=2, intermediate_size=20)
    assert scratch.hidden_size == 16 and scratch.head_dim == 8 and scratch.num_layers == 4


def test_recipes_two_stage_keeps_stages_apart():
    stages = recipe_stages("tinybert", {"attention_weight": 2.0, "temperature": 4.0}, total_steps=11)
    assert [name for name, _, _ in stages] == ["intermediate", "prediction"]
    assert sum(steps for _, _, steps in stages) == 11
    first, second = stages[0][1], stages[1][1]
    assert first["attention_weight"] == 2.0 and first["attention_loss"] == "mse" and first["pred_weight"] == 0
    assert second["attention_weight"] == 0 and second["pred_weight"] == 1 and second["temperature"] == 4.0
    joint = recipe_stages("joint", {"hidden_weight": 3.0}, total_steps=5)
    assert len(joint) == 1 and joint[0][1]["hidden_weight"] == 3.0 and joint[0][1]["pred_weight"] == 1
    teacher = _teacher()
    student = make_student(teacher, 3)
    for name in ("tinybert", "joint", "makd", "ddk"):
        for _, options, _ in recipe_stages(name, None, 10):
            KDObjective.from_config(options, student, teacher)  # every recipe builds on a 3-layer student
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipe_stages("distilbert")
    assert math.isclose(sum(s for *_, s in recipe_stages("tinybert", None, 3)), 3)


def test_fused_path_matches_reference_path():
    teacher = _teacher()
    keep = [(0, 2), (1,), (0, 1, 2, 3), (3,), (1, 2), (0, 3)]
    student = prune(teacher, Structure.from_indices(keep, [tuple(range(0, 48, 3))] * 6, teacher))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    opts = dict(hidden_weight=1, attention_weight=1, query_relation_weight=1, ffn_output_weight=1, pred_weight=1,
                ffn_intermediate_weight=1)
    values = {}
    for path in ("reference", "auto"):
        torch.manual_seed(0)  # same random low-rank FFN maps in both objectives
        obj = KDObjective.from_config(dict(opts, path=path), student, teacher)
        kw = obj.forward_kwargs()
        with torch.no_grad():
            t_out = teacher(batch["input_ids"], batch["attention_mask"], **kw)
        s_out = student(batch["input_ids"], batch["attention_mask"], **kw)
        values[path] = obj(s_out, t_out, batch)[1]
    for name, ref in values["reference"].items():
        _close(values["auto"][name], ref, tol=1e-5)


def test_hidden_term_can_include_the_embedding_output():
    teacher = _teacher()
    student = make_student(teacher, 3)
    batch = _batch()
    mask = batch["attention_mask"]
    _, s, t, _, parts = _run(dict(hidden_weight=1, hidden_embeddings=True, pred_weight=0), student, teacher, batch)
    with torch.no_grad():
        ref = sum(ref_mse(s.hidden_states[m], t.hidden_states[2 * m], mask) for m in (0, 1, 2, 3)) / 4
    _close(parts["hidden"], ref)


def test_kd_help_lists_every_option_and_choice():
    from ddk_fast.distill.mappings import MAPPINGS
    from ddk_fast.distill.objectives import ATTENTION_LOSSES, DEFAULTS, kd_options_help

    text = kd_options_help()
    assert all(f"{key}=" in text for key in DEFAULTS if key != "path")
    assert all(name in text for name in (*MAPPINGS, *ATTENTION_LOSSES, "cosine", "adaptive", "learned"))
