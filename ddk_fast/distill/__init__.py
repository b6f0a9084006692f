"""Distillation building blocks that are not fused ops: layer mappings, recursive adaptive fusion of
teacher layers, adaptive per-layer loss weights, width projections.

Convention: hidden states are lists ``[T_0, ..., T_L]`` of ``[B, S, d]`` tensors, index 0 being the
embedding output (what transformers returns with ``output_hidden_states=True``).  ``token_mask`` is
``[B, S]`` (1 = real token).

Mappings (``mappings.py``), one job each:
    ``m = build_mapping(name, num_student_layers, num_teacher_layers, include_embeddings=True, **kw)``
    names: "uniform" (every k-th), "last" (last k), "skip" (first k), "random" (seed, resample=False),
    "mean" (mean of a group), "argmin" (CoFi-style dynamic, closest by current MSE), "fusion"
    (recursive adaptive fusion).
    ``m.targets(teacher_states)`` -> one target tensor per student state (index 0 -> teacher
        embeddings when include_embeddings) -- static mappings.
    ``m.align(student_states, teacher_states, token_mask=None)`` -> ``(student_list, teacher_list)``
        ready for ``ddk_fast.ops.hidden_distill_loss(student_list, teacher_list, layer_weights,
        token_mask, kind)``; works for every mapping including "argmin".

Fusion (``fusion.py``)
    ``recursive_fusion(states, weighting="norm"|"sum", per="example"|"batch", token_mask=None)`` ->
        ``[F_0..F_L]`` with F_L = T_L, F_l = a_l T_l + (1 - a_l) F_(l+1) (parameter-free weights).
    ``HighwayFusion(hidden, num_states)`` -> learned gate sigmoid(W [T_l; F_(l+1)] + b) per layer.
    ``window_fusion(states, window, weighting="norm", ...)`` -> student layer windows fused the same way.

Adaptive weights (``adaptive.py``) -> ``layer_weights`` tensor ``[L]`` for the fused loss ops:
    ``LossShareWeights(num_layers, momentum=0.0, power=1.0, normalize="mean")(layer_losses)``
        (detached, proportional to each layer's current loss share).
    ``UncertaintyWeights(num_layers)``: ``.weights()`` = exp(-s), ``.regularizer()`` = sum(s),
        ``.combine(layer_losses)`` = sum exp(-s_l) L_l + s_l (Kendall et al.).

Projection (``projection.py``)
    ``HiddenProjection(student_dim, teacher_dim, num_states=1, shared=True)``: learned linear map
        student width -> teacher width (TinyBERT W_h); identity when the widths are equal.
        ``proj(states_list)`` or ``proj(tensor, index)``.

The KD catalog (``objectives.py``, ``makd.py``, ``tinybert.py``; see docs/distillation.md)
    ``KDObjective.from_config(options, student, teacher, task_type, preset=None)`` -> weighted sum of terms
        (embedding, hidden, DDK's recursive adaptive hidden term, attention, prediction, task, MaKD Q/K/V
        relations and FFN aspects) over model outputs; ``preset="ddk"`` is the objective of ``compress``;
        ``objective.forward_kwargs()`` (output_* flags), ``loss, parts = objective(s_out, t_out, batch)``.
    ``relation_scores(x, num_relation_heads)``, ``LowRankProjection`` (MaKD pieces).
    ``make_student(teacher, num_layers, layer_init="uniform"|"first"|"last"|"scratch", ...)`` (TinyBERT-style
        fixed student), ``recipe_stages(name, overrides, total_steps)`` (tinybert / joint / makd / ddk).
"""
from ddk_fast._lazy import lazy_attributes

_WHERE = {
    "recursive_fusion": "ddk_fast.distill.fusion",
    "window_fusion": "ddk_fast.distill.fusion",
    "fusion_weights": "ddk_fast.distill.fusion",
    "HighwayFusion": "ddk_fast.distill.fusion",
    "LossShareWeights": "ddk_fast.distill.adaptive",
    "UncertaintyWeights": "ddk_fast.distill.adaptive",
    "loss_share_weights": "ddk_fast.distill.adaptive",
    "LayerMapping": "ddk_fast.distill.mappings",
    "UniformMapping": "ddk_fast.distill.mappings",
    "LastMapping": "ddk_fast.distill.mappings",
    "SkipMapping": "ddk_fast.distill.mappings",
    "RandomMapping": "ddk_fast.distill.mappings",
    "MeanMapping": "ddk_fast.distill.mappings",
    "ArgminMapping": "ddk_fast.distill.mappings",
    "FusionMapping": "ddk_fast.distill.mappings",
    "build_mapping": "ddk_fast.distill.mappings",
    "MAPPINGS": "ddk_fast.distill.mappings",
    "HiddenProjection": "ddk_fast.distill.projection",
    "KDObjective": "ddk_fast.distill.objectives",
    "relation_scores": "ddk_fast.distill.makd",
    "LowRankProjection": "ddk_fast.distill.makd",
    "make_student": "ddk_fast.distill.tinybert",
    "recipe_stages": "ddk_fast.distill.tinybert",
    "RECIPES": "ddk_fast.distill.tinybert",
}

__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
