"""Data-driven importance, the one-shot mask search, rearrangement and least-squares unit scales."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from ddk_fast.model import MaskedTransformer, Structure, prune
from ddk_fast.model.reconstruct import tune_unit_scales
from ddk_fast.search import CostModel
from ddk_fast.search.base import DerivedStructure
from ddk_fast.search.calibration import activation_importance, gate_gradients, task_loss
from ddk_fast.search.oneshot import fisher_mask_search, rearrange, rearrange_layer


def tiny(dtype=torch.float32, layers=2, heads=4, hidden=16, inter=12, labels=2):
    cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=32, num_labels=labels, initializer_range=0.4,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return MaskedTransformer.from_pretrained(BertForSequenceClassification(cfg), dtype=dtype).eval()


def batches(n=3, b=4, s=9, labels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(1, 50, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[1, 5:] = 0
        mask[2, 3 + i:] = 0
        ids[mask == 0] = 0
        y = torch.randint(0, labels, (b,), generator=g) if labels > 1 else torch.randn(b, generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": y})
    return out


# ------------------------------------------------------------------------------------------ importance
def _assert_gate_gradients_match_finite_differences(model, data, grads, head_gates, ffn_gates, units, eps=1e-6):
    """Central differences of the task loss at the gates ``head_gates`` / ``ffn_gates`` for each
    (kind, layer, unit) of ``units``, against ``grads`` (per batch)."""
    for b, batch in enumerate(data):
        for kind, l, i in units:
            losses = []
            for sign in (1, -1):
                hg, fg = head_gates.clone(), ffn_gates.clone()
                (hg if kind == "head" else fg)[l, i] += sign * eps
                out = model(batch["input_ids"], attention_mask=batch["attention_mask"], head_gates=hg, ffn_gates=fg,
                            path="reference")
                losses.append(float(task_loss(out.logits.detach(), batch["labels"])))
            fd = (losses[0] - losses[1]) / (2 * eps)
            got = float((grads.heads if kind == "head" else grads.ffn)[b, l, i])
            assert got == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("path", ["reference", "compact"])
def test_gate_gradients_match_finite_differences_of_the_task_loss(path):
    model = tiny(torch.float64)
    data = batches()
    grads = gate_gradients(model, data, path=path)
    assert grads.heads.shape == (3, 2, 4) and grads.ffn.shape == (3, 2, 12)
    _assert_gate_gradients_match_finite_differences(
        model, data, grads, torch.ones(2, 4, dtype=torch.float64), torch.ones(2, 12, dtype=torch.float64),
        (("head", 0, 1), ("head", 1, 3), ("ffn", 0, 5), ("ffn", 1, 0)))
    head_f, ffn_f = grads.fisher()
    assert torch.allclose(head_f, grads.heads.pow(2).sum(0)) and torch.allclose(ffn_f, grads.ffn.pow(2).sum(0))
    assert all(p.requires_grad for p in model.parameters())  # weights are restored to trainable
    assert all(p.grad is None for p in model.parameters())  # and got no gradient


def test_gate_gradients_regression_loss_is_squared_error():
    model = tiny(torch.float64, labels=1)
    data = batches(n=1, labels=1)
    grads = gate_gradients(model, data, path="reference")
    hg = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)
    out = model(data[0]["input_ids"], attention_mask=data[0]["attention_mask"], head_gates=hg, path="reference")
    F.mse_loss(out.logits.squeeze(-1), data[0]["labels"].double()).backward()
    assert torch.allclose(grads.heads[0], hg.grad)


def test_activation_importance_equals_a_hand_computation_of_layer_0():
    model = tiny(torch.float64)
    data = batches(n=2)
    head_scores, ffn_scores = activation_importance(model, data, path="reference")
    att, ffn = model.layers[0].attention, model.layers[0].ffn
    head_sum, ffn_sum, tokens = torch.zeros(4, dtype=torch.float64), torch.zeros(12, dtype=torch.float64), 0
    for batch in data:
        x = model.embeddings(batch["input_ids"])
        mask = batch["attention_mask"].bool()
        for h in range(4):
            rows = slice(4 * h, 4 * h + 4)
            q = x @ att.query.weight[rows].T + att.query.bias[rows]
            k = x @ att.key.weight[rows].T + att.key.bias[rows]
            v = x @ att.value.weight[rows].T + att.value.bias[rows]
            scores = (q @ k.transpose(1, 2)) / 2.0 + torch.where(mask[:, None, :], 0.0, -1e9)
            contrib = torch.softmax(scores, -1) @ v @ att.output.weight[:, rows].T  # [B, S, d]
            head_sum[h] += contrib.norm(dim=-1)[mask].sum()
        attn_out = sum(torch.softmax((x @ att.query.weight[4 * h:4 * h + 4].T + att.query.bias[4 * h:4 * h + 4])
                                     @ (x @ att.key.weight[4 * h:4 * h + 4].T + att.key.bias[4 * h:4 * h + 4]
                                        ).transpose(1, 2) / 2.0 + torch.where(mask[:, None, :], 0.0, -1e9), -1)
                       @ (x @ att.value.weight[4 * h:4 * h + 4].T + att.value.bias[4 * h:4 * h + 4])
                       @ att.output.weight[:, 4 * h:4 * h + 4].T for h in range(4))
        hidden = F.layer_norm(x + attn_out + att.output.bias, (16,), att.norm.weight, att.norm.bias, att.norm.eps)
        a = F.gelu(hidden @ ffn.up.weight.T + ffn.up.bias)
        ffn_sum += (a.abs() * ffn.down.weight.norm(dim=0))[mask].sum(0)
        tokens += int(mask.sum())
    assert torch.allclose(head_scores[0], head_sum / tokens, rtol=1e-8)
    assert torch.allclose(ffn_scores[0], ffn_sum / tokens, rtol=1e-8)


# ----------------------------------------------------------------------------------------- mask search
def _brute_force(cost_model, head_scores, ffn_scores, target):
    budget = target * cost_model.full_cost()
    best = -math.inf
    heads = [(l, h) for l in range(2) for h in range(2)]
    chans = [(l, c) for l in range(2) for c in range(3)]
    for hk in itertools.product((0, 1), repeat=len(heads)):
        for ck in itertools.product((0, 1), repeat=len(chans)):
            hc = [sum(k for (l, _), k in zip(heads, hk) if l == layer) for layer in range(2)]
            cc = [sum(k for (l, _), k in zip(chans, ck) if l == layer) for layer in range(2)]
            if cost_model.structure_cost(hc, cc) <= budget * (1 + 1e-12):
                s = sum(float(head_scores[l, h]) for (l, h), k in zip(heads, hk) if k)
                s += sum(float(ffn_scores[l, c]) for (l, c), k in zip(chans, ck) if k)
                best = max(best, s)
    return best


@pytest.mark.parametrize("metric", ["params", "flops"])
@pytest.mark.parametrize("target", [0.3, 0.45, 0.7])
def test_mask_search_is_exact_and_within_budget(metric, target):
    cm = CostModel(8, 2, [2, 2], [3, 3], seq_len=4, metric=metric)
    g = torch.Generator().manual_seed(int(target * 100))
    head_scores, ffn_scores = torch.rand(2, 2, generator=g) * 5, torch.rand(2, 3, generator=g)
    found = fisher_mask_search(cm, head_scores, ffn_scores, target, metric)
    assert found.ratio(cm, metric) <= target + 1e-12
    total = sum(float(head_scores[l, h]) for l in range(2) for h in found.heads[l])
    total += sum(float(ffn_scores[l, c]) for l in range(2) for c in found.ffn[l])
    assert total == pytest.approx(_brute_force(cm, head_scores, ffn_scores, target))


def test_mask_search_granularity_keeps_multiples_and_layer_prefixes():
    cm = CostModel(32, 8, [4, 4, 4], [64, 64, 64])
    g = torch.Generator().manual_seed(3)
    ffn_scores = torch.rand(3, 64, generator=g)
    found = fisher_mask_search(cm, torch.rand(3, 4, generator=g), ffn_scores, 0.4, granularity=8)
    assert found.ratio(cm) <= 0.4 + 1e-12
    for l, kept in enumerate(found.ffn):
        assert len(kept) % 8 == 0
        order = torch.argsort(-ffn_scores[l], stable=True).tolist()
        assert sorted(order[:len(kept)]) == kept  # a layer keeps the best of its own ranking


def test_mask_search_refuses_impossible_targets():
    cm = CostModel(8, 2, [2], [3])
    with pytest.raises(ValueError, match="minimum achievable"):
        fisher_mask_search(cm, torch.ones(1, 2), torch.ones(1, 3), cm.min_ratio() / 2)
    with pytest.raises(ValueError):
        fisher_mask_search(cm, torch.ones(1, 2), torch.ones(1, 3), 1.5)


# ------------------------------------------------------------------------------------------ rearrange
def test_rearrange_finds_units_whose_gradients_cancel():
    # units 0 and 1 have the largest Fisher but cancel each other batch by batch: removing both costs
    # nothing, while the diagonal ranking keeps unit 0 and removes 1 and 2 together.
    grads = torch.tensor([[3.0, -3.0, 1.0], [-2.5, 2.5, -1.2], [2.0, -2.0, 1.1]])
    kept, before, after = rearrange_layer(grads, [0])
    assert before == pytest.approx(float((grads[:, 1] + grads[:, 2]).pow(2).sum()))
    assert kept == [2]
    assert after == pytest.approx(0.0, abs=1e-12)


def test_rearrange_never_worsens_and_keeps_counts():
    g = torch.Generator().manual_seed(0)
    head_grads, ffn_grads = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 10, generator=g)
    start = DerivedStructure(heads=[[0, 1], [3], []], ffn=[[1, 2, 3], list(range(10)), [4]])
    new, stats = rearrange(start, head_grads, ffn_grads, [4, 4, 4], [10, 10, 10])
    assert new.head_counts == start.head_counts and new.ffn_counts == start.ffn_counts
    assert stats["heads_after"] <= stats["heads_before"] + 1e-9 and stats["ffn_after"] <= stats["ffn_before"] + 1e-9
    direct = sum(float(ffn_grads[:, l, [i for i in range(10) if i not in new.ffn[l]]].sum(1).pow(2).sum())
                 for l in range(3))
    assert direct == pytest.approx(stats["ffn_after"])


# ---------------------------------------------------------------------------------- least squares
STRUCT = Structure(heads=((0, 2), (1, 2, 3)), channels=((0, 3, 4, 7, 8), (1, 2, 5, 6, 10, 11)),
                   total_heads=(4, 4), total_channels=(12, 12))


@torch.no_grad()
def _attention_error(student, teacher, data):
    """Squared error of layer 0's pre-LayerNorm attention output over real tokens (student vs teacher)."""
    total = 0.0
    for b in data:
        x = teacher.embeddings(b["input_ids"])
        mask = b["attention_mask"]
        outs = []
        for m in (student, teacher):
            att = m.layers[0].attention
            from ddk_fast.ops.gated_attention import masked_self_attention_reference

            res = masked_self_attention_reference(x, att.query.weight, att.query.bias, att.key.weight, att.key.bias,
                                                  att.value.weight, att.value.bias, att.output.weight,
                                                  att.output.bias, torch.ones(att.num_heads, dtype=x.dtype),
                                                  att.num_heads, attention_mask=mask)
            outs.append(res.out)
        total += float((outs[0] - outs[1])[mask.bool()].pow(2).sum())
    return total


def test_least_squares_lowers_each_sublayer_error_and_reports_it_exactly():
    teacher = tiny(torch.float64)
    data = batches(n=4)
    student = prune(teacher, STRUCT)
    untuned_error = _attention_error(student, teacher, data)
    report = tune_unit_scales(student, teacher, data, path="reference", ridge=0.0)
    assert len(report.rows) == 4
    for row in report.rows:
        assert row["error_after"] <= row["error_before"] + 1e-9
    assert report.error_after < report.error_before
    first = report.rows[0]
    assert first["block"] == "attention" and first["tuned"]
    assert first["error_before"] == pytest.approx(untuned_error, rel=1e-8)
    assert first["error_after"] == pytest.approx(_attention_error(student, teacher, data), rel=1e-8)
    assert student.num_heads == [2, 3] and student.intermediate_sizes == [5, 6]  # budget untouched


def test_scales_of_one_leave_the_pruned_model_unchanged():
    teacher = tiny(torch.float64)
    data = batches(n=2)
    student = prune(teacher, STRUCT)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = tune_unit_scales(student, teacher, data, path="reference", bound=1e-6)  # every solution rejected
    assert not any(r["tuned"] for r in report.rows)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(r["error_after"] == r["error_before"] for r in report.rows)


def test_spread_subset_strides_over_length_sorted_batches():
    from ddk_fast.pipelines.oneshot import spread_subset

    data = [{"input_ids": torch.zeros(4, 40 - i)} for i in range(10)]  # longest first, 4 examples each
    picked = spread_subset(data, 12)
    assert len(picked) == 3 and [b["input_ids"].shape[1] for b in picked] == [40, 37, 34]
    assert spread_subset(data, 1000) == data


# ------------------------------------------------------------------------------------------ iterative
def test_gate_gradients_at_a_mask_match_finite_differences_there():
    model = tiny(torch.float64)
    data = batches(n=2)
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    ffn_mask = torch.ones(2, 12, dtype=torch.float64)
    ffn_mask[0, :5] = 0
    grads = gate_gradients(model, data, path="reference", head_mask=head_mask, ffn_mask=ffn_mask)
    # a gate exactly 0 is a pruned unit: the engine skips it, so it has no gradient
    assert not grads.heads[:, 0, 1].any() and not grads.ffn[:, 0, 3].any()
    _assert_gate_gradients_match_finite_differences(
        model, data, grads, head_mask, ffn_mask, (("head", 0, 2), ("head", 1, 1), ("ffn", 0, 6), ("ffn", 1, 7)))
    with pytest.raises(ValueError, match="gate mask of shape"):
        gate_gradients(model, data, head_mask=torch.ones(2, 3))


def test_iterative_one_shot_shrinks_nested_structures_to_the_budget(monkeypatch):
    import ddk_fast.pipelines.oneshot as oneshot

    model, data = tiny(layers=3), batches(n=3)
    cm = CostModel(16, 4, model.num_heads, model.intermediate_sizes)
    steps = []
    real = oneshot.fisher_mask_search

    def recording(cost_model, head_scores, ffn_scores, ratio, *args):
        found = real(cost_model, head_scores, ffn_scores, ratio, *args)
        steps.append((ratio, found))
        return found

    monkeypatch.setattr(oneshot, "fisher_mask_search", recording)
    result = oneshot.one_shot(model, data, cm, "params", 0.4, importance_iterations=3, rearrange_units=False,
                              tune=False, path="reference")
    assert [round(r, 6) for r, _ in steps] == [0.8, 0.6, 0.4]
    for (_, bigger), (_, smaller) in zip(steps, steps[1:]):
        for layer in range(3):  # a unit removed by an earlier step never comes back
            assert set(smaller.heads[layer]) <= set(bigger.heads[layer])
            assert set(smaller.ffn[layer]) <= set(bigger.ffn[layer])
    assert result.structure.ratio(cm, "params") <= 0.4 + 1e-9
    # units removed before the last step score below every kept one
    removed = [h for h in range(4) if h not in steps[1][1].heads[0]]
    assert all(float(result.head_scores[0, h]) == -1.0 for h in removed)
    assert float(result.head_scores.max()) >= 0

    single = oneshot.one_shot(model, data, cm, "params", 0.4, rearrange_units=False, tune=False, path="reference")
    assert float(single.head_scores.min()) >= 0  # one step: plain Fisher of the whole model
    with pytest.raises(ValueError, match="importance_iterations=0"):
        oneshot.one_shot(model, data, cm, "params", 0.4, importance_iterations=0)
    with pytest.raises(ValueError, match="needs importance='fisher'"):
        oneshot.one_shot(model, data, cm, "params", 0.4, importance="activation", importance_iterations=2)


# ------------------------------------------------------------------------------------------ held-out check
def test_tuning_is_kept_only_when_it_lowers_the_held_out_loss(monkeypatch):
    import ddk_fast.pipelines.oneshot as oneshot

    teacher, data = tiny(), batches(n=6)
    cm = CostModel(16, 4, teacher.num_heads, teacher.intermediate_sizes)
    tuning_batch_ids = []
    real_tune = oneshot.tune_unit_scales

    def recording(student, teacher_, used, **kw):
        tuning_batch_ids.extend(id(b) for b in used)
        return real_tune(student, teacher_, used, **kw)

    monkeypatch.setattr(oneshot, "tune_unit_scales", recording)
    result = oneshot.one_shot(teacher, data, cm, "params", 0.5, rearrange_units=False, path="reference",
                              tuning_examples=8, tuning_check_examples=8)
    report = result.tuning
    assert report.kept == (report.held_out_loss_tuned < report.held_out_loss_untuned)
    held_out = [b for b in data if id(b) not in set(tuning_batch_ids)]
    check = oneshot.spread_subset(held_out, 8)
    assert len(tuning_batch_ids) == 2 and len(held_out) == 4 and len(check) == 2
    # the losses are those of the exported student and of the plain pruned one on the held-out batches
    plain = prune(teacher, result.to_structure(teacher))
    assert report.held_out_loss_untuned == pytest.approx(oneshot.held_out_loss(plain, check, "reference"), rel=1e-6)
    kept_loss = report.held_out_loss_tuned if report.kept else report.held_out_loss_untuned
    assert oneshot.held_out_loss(result.student, check, "reference") == pytest.approx(kept_loss, rel=1e-6)

    # a held-out loss that never improves drops the tuning: the student is the plain pruned one
    losses = iter([1.0, 2.0])
    monkeypatch.setattr(oneshot, "held_out_eval", lambda *a: (next(losses), None))
    dropped = oneshot.one_shot(teacher, data, cm, "params", 0.5, rearrange_units=False, path="reference",
                               tuning_examples=8, tuning_check_examples=8)
    assert dropped.tuning.kept is False
    assert all(torch.equal(a, b) for a, b in zip(dropped.student.state_dict().values(), plain.state_dict().values()))


def test_the_held_out_task_score_decides_over_the_loss(monkeypatch):
    """With the task's score the check keeps the tuning only when it scores higher on the held-out
    examples (the loss breaks a tie), whatever the loss says; the scores are those of the two students."""
    import ddk_fast.pipelines.oneshot as oneshot

    teacher, data = tiny(), batches(n=6)
    cm = CostModel(16, 4, teacher.num_heads, teacher.intermediate_sizes)
    seen = []

    def accuracy(logits, labels):
        seen.append((logits.shape, labels.shape))
        return float((logits.argmax(-1) == labels).float().mean())

    run = dict(rearrange_units=False, path="reference", tuning_examples=8, tuning_check_examples=8)
    result = oneshot.one_shot(teacher, data, cm, "params", 0.5, score_logits=accuracy, **run)
    report = result.tuning
    assert len(seen) == 2 and seen[0][0][0] == seen[0][1][0] == 8  # both students over the 8 held-out rows
    assert report.kept == (report.held_out_score_tuned > report.held_out_score_untuned
                           or (report.held_out_score_tuned == report.held_out_score_untuned
                               and report.held_out_loss_tuned < report.held_out_loss_untuned))

    # the loss says: tuning helps (2.0 -> 1.0); the scores (untuned, tuned) decide
    monkeypatch.setattr(oneshot, "held_out_eval", lambda *a: (next(losses), next(values)))
    for scores, kept in (([0.7, 0.6], False), ([0.6, 0.7], True), ([0.6, 0.6], True)):
        losses, values = iter([2.0, 1.0]), iter(scores)
        again = oneshot.one_shot(teacher, data, cm, "params", 0.5, score_logits=accuracy, **run)
        assert again.tuning.kept is kept and again.tuning.held_out_score_untuned == scores[0]


def test_held_out_eval_gives_the_loss_and_the_score_of_one_pass():
    """One forward per batch gives both numbers: the loss equals held_out_loss, the score that of the
    pooled logits; no score without a scorer."""
    import ddk_fast.pipelines.oneshot as oneshot

    model, data = tiny(), batches(n=3)
    calls = []
    real_forward = model.forward

    def counting(*a, **kw):
        calls.append(1)
        return real_forward(*a, **kw)

    model.forward = counting
    seen = []

    def accuracy(logits, labels):
        seen.append(len(labels))
        return float((logits.argmax(-1) == labels).float().mean())

    loss, score = oneshot.held_out_eval(model, data, accuracy, "reference")
    assert len(calls) == len(data) and seen == [sum(len(b["labels"]) for b in data)]
    with torch.no_grad():
        logits = torch.cat([real_forward(b["input_ids"], attention_mask=b.get("attention_mask"),
                                         path="reference").logits for b in data])
    labels = torch.cat([b["labels"] for b in data])
    assert score == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
    assert loss == pytest.approx(oneshot.held_out_loss(model, data, "reference"), rel=1e-6)
    assert oneshot.held_out_eval(model, data, None, "reference")[1] is None


def test_tuning_without_leftover_examples_is_kept_unchecked():
    from ddk_fast.pipelines.oneshot import one_shot

    teacher, data = tiny(), batches(n=2)
    cm = CostModel(16, 4, teacher.num_heads, teacher.intermediate_sizes)
    result = one_shot(teacher, data, cm, "params", 0.5, rearrange_units=False, path="reference", tuning_examples=512)
    assert result.tuning.kept is None and result.tuning.held_out_loss_tuned is None
    assert result.tuning.error_after < result.tuning.error_before


def test_token_classification_tuning_reconstructs_every_token_of_the_last_layer():
    from transformers import BertForTokenClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=12,
                     max_position_embeddings=32, num_labels=3, initializer_range=0.4, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    teacher = MaskedTransformer.from_pretrained(BertForTokenClassification(cfg), dtype=torch.float64).eval()
    assert not teacher.head_reads_first_token_only and tiny().head_reads_first_token_only
    data = batches(n=2)
    student = prune(teacher, STRUCT)
    report = tune_unit_scales(student, teacher, data, path="reference", ridge=0.0)
    last_ffn = [r for r in report.rows if r["layer"] == 1 and r["block"] == "ffn"][0]
    # the same models read as a first-token head: only the first token of the last layer is matched,
    # so the untuned error of the token head (a sum over every real token) is far larger
    as_sequence = copy.deepcopy(teacher)
    as_sequence.config.task_type = "classification"
    assert as_sequence.head_reads_first_token_only
    seq_report = tune_unit_scales(prune(as_sequence, STRUCT), as_sequence, data, path="reference", ridge=0.0)
    seq_last_ffn = [r for r in seq_report.rows if r["layer"] == 1 and r["block"] == "ffn"][0]
    assert last_ffn["error_before"] > 3 * seq_last_ffn["error_before"]
    first_rows = [r for r in report.rows if r["layer"] == 0]
    assert [r["error_before"] for r in first_rows] == pytest.approx(
        [r["error_before"] for r in seq_report.rows if r["layer"] == 0])  # earlier layers: every token in both


def test_held_out_loss_weights_token_batches_by_labelled_tokens_and_skips_empty_ones():
    from transformers import BertForTokenClassification

    from ddk_fast.ops.label_losses import IGNORE_INDEX
    from ddk_fast.pipelines.oneshot import held_out_loss

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=12,
                     max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = MaskedTransformer.from_pretrained(BertForTokenClassification(cfg)).eval()
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(1, 50, (2, 6), generator=g) for _ in range(3)]
    labels = [torch.full((2, 6), IGNORE_INDEX) for _ in range(3)]
    labels[0][0, 1:4] = torch.tensor([0, 1, 2])  # 3 labelled tokens
    labels[1][:, 2] = 1  # 2 labelled tokens
    batches = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]  # the last one has none
    per_batch = [float(task_loss(model(b["input_ids"], path="reference").logits, b["labels"])) for b in batches[:2]]
    assert held_out_loss(model, batches, "reference") == pytest.approx((3 * per_batch[0] + 2 * per_batch[1]) / 5)
    assert math.isnan(held_out_loss(model, batches[2:], "reference"))
