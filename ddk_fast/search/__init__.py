"""Differentiable structure search: how many attention heads and FFN channels each layer keeps.

Pure PyTorch modules on tensors; no model and no training loop live here.

Cost (``cost.py``)
    ``CostModel(hidden, head_dim, num_heads: list[int], intermediate: list[int], seq_len=128,
    metric="params"|"flops"|"latency", latency=LatencyFit)`` -- exact encoder cost counted from shapes,
    or measured whole-model latency (an affine fit in kept heads and channels, ``LatencyFit``).
    ``.attention_cost(heads)``, ``.ffn_cost(channels)``, ``.layer_cost(kind, heads, channels)``
    (kind = "params" | "flops"), ``.structure_cost(heads: list, channels: list)``, ``.full_cost()``,
    ``.min_cost()`` (every layer at 0 heads / 0 channels), ``.expected_cost(head_probs, head_counts,
    ffn_probs, ffn_counts)`` (differentiable).  A block with 0 heads (0 channels) keeps its output
    bias and LayerNorm, as stock transformers' ``prune_heads`` does.

Searches (``width.py``, ``hard_concrete.py``) share one interface (``base.StructureSearch``):
    ``search = build_search("gumbel" | "hard_concrete" | "progressive", num_heads=[12]*L, intermediate=[3072]*L, **kw)``
    ``head_gates, ffn_gates = search.sample(tau=None)`` -> ``[L, max(num_heads)]``, ``[L, max(intermediate)]``
        gates for the masked model; Gumbel gates are exactly 0/1 in the forward pass (units beyond the
        sampled count are exactly 0), gradients reach the architecture parameters.  ``search.eval()``
        makes them deterministic (most likely structure).
    ``search.expected_cost(cost_model)`` / ``search.expected_ratio(cost_model)`` -> scalar tensor E[C] or
        E[C]/C_full, differentiable w.r.t. the architecture parameters.
    ``search.derive(cost_model=None, target=None)`` -> ``DerivedStructure(heads=[[kept idx]...],
        ffn=[[kept idx]...])``; with a target ratio it is guaranteed to cost <= target * C_full.
    ``search.arch_parameters()`` -> list of parameters for their own optimizer.
    ``search.on_step(step, temperature)``: what a training loop calls before each step's ``sample`` (the
        Gumbel search takes the temperature, the progressive one the step; a no-op by default).
    ``search.needs_importance`` (bool); Gumbel search ranks units by importance:
        ``search.update_importance(head_scores [L,H], ffn_scores [L,I], head_active=None, ffn_active=None)``
        (EMA of Taylor scores |a * dL/da|, e.g. ``|gate * gate.grad|``), ``search.set_importance(...)``;
        ``head_importance_from_weights`` / ``ffn_importance_from_weights`` (``importance.py``) give a
        weight-norm initial ranking.
    ``TemperatureSchedule(tau_max, tau_min, total_steps)(step)`` -> exponential anneal.
    ``ProgressiveSearch`` ("progressive", ``progressive.py``): no learned parameters; the least
        important units fade on a cubic schedule to reach ``target`` at ``total_steps``
        (``search.set_step(step)``); needs ``cost_model=``, ``target=``, ``total_steps=``.

Data-driven importance (``calibration.py``) and one-shot choice (``oneshot.py``, after Kwon et al. 2022):
    ``grads = gate_gradients(model, batches)`` -> ``GateGradients`` (per-batch dL/dgate at all-ones gates,
        ``[N, L, H]`` / ``[N, L, I]``); ``grads.fisher()`` -> diagonal empirical Fisher per unit.
    ``activation_importance(model, batches)`` -> label-free mean contribution norms (Minitron-style).
    ``fisher_mask_search(cost_model, head_scores, ffn_scores, target, metric, granularity)`` -> the
        DerivedStructure of largest total score within the budget (exact over the number of heads).
    ``rearrange(structure, head_grads, ffn_grads, num_heads, intermediate)`` -> per-layer greedy swaps
        with the block-diagonal Fisher (counts, hence cost, unchanged) and the objective before/after.

Budget (``budget.py``)
    ``LagrangianBudget(target, min_ratio=0.0)``: ``loss = budget(ratio)`` with
        lambda1*(s-t) + lambda2*(s-t)^2; the lambdas are maximised by a gradient-reversal trick, so a
        plain optimizer minimising the total loss is enough (put ``budget.parameters()`` in it).
    ``OneSidedBudget(target, weight=..., min_ratio=0.0)``: weight * relu(s - t)^2.
    ``build_budget(kind="lagrangian"|"one_sided", target, cost_model=None, **kw)``.
    Targets outside (0, 1] or below ``cost_model.min_cost()/full_cost()`` raise ValueError.
"""
from ddk_fast._lazy import lazy_attributes

_WHERE = {
    "CostModel": "ddk_fast.search.cost",
    "LatencyFit": "ddk_fast.search.cost",
    "StructureSearch": "ddk_fast.search.base",
    "DerivedStructure": "ddk_fast.search.base",
    "GumbelWidthSearch": "ddk_fast.search.width",
    "TemperatureSchedule": "ddk_fast.search.width",
    "HardConcreteSearch": "ddk_fast.search.hard_concrete",
    "ProgressiveSearch": "ddk_fast.search.progressive",
    "LagrangianBudget": "ddk_fast.search.budget",
    "OneSidedBudget": "ddk_fast.search.budget",
    "build_budget": "ddk_fast.search.budget",
    "check_target": "ddk_fast.search.budget",
    "build_search": "ddk_fast.search.registry",
    "SEARCHES": "ddk_fast.search.registry",
    "head_importance_from_weights": "ddk_fast.search.importance",
    "taylor_importance": "ddk_fast.search.importance",
    "ffn_importance_from_weights": "ddk_fast.search.importance",
    "GateGradients": "ddk_fast.search.calibration",
    "gate_gradients": "ddk_fast.search.calibration",
    "activation_importance": "ddk_fast.search.calibration",
    "fisher_mask_search": "ddk_fast.search.oneshot",
    "rearrange": "ddk_fast.search.oneshot",
    "rearrange_layer": "ddk_fast.search.oneshot",
}

__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
