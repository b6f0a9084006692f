"""Checkpoint / resume for the step-counted runs (``distill``, ``compress --task lm``).

These runs draw batches from a seeded endless iterator, so a checkpoint needs only the tensors of one
module, the optimizer and scheduler states, the RNG state and a small JSON-able loop state; a resumed
run rebuilds its objects, restores them and skips the batches already consumed, then continues bit
for bit. (The epoch-based ``finetune`` / ``compress`` loops keep their own, DDP-aware checkpoints.)
"""
from __future__ import annotations

import json
import shutil
import time
from typing import Optional

import torch

from ddk_fast._io import to_jsonable
from ddk_fast.errors import UserError
from ddk_fast.export.gpt2 import save_causal_lm
from ddk_fast.export.save import save_pruned
from ddk_fast.model.gpt2 import MaskedGPT2
from ddk_fast.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ddk_fast.train.config import config_dict, resume_mismatches
from ddk_fast.train.errors import RunInterrupted
from ddk_fast.train.rundir import copy_logs, finalize, stage_dir


class StepCheckpoints:
    """Checkpoints of one run of ``kind`` in ``dirs.checkpoints``; ``state`` is the caller's loop state."""

    def __init__(self, dirs, kind: str, cfg, log):
        self.dirs, self.kind, self.cfg, self.log = dirs, kind, cfg, log
        self.t_start = time.time()

    def save(self, step: int, state: dict, module: torch.nn.Module, optimizers: dict, schedulers: dict) -> None:
        """Write ``step-<step>`` atomically; ``state['wall_before_s']`` accumulates the time of every attempt."""
        state = dict(state, wall_before_s=state.get("wall_before_s", 0.0) + (time.time() - self.t_start))
        payload = {"optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                   "schedulers": {k: s.state_dict() for k, s in schedulers.items()}, "rng": [rng_state()]}
        meta = {"kind": self.kind, "config": config_dict(self.cfg), "state_json": json.dumps(to_jsonable(state))}
        save_checkpoint(self.dirs.checkpoints, step, module, payload, meta=meta)

    def wall_time(self, state: dict) -> float:
        return round(state.get("wall_before_s", 0.0) + time.time() - self.t_start, 1)

    def load(self) -> Optional[tuple[dict, dict]]:
        """(loop state, checkpoint) of the newest complete checkpoint, or None. Refuses another command's
        run and one started with settings that would change the result."""
        path = latest_checkpoint(self.dirs.checkpoints, warn=self.log.info)
        if path is None:
            self.log.info(f"no complete checkpoint in {self.dirs.checkpoints}; starting from the beginning")
            return None
        tensors, payload, meta = load_checkpoint(path)
        if meta.get("kind") != self.kind:
            raise UserError(f"--resume: {self.dirs.work!r} holds a run of another command ({meta.get('kind')!r}, "
                            f"not {self.kind!r})")
        mism = resume_mismatches(meta.get("config", {}), config_dict(self.cfg))
        if mism:
            raise UserError(f"--resume: the run in {self.dirs.work!r} was started with different settings "
                            f"({'; '.join(mism)})")
        state = json.loads(meta["state_json"])
        self.log.info(f"resumed from {path}")
        self.log.log("resume", step=meta.get("step"), checkpoint=path)
        return state, {"tensors": tensors, "payload": payload}

    @staticmethod
    def restore(checkpoint: dict, module: torch.nn.Module, optimizers: dict, schedulers: dict) -> None:
        """Load into freshly built objects, RNG last (building them consumes random numbers)."""
        module.load_state_dict(checkpoint["tensors"])
        for k, o in optimizers.items():
            o.load_state_dict(checkpoint["payload"]["optimizers"][k])
        for k, s in schedulers.items():
            s.load_state_dict(checkpoint["payload"]["schedulers"][k])
        set_rng_state(checkpoint["payload"]["rng"][0])


def export_model(model, tokenizer, out: str, extra_files: dict) -> str:
    """Atomic export of a MaskedTransformer (``save_pruned``) or MaskedGPT2 (``save_causal_lm``) with extra files."""
    if isinstance(model, MaskedGPT2):
        return save_causal_lm(model, out, tokenizer=tokenizer, extra_files=extra_files, overwrite=True)
    return save_pruned(model, out, tokenizer=tokenizer, extra_files=extra_files, overwrite=True)


def publish(dirs, model, tokenizer, extra_files: dict, keep_work: bool) -> str:
    """Export the finished model (+ report files and the run's logs) into a staged folder, then swap it
    onto the output in one rename: the output is either the previous result or the complete new one."""
    staged = stage_dir(dirs)
    try:
        export_model(model, tokenizer, staged, {name: to_jsonable(value) for name, value in extra_files.items()})
        copy_logs(dirs, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finalize(dirs, staged, keep_work=keep_work)
    return dirs.output


def skip_batches(batches, count: int) -> None:
    """Advance a seeded endless batch iterator past the ``count`` batches a resumed run already used."""
    for _ in range(count):
        next(batches)


def stop_if_asked(stop_after_steps: Optional[int], step: int) -> None:
    """The ``stop_after_steps`` testing hook: stop as if killed right after global step ``step``."""
    if stop_after_steps is not None and step >= stop_after_steps:
        raise RunInterrupted(f"stopped after step {step} (stop_after_steps)")


__all__ = ["StepCheckpoints", "publish", "skip_batches", "stop_if_asked"]
