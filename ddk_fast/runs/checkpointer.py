"""``Checkpointer``: the checkpoints of one run, the same for every command that resumes.

Why one class: what makes ``--resume`` exact and safe is the same for ``finetune``, ``compress``,
``distill`` and ``compress --task lm`` -- the RNG state of every rank, written by the main rank only;
the newest intact checkpoint; refusing another command's run, other settings or another process count;
restoring the module, optimizers and schedulers before the RNG (building them consumes random numbers);
the wall time summed over every attempt. The files themselves are ``ddk_fast.runs.checkpoint``'s.

What a checkpoint holds besides the module tensors: ``state.pt`` = ``{"optimizers": {name: state},
"schedulers": {name: state}, "loop": the run's state (plain values), "rng": [state per rank]}``,
``meta.json`` = ``{"kind", "config", ...}``. Checkpoints of earlier versions are read too: a single
``optimizer`` / ``scheduler`` (``finetune``; restored as ``weights``) and a loop state kept in
``meta["state_json"]`` (``distill``, ``compress --task lm``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ddk_fast._io import to_jsonable
from ddk_fast.errors import UserError
from ddk_fast.runs import ddp
from ddk_fast.runs.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ddk_fast.runs.config import config_dict, resume_mismatches

WALL_KEY = "wall_before_s"  # the loop state's record of the wall time of earlier attempts


@dataclass
class Resumed:
    """A loaded checkpoint: where it is, the loop state the run saved, and what ``restore`` loads."""

    path: str
    state: dict
    meta: dict
    tensors: dict
    optimizers: dict
    schedulers: dict
    rng: list


class Checkpointer:
    """The checkpoints of one run of ``kind`` (the command) in ``dirs.checkpoints``.

    ``cfg``: the run's config (a resume with settings that change the result is refused); ``ctx``: the
    DDP context (a single process by default); ``t_start``: when this attempt began."""

    def __init__(self, dirs, kind: str, cfg, log, ctx: Optional[ddp.DistContext] = None,
                 t_start: Optional[float] = None):
        self.dirs, self.kind, self.cfg, self.log = dirs, kind, cfg, log
        self.ctx = ctx if ctx is not None else ddp.DistContext()
        self.t_start = time.time() if t_start is None else t_start
        self.wall_before_s = 0.0

    def wall_time_s(self) -> float:
        """Seconds of this attempt plus those of the attempts before the resumed checkpoint."""
        return self.wall_before_s + (time.time() - self.t_start)

    def save(self, step: int, state: dict, module: torch.nn.Module, optimizers: dict, schedulers: dict,
             meta: Optional[dict] = None) -> None:
        """Write ``step-<step>`` atomically (main rank; every rank's RNG state gathered), then a barrier.
        ``state``: the loop state (plain values; its wall time is recorded with it); ``meta``: extra
        human-readable fields of ``meta.json``."""
        rng = ddp.gather_objects(self.ctx, rng_state())
        if self.ctx.is_main:
            payload = {"optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                       "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                       "loop": to_jsonable(dict(state, **{WALL_KEY: self.wall_time_s()})), "rng": rng}
            save_checkpoint(self.dirs.checkpoints, step, module, payload,
                            meta={"kind": self.kind, "config": config_dict(self.cfg), **(meta or {})})
        ddp.barrier(self.ctx)

    def load(self) -> Optional[Resumed]:
        """The newest intact checkpoint, or None (the run starts from the beginning). Refuses another
        command's run, one started with settings that would change the result, and one written by
        another number of processes."""
        root, work = self.dirs.checkpoints, self.dirs.work
        path = latest_checkpoint(root, warn=self.log.info)
        if path is None:
            self.log.info(f"no complete checkpoint in {root}; starting from the beginning")
            return None
        tensors, payload, meta = load_checkpoint(path)
        if meta.get("kind") != self.kind:
            raise UserError(f"--resume: {work!r} holds a run of another command ({meta.get('kind')!r}, "
                            f"not {self.kind!r})")
        mism = resume_mismatches(meta.get("config", {}), config_dict(self.cfg))
        if mism:
            raise UserError(f"--resume: the run in {work!r} was started with different settings ({'; '.join(mism)})")
        if len(payload["rng"]) != self.ctx.world_size:
            raise UserError(f"--resume: checkpoint was written by {len(payload['rng'])} process(es), now "
                            f"{self.ctx.world_size}; resume with the same number of processes")
        state = payload["loop"] if "loop" in payload else json.loads(meta["state_json"])
        self.wall_before_s = float(state.pop(WALL_KEY, 0.0))  # the Checkpointer's, not the loop's
        where = ", ".join([f"step {meta.get('step')}"] + [f"{k} {meta[k]}" for k in ("stage", "batch") if k in meta]
                          + ([f"epoch {int(meta['epoch']) + 1}"] if "epoch" in meta else []))
        self.log.info(f"resumed from {path} ({where})")
        self.log.log("resume", step=meta.get("step"), checkpoint=path)
        return Resumed(path, state, meta, tensors, _named(payload, "optimizers", "optimizer"),
                       _named(payload, "schedulers", "scheduler"), payload["rng"])

    def restore(self, resumed: Resumed, module: torch.nn.Module, optimizers: dict, schedulers: dict,
                tensors: Optional[dict] = None) -> None:
        """Load ``resumed`` into freshly built objects, the RNG state last (building them consumes random
        numbers). ``tensors``: the module tensors when the run converted the checkpoint's."""
        try:
            module.load_state_dict(resumed.tensors if tensors is None else tensors)
            for k, o in optimizers.items():
                o.load_state_dict(resumed.optimizers[k])
            for k, s in schedulers.items():
                s.load_state_dict(resumed.schedulers[k])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"--resume: the checkpoint in {self.dirs.work!r} does not fit this run ({first}); "
                            "start it again with --overwrite") from None
        set_rng_state(resumed.rng[self.ctx.rank])


def _named(payload: dict, key: str, single: str) -> dict:
    """The ``{name: state}`` of ``key``; a checkpoint of one optimizer / scheduler (``single``) as ``weights``."""
    if key in payload:
        return payload[key]
    return {"weights": payload[single]} if single in payload else {}


__all__ = ["Checkpointer", "Resumed"]
