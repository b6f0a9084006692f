"""Layer-wise distillation losses: fused kernels (``ddk_fast._C``) with plain-PyTorch references beside.

Three public ops, each choosing a path through :func:`ddk_fast.ops._dispatch.resolve_path`
(``"fused"``: the extension, CPU or CUDA; ``"reference"``: the functions ``*_reference`` below):

- :func:`hidden_distill_loss` -- hidden states, per layer MSE or 1 - cosine over valid tokens;
- :func:`attention_distill_loss` -- attention scores, per layer KL(teacher || student) or MSE of the
  softmax distributions over valid keys, averaged over valid query rows;
- :func:`soft_cross_entropy` -- prediction distillation at a temperature, times T^2.

Why fused: one call handles every layer, reads each input once and writes the student gradient in
the same pass (the loss is the last node of the graph, so d loss / d student is known in forward).
The kernels write each layer's gradient already times ``layer_weights[l]`` (known in forward), so
backward hands the saved buffer out untouched when grad_output == 1 (the usual ``loss.backward()``),
and makes one scaling pass otherwise (``(loss * 2).backward()``, a loss inside a larger sum with a
factor, bfloat16 inputs). Saved gradients stay float32 (float64 for float64 inputs); they are cast
to the input dtype in backward. That folding is also why ``per_layer`` is returned detached: a
gradient through it would need the unweighted gradient, which is gone for a layer of weight 0.

CPU specifics (csrc/): rows are spread over at::parallel_for threads; the inner loops are compiled
for AVX-512, AVX2 and the baseline ISA and picked at run time (``DDK_FAST_CPU_ISA=avx2|base`` lowers
it); saved gradients come from a buffer pool (``DDK_FAST_CPU_POOL_MB``, default 1024, 0 = no
caching) because fresh multi-MB buffers page-fault on every step.

Conventions shared by the ops:

- ``student`` / ``teacher``: a sequence of L tensors or one stacked tensor with a leading L; they may
  differ in form (list vs stacked). A teacher of another dtype is cast to the student's dtype.
- Gradients flow to the students and to ``layer_weights``. Teachers get none: a teacher that requires
  grad (while grad mode is on) is an error -- pass ``teacher.detach()``. Refusing instead of
  detaching silently keeps a learned teacher-side transform (e.g. a fusion gate) from being frozen
  without notice.
- ``token_mask``: [B, S], nonzero = token, 0 = padding; None = every token valid. A batch with no
  valid token gives a loss of 0.
- ``return_per_layer=True`` returns ``(total, per_layer)``; ``per_layer`` [L] is the unweighted value
  of each layer, *detached* (for monitoring and for loss-share weighting). Gradient flows through
  ``total`` only, into students and ``layer_weights`` (learned or uncertainty weights work).
- Losses are float32 for float32/bfloat16/float16 inputs (float64 for float64); input gradients come
  back in the input dtype.
- Non-finite inputs: instead of an extra pass over the inputs, the per-layer values (L numbers) are
  checked with ``torch.isfinite`` -- any NaN/inf at a valid position reaches them. Values at padding
  positions are never read. Only when the check fails are the inputs scanned, to name the culprit.
  On CUDA the check costs one device sync per call; ``check_finite=False`` skips it.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from ddk_fast import _runtime
from ddk_fast._ext import require_extension
from ddk_fast.ops._dispatch import resolve_path

__all__ = [
    "hidden_distill_loss",
    "attention_distill_loss",
    "soft_cross_entropy",
    "hidden_distill_loss_reference",
    "attention_distill_loss_reference",
    "soft_cross_entropy_reference",
]

Layers = Union[torch.Tensor, Sequence[torch.Tensor]]

HIDDEN_KINDS = ("mse", "cosine")
ATTENTION_KINDS = ("kl", "mse")
COSINE_EPS = 1e-8


# ---------------------------------------------------------------------------------------------------
# References: plain PyTorch, the ground truth for the fused kernels.
# ---------------------------------------------------------------------------------------------------

def _acc(x: torch.Tensor) -> torch.Tensor:
    """Compute in float32 for half types, float64 stays float64 (as the kernels accumulate)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _valid_tokens(token_mask: torch.Tensor | None, batch: int, seq: int, device) -> torch.Tensor:
    if token_mask is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    return token_mask.to(device) != 0


def hidden_distill_loss_reference(student: Layers, teacher: Layers, layer_weights: torch.Tensor,
                                  token_mask: torch.Tensor | None = None, kind: str = "mse"):
    """Plain-PyTorch hidden-state loss: returns ``(total, per_layer)``, both differentiable.

    Per layer, over tokens with token_mask != 0: ``mse`` = mean over tokens and d of (s - t)^2;
    ``cosine`` = mean over tokens of 1 - cos(s, t), each norm clamped below at 1e-8.
    """
    per_layer = []
    for s, t in zip(student, teacher):
        s, t = _acc(s), _acc(t)
        valid = _valid_tokens(token_mask, s.shape[0], s.shape[1], s.device)
        count = valid.sum().clamp_min(1).to(s.dtype)
        # Padding never enters the math (a NaN there must not reach a gradient through 0 * NaN).
        s = torch.where(valid[..., None], s, 0)
        t = torch.where(valid[..., None], t, 0)
        if kind == "mse":
            token = (s - t).pow(2).sum(-1)
            count = count * s.shape[-1]
        else:
            ns = s.norm(dim=-1).clamp_min(COSINE_EPS)
            nt = t.norm(dim=-1).clamp_min(COSINE_EPS)
            token = 1 - (s * t).sum(-1) / (ns * nt)
        per_layer.append(torch.where(valid, token, 0).sum() / count)
    per_layer = torch.stack(per_layer)
    return (per_layer * layer_weights.to(per_layer.dtype)).sum(), per_layer


def attention_distill_loss_reference(student: Layers, teacher: Layers, layer_weights: torch.Tensor,
                                     token_mask: torch.Tensor | None = None, kind: str = "kl"):
    """Plain-PyTorch attention loss on scores [B, A, S, S]: returns ``(total, per_layer)``.

    Keys with token_mask == 0 are left out of both softmaxes; only query rows with token_mask != 0
    count. ``kl`` = KL(softmax(t) || softmax(s)) summed over keys, mean over (batch, head, valid
    row); ``mse`` = mean over valid (row, key) entries of (softmax(s) - softmax(t))^2.
    """
    per_layer = []
    for s, t in zip(student, teacher):
        s, t = _acc(s), _acc(t)
        batch, heads, seq, _ = s.shape
        valid = _valid_tokens(token_mask, batch, seq, s.device)
        key = valid[:, None, None, :]
        row = valid[:, None, :]
        # Padded keys and padded query rows are filled with a finite low value (not -inf): rows with
        # no valid key stay finite, and whatever the padding held never reaches a gradient.
        low = torch.finfo(s.dtype).min
        hidden_entries = ~(key & row[..., None])
        log_q = torch.log_softmax(s.masked_fill(hidden_entries, low), -1)
        log_p = torch.log_softmax(t.masked_fill(hidden_entries, low), -1)
        if kind == "kl":
            entry = log_p.exp() * (log_p - log_q)
            count = valid.sum() * heads
        else:
            entry = (log_q.exp() - log_p.exp()).pow(2)
            count = valid.sum(1).pow(2).sum() * heads
        rows = torch.where(key, entry, 0).sum(-1)
        per_layer.append(torch.where(row, rows, 0).sum() / count.clamp_min(1).to(s.dtype))
    per_layer = torch.stack(per_layer)
    return (per_layer * layer_weights.to(per_layer.dtype)).sum(), per_layer


def soft_cross_entropy_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                 temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean_b -sum_c softmax(t / T)_c log_softmax(s / T)_c, in plain PyTorch."""
    s, t = _acc(student_logits), _acc(teacher_logits)
    p = torch.softmax(t / temperature, -1)
    return -(p * torch.log_softmax(s / temperature, -1)).sum(-1).mean() * temperature**2


# ---------------------------------------------------------------------------------------------------
# Argument checks (errors name the argument, the value seen and what was expected).
# ---------------------------------------------------------------------------------------------------

def _layers(x: Layers, name: str, layer_dims: int, layout: str) -> tuple[list[torch.Tensor], bool]:
    """A list of per-layer tensors and whether ``x`` came stacked."""
    if isinstance(x, torch.Tensor):
        if x.dim() != layer_dims + 1:
            raise ValueError(f"{name} must be a sequence of {layout} tensors or one stacked "
                             f"[L, {layout[1:-1]}] tensor, got a tensor of shape {tuple(x.shape)}")
        return list(x.unbind(0)), True
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a sequence of tensors or a stacked tensor, got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError(f"{name} must hold at least one layer, got an empty sequence")
    for i, layer in enumerate(x):
        if not isinstance(layer, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(layer).__name__}")
        if layer.dim() != layer_dims:
            raise ValueError(f"{name}[{i}] must be {layout}, got shape {tuple(layer.shape)}")
    return list(x), False


def _check_kind(op: str, kind: str, kinds: tuple[str, ...]) -> None:
    if kind not in kinds:
        raise ValueError(f"{op}: kind must be one of {kinds}, got {kind!r}")


def _check_pairs(op: str, students: list[torch.Tensor], teachers: list[torch.Tensor], attention: bool) -> None:
    if len(students) != len(teachers):
        raise ValueError(f"{op}: student has {len(students)} layers but teacher has {len(teachers)}")
    first = students[0]
    for i, (s, t) in enumerate(zip(students, teachers)):
        if s.shape != first.shape:
            raise ValueError(f"{op}: student[{i}] has shape {tuple(s.shape)}, expected {tuple(first.shape)} "
                             "like student[0] (all layers alike)")
        if not attention and s.shape[:-1] == t.shape[:-1] and s.shape[-1] != t.shape[-1]:
            raise ValueError(f"{op}: hidden widths differ (student[{i}] d={s.shape[-1]}, teacher[{i}] "
                             f"d={t.shape[-1]}); project the student to the teacher's width first")
        if attention and s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:] and s.shape[1] != t.shape[1]:
            raise ValueError(f"{op}: head counts differ (student[{i}] A={s.shape[1]}, teacher[{i}] "
                             f"A={t.shape[1]}); map heads (e.g. average teacher heads) first")
        if t.shape != s.shape:
            raise ValueError(f"{op}: teacher[{i}] has shape {tuple(t.shape)} but student[{i}] has "
                             f"{tuple(s.shape)}")
        if attention and s.shape[-1] != s.shape[-2]:
            raise ValueError(f"{op}: student[{i}] must be attention scores [B, A, S, S], got shape "
                             f"{tuple(s.shape)}")
        if not s.is_floating_point():
            raise ValueError(f"{op}: student[{i}] must be a floating-point tensor, got {s.dtype}")
        if t.device != s.device:
            raise ValueError(f"{op}: teacher[{i}] is on {t.device} but student[{i}] is on {s.device}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{op}: teacher[{i}] requires grad, but teachers get no gradient here; "
                             "pass teacher.detach() (or compute it under torch.no_grad())")


def _check_weights(op: str, layer_weights, layers: int, device) -> torch.Tensor:
    if not isinstance(layer_weights, torch.Tensor):
        layer_weights = torch.as_tensor(layer_weights, dtype=torch.float32)
    if layer_weights.dim() != 1 or layer_weights.numel() != layers:
        raise ValueError(f"{op}: layer_weights must have shape [{layers}] (one weight per layer), got "
                         f"{list(layer_weights.shape)}")
    if not layer_weights.is_floating_point():
        layer_weights = layer_weights.float()
    return layer_weights.to(device)


def _check_mask(op: str, token_mask, batch: int, seq: int, device) -> torch.Tensor | None:
    if token_mask is None:
        return None
    if not isinstance(token_mask, torch.Tensor):
        raise TypeError(f"{op}: token_mask must be a tensor [B, S] or None, got {type(token_mask).__name__}")
    if tuple(token_mask.shape) != (batch, seq):
        raise ValueError(f"{op}: token_mask must have shape [B, S] = [{batch}, {seq}], got "
                         f"{list(token_mask.shape)}")
    return token_mask.to(device)


def _raise_non_finite(op: str, per_layer: torch.Tensor, layer_weights: torch.Tensor,
                      students: list[torch.Tensor], teachers: list[torch.Tensor]) -> None:
    """Called only when the cheap check failed: find and name what is not finite."""
    if not bool(torch.isfinite(layer_weights).all()):
        raise ValueError(f"{op}: layer_weights contains NaN/inf: {layer_weights.tolist()}")
    bad = [i for i, v in enumerate(per_layer.tolist()) if not math.isfinite(v)]
    culprits = []
    for i in bad:
        for name, x in (("student", students[i]), ("teacher", teachers[i])):
            if not bool(torch.isfinite(x).all()):
                culprits.append(f"{name}[{i}]")
    if culprits:
        raise ValueError(f"{op}: NaN/inf in {', '.join(culprits)} (non-finite loss in layer(s) {bad})")
    raise ValueError(f"{op}: the loss of layer(s) {bad} is not finite although the inputs are: the values "
                     f"overflow {per_layer.dtype} (per_layer={per_layer.tolist()})")


# ---------------------------------------------------------------------------------------------------
# Fused path: ddk_fast._C behind torch.library custom ops.
# ---------------------------------------------------------------------------------------------------

def _scaled_grad(grad: torch.Tensor, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad_output * grad in ``dtype``; the saved buffer itself when that is the identity.

    The identity test reads grad_output on the host: free for a CPU tensor in eager mode, a sync on
    CUDA (where the multiply, one pass at memory bandwidth, is cheaper than the sync) and a graph
    break under torch.compile, so it runs only where ``may_read_on_host`` says so.
    """
    if grad.dtype == dtype and _runtime.may_read_on_host(grad_output) and float(grad_output) == 1.0:
        return grad
    return torch.ops.ddk_fast.scale_grad(grad, grad_output.detach(), dtype)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# The fused kernels as torch.library custom ops: opaque to torch.compile (a fake implementation gives
# the output shapes), so a model or objective that uses them compiles without a graph break.

@torch.library.custom_op("ddk_fast::scale_grad", mutates_args=())
def _scale_grad_op(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale in ``dtype`` (the extension's pooled CPU buffers, or a CUDA kernel)."""
    return require_extension().scale_grad(grad, scale, dtype)


@_scale_grad_op.register_fake
def _(grad, scale, dtype):
    return grad.new_empty(grad.shape, dtype=dtype)


@torch.library.custom_op("ddk_fast::layer_loss", mutates_args=())
def _layer_loss_op(students: list[torch.Tensor], teachers: list[torch.Tensor], layer_weights: torch.Tensor,
                   token_mask: torch.Tensor | None, op: str, need_grad: bool,
                   stacked: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total = sum_l w_l * per_layer_l, per_layer [L], grad [L, ...] of total w.r.t. the students, or an
    empty tensor without ``need_grad``) in one extension call. ``stacked``: ``students`` is one [L, ...]
    tensor."""
    layers = list(students[0].unbind(0)) if stacked else list(students)
    per_layer, grad = require_extension().layer_loss(layers, teachers, layer_weights, token_mask, op, need_grad)
    total = (per_layer * layer_weights.to(per_layer.dtype)).sum()
    return total, per_layer, grad if grad is not None else per_layer.new_empty((0,))


@_layer_loss_op.register_fake
def _(students, teachers, layer_weights, token_mask, op, need_grad, stacked):
    first = students[0]
    count, shape = (first.shape[0], first.shape[1:]) if stacked else (len(students), first.shape)
    acc = _acc_dtype(first.dtype)
    grad = first.new_empty((count, *shape) if need_grad else (0,), dtype=acc)
    return first.new_empty((), dtype=acc), first.new_empty((count,), dtype=acc), grad


def _layer_loss_setup(ctx, inputs, output):
    students, teachers, layer_weights, _, _, need_grad, stacked = inputs
    _, per_layer, grad = output
    ctx.save_for_backward(grad, per_layer)
    ctx.stacked, ctx.need_grad, ctx.counts = stacked, need_grad, (len(students), len(teachers))
    ctx.student_dtype, ctx.weights_dtype = students[0].dtype, layer_weights.dtype
    ctx.set_materialize_grads(False)  # per_layer is for monitoring and grad is internal: no zeros for them


def _layer_loss_backward(ctx, grad_total, _grad_per_layer, _grad_grad):
    grad, per_layer = ctx.saved_tensors
    n_students, n_teachers = ctx.counts
    grad_weights, student_grads = None, [None] * n_students
    if grad_total is not None and ctx.needs_input_grad[2]:
        grad_weights = (grad_total * per_layer).to(ctx.weights_dtype)
    if grad_total is not None and ctx.need_grad and ctx.needs_input_grad[0]:
        full = _scaled_grad(grad, grad_total, ctx.student_dtype)
        student_grads = [full] if ctx.stacked else list(full.unbind(0))
    return student_grads, [None] * n_teachers, grad_weights, None, None, None, None


_layer_loss_op.register_autograd(_layer_loss_backward, setup_context=_layer_loss_setup)


@torch.library.custom_op("ddk_fast::soft_cross_entropy", mutates_args=())
def _soft_ce_op(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad of loss w.r.t. student_logits, or an empty tensor without ``need_grad``)."""
    row_loss, grad = require_extension().soft_ce(student_logits, teacher_logits, temperature, need_grad)
    loss = (row_loss.sum(dtype=torch.float64) * (temperature**2 / row_loss.numel())).to(row_loss.dtype)
    return loss, grad if grad is not None else row_loss.new_empty((0,))


@_soft_ce_op.register_fake
def _(student_logits, teacher_logits, temperature, need_grad):
    acc = _acc_dtype(student_logits.dtype)
    grad = student_logits.new_empty(student_logits.shape if need_grad else (0,), dtype=acc)
    return student_logits.new_empty((), dtype=acc), grad


def _soft_ce_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.student_dtype, ctx.need_grad = inputs[0].dtype, inputs[3]
    ctx.set_materialize_grads(False)


def _soft_ce_backward(ctx, grad_loss, _grad_grad):
    (grad,) = ctx.saved_tensors
    if grad_loss is None or not ctx.need_grad or not ctx.needs_input_grad[0]:
        return None, None, None, None
    return _scaled_grad(grad, grad_loss, ctx.student_dtype), None, None, None


_soft_ce_op.register_autograd(_soft_ce_backward, setup_context=_soft_ce_setup)


def _layer_loss(op_name: str, public: str, student: Layers, teacher: Layers, layer_weights, token_mask,
                kind: str, kinds: tuple[str, ...], path: str, return_per_layer: bool, check_finite: bool):
    attention = public == "attention_distill_loss"
    layout = "[B, A, S, S]" if attention else "[B, S, d]"
    _check_kind(public, kind, kinds)
    students, stacked = _layers(student, "student", 4 if attention else 3, layout)
    teachers, _ = _layers(teacher, "teacher", 4 if attention else 3, layout)
    _check_pairs(public, students, teachers, attention)
    first = students[0]
    device = first.device
    teachers = [t.detach().to(first.dtype) for t in teachers]
    weights = _check_weights(public, layer_weights, len(students), device)
    seq = first.shape[2] if attention else first.shape[1]
    mask = _check_mask(public, token_mask, first.shape[0], seq, device)
    chosen = resolve_path(public, "loss", path, device)
    if chosen == "fused":
        need_grad = torch.is_grad_enabled() and any(s.requires_grad for s in students)
        inputs = [student] if stacked else list(students)
        total, per_layer, _ = _layer_loss_op(inputs, teachers, weights, mask, f"{op_name}_{kind}", need_grad, stacked)
    else:
        reference = attention_distill_loss_reference if attention else hidden_distill_loss_reference
        total, per_layer = reference(students, teachers, weights, mask, kind)
    if check_finite and not bool(torch.isfinite(per_layer).all() & torch.isfinite(weights).all()):
        _raise_non_finite(public, per_layer.detach(), weights.detach(), students, teachers)
    return (total, per_layer.detach()) if return_per_layer else total


# ---------------------------------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------------------------------

def hidden_distill_loss(student: Layers, teacher: Layers, layer_weights, token_mask=None, kind: str = "mse",
                        path: str = "auto", *, return_per_layer: bool = False, check_finite: bool = True):
    """Weighted sum over layers of a hidden-state distillation loss.

    Args:
        student, teacher: L tensors [B, S, d] (or stacked [L, B, S, d]) of the same d -- project the
            student outside when widths differ. float32/float64/bfloat16/float16.
        layer_weights: [L]; may require grad (it receives grad_output * per_layer).
        token_mask: [B, S] (nonzero = token) or None.
        kind: ``"mse"`` (mean over valid tokens and d of (s - t)^2) or ``"cosine"`` (mean over valid
            tokens of 1 - cos(s, t)).
        path: ``"auto"`` | ``"fused"`` | ``"reference"``.
        return_per_layer: also return the detached unweighted per-layer values [L].
        check_finite: raise ValueError on NaN/inf (see the module docstring for the cost).

    Returns:
        ``total`` (0-d float32, float64 for float64 inputs), or ``(total, per_layer)``.
    """
    return _layer_loss("hidden", "hidden_distill_loss", student, teacher, layer_weights, token_mask, kind,
                       HIDDEN_KINDS, path, return_per_layer, check_finite)


def attention_distill_loss(student: Layers, teacher: Layers, layer_weights, token_mask=None, kind: str = "kl",
                           path: str = "auto", *, return_per_layer: bool = False, check_finite: bool = True):
    """Weighted sum over layers of an attention-distribution distillation loss.

    Args:
        student, teacher: L tensors [B, A, S, S] (or stacked [L, B, A, S, S]) of attention *scores*
            (before softmax, no mask applied), same head count A.
        layer_weights: [L]; may require grad.
        token_mask: [B, S] or None. Keys with mask 0 are left out of the softmax; only query rows with
            mask != 0 count.
        kind: ``"kl"`` (KL(softmax(t) || softmax(s)) summed over keys, mean over batch, heads and
            valid rows) or ``"mse"`` (mean over valid (row, key) entries of (softmax(s) - softmax(t))^2).
        path, return_per_layer, check_finite: as in :func:`hidden_distill_loss`.
    """
    return _layer_loss("attention", "attention_distill_loss", student, teacher, layer_weights, token_mask,
                       kind, ATTENTION_KINDS, path, return_per_layer, check_finite)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                       path: str = "auto", *, check_finite: bool = True) -> torch.Tensor:
    """Prediction distillation: T^2 * mean_b -sum_c softmax(t / T)_c log_softmax(s / T)_c.

    Args:
        student_logits, teacher_logits: [B, C], B >= 1; a teacher of another dtype is cast.
        temperature: T > 0.
        path: ``"auto"`` | ``"fused"`` | ``"reference"``.
    Returns:
        0-d float32 (float64 for float64 logits); gradient to student_logits only.
    """
    op = "soft_cross_entropy"
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor [B, C], got {type(x).__name__}")
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{op}: {name} must be [B, C] with B >= 1, got shape {tuple(x.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"{op}: teacher_logits has shape {tuple(teacher_logits.shape)} but student_logits "
                         f"has {tuple(student_logits.shape)}")
    if not student_logits.is_floating_point():
        raise ValueError(f"{op}: student_logits must be floating point, got {student_logits.dtype}")
    if teacher_logits.device != student_logits.device:
        raise ValueError(f"{op}: teacher_logits is on {teacher_logits.device} but student_logits is on "
                         f"{student_logits.device}")
    if teacher_logits.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op}: teacher_logits requires grad, but the teacher gets no gradient here; pass "
                         "teacher_logits.detach()")
    if not float(temperature) > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    chosen = resolve_path(op, "loss", path, student_logits.device)
    if chosen == "fused":
        need_grad = torch.is_grad_enabled() and student_logits.requires_grad
        loss, _ = _soft_ce_op(student_logits, teacher_logits, float(temperature), need_grad)
    else:
        loss = soft_cross_entropy_reference(student_logits, teacher_logits, float(temperature))
    if check_finite and not bool(torch.isfinite(loss)):
        culprits = [n for n, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits))
                    if not bool(torch.isfinite(x).all())]
        what = f"NaN/inf in {', '.join(culprits)}" if culprits else "the values overflow"
        raise ValueError(f"{op}: the loss is not finite ({what})")
    return loss
