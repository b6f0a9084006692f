"""DDK's objective as the ``ddk`` preset of ``KDObjective``: the ``ddk_hidden`` term against formulas written
here over several training steps (the adaptive weights' EMA, every fusion), the prediction and task cases,
the hidden term unchanged by catalog terms, the objective state through ``state_dict``, and the map that
loads checkpoints written before the objective was one ``KDObjective``."""
import pytest
import torch
import torch.nn.functional as F

from ddk_fast.distill.fusion import recursive_fusion
from ddk_fast.distill.objectives import PRESETS, KDObjective
from ddk_fast.distill.tinybert import make_student
from ddk_fast.errors import UserError
from ddk_fast.model import MaskedTransformer, Structure, TransformerConfig, prune
from ddk_fast.pipelines.compress import checkpoint_tensors, objective_options
from ddk_fast.pipelines.configs import CompressConfig

FUSIONS = ("none", "param_free", "learned")
WEIGHTINGS = ("adaptive", "uniform")


pytestmark = pytest.mark.usefixtures("one_thread")

def _teacher(num_labels=3, task_type="classification", layers=3):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=60, hidden_size=16, head_dim=4, num_heads=[4] * layers,
                            intermediate_sizes=[24] * layers, num_labels=num_labels, task_type=task_type,
                            initializer_range=0.2)
    return MaskedTransformer(cfg).eval()


def _pruned(teacher):
    """A width-pruned student (the teacher's depth and hidden size), nudged off the teacher."""
    keep = [(0, 2), (1, 2, 3), (3,)][:teacher.num_layers]
    student = prune(teacher, Structure.from_indices(keep, [tuple(range(0, 24, 2))] * teacher.num_layers, teacher))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student.train()


def _batch(seed, labels):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _outputs(objective, student, teacher, batch):
    kw = objective.forward_kwargs()
    with torch.no_grad():
        t_out = teacher(batch["input_ids"], batch["attention_mask"], **kw)
    return student(batch["input_ids"], batch["attention_mask"], **kw), t_out


def ref_mse(a, b, mask):
    valid = mask.bool()
    return ((a - b) ** 2).sum(-1)[valid].sum() / (valid.sum() * a.shape[-1])


def ref_targets(states, mask, fusion):
    if fusion == "none":
        return list(states)
    if fusion == "param_free":
        return recursive_fusion(states, token_mask=mask)
    fused = [None] * len(states)  # a learned gate at its initialisation: W = 0, b = 0, so a = 1/2
    fused[-1] = states[-1]
    for l in range(len(states) - 2, -1, -1):
        fused[l] = 0.5 * states[l] + 0.5 * fused[l + 1]
    return fused


# ---------------------------------------------------------------------------------------------- preset
def test_the_ddk_preset_builds_ddk_hidden_prediction_and_task_at_ddk_weights():
    teacher = _teacher()
    obj = KDObjective.from_config({}, _pruned(teacher), teacher, preset="ddk")
    assert [(t.name, t.weight) for t in obj.terms] == [("ddk_hidden", 1.0), ("pred", 1.0), ("task", 0.5)]
    hidden = obj.terms[0]
    assert (hidden.fusion_kind, hidden.weighting, hidden.kind) == ("none", "adaptive", "mse")
    assert obj.terms[1].temperature == PRESETS["ddk"]["temperature"] == 2.0
    assert obj.forward_kwargs() == {"output_hidden_states": True} and not obj.reads_padded_queries
    learned = KDObjective.from_config({"fusion": "learned", "task_weight": 0}, _pruned(teacher), teacher, preset="ddk")
    assert [t.name for t in learned.terms] == ["ddk_hidden", "pred"] and learned.terms[0].fusion is not None
    with pytest.raises(ValueError, match="preset='tiny'"):
        KDObjective.from_config({}, teacher, teacher, preset="tiny")


def test_ddk_hidden_needs_the_teachers_depth_and_width():
    teacher = _teacher(layers=4)
    with pytest.raises(ValueError, match="ddk_hidden pairs student state l with teacher state l"):
        KDObjective.from_config({}, make_student(teacher, 2), teacher, preset="ddk")


# ------------------------------------------------------------------------------------- the hidden term
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_ddk_hidden_over_three_steps_matches_the_formula(fusion, weighting):
    teacher = _teacher()
    student = _pruned(teacher)
    obj = KDObjective.from_config({"fusion": fusion, "layer_weighting": weighting, "pred_weight": 0, "task_weight": 0,
                                   "path": "reference"}, student, teacher, preset="ddk")
    term = obj.terms[0]
    ema = None
    for step in range(3):
        batch = _batch(step, torch.tensor([0, 2, 1]))
        s_out, t_out = _outputs(obj, student, teacher, batch)
        mask = batch["attention_mask"]
        targets = ref_targets([h.detach() for h in t_out.hidden_states], mask, fusion)
        losses = torch.stack([ref_mse(a, b, mask) for a, b in zip(s_out.hidden_states, targets)])
        assert len(losses) == teacher.num_layers + 1  # the embedding output is a matched state too
        if weighting == "uniform" or ema is None:
            weights = torch.ones(len(losses))
        else:  # shares of the EMA of the previous steps' losses, mean 1
            weights = ema / ema.sum() * len(ema)
        expected = (weights * losses.detach()).sum()
        loss, parts = obj(s_out, t_out, batch)
        torch.testing.assert_close(parts["ddk_hidden"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        ema = losses.detach() if ema is None else 0.9 * ema + 0.1 * losses.detach()
        if weighting == "adaptive":
            torch.testing.assert_close(term.layer_weights.ema, ema, atol=1e-6, rtol=1e-5)
        if fusion == "learned" and step == 0:
            loss.backward()
            assert all(g.weight.grad is not None and g.weight.grad.abs().sum() > 0 for g in term.fusion.gates)
        with torch.no_grad():  # the student moves between steps, as in training
            for p in student.parameters():
                p.add_(0.02 * torch.randn_like(p))


def test_evaluation_leaves_the_adaptive_weights_alone():
    teacher = _teacher()
    student = _pruned(teacher)
    obj = KDObjective.from_config({}, student, teacher, preset="ddk").eval()
    batch = _batch(0, torch.tensor([0, 2, 1]))
    obj(*_outputs(obj, student, teacher, batch), batch)
    assert not bool(obj.terms[0].layer_weights.initialized)
    obj.train()(*_outputs(obj, student, teacher, batch), batch)
    assert bool(obj.terms[0].layer_weights.initialized)


def test_the_hidden_term_is_the_same_with_catalog_terms():
    """compress's objective with and without ``--kd attention_weight=0.1``: the same ddk_hidden value and
    gradient on the same batch; the totals differ by the weighted attention term only."""
    teacher = _teacher()
    student = _pruned(teacher)
    plain = KDObjective.from_config(objective_options(CompressConfig()), student, teacher, preset="ddk")
    extra = KDObjective.from_config(objective_options(CompressConfig(kd="attention_weight=0.1")), student, teacher,
                                    preset="ddk")
    assert [t.name for t in extra.terms] == ["ddk_hidden", "attention", "pred", "task"]
    params = [p for p in student.parameters() if p.requires_grad]
    for step in range(2):  # the second step uses the adaptive weights the first one left
        batch = _batch(step, torch.tensor([0, 2, 1]))
        s_out, t_out = _outputs(extra, student, teacher, batch)
        values = [obj.terms[0](s_out, t_out, batch) for obj in (plain, extra)]
        grads = [torch.autograd.grad(v, params, retain_graph=True, allow_unused=True) for v in values]
        assert torch.equal(values[0], values[1])
        for a, b in zip(*grads):
            assert (a is None and b is None) or torch.equal(a, b)
        assert torch.equal(plain.terms[0].layer_weights.ema, extra.terms[0].layer_weights.ema)
        with torch.no_grad():
            (loss_a, parts_a), (loss_b, parts_b) = plain(s_out, t_out, batch), extra(s_out, t_out, batch)
        assert parts_b["attention"] > 0
        torch.testing.assert_close(loss_b - loss_a, 0.1 * parts_b["attention"], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------ prediction and task cases
@pytest.mark.parametrize("task_type", ["classification", "regression", "multilabel"])
def test_prediction_and_task_terms_of_each_task_kind(task_type):
    num_labels = {"classification": 3, "regression": 1, "multilabel": 4}[task_type]
    teacher = _teacher(num_labels, task_type)
    student = _pruned(teacher)
    labels = {"classification": torch.tensor([0, 2, 1]), "regression": torch.tensor([0.5, 3.0, 4.5]),
              "multilabel": torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]])}[task_type]
    batch = _batch(3, labels)
    obj = KDObjective.from_config({"ddk_hidden_weight": 0.0}, student, teacher, task_type, preset="ddk")
    s_out, t_out = _outputs(obj, student, teacher, batch)
    loss, parts = obj(s_out, t_out, batch)
    s, t, temp = s_out.logits.detach(), t_out.logits, 2.0
    if task_type == "regression":
        pred, task = F.mse_loss(s, t), F.mse_loss(s.squeeze(-1), labels)
    elif task_type == "multilabel":
        pred = F.binary_cross_entropy(torch.sigmoid(s / temp), torch.sigmoid(t / temp)) * temp ** 2
        task = F.binary_cross_entropy(torch.sigmoid(s), labels)
    else:
        pred = -(torch.softmax(t / temp, -1) * torch.log_softmax(s / temp, -1)).sum(-1).mean() * temp ** 2
        task = F.cross_entropy(s, labels)
    torch.testing.assert_close(parts["pred"], pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts["task"], task, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, pred + 0.5 * task, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- state
def test_learned_gate_and_adaptive_weights_round_trip_through_state_dict():
    teacher = _teacher()
    student = _pruned(teacher)
    options = {"fusion": "learned", "path": "reference"}
    obj = KDObjective.from_config(options, student, teacher, preset="ddk")
    optimizer = torch.optim.SGD(obj.parameters(), lr=0.5)
    for step in range(2):
        batch = _batch(step, torch.tensor([0, 2, 1]))
        loss, _ = obj(*_outputs(obj, student, teacher, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = obj.state_dict()
    assert {"terms.0.layer_weights.ema", "terms.0.layer_weights.initialized",
            "terms.0.fusion.gates.0.weight"} <= set(state)
    again = KDObjective.from_config(options, student, teacher, preset="ddk")
    again.load_state_dict(state)
    batch = _batch(5, torch.tensor([1, 1, 0]))
    outputs = _outputs(obj, student, teacher, batch)
    fresh = KDObjective.from_config(options, student, teacher, preset="ddk")
    torch.testing.assert_close(again(*outputs, batch)[0], obj(*outputs, batch)[0], atol=0, rtol=0)
    assert not torch.equal(fresh(*outputs, batch)[0], obj(*outputs, batch)[0])  # the state carries something


def test_checkpoints_without_an_objective_record_are_mapped_or_refused():
    teacher = _teacher()
    objective = KDObjective.from_config({"fusion": "learned"}, _pruned(teacher), teacher, preset="ddk")
    legacy = {"student.w": torch.zeros(1), "objective.layer_weights.ema": torch.ones(4),
              "objective.fusion.gates.0.bias": torch.zeros(1)}
    mapped = checkpoint_tensors(legacy, {}, objective, CompressConfig(), "work")
    assert set(mapped) == {"student.w", "objective.terms.0.layer_weights.ema", "objective.terms.0.fusion.gates.0.bias"}
    recorded = {"objective": ["ddk_hidden", "pred", "task"]}
    assert checkpoint_tensors(dict(mapped), recorded, objective, CompressConfig(), "work") == mapped
    with pytest.raises(UserError, match="trained with the terms"):
        checkpoint_tensors(mapped, {"objective": ["hidden", "pred", "task"]}, objective, CompressConfig(), "work")
    with pytest.raises(UserError, match="earlier version whose --kd objective"):
        checkpoint_tensors(legacy, {}, objective, CompressConfig(kd="attention_weight=1"), "work")
