"""``RunState``: what a ``compress`` checkpoint holds besides tensors, optimizer, scheduler and RNG states.

Why a dataclass: the loop position and the measurements so far (dev scores, history, the structure
found, timings) are written at every checkpoint and read back on ``--resume``; one typed record says
what they are, and ``to_dict`` / ``from_dict`` are the only way in and out of a checkpoint, so a field
cannot be saved under one name and read under another.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

SEARCH, DISTILL = "search", "distill"
STAGES = (SEARCH, DISTILL)


def _stage_times() -> dict[str, float]:
    return {"oneshot": 0.0, "search": 0.0, "distill": 0.0, "evaluation": 0.0}


@dataclass
class RunState:
    """Position and measurements of one compression run.

    stage / epoch / batch: where the run is (the batch is the next one of the epoch); global_step: steps
    done over both stages; stage_start_step: global_step when the stage began (schedules count from it).
    best_score / best_metrics / exported_from: the best dev score among the export's candidates so far
    (the one-shot student, the pruned student, each distillation epoch) and which one it was;
    export_candidate: that candidate's identity (``runs.export_slot``: which saved folder it is).
    teacher_dev, pruned_dev, oneshot (the one-shot start's summary), history (one entry per evaluation),
    structure (``Structure.to_dict`` once pruned), search_summary: what the report shows. times_s:
    seconds per part. (The wall time of earlier attempts is the Checkpointer's: it is saved beside this
    state, not in it.)
    """

    stage: str = SEARCH
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    stage_start_step: int = 0
    best_score: float = -math.inf
    best_metrics: Optional[dict] = None
    exported_from: Optional[str] = None
    export_candidate: Optional[str] = None
    teacher_dev: Optional[dict] = None
    pruned_dev: Optional[dict] = None
    history: list = field(default_factory=list)
    structure: Optional[dict] = None
    search_summary: Optional[dict] = None
    oneshot: Optional[dict] = None
    times_s: dict = field(default_factory=_stage_times)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {STAGES}")

    def enter_distill(self, structure: dict) -> None:
        """The search (or the fixed structure) is done: distillation starts at its first batch."""
        self.stage, self.epoch, self.batch, self.stage_start_step = DISTILL, 0, 0, self.global_step
        self.structure = structure

    def to_dict(self) -> dict[str, Any]:
        """Plain python values (what ``torch.load(weights_only=True)`` accepts)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["best_score"] = float(self.best_score)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RunState":
        """The state ``to_dict`` wrote. Fields added since the checkpoint was written keep their defaults;
        keys that are no field raise ValueError (a checkpoint of something else)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"run state has unknown field(s) {unknown}")
        return cls(**data)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


__all__ = ["DISTILL", "SEARCH", "STAGES", "RunState"]
