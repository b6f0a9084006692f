"""The catalog of distillation terms, and ``KDObjective``: a weighted sum of them built from options.

Why a catalog: TinyBERT's losses, the TinyBERT KD study's variants, MaKD's aspects and DDK's recursive
fusion are all "a distance between something the student computes and something the teacher
computes". Each term here is one such distance: it says which model outputs it ``needs`` (so the
forward passes compute nothing else), takes a layer mapping where layers are involved, owns its
learned projections, and returns an unweighted scalar. The composite sums ``weight * term``.

    objective = KDObjective.from_config({"hidden_weight": 1, "attention_weight": 1, "mapping": "uniform"},
                                        student, teacher, task_type="classification")
    kw = objective.forward_kwargs()            # e.g. {"output_hidden_states": True, ...}
    s_out, t_out = student(ids, mask, **kw), teacher(ids, mask, **kw)    # teacher under no_grad
    loss, parts = objective(s_out, t_out, batch)   # batch: input_ids, attention_mask, labels

    # DDK (what ``compress`` trains): the ``ddk`` preset, options on top of it
    objective = KDObjective.from_config({"fusion": "param_free"}, student, teacher, preset="ddk")

Terms (option prefix -> class; weights are ``<prefix>_weight``):
    embedding       EmbeddingTerm       MSE (or cosine) of the embedding outputs (TinyBERT L_embd), W_e when
                                        widths differ
    hidden          HiddenTerm          hidden states (``hidden_embeddings``: the embedding output too) through a
                                        mapping (uniform/last/skip/random/mean/argmin/fusion),
                                        MSE or cosine (``hidden_loss``), W_h when widths differ, uniform or adaptive
                                        per-layer weights (``layer_weighting``)
    ddk_hidden      DDKHiddenTerm       DDK's recursive adaptive hidden-state KD of a student of the teacher's depth
                                        and width (width-pruned): every state (embeddings = 0) against its fused
                                        teacher target (``fusion`` param_free / learned / none), per-state weights
                                        ``layer_weighting`` adaptive (an EMA of the previous steps' loss shares) or
                                        uniform, summed over the states
    attention       AttentionTerm       per-head attention: "kl" on distributions (fused op) or "mse" on raw scores
                                        with padded (and, causal, future) keys zeroed -- TinyBERT's formula --
                                        or "prob_mse" on distributions (``attention_loss``)
    pred            PredictionTerm      soft CE at temperature T (MSE for regression; per token for LMs and NER;
                                        QA: the start and the end distributions over the real tokens)
    task            TaskTerm            hard labels: CE / MSE / next-token CE
    query/key/value_relation RelationTerm   MiniLMv2 / MaKD relations of Q, K, V (KL, R relation heads)
    ffn_intermediate FFNTerm            FFN activations, MSE through a learned low-rank map when widths differ
    ffn_output       FFNTerm            FFN block outputs, MSE (W when hidden widths differ)

Presets (``PRESETS``, ``from_config(..., preset=NAME)``): named option sets the given options override.
    ddk             ddk_hidden + pred + task at DDK's weights: the objective of ``ddk-fast compress``

Conventions. ``token_mask`` = the batch's attention_mask (1 = token). Per-layer terms average over their
mapped layer pairs (the fused ops' convention), so weights are comparable across depths; TinyBERT sums
over layers, i.e. its weights are these times the number of student layers. Teacher outputs are always
detached. For causal models (GPT-2) attention and relation distributions also exclude future keys.
Mappings other than index/mean ones ("fusion", "argmin") are defined on hidden states; per-layer terms
(attention, relations, FFN) use the uniform positions g(m) = m * Lt // Ls with them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddk_fast.distill.adaptive import LossShareWeights, loss_share_weights
from ddk_fast.distill.fusion import HighwayFusion, recursive_fusion
from ddk_fast.distill.makd import LowRankProjection, concat_heads, relation_scores
from ddk_fast.distill.mappings import MAPPINGS, MeanMapping, UniformMapping, _IndexMapping, build_mapping
from ddk_fast.distill.projection import HiddenProjection
# The fused losses. Terms call them with ``check_finite=False``: the training loops watch the total loss
# on the device (``ddk_fast.runs.loop.FiniteWatch``), and each term's own check would read its value
# back to the host -- a device sync per term per step.
from ddk_fast.ops import distill_losses
from ddk_fast.ops.distill_losses import hidden_distill_loss_reference
from ddk_fast.ops.label_losses import span_rows, task_loss, token_rows

OUTPUTS = ("hidden_states", "attention_scores", "attention_probs", "qkv", "ffn", "logits")
_FLAGS = {"hidden_states": "output_hidden_states", "attention_scores": "output_attention_scores",
          "attention_probs": "output_attention_probs", "qkv": "output_qkv", "ffn": "output_ffn"}
TASK_TYPES = ("classification", "regression", "multilabel", "lm", "token_classification", "qa")
ATTENTION_LOSSES = ("kl", "mse", "prob_mse")
_NEG = -1.0e4  # "minus infinity" for scores that must get zero probability but stay finite (no 0 * inf)

DEFAULTS: dict[str, Any] = {
    "temperature": 2.0, "pred_weight": 1.0, "task_weight": 0.0,
    "embedding_weight": 0.0,
    "hidden_weight": 0.0, "hidden_loss": "mse", "mapping": "uniform", "fusion": "param_free",
    "layer_weighting": "uniform", "mapping_seed": 0, "hidden_embeddings": False,
    "ddk_hidden_weight": 0.0,
    "attention_weight": 0.0, "attention_loss": "kl",
    "query_relation_weight": 0.0, "key_relation_weight": 0.0, "value_relation_weight": 0.0, "relation_heads": 0,
    "ffn_intermediate_weight": 0.0, "ffn_output_weight": 0.0, "ffn_rank": 64,
    "path": "auto",
}


HIDDEN_LOSSES = ("mse", "cosine")
LAYER_WEIGHTINGS = ("uniform", "adaptive")
FUSION_KINDS = ("param_free", "learned", "none")
LOSS_PATHS = ("auto", "fused", "reference")

# Named option sets; ``from_config(options, ..., preset=NAME)`` starts from DEFAULTS, then the preset, then options.
PRESETS: dict[str, dict[str, Any]] = {
    # DDK on a width-pruned student: layer-to-layer targets by default (docs/method.md says why fusion is not)
    "ddk": {"ddk_hidden_weight": 1.0, "hidden_loss": "mse", "fusion": "none", "layer_weighting": "adaptive",
            "pred_weight": 1.0, "task_weight": 0.5, "temperature": 2.0},
}


def kd_choices() -> dict[str, tuple]:
    """The options that take one of a fixed set of values, and the set (``--kd`` help and checks read it)."""
    return {"hidden_loss": HIDDEN_LOSSES, "mapping": tuple(MAPPINGS), "fusion": FUSION_KINDS,
            "layer_weighting": LAYER_WEIGHTINGS, "attention_loss": ATTENTION_LOSSES}


def kd_options_help() -> str:
    """Every ``--kd KEY=VALUE`` option with its default, and the allowed values where there is a fixed
    set: what ``--help`` shows, so the catalog is discoverable without reading the docs."""
    choices = kd_choices()
    parts = []
    for key, default in DEFAULTS.items():
        if key == "path":
            continue
        text = f"{key}={default}"
        if key in choices:
            text += " {" + "|".join(choices[key]) + "}"
        parts.append(text)
    return "KD catalog terms KEY=VALUE[,...]; keys with their catalog defaults {and allowed values}: " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# shapes and masks
# ----------------------------------------------------------------------------------------------------

class ModelShape:
    """What the terms need to know about a model (MaskedTransformer or MaskedGPT2) or its config."""

    def __init__(self, model_or_config):
        cfg = getattr(model_or_config, "config", model_or_config)
        self.num_layers = cfg.num_layers
        self.hidden_size = cfg.hidden_size
        self.head_dim = cfg.head_dim
        self.num_heads = list(cfg.num_heads)
        self.intermediate_sizes = list(cfg.intermediate_sizes)
        self.causal = bool(getattr(cfg, "causal", False))
        self.pruned_from = getattr(model_or_config, "pruned_from", None)


def _token_mask(batch: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(like.shape[0], like.shape[1], dtype=like.dtype, device=like.device)
    return mask


def _allowed_keys(token_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """bool [B, 1, S, S]: key j is visible to query i (not padding, and j <= i when causal)."""
    s = token_mask.shape[1]
    allowed = token_mask.bool()[:, None, None, :].expand(-1, 1, s, s)
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=token_mask.device).tril()
    return allowed


def _hide_future(scores: torch.Tensor, causal: bool) -> torch.Tensor:
    """Causal models: future keys get a large negative score in both models, so softmax gives them
    zero probability and the KL op (which masks padding only) sees the decoder's distributions."""
    if not causal:
        return scores
    s = scores.shape[-1]
    future = torch.ones(s, s, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, _NEG)


def _mean_weights(n: int, like: torch.Tensor) -> torch.Tensor:
    """Layer weights 1/n: the fused ops sum ``weight_l * loss_l``, the terms average over layer pairs."""
    return torch.full((n,), 1.0 / n, dtype=torch.float32, device=like.device)


def _mean_over_layers(op, students, teachers, mask, **kw) -> torch.Tensor:
    """Mean over layer pairs of a fused layer loss. The ops take layers of one shape per call, so layers
    of a pruned model (uneven head counts) are grouped by shape; each call weighs its layers 1/n."""
    n = len(students)
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(students):
        groups.setdefault(tuple(x.shape), []).append(i)
    total = None
    for idx in groups.values():
        part = op([students[i] for i in idx], [teachers[i] for i in idx], _mean_weights(len(idx), students[0]) *
                  (len(idx) / n), mask, check_finite=False, **kw)
        total = part if total is None else total + part
    return total


# ----------------------------------------------------------------------------------------------------
# layer pairs for per-layer terms
# ----------------------------------------------------------------------------------------------------

def layer_groups(mapping) -> list[list[int]]:
    """0-based teacher layers whose outputs supervise each student layer (a group is averaged).

    Index mappings give one layer each, "mean" its group; "fusion" and "argmin" act on hidden states,
    so their per-layer counterpart is the uniform position g(m) = m * Lt // Ls.
    """
    if isinstance(mapping, MeanMapping):
        return [[t - 1 for t in group] for group in mapping.teacher_groups()]
    if isinstance(mapping, _IndexMapping):
        return [[t - 1] for t in mapping.teacher_layers()]
    uniform = UniformMapping(mapping.num_student_layers, mapping.num_teacher_layers)
    return [[t - 1] for t in uniform.teacher_layers()]


def _group_mean(items: Sequence[torch.Tensor], group: list[int]) -> torch.Tensor:
    if len(group) == 1:
        return items[group[0]]
    return torch.stack([items[g] for g in group]).mean(0)


# ----------------------------------------------------------------------------------------------------
# terms
# ----------------------------------------------------------------------------------------------------

class KDTerm(nn.Module):
    """One distillation term: ``term(student_out, teacher_out, batch) -> unweighted scalar``."""

    name = "term"
    needs: frozenset = frozenset()
    # True when the term reads the teacher's values at padded query positions (TinyBERT's attention MSE
    # counts padded query rows): a teacher-output cache, which stores real tokens only, cannot serve it
    reads_padded_queries = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class EmbeddingTerm(KDTerm):
    """TinyBERT's embedding-layer loss: MSE(E_S W_e, E_T) over real tokens."""

    name = "embedding"
    needs = frozenset({"hidden_states"})

    def __init__(self, weight: float, student_dim: int, teacher_dim: int, kind: str = "mse", path: str = "auto"):
        super().__init__(weight)
        self.kind, self.path = _check_choice("hidden_loss", kind, HIDDEN_LOSSES), path
        self.projection = HiddenProjection(student_dim, teacher_dim)

    def forward(self, s, t, batch):
        e_s = self.projection(s.hidden_states[0])
        e_t = t.hidden_states[0].detach()
        return distill_losses.hidden_distill_loss([e_s], [e_t], _mean_weights(1, e_s), _token_mask(batch, e_s),
                                                  kind=self.kind, path=self.path, check_finite=False)


class HiddenTerm(KDTerm):
    """Hidden states of student layers 1..Ls against mapped teacher targets (MSE or cosine)."""

    name = "hidden"
    needs = frozenset({"hidden_states"})

    def __init__(self, weight: float, mapping, student_dim: int, teacher_dim: int, kind: str = "mse",
                 layer_weighting: str = "uniform", path: str = "auto"):
        super().__init__(weight)
        self.mapping = mapping
        self.kind = _check_choice("hidden_loss", kind, HIDDEN_LOSSES)
        self.layer_weighting = _check_choice("layer_weighting", layer_weighting, LAYER_WEIGHTINGS)
        self.path = path
        self.projection = HiddenProjection(student_dim, teacher_dim)
        fuser = getattr(mapping, "fuser", None)
        self.fuser = fuser if isinstance(fuser, nn.Module) else None  # learned fusion: trained with the student
        self.share = None
        if self.layer_weighting == "adaptive":
            n = mapping.num_student_layers + int(mapping.include_embeddings)
            self.share = LossShareWeights(n)

    def forward(self, s, t, batch):
        mask = _token_mask(batch, s.hidden_states[0])
        students = self.projection(list(s.hidden_states))
        teachers = [h.detach() for h in t.hidden_states]
        students, targets = self.mapping.align(students, teachers, mask)
        if self.fuser is None:
            targets = [x.detach() for x in targets]
        weights = _mean_weights(len(students), students[0])
        if self.share is not None:
            with torch.no_grad():
                m = mask.to(students[0].dtype).unsqueeze(-1)
                denom = m.sum().clamp_min(1.0) * students[0].shape[-1]
                per_layer = torch.stack([((a - b).pow(2) * m).sum() / denom for a, b in zip(students, targets)])
            weights = weights * self.share(per_layer).to(weights)
        if self.fuser is not None:
            # A learned fusion gate lives on the teacher side; the fused op refuses teacher gradients on
            # purpose, so this (rare) case runs the plain reference, which lets them flow.
            return hidden_distill_loss_reference(students, targets, weights, mask, self.kind)[0]
        return distill_losses.hidden_distill_loss(students, targets, weights, mask, kind=self.kind, path=self.path,
                                                  check_finite=False)


class DDKHiddenTerm(KDTerm):
    """DDK's recursive adaptive hidden-state KD, for a student of the teacher's depth and hidden size (width
    pruning keeps both): student state l (0 = embeddings) against teacher target F_l, one to one, no projection.

    Targets (``fusion``): "none" -- F_l = T_l; "param_free" -- ``recursive_fusion`` of all L + 1 teacher states;
    "learned" -- a ``HighwayFusion`` gate, trained with the student (the one teacher-side module with gradients).
    Weights (``layer_weighting``): "uniform" -- 1 per state; "adaptive" -- loss shares (mean 1) of an EMA
    (momentum 0.9) of the *previous* steps' per-state losses, uniform until the first training step. The
    fused op returns this step's per-state losses for free, so the shares cost no second pass over the
    states. The term is the weighted sum over the states (not a mean: weights average 1).
    """

    name = "ddk_hidden"
    needs = frozenset({"hidden_states"})
    MOMENTUM = 0.9

    def __init__(self, weight: float, student: ModelShape, teacher: ModelShape, kind: str = "mse",
                 fusion: str = "none", layer_weighting: str = "adaptive", path: str = "auto"):
        super().__init__(weight)
        if (student.num_layers, student.hidden_size) != (teacher.num_layers, teacher.hidden_size):
            raise ValueError(f"ddk_hidden pairs student state l with teacher state l: it needs the teacher's depth "
                             f"and hidden size ({teacher.num_layers} layers of {teacher.hidden_size}), got "
                             f"{student.num_layers} layers of {student.hidden_size}; use hidden_weight (a layer "
                             f"mapping) for another student shape")
        self.kind = _check_choice("hidden_loss", kind, HIDDEN_LOSSES)
        self.fusion_kind = _check_choice("fusion", fusion, FUSION_KINDS)
        self.weighting = _check_choice("layer_weighting", layer_weighting, LAYER_WEIGHTINGS)
        self.path, self.num_states = path, teacher.num_layers + 1
        # attribute names are checkpoint keys (``fusion.gates.*``, ``layer_weights.ema``): keep them
        self.fusion = HighwayFusion(teacher.hidden_size, self.num_states) if fusion == "learned" else None
        self.layer_weights = (LossShareWeights(self.num_states, momentum=self.MOMENTUM)
                              if layer_weighting == "adaptive" else None)

    def targets(self, teacher_states, token_mask):
        states = [h.detach() for h in teacher_states]
        if self.fusion_kind == "none":
            return states
        if self.fusion is not None:
            return list(self.fusion(states))
        return list(recursive_fusion(states, token_mask=token_mask))

    def current_weights(self, like: torch.Tensor) -> torch.Tensor:
        """This step's per-state weights, chosen on the device (reading ``initialized`` on the host would be a
        sync every step)."""
        ones = torch.ones(self.num_states, device=like.device, dtype=torch.float32)
        if self.layer_weights is None:
            return ones
        lw = self.layer_weights
        shares = loss_share_weights(lw.ema, lw.power, lw.normalize).to(like.device)
        return torch.where(lw.initialized.to(like.device), shares, ones)

    def forward(self, s, t, batch):
        students = list(s.hidden_states)
        mask = _token_mask(batch, students[0][..., 0])
        targets = self.targets(t.hidden_states, mask)
        if len(students) != len(targets):
            raise ValueError(f"student has {len(students)} hidden states, teacher targets {len(targets)}")
        weights = self.current_weights(students[0])
        if self.fusion is not None:
            # the learned gate needs gradients on the target side, which the fused op refuses
            value, per_layer = hidden_distill_loss_reference(students, targets, weights, mask, kind=self.kind)
            per_layer = per_layer.detach()
        else:
            value, per_layer = distill_losses.hidden_distill_loss(students, targets, weights, mask, kind=self.kind,
                                                                  path=self.path, return_per_layer=True,
                                                                  check_finite=False)
        if self.layer_weights is not None and self.training:
            self.layer_weights(per_layer)
        return value

    def extra_repr(self) -> str:
        return f"weight={self.weight}, kind={self.kind}, fusion={self.fusion_kind}, layer_weighting={self.weighting}"


def _head_selection(student: ModelShape, teacher: ModelShape, groups: list[list[int]]) -> list[list[int] | None]:
    """Per student layer: the teacher heads its heads correspond to (None = all, equal counts)."""
    out = []
    for m, group in enumerate(groups):
        hs, ht = student.num_heads[m], teacher.num_heads[group[0]]
        if any(teacher.num_heads[g] != ht for g in group):
            raise ValueError(f"attention term: teacher layers {group} have different head counts; a mean mapping "
                             f"needs equal counts")
        if hs == ht:
            out.append(None)
        elif (student.pruned_from is not None and student.num_layers == teacher.num_layers
              and list(student.pruned_from.total_heads) == teacher.num_heads):
            out.append(list(student.pruned_from.heads[m]))
        else:
            raise ValueError(f"attention term: student layer {m} has {hs} heads, teacher layer {group[0]} has {ht}; "
                             f"head-by-head attention needs equal counts (or a pruned student that records "
                             f"pruned_from); use the query/key/value relation terms, which need none")
    return out


class AttentionTerm(KDTerm):
    """Per-head attention transfer.

    kind "kl": KL(teacher || student) of the attention distributions over valid keys, averaged over valid
        query rows -- the fused ``attention_distill_loss(kind="kl")`` on raw scores.
    kind "mse": TinyBERT: MSE of the raw scores with padded (causal: future) keys set to 0 in both models,
        averaged over every (batch, head, query, key) entry, then over layer pairs.
    kind "prob_mse": MSE of the attention distributions over valid (row, key) entries (fused op).
    """

    name = "attention"
    needs = frozenset({"attention_scores"})

    def __init__(self, weight: float, mapping, student: ModelShape, teacher: ModelShape, kind: str = "kl",
                 path: str = "auto"):
        super().__init__(weight)
        self.kind = _check_choice("attention_loss", kind, ATTENTION_LOSSES)
        self.reads_padded_queries = self.kind == "mse"
        self.groups = layer_groups(mapping)
        self.heads = _head_selection(student, teacher, self.groups)
        self.causal, self.path = teacher.causal, path
        self.pairs = [m for m in range(len(self.groups)) if student.num_heads[m] > 0]

    def _aligned(self, s, t):
        for m in self.pairs:
            t_scores = _group_mean(t.attention_scores, self.groups[m]).detach()
            if self.heads[m] is not None:
                t_scores = t_scores[:, self.heads[m]]
            yield s.attention_scores[m], t_scores

    def forward(self, s, t, batch):
        if not self.pairs:
            return s.attention_scores[0].new_zeros(()) if s.attention_scores else torch.zeros(())
        mask = _token_mask(batch, s.attention_scores[self.pairs[0]][:, 0, :, 0])
        pairs = list(self._aligned(s, t))
        if self.kind in ("kl", "prob_mse"):
            students = [_hide_future(a, self.causal) for a, _ in pairs]
            teachers = [_hide_future(b, self.causal) for _, b in pairs]
            return _mean_over_layers(distill_losses.attention_distill_loss, students, teachers, mask,
                                     kind="kl" if self.kind == "kl" else "mse", path=self.path)
        allowed = _allowed_keys(mask, self.causal)
        return torch.stack([tinybert_attention_mse(a, b, allowed) for a, b in pairs]).mean()


def tinybert_attention_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                           allowed: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention loss for one layer: mean((where(allowed, s, 0) - where(allowed, t, 0))^2).

    Why its own formula: TinyBERT adds -10000 to masked scores, then zeroes every entry <= -100, and takes
    nn.MSELoss over the whole [B, H, S, S] tensor; padded-key entries therefore count as exact zeros in
    the mean (and padded query rows count with their valid keys). ``allowed``: bool broadcastable to
    the scores.
    """
    diff = (student_scores - teacher_scores) * allowed.to(student_scores.dtype)
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    return diff.pow(2).mean()


def sigmoid_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-label prediction KD: binary cross entropy of the student's per-label sigmoid at temperature
    T against the teacher's, times T^2 (each label is its own two-class softmax)."""
    t = float(temperature)
    soft = torch.sigmoid(t_logits.float() / t)
    return F.binary_cross_entropy_with_logits(s_logits.float() / t, soft) * t * t


class PredictionTerm(KDTerm):
    """Prediction-layer KD: soft CE at temperature T (times T^2 if the op does so), MSE for regression;
    per-token logits (LMs over the vocabulary, token classification over the tags): soft CE per token,
    rows of padding tokens dropped."""

    name = "pred"
    needs = frozenset({"logits"})

    def __init__(self, weight: float, temperature: float, task_type: str, path: str = "auto"):
        super().__init__(weight)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature, self.task_type = float(temperature), _check_choice("task_type", task_type, TASK_TYPES)
        self.path = path

    def forward(self, s, t, batch):
        s_logits, t_logits = s.logits, t.logits.detach()
        if self.task_type == "regression":
            return F.mse_loss(s_logits.float(), t_logits.float())
        if self.task_type == "multilabel":
            return sigmoid_kd_loss(s_logits, t_logits, self.temperature)
        if self.task_type == "qa":  # one row per start / end distribution over the sequence
            s_logits, t_logits = span_rows(s_logits, t_logits, _token_mask(batch, s_logits[..., 0]))
        elif s_logits.dim() == 3:
            s_logits, t_logits = token_rows(s_logits, t_logits, _token_mask(batch, s_logits[..., 0]))
        return distill_losses.soft_cross_entropy(s_logits, t_logits, self.temperature, path=self.path,
                                                 check_finite=False)


class TaskTerm(KDTerm):
    """Hard-label loss: cross-entropy (classification; per token, unlabelled pieces skipped, for token
    classification), MSE (regression), next-token CE (LM, masked)."""

    name = "task"
    needs = frozenset({"logits"})

    def __init__(self, weight: float, task_type: str):
        super().__init__(weight)
        self.task_type = _check_choice("task_type", task_type, TASK_TYPES)

    def forward(self, s, t, batch):
        logits = s.logits
        if self.task_type == "lm":
            return next_token_loss(logits, batch["input_ids"], batch.get("attention_mask"))
        return task_loss(logits.float(), batch["labels"])


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """Causal-LM cross-entropy: logits[:, i] predicts input_ids[:, i + 1]; padding targets ignored.
    reduction "sum" gives the summed negative log-likelihood (for perplexity over a corpus)."""
    targets = input_ids[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction)


class RelationTerm(KDTerm):
    """MaKD / MiniLMv2 self-attention relations of queries, keys or values (KL over R relation heads)."""

    needs = frozenset({"qkv"})
    _INDEX = {"query": 0, "key": 1, "value": 2}

    def __init__(self, weight: float, which: str, mapping, student: ModelShape, teacher: ModelShape,
                 num_relation_heads: int, path: str = "auto"):
        super().__init__(weight)
        self.which = _check_choice("relation", which, tuple(self._INDEX))
        self.name = f"{which}_relation"
        self.num_relation_heads = int(num_relation_heads)
        if self.num_relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {num_relation_heads!r}")
        self.groups = layer_groups(mapping)
        self.causal, self.path = teacher.causal, path
        self.pairs = [m for m in range(len(self.groups)) if student.num_heads[m] > 0
                      and all(teacher.num_heads[g] > 0 for g in self.groups[m])]

    def _scores(self, qkv_layer) -> torch.Tensor:
        return _hide_future(relation_scores(concat_heads(qkv_layer[self._INDEX[self.which]]),
                                            self.num_relation_heads), self.causal)

    def forward(self, s, t, batch):
        if not self.pairs:
            return torch.zeros((), device=s.logits.device)
        students, teachers = [], []
        for m in self.pairs:
            students.append(self._scores(s.qkv[m]))
            teachers.append(torch.stack([self._scores(t.qkv[g]) for g in self.groups[m]]).mean(0).detach()
                            if len(self.groups[m]) > 1 else self._scores(t.qkv[self.groups[m][0]]).detach())
        mask = _token_mask(batch, students[0][:, 0, :, 0])
        return _mean_over_layers(distill_losses.attention_distill_loss, students, teachers, mask, kind="kl",
                                 path=self.path)


class FFNTerm(KDTerm):
    """MaKD's FFN aspects: "intermediate" activations act(x W_in + b) (learned low-rank map per student
    layer when widths differ) or "output" of the FFN block (hidden-width map when widths differ); MSE
    over real tokens, averaged over layer pairs."""

    needs = frozenset({"ffn"})

    def __init__(self, weight: float, which: str, mapping, student: ModelShape, teacher: ModelShape,
                 rank: int = 64, path: str = "auto"):
        super().__init__(weight)
        self.which = _check_choice("ffn aspect", which, ("intermediate", "output"))
        self.name = f"ffn_{which}"
        self.groups = layer_groups(mapping)
        self.path = path
        if which == "intermediate":
            self.pairs = [m for m in range(len(self.groups)) if student.intermediate_sizes[m] > 0]
            widths = {teacher.intermediate_sizes[g] for grp in self.groups for g in grp}
            if len(widths) > 1 and any(len(g) > 1 for g in self.groups):
                raise ValueError("ffn_intermediate with a mean mapping needs equal teacher FFN widths")
            self.maps = nn.ModuleList(
                LowRankProjection(student.intermediate_sizes[m], teacher.intermediate_sizes[self.groups[m][0]], rank)
                for m in range(len(self.groups)))
        else:
            self.pairs = list(range(len(self.groups)))
            self.maps = nn.ModuleList([HiddenProjection(student.hidden_size, teacher.hidden_size)])

    def forward(self, s, t, batch):
        if not self.pairs:
            return torch.zeros((), device=s.logits.device)
        source = s.ffn_intermediate if self.which == "intermediate" else s.ffn_output
        target = t.ffn_intermediate if self.which == "intermediate" else t.ffn_output
        students, teachers = [], []
        for m in self.pairs:
            proj = self.maps[m] if self.which == "intermediate" else self.maps[0]
            students.append(proj(source[m]))
            teachers.append(_group_mean(target, self.groups[m]).detach())
        mask = _token_mask(batch, students[0][..., 0])
        return _mean_over_layers(distill_losses.hidden_distill_loss, students, teachers, mask, kind="mse",
                                 path=self.path)


# ----------------------------------------------------------------------------------------------------
# the composite
# ----------------------------------------------------------------------------------------------------

class KDObjective(nn.Module):
    """Weighted sum of terms: ``loss, parts = objective(student_out, teacher_out, batch)``.

    ``parts``: detached 0-d tensors per term (unweighted) and "kd_total", left on the device (a float
    per term would be a device sync per term per step; loops read them at log steps). Terms with weight 0 are not built.
    """

    def __init__(self, terms: Sequence[KDTerm], options: Mapping[str, Any] | None = None):
        super().__init__()
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"KDObjective: duplicate term names {names}")
        self.terms = nn.ModuleList(terms)
        self.options = dict(options or {})

    @property
    def needs(self) -> frozenset:
        out = frozenset()
        for term in self.terms:
            out = out | term.needs
        return out

    @property
    def reads_padded_queries(self) -> bool:
        return any(term.reads_padded_queries for term in self.terms)

    def forward_kwargs(self) -> dict[str, bool]:
        """The ``output_*`` flags both models' forward passes need (hidden states always: cheap, and
        loops log / evaluate with them)."""
        needs = self.needs | {"hidden_states"}
        return {flag: True for key, flag in _FLAGS.items() if key in needs}

    def forward(self, student_out, teacher_out, batch: Mapping[str, torch.Tensor]):
        total = student_out.logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for term in self.terms:
            value = term(student_out, teacher_out, batch)
            total = total + term.weight * value.float()
            parts[term.name] = value.detach()
        parts["kd_total"] = total.detach()
        return total, parts

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, options: Mapping[str, Any] | None, student, teacher, task_type: str = "classification",
                    ignore_unknown: bool = False, preset: str | None = None) -> "KDObjective":
        """Build from flat options (see DEFAULTS; names match the compress flags) over the named ``preset``
        (see PRESETS) when one is given. ``student`` / ``teacher``: models or their configs. Unknown keys raise
        unless ``ignore_unknown`` (e.g. a whole run config). ``path``: a loss-op path; a model's kernel path
        (compact, triton) means "auto" for the losses."""
        opts = dict(DEFAULTS)
        if preset is not None:
            opts.update(PRESETS[_check_choice("preset", preset, tuple(PRESETS))])
        given = {k: v for k, v in dict(options or {}).items() if v is not None}
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown KD option(s) {unknown}; expected some of {sorted(DEFAULTS)}")
        opts.update({k: v for k, v in given.items() if k in DEFAULTS})
        for key in DEFAULTS:
            if key.endswith("_weight"):
                w = float(opts[key])
                if not (w >= 0 and math.isfinite(w)):
                    raise ValueError(f"{key}={opts[key]!r}: expected a finite weight >= 0")
                opts[key] = w
        task_type = _check_choice("task_type", task_type, TASK_TYPES)
        s_shape, t_shape = ModelShape(student), ModelShape(teacher)
        path = opts["path"] if opts["path"] in LOSS_PATHS else "auto"
        terms: list[KDTerm] = []

        def mapping(include_embeddings=False):
            return build_objective_mapping(opts, s_shape, t_shape, include_embeddings)

        if opts["embedding_weight"] > 0:
            terms.append(EmbeddingTerm(opts["embedding_weight"], s_shape.hidden_size, t_shape.hidden_size,
                                       opts["hidden_loss"], path))
        if opts["hidden_weight"] > 0:
            terms.append(HiddenTerm(opts["hidden_weight"], mapping(bool(opts["hidden_embeddings"])),
                                    s_shape.hidden_size, t_shape.hidden_size, opts["hidden_loss"],
                                    opts["layer_weighting"], path))
        if opts["ddk_hidden_weight"] > 0:
            terms.append(DDKHiddenTerm(opts["ddk_hidden_weight"], s_shape, t_shape, opts["hidden_loss"], opts["fusion"],
                                       opts["layer_weighting"], path))
        if opts["attention_weight"] > 0:
            terms.append(AttentionTerm(opts["attention_weight"], mapping(), s_shape, t_shape, opts["attention_loss"],
                                       path))
        relation_heads = int(opts["relation_heads"]) or max(t_shape.num_heads)
        for which in ("query", "key", "value"):
            w = opts[f"{which}_relation_weight"]
            if w > 0:
                terms.append(RelationTerm(w, which, mapping(), s_shape, t_shape, relation_heads, path))
        for which in ("intermediate", "output"):
            w = opts[f"ffn_{which}_weight"]
            if w > 0:
                terms.append(FFNTerm(w, which, mapping(), s_shape, t_shape, int(opts["ffn_rank"]), path))
        if opts["pred_weight"] > 0:
            terms.append(PredictionTerm(opts["pred_weight"], float(opts["temperature"]), task_type, path))
        if opts["task_weight"] > 0:
            terms.append(TaskTerm(opts["task_weight"], task_type))
        if not terms:
            raise ValueError("every KD weight is 0: nothing to train; set at least one *_weight > 0")
        return cls(terms, opts)


def build_objective_mapping(opts: Mapping[str, Any], student: ModelShape, teacher: ModelShape,
                            include_embeddings: bool = False):
    """The layer mapping named by ``opts["mapping"]`` (with ``fusion`` / ``mapping_seed`` options)."""
    name = _check_choice("mapping", opts["mapping"], tuple(MAPPINGS))
    kw: dict[str, Any] = {}
    if name == "random":
        kw["seed"] = int(opts.get("mapping_seed", 0))
    if name == "fusion":
        fusion = _check_choice("fusion", opts.get("fusion", "param_free"), FUSION_KINDS)
        if fusion == "none":
            name = "uniform"
        elif fusion == "learned":
            kw["fuser"] = HighwayFusion(teacher.hidden_size, teacher.num_layers)
    return build_mapping(name, student.num_layers, teacher.num_layers, include_embeddings=include_embeddings, **kw)


def _check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {list(choices)}")
    return value


__all__ = ["DEFAULTS", "OUTPUTS", "PRESETS", "kd_choices", "kd_options_help", "KDObjective", "KDTerm", "EmbeddingTerm",
           "HiddenTerm", "DDKHiddenTerm", "AttentionTerm", "PredictionTerm", "TaskTerm", "RelationTerm", "FFNTerm",
           "ModelShape", "layer_groups", "build_objective_mapping", "next_token_loss", "tinybert_attention_mse"]
