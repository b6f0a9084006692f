"""Least-squares mask tuning (after Kwon et al. 2022): give every kept head and FFN channel of a
physically pruned model one scale that makes each sublayer reproduce the teacher's, then fold the
scales into the weights.

Why it works without training: a pruned sublayer's output is ``x + sum_i s_i c_i(x) + b`` with
``c_i`` the contribution of kept unit ``i`` (a head's context times its output-projection columns, a
channel's activation times its down-projection column) and ``s_i = 1``. The removed units' share of
the output is partly carried by the kept ones, so re-weighting them recovers much of it. The best
``s`` for the calibration tokens is a linear least-squares problem whose normal equations need only
``[k, k]`` sums, accumulated batch by batch.

Layer by layer, sublayer by sublayer: the student's input is its own (already tuned) previous output,
the target is the teacher's pre-LayerNorm sublayer output on the teacher's own input, so errors of
earlier layers are corrected, not compounded. For the last layer only the first token (the one the
pooler reads) is reconstructed when the head reads only that token (every token for token
classification). Two guards Kwon et al. also use: a ridge term pulls the scales towards 1 (the
untuned model), and a layer whose solution leaves ``[-bound, bound]`` keeps scales 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ddk_fast.ops._dispatch import dense_path
from ddk_fast.ops.activations import activation
from ddk_fast.ops.gated_attention import masked_self_attention


@dataclass
class TuningReport:
    """Per sublayer (attention, FFN of layer 0, 1, ...): squared reconstruction error summed over the
    calibration tokens before and after tuning, and whether the solution was kept."""

    rows: list[dict] = field(default_factory=list)
    # the held-out check of ``one_shot``: task loss and (when the caller can score the task) the task's
    # score of the untuned / tuned student on calibration examples the least squares did not see, and
    # whether the tuned scales were kept (None: no check)
    held_out_loss_untuned: float | None = None
    held_out_loss_tuned: float | None = None
    held_out_score_untuned: float | None = None
    held_out_score_tuned: float | None = None
    kept: bool | None = None

    @property
    def error_before(self) -> float:
        return sum(r["error_before"] for r in self.rows)

    @property
    def error_after(self) -> float:
        return sum(r["error_after"] for r in self.rows)


class _Normal:
    """Running normal equations ``A^T A``, ``A^T b``, ``b^T b`` of one least-squares problem."""

    def __init__(self, k: int):
        self.ata = torch.zeros(k, k, dtype=torch.float64)
        self.atb = torch.zeros(k, dtype=torch.float64)
        self.btb = 0.0

    def add(self, ata: torch.Tensor, atb: torch.Tensor, residual: torch.Tensor) -> None:
        """Add one batch's sums. They are computed in the models' dtype (fp32: a batch holds a few
        thousand tokens, far from fp32's precision limit, and fp64 GEMMs are several times slower on a
        CPU) and accumulated in fp64 across batches."""
        self.ata += ata.double().cpu()
        self.atb += atb.double().cpu()
        self.btb += float(residual.double().pow(2).sum())

    def error(self, s: torch.Tensor) -> float:
        return float(s @ self.ata @ s - 2 * s @ self.atb + self.btb)

    def solve(self, ridge: float, bound: float) -> tuple[torch.Tensor, bool]:
        k = self.atb.numel()
        ones = torch.ones(k, dtype=torch.float64)
        lam = ridge * float(self.ata.diagonal().mean().clamp_min(1e-30))
        try:
            s = torch.linalg.solve(self.ata + lam * torch.eye(k, dtype=torch.float64), self.atb + lam * ones)
        except RuntimeError:  # singular even with the ridge: keep the untuned unit scales
            return ones, False
        if not bool(torch.isfinite(s).all()) or float(s.abs().max()) > bound:
            return ones, False
        if self.error(s) > self.error(ones):  # cannot happen for an exact solve; a guard for round-off
            return ones, False
        return s, True


def _token_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor, first_only: bool) -> torch.Tensor:
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if first_only:
        mask = torch.zeros_like(mask)
        mask[:, 0] = True
    return mask


def _head_contributions(attention, x, attention_mask, path):
    """Per-head contributions ``[B, S, k, d]`` of a block (output bias excluded)."""
    _, extra = attention(x, attention_mask, None, path, want_qkv=True, want_probs=True)
    ctx = extra.probs @ extra.v  # [B, k, S, D]
    w_o = attention.output.weight.reshape(attention.output.weight.shape[0], attention.num_heads, -1)
    return torch.einsum("bhsd,ehd->bshe", ctx, w_o)


def _attention_pre_norm(attention, x, attention_mask, path):
    """``x + attention(x)`` before the block's LayerNorm."""
    if attention.num_heads == 0:
        return x + attention.output.bias
    gate = torch.ones(attention.num_heads, dtype=x.dtype, device=x.device)
    res = masked_self_attention(x, attention.query.weight, attention.query.bias, attention.key.weight,
                                attention.key.bias, attention.value.weight, attention.value.bias,
                                attention.output.weight, attention.output.bias, gate, attention.num_heads,
                                attention_mask=attention_mask, causal=attention.causal, path=path)
    return x + res.out


def _ffn_activations(ffn, h):
    return activation(torch.nn.functional.linear(h, ffn.up.weight, ffn.up.bias), ffn.activation)


def _ffn_pre_norm(ffn, h):
    if ffn.intermediate_size == 0:
        return h + ffn.down.bias
    return h + torch.nn.functional.linear(_ffn_activations(ffn, h), ffn.down.weight, ffn.down.bias)


@torch.no_grad()
def tune_unit_scales(student, teacher, batches: Iterable[dict], path: str = "auto", ridge: float = 1e-3,
                     bound: float = 10.0) -> TuningReport:
    """Tune ``student`` (a physically pruned MaskedTransformer of ``teacher``) in place; see the module
    docstring. ``batches``: calibration dicts (input_ids, attention_mask, token_type_ids optional), on
    the models' device. Both models run in eval mode; their train/eval modes are restored."""
    if student.num_layers != teacher.num_layers or student.hidden_size != teacher.hidden_size:
        raise ValueError(f"tune_unit_scales: student ({student.num_layers} layers, hidden {student.hidden_size}) "
                         f"is not a pruned copy of the teacher ({teacher.num_layers}, {teacher.hidden_size})")
    path = dense_path(path, next(student.parameters()).device)
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    report = TuningReport()
    try:
        batches = [dict(b) for b in batches]
        xs = [student.embeddings(b["input_ids"], b.get("token_type_ids")) for b in batches]
        xt = [teacher.embeddings(b["input_ids"], b.get("token_type_ids")) for b in batches]
        last = student.num_layers - 1
        for l, (s_layer, t_layer) in enumerate(zip(student.layers, teacher.layers)):
            first_only = l == last and student.head_reads_first_token_only
            masks = [_token_mask(b.get("attention_mask"), b["input_ids"], first_only) for b in batches]
            att, t_att = s_layer.attention, t_layer.attention
            t_pre = [_attention_pre_norm(t_att, x, b.get("attention_mask"), path) for x, b in zip(xt, batches)]
            if att.num_heads:
                normal = _Normal(att.num_heads)
                for x, tp, b, m in zip(xs, t_pre, batches, masks):
                    c = _head_contributions(att, x, b.get("attention_mask"), path)[m]  # [T, k, d]
                    r = (tp - x - att.output.bias)[m]  # [T, d]
                    normal.add(torch.einsum("tkd,tjd->kj", c, c), torch.einsum("tkd,td->k", c, r), r)
                scales, kept = normal.solve(ridge, bound)
                report.rows.append(_row(l, "attention", normal, scales, kept))
                w = att.output.weight
                w.copy_((w.reshape(w.shape[0], att.num_heads, -1) * scales.to(w)[None, :, None]).reshape_as(w))
            hs = [att(x, b.get("attention_mask"), None, path)[0] for x, b in zip(xs, batches)]
            ht = [t_att.norm(tp) for tp in t_pre]
            del t_pre
            ffn, t_ffn = s_layer.ffn, t_layer.ffn
            t_pre = [_ffn_pre_norm(t_ffn, h) for h in ht]
            if ffn.intermediate_size:
                normal = _Normal(ffn.intermediate_size)
                w_down = ffn.down.weight  # [d, n]
                for h, tp, m in zip(hs, t_pre, masks):
                    a = _ffn_activations(ffn, h)[m]  # [T, n]
                    r = (tp - h - ffn.down.bias)[m]  # [T, d]
                    normal.add(a.T @ a, ((r @ w_down) * a).sum(0), r)
                gram = w_down.double().T @ w_down.double()  # the channels' output directions, once per layer
                normal.ata *= gram.cpu()
                scales, kept = normal.solve(ridge, bound)
                report.rows.append(_row(l, "ffn", normal, scales, kept))
                ffn.down.weight.mul_(scales.to(ffn.down.weight)[None, :])
            xs = [ffn(h, None, path)[0] for h in hs]
            xt = [t_ffn.norm(tp) for tp in t_pre]
            del t_pre, hs, ht
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return report


def _row(layer: int, block: str, normal: _Normal, scales: torch.Tensor, kept: bool) -> dict:
    ones = torch.ones_like(scales)
    return {"layer": layer, "block": block, "error_before": normal.error(ones), "error_after": normal.error(scales),
            "target_energy": normal.btb, "tuned": kept, "scale_min": float(scales.min()),
            "scale_max": float(scales.max())}


__all__ = ["TuningReport", "tune_unit_scales"]
