"""What every structure search offers, and the structure it derives.

A search owns architecture parameters over "how many heads / FFN channels does layer l keep" and
hands gates to the masked model.  Gates are padded to ``[L, max(num_heads)]`` and
``[L, max(intermediate)]``; units beyond a layer's own size are always 0.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn

from ddk_fast.model.structure import Structure
from ddk_fast.search.cost import CostModel, _as_int_list


@dataclass
class DerivedStructure:
    """Kept unit indices per layer (sorted ascending): ``heads[l]`` and ``ffn[l]``."""

    heads: List[List[int]] = field(default_factory=list)
    ffn: List[List[int]] = field(default_factory=list)

    def __post_init__(self):
        if len(self.heads) != len(self.ffn):
            raise ValueError(f"heads has {len(self.heads)} layers, ffn has {len(self.ffn)}: expected equal")
        self.heads = [sorted(int(i) for i in h) for h in self.heads]
        self.ffn = [sorted(int(i) for i in f) for f in self.ffn]

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def head_counts(self) -> List[int]:
        return [len(h) for h in self.heads]

    @property
    def ffn_counts(self) -> List[int]:
        return [len(f) for f in self.ffn]

    def cost(self, cost_model: CostModel, metric: Optional[str] = None) -> float:
        return cost_model.structure_cost(self.head_counts, self.ffn_counts, metric)

    def ratio(self, cost_model: CostModel, metric: Optional[str] = None) -> float:
        return self.cost(cost_model, metric) / cost_model.full_cost(metric)

    def pruned_heads(self, num_heads: Sequence[int]) -> dict:
        """Removed heads per layer, in the form of ``config.pruned_heads`` ({layer: [head, ...]})."""
        return {l: [h for h in range(n) if h not in set(kept)]
                for l, (n, kept) in enumerate(zip(num_heads, self.heads)) if len(kept) < n}

    def gates(self, num_heads: Sequence[int], intermediate: Sequence[int], dtype=torch.float32, device=None):
        """0/1 gates ``[L, max(num_heads)]``, ``[L, max(intermediate)]`` for this structure."""
        head_gates = torch.zeros(self.num_layers, max(num_heads), dtype=dtype, device=device)
        ffn_gates = torch.zeros(self.num_layers, max(intermediate), dtype=dtype, device=device)
        for l in range(self.num_layers):
            head_gates[l, self.heads[l]] = 1
            ffn_gates[l, self.ffn[l]] = 1
        return head_gates, ffn_gates

    def to_structure(self, model_or_config):
        """The ``ddk_fast.model.Structure`` (what pruning and export take) for a model's sizes."""
        return Structure.from_indices(self.heads, self.ffn, model_or_config)

    def to_dict(self) -> dict:
        return {"heads": self.heads, "ffn": self.ffn}

    @classmethod
    def from_dict(cls, data: dict) -> "DerivedStructure":
        return cls(heads=data["heads"], ffn=data["ffn"])


class StructureSearch(nn.Module):
    """Base class: stores the search space sizes and provides the shared helpers."""

    #: whether ``update_importance`` must be fed (units are ranked by an importance score)
    needs_importance = False

    def __init__(self, num_heads: Sequence[int], intermediate: Sequence[int]):
        super().__init__()
        self.num_heads = _as_int_list("num_heads", num_heads)
        self.intermediate = _as_int_list("intermediate", intermediate, len(self.num_heads))
        if not self.num_heads:
            raise ValueError("num_heads=[]: expected at least one layer")
        self.register_buffer("head_unit_valid", self._valid_units(self.num_heads), persistent=False)
        self.register_buffer("ffn_unit_valid", self._valid_units(self.intermediate), persistent=False)

    @staticmethod
    def _valid_units(sizes):
        return torch.arange(max(sizes))[None, :] < torch.tensor(sizes)[:, None]

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    def on_step(self, step: int, temperature: float) -> None:
        """Called by the training loop before each step's ``sample``: the step within the search (from 0) and
        the annealed temperature of that step. Nothing by default; a search that follows a schedule or samples
        at a temperature takes what it needs, so loops drive every search the same way."""

    def arch_parameters(self) -> List[nn.Parameter]:
        """Parameters that define the architecture distribution (their own optimizer / lr)."""
        return [p for p in self.parameters()]

    def check_cost_model(self, cost_model: CostModel):
        if cost_model.num_heads != self.num_heads or cost_model.intermediate != self.intermediate:
            raise ValueError(f"cost model sizes (heads {cost_model.num_heads}, intermediate "
                             f"{cost_model.intermediate}) differ from the search space (heads {self.num_heads}, "
                             f"intermediate {self.intermediate})")

    def expected_ratio(self, cost_model: CostModel, metric: Optional[str] = None) -> torch.Tensor:
        """E[C] / C_full (differentiable)."""
        return self.expected_cost(cost_model, metric) / cost_model.full_cost(metric)

    def expected_cost(self, cost_model: CostModel, metric: Optional[str] = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, tau: Optional[float] = None):
        raise NotImplementedError

    def derive(self, cost_model: Optional[CostModel] = None, target: Optional[float] = None,
               metric: Optional[str] = None) -> DerivedStructure:
        raise NotImplementedError

    def _pad_scores(self, name, scores, sizes):
        """Accept ``[L, max]`` tensors or per-layer lists; return ``[L, max]`` with padding zeros."""
        width = max(sizes)
        if isinstance(scores, (list, tuple)):
            if len(scores) != len(sizes):
                raise ValueError(f"{name} has {len(scores)} layers: expected {len(sizes)}")
            out = torch.zeros(len(sizes), width)
            for l, (s, n) in enumerate(zip(scores, sizes)):
                s = torch.as_tensor(s, dtype=torch.float32).flatten()
                if s.numel() != n:
                    raise ValueError(f"{name}[{l}] has {s.numel()} entries: expected {n}")
                out[l, :n] = s
            return out
        scores = torch.as_tensor(scores).detach().float()
        if tuple(scores.shape) != (len(sizes), width):
            raise ValueError(f"{name} shape {tuple(scores.shape)}: expected ({len(sizes)}, {width})")
        return scores


def rank_units(importance: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of each unit within its layer (0 = most important); ties go to the lower index and
    padding units rank last."""
    scores = importance.masked_fill(~valid, -math.inf)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


class RankedUnitsMixin:
    """Importance scores per unit (buffers ``head_importance`` [L, H], ``ffn_importance`` [L, I]) for
    searches that keep the top units of a ranking.  Call ``_init_importance`` in ``__init__``."""

    needs_importance = True

    def _init_importance(self, momentum, head_importance=None, ffn_importance=None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"importance_momentum={momentum}: expected a value in [0, 1)")
        self.importance_momentum = float(momentum)
        self.register_buffer("head_importance", torch.zeros(self.num_layers, max(self.num_heads)))
        self.register_buffer("ffn_importance", torch.zeros(self.num_layers, max(self.intermediate)))
        if head_importance is not None or ffn_importance is not None:
            self.set_importance(head_importance, ffn_importance)

    def set_importance(self, head_scores=None, ffn_scores=None):
        """Replace the ranking scores ([L, H] / [L, I] tensors or per-layer lists; None: unchanged)."""
        if head_scores is not None:
            self.head_importance.copy_(self._pad_scores("head_scores", head_scores, self.num_heads))
        if ffn_scores is not None:
            self.ffn_importance.copy_(self._pad_scores("ffn_scores", ffn_scores, self.intermediate))

    @torch.no_grad()
    def update_importance(self, head_scores=None, ffn_scores=None, head_active=None, ffn_active=None):
        """EMA update of the ranking scores with e.g. Taylor scores |a * dL/da| (``|gate * gate.grad|``).

        ``head_active`` / ``ffn_active`` (bool, same shape): only those units are updated.  Pass the
        sampled gates > 0: a unit whose gate was 0 got no gradient, and a 0 score would wrongly push
        it further down the ranking.
        """
        m = self.importance_momentum
        for name, scores, active, buf, sizes in (
                ("head_scores", head_scores, head_active, self.head_importance, self.num_heads),
                ("ffn_scores", ffn_scores, ffn_active, self.ffn_importance, self.intermediate)):
            if scores is None:
                continue
            scores = self._pad_scores(name, scores, sizes).to(buf.device)
            updated = m * buf + (1.0 - m) * scores
            if active is not None:
                active = self._pad_scores(name.replace("scores", "active"), active, sizes).to(buf.device) > 0
                updated = torch.where(active, updated, buf)
            buf.copy_(updated)

    def _keep_top(self, head_counts, ffn_counts) -> DerivedStructure:
        """The ``counts[l]`` most important units of each layer."""
        structure = {}
        for kind, cnts in (("head", head_counts), ("ffn", ffn_counts)):
            ranks = rank_units(getattr(self, f"{kind}_importance"), getattr(self, f"{kind}_unit_valid"))
            structure[kind] = [torch.nonzero(ranks[l] < cnts[l]).flatten().tolist() for l in range(self.num_layers)]
        return DerivedStructure(heads=structure["head"], ffn=structure["ffn"])
