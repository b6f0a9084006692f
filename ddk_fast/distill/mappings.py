"""Layer mappings: which teacher state(s) supervise each student state.

States are lists of ``[B, S, d]`` tensors with the embedding output at index 0, so a teacher with
``Lt`` layers gives ``Lt + 1`` states and a student with ``Ls`` layers ``Ls + 1``.  Student layer
``m`` (1..Ls) gets a target built from teacher layers; with ``include_embeddings`` the student
embeddings (index 0) are matched to the teacher embeddings as well (TinyBERT's g(0) = 0).

Every mapping answers ``align(student_states, teacher_states, token_mask=None) -> (students,
teachers)``: two equal-length lists ready for ``ddk_fast.ops.hidden_distill_loss``.  Static mappings
(all but "argmin") also answer ``targets(teacher_states) -> [one tensor per student state]``.
When widths differ, project the student states first (``HiddenProjection``).

Names (the TinyBERT KD study's mappings, plus two dynamic ones):
    uniform  student m -> teacher m * Lt // Ls (every k-th layer; TinyBERT's default)
    last     student m -> teacher Lt - Ls + m (the top Ls layers)
    skip     student m -> teacher m (the first Ls layers)
    random   a sorted random subset of Ls teacher layers, fixed from ``seed`` or resampled each call
    mean     student m -> mean of its group of teacher layers ((m-1)*Lt//Ls, m*Lt//Ls]
    argmin   CoFi's dynamic mapping: each chosen teacher layer is matched to the student layer with
             the smallest current MSE (or, direction="student", each student layer to its closest
             teacher layer)
    fusion   student m -> recursively fused teacher state F_g(m) at the uniform position (DDK /
             GPP-DFD); optional sliding-window fusion of the student states
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ddk_fast.distill.fusion import recursive_fusion, window_fusion


def _masked_mse(a: torch.Tensor, b: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    diff = (a.float() - b.float()).pow(2)
    if token_mask is None:
        return diff.mean()
    mask = token_mask.to(diff.dtype).unsqueeze(-1)
    return (diff * mask).sum() / (mask.sum() * diff.shape[-1]).clamp_min(1)


class LayerMapping:
    """Base class: sizes, checks and the default ``align``."""

    name = "base"
    dynamic = False

    def __init__(self, num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = True):
        ls, lt = int(num_student_layers), int(num_teacher_layers)
        if ls < 1 or lt < 1:
            raise ValueError(f"num_student_layers={num_student_layers}, num_teacher_layers={num_teacher_layers}: "
                             f"expected positive integers")
        if ls > lt:
            raise ValueError(f"num_student_layers={ls} > num_teacher_layers={lt}: a {self.name!r} mapping expects "
                             f"a student no deeper than its teacher")
        self.num_student_layers, self.num_teacher_layers = ls, lt
        self.include_embeddings = bool(include_embeddings)

    def _check(self, states, expected, who):
        if len(states) != expected + 1:
            raise ValueError(f"{who}_states has {len(states)} entries: expected {expected + 1} "
                             f"(embedding output + {expected} layers)")

    def _student_side(self, student_states):
        self._check(student_states, self.num_student_layers, "student")
        return list(student_states) if self.include_embeddings else list(student_states[1:])

    def layer_targets(self, teacher_states, token_mask=None) -> List[torch.Tensor]:
        """Targets of student layers 1..Ls."""
        raise NotImplementedError

    def targets(self, teacher_states: Sequence[torch.Tensor], token_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """One target per student state (``Ls + 1`` with embeddings, else ``Ls``)."""
        self._check(teacher_states, self.num_teacher_layers, "teacher")
        out = self.layer_targets(teacher_states, token_mask)
        return [teacher_states[0]] + out if self.include_embeddings else out

    def align(self, student_states, teacher_states, token_mask=None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return self._student_side(student_states), self.targets(teacher_states, token_mask)

    def __repr__(self):
        return (f"{type(self).__name__}(student={self.num_student_layers}, teacher={self.num_teacher_layers}, "
                f"include_embeddings={self.include_embeddings})")


class _IndexMapping(LayerMapping):
    """Student layer m -> one teacher layer ``teacher_layers()[m - 1]``."""

    def teacher_layers(self) -> List[int]:
        raise NotImplementedError

    def layer_targets(self, teacher_states, token_mask=None):
        return [teacher_states[t] for t in self.teacher_layers()]


class UniformMapping(_IndexMapping):
    name = "uniform"

    def teacher_layers(self):
        ls, lt = self.num_student_layers, self.num_teacher_layers
        return [m * lt // ls for m in range(1, ls + 1)]


class LastMapping(_IndexMapping):
    name = "last"

    def teacher_layers(self):
        ls, lt = self.num_student_layers, self.num_teacher_layers
        return [lt - ls + m for m in range(1, ls + 1)]


class SkipMapping(_IndexMapping):
    """The first Ls teacher layers (the study's "skip": the top teacher layers are skipped)."""
    name = "skip"

    def teacher_layers(self):
        return list(range(1, self.num_student_layers + 1))


class RandomMapping(_IndexMapping):
    """A sorted random subset of teacher layers: fixed from ``seed`` (``resample=False``) or drawn again at
    every call (from a generator seeded once, so a run is still reproducible)."""
    name = "random"

    def __init__(self, num_student_layers, num_teacher_layers, include_embeddings=True, seed: int = 0,
                 resample: bool = False):
        super().__init__(num_student_layers, num_teacher_layers, include_embeddings)
        self.resample = bool(resample)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._layers = self._draw()

    def _draw(self):
        pick = torch.randperm(self.num_teacher_layers, generator=self._generator)[:self.num_student_layers]
        return sorted((pick + 1).tolist())

    def teacher_layers(self):
        return list(self._layers)

    def layer_targets(self, teacher_states, token_mask=None):
        if self.resample:
            self._layers = self._draw()
        return super().layer_targets(teacher_states, token_mask)


def _groups(ls, lt):
    """Teacher layers of student layer m: ((m-1)*lt//ls, m*lt//ls] -- contiguous, covering 1..lt."""
    return [list(range((m - 1) * lt // ls + 1, m * lt // ls + 1)) for m in range(1, ls + 1)]


class MeanMapping(LayerMapping):
    name = "mean"

    def teacher_groups(self):
        return _groups(self.num_student_layers, self.num_teacher_layers)

    def layer_targets(self, teacher_states, token_mask=None):
        return [torch.stack([teacher_states[t] for t in group]).mean(0) for group in self.teacher_groups()]


class FusionMapping(LayerMapping):
    """Student layer m -> fused teacher state at the uniform position g(m) = m * Lt // Ls.

    Args:
        scope: "stack" -- F fused top-down over teacher layers 1..Lt (GPP-DFD's global fusion; layer
            g(m) then carries every layer above it); "group" -- fused only within m's group
            (g(m-1), g(m)], the first entry of the group's recursive fusion.
        fuser: a callable list -> list replacing the parameter-free rule (e.g. ``HighwayFusion``);
            with scope="stack" it gets the Lt layer states.
        weighting, per: for the parameter-free rule (see ``fusion.py``).
        student_window: > 1 fuses each student layer with the ones above it in a sliding window
            (GPP-DFD's local fusion, ``window_fusion``) before pairing.
    """
    name = "fusion"

    def __init__(self, num_student_layers, num_teacher_layers, include_embeddings=True, scope: str = "stack",
                 fuser: Optional[Callable] = None, weighting: str = "norm", per: str = "example",
                 student_window: int = 1, window_mode: str = "flat"):
        super().__init__(num_student_layers, num_teacher_layers, include_embeddings)
        if scope not in ("stack", "group"):
            raise ValueError(f"scope={scope!r}: expected 'stack' or 'group'")
        if int(student_window) < 1:
            raise ValueError(f"student_window={student_window}: expected a positive integer")
        self.scope, self.fuser, self.weighting, self.per = scope, fuser, weighting, per
        self.student_window, self.window_mode = int(student_window), window_mode

    def _fuse(self, states, token_mask):
        if self.fuser is not None:
            return self.fuser(states)
        return recursive_fusion(states, self.weighting, self.per, token_mask)

    def layer_targets(self, teacher_states, token_mask=None):
        ls, lt = self.num_student_layers, self.num_teacher_layers
        if self.scope == "stack":
            fused = [None] + self._fuse(list(teacher_states[1:]), token_mask)
            return [fused[m * lt // ls] for m in range(1, ls + 1)]
        return [self._fuse([teacher_states[t] for t in group], token_mask)[0] for group in _groups(ls, lt)]

    def align(self, student_states, teacher_states, token_mask=None):
        students = self._student_side(student_states)
        if self.student_window > 1:
            offset = 1 if self.include_embeddings else 0
            layers = window_fusion(students[offset:], self.student_window, self.weighting, self.per, token_mask,
                                   mode=self.window_mode)
            students = students[:offset] + layers
        return students, self.targets(teacher_states, token_mask)


class ArgminMapping(LayerMapping):
    """CoFi-style dynamic mapping by current MSE (distances computed without gradient).

    direction="teacher" (CoFi): each teacher layer in ``teacher_layers`` (default: the uniform
    mapping's layers, e.g. 3, 6, 9, 12 for 12 -> 4) is paired with the student layer closest to it; a
    student layer may serve several teacher layers.  direction="student": each student layer is paired
    with its closest teacher layer among ``teacher_layers`` (default: all), which also gives
    ``targets(teacher_states, student_states)``.  ``last_match`` holds the (student, teacher) layer
    pairs of the last call.
    """
    name = "argmin"
    dynamic = True

    def __init__(self, num_student_layers, num_teacher_layers, include_embeddings=True,
                 direction: str = "teacher", teacher_layers: Optional[Sequence[int]] = None):
        super().__init__(num_student_layers, num_teacher_layers, include_embeddings)
        if direction not in ("teacher", "student"):
            raise ValueError(f"direction={direction!r}: expected 'teacher' or 'student'")
        self.direction = direction
        if teacher_layers is None:
            teacher_layers = (UniformMapping(num_student_layers, num_teacher_layers).teacher_layers()
                              if direction == "teacher" else range(1, self.num_teacher_layers + 1))
        self.teacher_layers = [int(t) for t in teacher_layers]
        if not self.teacher_layers or any(not 1 <= t <= self.num_teacher_layers for t in self.teacher_layers):
            raise ValueError(f"teacher_layers={list(teacher_layers)}: expected a non-empty list of layers in "
                             f"1..{self.num_teacher_layers}")
        self.last_match: List[Tuple[int, int]] = []

    @torch.no_grad()
    def distances(self, student_states, teacher_states, token_mask=None) -> torch.Tensor:
        """MSE between student layers 1..Ls (rows) and ``teacher_layers`` (columns)."""
        self._check(student_states, self.num_student_layers, "student")
        self._check(teacher_states, self.num_teacher_layers, "teacher")
        if student_states[1].shape != teacher_states[1].shape:
            raise ValueError(f"student states {tuple(student_states[1].shape)} vs teacher states "
                             f"{tuple(teacher_states[1].shape)}: project the student states to the teacher's width first")
        return torch.stack([torch.stack([_masked_mse(student_states[s], teacher_states[t], token_mask)
                                         for t in self.teacher_layers])
                            for s in range(1, self.num_student_layers + 1)])

    def match(self, student_states, teacher_states, token_mask=None) -> List[Tuple[int, int]]:
        dist = self.distances(student_states, teacher_states, token_mask)
        if self.direction == "teacher":
            pairs = [(int(dist[:, j].argmin()) + 1, t) for j, t in enumerate(self.teacher_layers)]
        else:
            pairs = [(s + 1, self.teacher_layers[int(dist[s].argmin())]) for s in range(self.num_student_layers)]
        self.last_match = pairs
        return pairs

    def align(self, student_states, teacher_states, token_mask=None):
        pairs = self.match(student_states, teacher_states, token_mask)
        students = [student_states[s] for s, _ in pairs]
        teachers = [teacher_states[t] for _, t in pairs]
        if self.include_embeddings:
            students, teachers = [student_states[0]] + students, [teacher_states[0]] + teachers
        return students, teachers

    def targets(self, teacher_states, token_mask=None, student_states=None):
        if self.direction != "student":
            raise ValueError("ArgminMapping(direction='teacher') pairs teacher layers with student layers and gives "
                             "no one-target-per-student-layer list; use align(), or direction='student'")
        if student_states is None:
            raise ValueError("ArgminMapping.targets needs student_states (the mapping depends on them)")
        return self.align(student_states, teacher_states, token_mask)[1]


MAPPINGS = {cls.name: cls for cls in (UniformMapping, LastMapping, SkipMapping, RandomMapping, MeanMapping,
                                      ArgminMapping, FusionMapping)}


def build_mapping(name: str, num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = True,
                  **kwargs) -> LayerMapping:
    """``build_mapping("uniform" | "last" | "skip" | "random" | "mean" | "argmin" | "fusion", Ls, Lt, ...)``."""
    if name not in MAPPINGS:
        raise ValueError(f"name={name!r}: expected one of {sorted(MAPPINGS)}")
    return MAPPINGS[name](num_student_layers, num_teacher_layers, include_embeddings, **kwargs)
