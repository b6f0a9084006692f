"""TinyBERT-style fixed students and the TinyBERT recipes, as options of the shared KD objective.

Students
    ``make_student(teacher, num_layers=None, layer_init="uniform", num_heads=None, intermediate_size=None,
    hidden_size=None, seed=0)`` -> a model of the teacher's class (MaskedTransformer or MaskedGPT2):
      layer_init "uniform": teacher layers k, 2k, ..., L (1-based; k = L_t / L_s), the layers TinyBERT's
                 uniform mapping g(m) = k*m distils into them;
                 "first": the first L_s layers (DistilBERT/PKD-skip style); "last": the last L_s;
                 "scratch": random init (required when ``hidden_size`` differs from the teacher's).
      ``num_heads`` / ``intermediate_size`` narrower than the teacher keep, per layer, the heads and
      channels with the largest weight norms (search.importance), sliced exactly.
      Embeddings, final norm, pooler and classifier are copied unless "scratch".
      ``student.config.extra["teacher_layers"]`` records the 0-based teacher layers used (None: scratch).

Recipes (lists of stages; each stage = objective options + share of the step budget), for
``ddk-fast distill`` / ``ddk-fast sweep``:
    "tinybert"  : two stages, TinyBERT (Jiao et al. 2020): (1) intermediate layers: embedding MSE +
                  hidden MSE (learned W_h) + attention-score MSE (masked positions zeroed), uniform
                  mapping; (2) prediction layer: soft CE at T (MSE for regression).
    "joint"     : the same terms in one stage.
    "makd"      : MaKD aspects (attention KL, Q/K/V relations, FFN intermediate + output) + prediction KD.
    "ddk"       : DDK's recursive adaptive fusion of teacher layers (hidden MSE) + prediction + task loss.
``recipe_stages(name, overrides=None, total_steps=N)`` -> [(stage_name, options, steps)].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ddk_fast.model.gpt2 import MaskedGPT2, prune_gpt2
from ddk_fast.model.pruning import prune
from ddk_fast.model.structure import Structure
from ddk_fast.search.importance import ffn_importance_from_weights, head_importance_from_weights

LAYER_INITS = ("uniform", "first", "last", "scratch")


# ----------------------------------------------------------------------------------------------------
# students
# ----------------------------------------------------------------------------------------------------

def teacher_layers_for(num_student: int, num_teacher: int, layer_init: str) -> list[int] | None:
    """0-based teacher layer indices that initialise the student's layers (None for "scratch")."""
    if layer_init not in LAYER_INITS:
        raise ValueError(f"layer_init must be one of {LAYER_INITS}, got {layer_init!r}")
    if not 1 <= num_student <= num_teacher and layer_init != "scratch":
        raise ValueError(f"--student-layers {num_student}: expected 1..{num_teacher} (the teacher's depth) "
                         f"to initialise from teacher layers; use --layer-init scratch for a deeper student")
    if layer_init == "scratch":
        return None
    if layer_init == "first":
        return list(range(num_student))
    if layer_init == "last":
        return list(range(num_teacher - num_student, num_teacher))
    return [(m + 1) * num_teacher // num_student - 1 for m in range(num_student)]


def _prune_any(model, structure):
    if isinstance(model, MaskedGPT2):
        return prune_gpt2(model, structure)
    return prune(model, structure)


def _top_units(scores: torch.Tensor, sizes: list[int], keep: list[int]) -> list[list[int]]:
    out = []
    for l, (n, k) in enumerate(zip(sizes, keep)):
        if k > n:
            raise ValueError(f"layer {l}: cannot keep {k} units of {n}")
        idx = torch.topk(scores[l, :n], k).indices if k else torch.zeros(0, dtype=torch.long)
        out.append(sorted(idx.tolist()))
    return out


def _per_layer_width(value, num_layers: int, name: str, default: list[int]) -> list[int]:
    if value is None:
        return list(default)
    if isinstance(value, int):
        return [value] * num_layers
    value = [int(v) for v in value]
    if len(value) != num_layers:
        raise ValueError(f"{name}: expected an int or {num_layers} per-layer values, got {value}")
    return value


def make_student(teacher, num_layers: int | None = None, layer_init: str = "uniform", num_heads=None,
                 intermediate_size=None, hidden_size: int | None = None, seed: int = 0):
    """A fixed smaller student of the teacher's class (see the module docstring)."""
    cfg = teacher.config
    n_t = cfg.num_layers
    n_s = n_t if num_layers is None else int(num_layers)
    if n_s < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
    hidden = cfg.hidden_size if hidden_size is None else int(hidden_size)
    if hidden != cfg.hidden_size and layer_init != "scratch":
        raise ValueError(f"hidden_size={hidden} differs from the teacher's {cfg.hidden_size}: teacher layers "
                         f"cannot initialise it; pass layer_init='scratch'")
    chosen = teacher_layers_for(n_s, n_t, layer_init)
    src_heads = [cfg.num_heads[i] for i in chosen] if chosen else [max(cfg.num_heads)] * n_s
    src_inter = [cfg.intermediate_sizes[i] for i in chosen] if chosen else [max(cfg.intermediate_sizes)] * n_s
    heads = _per_layer_width(num_heads, n_s, "num_heads", src_heads)
    inter = _per_layer_width(intermediate_size, n_s, "intermediate_size", src_inter)
    torch.manual_seed(seed)
    if chosen is None:
        head_dim = cfg.head_dim
        if hidden != cfg.hidden_size:
            if hidden % max(heads) != 0:
                raise ValueError(f"hidden_size={hidden} is not a multiple of num_heads={max(heads)}")
            head_dim = hidden // max(heads)
        new_cfg = dataclasses.replace(cfg, hidden_size=hidden, head_dim=head_dim, num_heads=heads,
                                      intermediate_sizes=inter, extra=dict(cfg.extra, teacher_layers=None))
        student = type(teacher)(new_cfg)
        return student.to(next(teacher.parameters()).dtype)

    full_cfg = dataclasses.replace(cfg, num_heads=src_heads, intermediate_sizes=src_inter,
                                   extra=dict(cfg.extra, teacher_layers=list(chosen)))
    student = type(teacher)(full_cfg)
    sd = teacher.state_dict()
    new_sd = {k: v.clone() for k, v in sd.items() if not k.startswith("layers.")}
    for dst, src in enumerate(chosen):
        prefix = f"layers.{src}."
        for k, v in sd.items():
            if k.startswith(prefix):
                new_sd[f"layers.{dst}." + k[len(prefix):]] = v.clone()
    student.load_state_dict(new_sd, strict=True)
    student.to(next(teacher.parameters()).dtype)
    if heads != src_heads or inter != src_inter:
        layers = student.layers
        h_scores = head_importance_from_weights(
            [l.attention.output.weight for l in layers], cfg.head_dim,
            [l.attention.query.weight for l in layers], [l.attention.key.weight for l in layers],
            [l.attention.value.weight for l in layers])
        f_scores = ffn_importance_from_weights([l.ffn.up.weight for l in layers], [l.ffn.down.weight for l in layers])
        structure = Structure.from_indices(_top_units(h_scores, src_heads, heads),
                                           _top_units(f_scores, src_inter, inter), student)
        student = _prune_any(student, structure)
        student.pruned_from = None  # indices of a student-sized model, not of the teacher
    student.train(teacher.training)
    return student


# ----------------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------------

_OFF = {"embedding_weight": 0.0, "hidden_weight": 0.0, "attention_weight": 0.0, "pred_weight": 0.0,
        "task_weight": 0.0, "query_relation_weight": 0.0, "key_relation_weight": 0.0, "value_relation_weight": 0.0,
        "ffn_intermediate_weight": 0.0, "ffn_output_weight": 0.0}

_TINYBERT_INTERMEDIATE = dict(_OFF, embedding_weight=1.0, hidden_weight=1.0, attention_weight=1.0, hidden_loss="mse",
                              attention_loss="mse", mapping="uniform")
_TINYBERT_PREDICTION = dict(_OFF, pred_weight=1.0, temperature=1.0)

RECIPES: dict[str, list[tuple[str, dict[str, Any], float]]] = {
    "tinybert": [("intermediate", _TINYBERT_INTERMEDIATE, 0.5), ("prediction", _TINYBERT_PREDICTION, 0.5)],
    "joint": [("joint", dict(_TINYBERT_INTERMEDIATE, pred_weight=1.0, temperature=1.0), 1.0)],
    "makd": [("makd", dict(_OFF, attention_weight=1.0, attention_loss="kl", query_relation_weight=1.0,
                           key_relation_weight=1.0, value_relation_weight=1.0, ffn_intermediate_weight=1.0,
                           ffn_output_weight=1.0, pred_weight=1.0, temperature=2.0, mapping="uniform"), 1.0)],
    "ddk": [("ddk", dict(_OFF, hidden_weight=1.0, hidden_loss="mse", mapping="fusion", fusion="param_free",
                         layer_weighting="adaptive", pred_weight=1.0, task_weight=0.5, temperature=2.0), 1.0)],
}


def recipe_stages(name: str, overrides: dict[str, Any] | None = None, total_steps: int = 100
                  ) -> list[tuple[str, dict[str, Any], int]]:
    """[(stage name, objective options, steps)] for a recipe; ``overrides`` (e.g. a sweep point) apply to
    every stage, except that a weight set to 0 by a stage stays 0 there (two-stage recipes keep their
    stages apart: a swept ``attn_weight`` changes stage 1, not the prediction stage)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    if total_steps < len(RECIPES[name]):
        raise ValueError(f"total_steps={total_steps}: need at least one step per stage ({len(RECIPES[name])})")
    stages, used = [], 0
    for i, (stage, options, share) in enumerate(RECIPES[name]):
        opts = dict(options)
        for key, value in (overrides or {}).items():
            if key.endswith("_weight") and len(RECIPES[name]) > 1 and opts.get(key, None) == 0.0:
                continue
            opts[key] = value
        steps = total_steps - used if i == len(RECIPES[name]) - 1 else max(1, int(round(share * total_steps)))
        used += steps
        stages.append((stage, opts, steps))
    return stages


__all__ = ["LAYER_INITS", "RECIPES", "make_student", "recipe_stages", "teacher_layers_for"]
