"""Recursive adaptive fusion of hidden states: one target that carries several teacher layers.

Top-down over a list of states ``T_0..T_L`` (each ``[B, S, d]``):

    F_L = T_L,    F_l = a_l * T_l + (1 - a_l) * F_(l+1)

so F_l mixes layer l with everything above it, with geometrically shrinking shares.

Parameter-free weights (GPP-DFD, Zhang et al. 2024) use a_l = m(T_l) / (m(T_l) + m(F_(l+1))):

* ``weighting="sum"`` -- m = sum of the entries, GPP-DFD's exact rule.  Hidden states after
  LayerNorm sum to values of either sign and close to 0, so the ratio can leave [0, 1] or blow up
  (0/0).  Here a denominator that is ~0 relative to the magnitudes involved falls back to a = 1/2;
  otherwise the rule is kept as published.
* ``weighting="norm"`` (default) -- m = L2 norm: the same "larger state, larger share" idea, always
  in [0, 1], and 1/2 when both states are 0.  This is the stable variant.

Weights are computed per example (default; reductions over tokens and channels of each example,
padding excluded through ``token_mask``) or per batch (GPP-DFD).  Per example because an example's
target should not depend on which other examples share its batch, nor on how much padding they need.
The weights are detached by default: they are a choice of target, not a path for gradients (this also
matters for window fusion of *student* states, where a gradient through the weights would let the
student game its own target).

``HighwayFusion`` learns the gate instead (LAD, Lin et al. 2023 style): a_l = sigmoid(W_l [T_l; F_(l+1)] + b_l).
``window_fusion`` fuses a sliding window of (student) states the same way.
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

WEIGHTINGS = ("norm", "sum")
PER = ("example", "batch")


def _check(weighting, per):
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}")
    if per not in PER:
        raise ValueError(f"per={per!r}: expected one of {PER}")


def _check_states(states: Sequence[torch.Tensor]):
    if len(states) == 0:
        raise ValueError("states=[]: expected at least one hidden state")
    shape = states[0].shape
    for i, s in enumerate(states):
        if s.shape != shape:
            raise ValueError(f"states[{i}] has shape {tuple(s.shape)}: expected {tuple(shape)} like states[0]")
        if s.dim() != 3:
            raise ValueError(f"states[{i}] has shape {tuple(s.shape)}: expected [batch, seq, hidden]")


def _measure(x: torch.Tensor, weighting: str, per: str, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """m(x) as ``[B, 1, 1]`` (per example) or a 0-d tensor (per batch), float32 or wider."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if token_mask is not None:
        x = x * token_mask.to(x.dtype).unsqueeze(-1)
    dims = (1, 2) if per == "example" else (0, 1, 2)
    if weighting == "sum":
        m = x.sum(dim=dims)
    else:
        m = x.pow(2).sum(dim=dims).sqrt()
    return m.reshape(-1, 1, 1) if per == "example" else m


def fusion_weights(lower: torch.Tensor, upper: torch.Tensor, weighting: str = "norm", per: str = "example",
                   token_mask: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """a = m(lower) / (m(lower) + m(upper)); ``[B, 1, 1]`` per example or 0-d per batch.

    The share of ``upper`` is ``1 - a``.  Degenerate denominators (|den| <= eps * (|m_l| + |m_u|) + eps)
    give a = 1/2.
    """
    _check(weighting, per)
    m_low = _measure(lower, weighting, per, token_mask)
    m_up = _measure(upper, weighting, per, token_mask)
    den = m_low + m_up
    degenerate = den.abs() <= eps * (m_low.abs() + m_up.abs()) + eps
    safe_den = torch.where(degenerate, torch.ones_like(den), den)
    return torch.where(degenerate, torch.full_like(den, 0.5), m_low / safe_den)


def recursive_fusion(states: Sequence[torch.Tensor], weighting: str = "norm", per: str = "example",
                     token_mask: Optional[torch.Tensor] = None, detach_weights: bool = True,
                     eps: float = 1e-6) -> List[torch.Tensor]:
    """``[F_0, ..., F_L]`` for ``states = [T_0, ..., T_L]`` (see the module docstring); F_L is T_L."""
    _check(weighting, per)
    _check_states(states)
    fused = [None] * len(states)
    fused[-1] = states[-1]
    for l in range(len(states) - 2, -1, -1):
        a = fusion_weights(states[l], fused[l + 1], weighting, per, token_mask, eps)
        if detach_weights:
            a = a.detach()
        a = a.to(states[l].dtype)
        fused[l] = a * states[l] + (1 - a) * fused[l + 1]
    return fused


def window_fusion(states: Sequence[torch.Tensor], window: int, weighting: str = "norm", per: str = "example",
                  token_mask: Optional[torch.Tensor] = None, mode: str = "flat", detach_weights: bool = True,
                  eps: float = 1e-6) -> List[torch.Tensor]:
    """One fused state per position i from ``states[i : i + window]`` (the top is padded by repeating
    the last state, as GPP-DFD does, so the output has ``len(states)`` entries).

    mode="flat" (GPP-DFD's local fusion): sum_j w_j s_j with w_j = m(s_j) / sum_k m(s_k).
    mode="recursive": the window fused top-down like ``recursive_fusion`` (its first entry).
    """
    _check(weighting, per)
    _check_states(states)
    if int(window) < 1:
        raise ValueError(f"window={window}: expected a positive integer")
    if mode not in ("flat", "recursive"):
        raise ValueError(f"mode={mode!r}: expected 'flat' or 'recursive'")
    padded = list(states) + [states[-1]] * (int(window) - 1)
    out = []
    for i in range(len(states)):
        group = padded[i:i + window]
        if mode == "recursive":
            out.append(recursive_fusion(group, weighting, per, token_mask, detach_weights, eps)[0])
            continue
        measures = torch.stack([_measure(s, weighting, per, token_mask) for s in group])
        total = measures.sum(0)
        degenerate = total.abs() <= eps * measures.abs().sum(0) + eps
        weights = torch.where(degenerate, torch.full_like(measures, 1.0 / len(group)),
                              measures / torch.where(degenerate, torch.ones_like(total), total))
        if detach_weights:
            weights = weights.detach()
        out.append(sum(w.to(s.dtype) * s for w, s in zip(weights, group)))
    return out


class HighwayFusion(nn.Module):
    """Learned recursive fusion: a_l = sigmoid(W_l [T_l; F_(l+1)] + b_l), F_l = a_l T_l + (1 - a_l) F_(l+1).

    Args:
        hidden: width d of the states.
        num_states: L + 1 (number of states fused); there are ``num_states - 1`` gates.
        per_channel: gate of width d (one per channel) instead of one scalar per token.
        init_bias: initial b_l; with W initialised to 0 every gate starts at sigmoid(init_bias)
            (0 -> an even mix).
    """

    def __init__(self, hidden: int, num_states: int, per_channel: bool = False, init_bias: float = 0.0):
        super().__init__()
        if int(num_states) < 1 or int(hidden) < 1:
            raise ValueError(f"hidden={hidden}, num_states={num_states}: expected positive integers")
        self.hidden, self.num_states = int(hidden), int(num_states)
        out = self.hidden if per_channel else 1
        self.gates = nn.ModuleList(nn.Linear(2 * self.hidden, out) for _ in range(self.num_states - 1))
        for gate in self.gates:
            nn.init.zeros_(gate.weight)
            nn.init.constant_(gate.bias, float(init_bias))

    def gate(self, l: int, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gates[l](torch.cat([lower, upper], dim=-1)))

    def forward(self, states: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        _check_states(states)
        if len(states) != self.num_states or states[0].shape[-1] != self.hidden:
            raise ValueError(f"got {len(states)} states of width {states[0].shape[-1]}: expected "
                             f"{self.num_states} of width {self.hidden}")
        fused = [None] * len(states)
        fused[-1] = states[-1]
        for l in range(len(states) - 2, -1, -1):
            a = self.gate(l, states[l], fused[l + 1])
            fused[l] = a * states[l] + (1 - a) * fused[l + 1]
        return fused
