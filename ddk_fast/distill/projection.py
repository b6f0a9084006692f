"""Learned linear map from the student's hidden width to the teacher's (TinyBERT's W_h).

When the widths are equal the map is the identity and holds no parameters: a width-pruned student
(heads and FFN channels removed) keeps the teacher's hidden size, and an extra learned map there would
only let the student match the teacher up to a rotation it never has to learn.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn


class HiddenProjection(nn.Module):
    """``proj(states_list) -> list`` or ``proj(tensor, index=0) -> tensor``.

    Args:
        student_dim, teacher_dim: widths.
        num_states: how many states get their own map when ``shared=False``.
        shared: one map for every state (TinyBERT) or one per state.
        bias: whether the maps have a bias.
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_states: int = 1, shared: bool = True, bias: bool = True):
        super().__init__()
        if int(student_dim) <= 0 or int(teacher_dim) <= 0 or int(num_states) <= 0:
            raise ValueError(f"student_dim={student_dim}, teacher_dim={teacher_dim}, num_states={num_states}: "
                             f"expected positive integers")
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.num_states, self.shared = int(num_states), bool(shared)
        self.is_identity = self.student_dim == self.teacher_dim
        count = 0 if self.is_identity else (1 if self.shared else self.num_states)
        self.maps = nn.ModuleList(nn.Linear(self.student_dim, self.teacher_dim, bias=bias) for _ in range(count))

    def project(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        if x.shape[-1] != self.student_dim:
            raise ValueError(f"state of width {x.shape[-1]}: expected student_dim={self.student_dim}")
        if self.is_identity:
            return x
        if not self.shared and not 0 <= index < self.num_states:
            raise ValueError(f"index={index}: expected 0 <= index < num_states={self.num_states}")
        return self.maps[0 if self.shared else index](x)

    def forward(self, states: Union[torch.Tensor, Sequence[torch.Tensor]], index: Optional[int] = None):
        if isinstance(states, torch.Tensor):
            return self.project(states, 0 if index is None else index)
        if not self.shared and not self.is_identity and len(states) != self.num_states:
            raise ValueError(f"got {len(states)} states: expected num_states={self.num_states}")
        return [self.project(s, i) for i, s in enumerate(states)]

    def extra_repr(self):
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, shared={self.shared}, identity={self.is_identity}"
