"""The epoch/step driver shared by the compression stages.

It owns what every stage does the same way: resumable batch order, progress bar, JSONL/TensorBoard
logging cadence, checkpoint cadence, the stop-after testing hook, and the "loss is not finite" stop.
A stage supplies ``step(batch, global_step, epoch) -> dict`` (forward, backward, optimizer steps; the
values may be device tensors: they are read to the host at log steps only, see :func:`host_scalars`)
and ``after_epoch(epoch)`` (evaluation, keeping the best); its step feeds the loop's
:class:`FiniteWatch`.
"""
from __future__ import annotations

from typing import Callable

import torch

from ddk_fast.train import ddp
from ddk_fast.train.checkpoint import latest_checkpoint
from ddk_fast.train.errors import RunInterrupted, TrainingDiverged
from ddk_fast.train.logging import progress
from ddk_fast.train.run_state import RunState


class FirstNonFinite:
    """The first step whose loss (or gradient norm, ...) was NaN/inf, tracked on the device.

    Why: ``bool(torch.isfinite(loss))`` every step is a device sync every step. ``observe`` compares
    on the device and keeps the first non-finite value -- its step, name, value and epoch -- in a
    small device tensor; ``read`` fetches that record in one transfer, at the loop's check points.
    """

    def __init__(self):
        self.names: list[str] = []
        self._first = None  # [step, name index, value, epoch]; step -1: nothing non-finite yet

    def observe(self, step: int, epoch: int, what: str, value: torch.Tensor) -> None:
        """Note ``value`` (one number: a loss, a gradient norm) of ``step``; nothing is read back."""
        if what not in self.names:
            self.names.append(what)
        value = torch.as_tensor(value).detach().reshape(()).to(torch.float64)
        if self._first is None:
            self._first = torch.full((4,), -1.0, dtype=torch.float64, device=value.device)
        record = torch.stack([torch.full_like(value, step), torch.full_like(value, self.names.index(what)), value,
                              torch.full_like(value, epoch)])
        first_bad = ~torch.isfinite(value) & (self._first[0] < 0)
        self._first = torch.where(first_bad, record, self._first)

    def read(self) -> tuple[int, str, float, int] | None:
        """(step, name, value, epoch) of the first non-finite value, or None (one host read)."""
        if self._first is None:
            return None
        step, which, value, epoch = self._first.tolist()
        return None if step < 0 else (int(step), self.names[int(which)], value, int(epoch))


class FiniteWatch(FirstNonFinite):
    """The "loss is not finite" stop of the loops, read at check points instead of every step.

    The loops observe the loss before backward and the gradient norm before the optimizer step, and
    call :meth:`check` at every log step, before every checkpoint and before each epoch's evaluation:
    nothing is saved after the step where the run went non-finite, so the weights on disk stay the
    last good ones (the steps in between change only memory), and the error names that step.
    """

    def __init__(self, ctx, ckpt_root: str, log):
        super().__init__()
        self.ctx, self.ckpt_root, self.log = ctx, ckpt_root, log

    def check(self) -> None:
        """Raise ``TrainingDiverged`` on every rank if any rank observed a NaN/inf."""
        found = self.read()
        if self.ctx.distributed:
            found = min((f for f in ddp.gather_objects(self.ctx, found) if f is not None), default=None)
        if found is None:
            return
        step, what, value, epoch = found
        last = latest_checkpoint(self.ckpt_root)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        self.log.log("diverged", step=step, epoch=epoch, what=what, value=value)
        self.log.close()
        raise TrainingDiverged(f"{what} is {value} (not finite) at step {step} (epoch {epoch + 1}); {where}; "
                               f"lower the learning rate and rerun with --resume, or --overwrite to start again")


def host_scalars(values: dict) -> dict:
    """``values`` with every tensor read to a float, one device-to-host transfer per device.

    Why: the step functions return their loss parts as device tensors; reading each one would be a
    device sync per value per step, so the loops read them together, and only at log steps."""
    by_device: dict = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(key)
    out = dict(values)
    for keys in by_device.values():
        read = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in keys]).tolist()
        out.update(zip(keys, read))
    return out


def run_epochs(*, ctx, cfg, log, loader, epochs: int, state: RunState, stage: str, epoch_offset: int,
               step: Callable[[dict, int, int], dict], after_epoch: Callable[[int], None],
               save_ckpt: Callable[[], None], watch: FiniteWatch) -> None:
    """Train ``epochs`` epochs from ``state.epoch`` / ``state.batch`` (a resumed position), counting
    ``state.global_step``.

    ``watch``: the FiniteWatch the step observes; checked at log steps, before checkpoints and
    before ``after_epoch``."""
    steps_per_epoch = loader.batch_sampler.batches_per_epoch()
    for epoch in range(state.epoch, epochs):
        loader.batch_sampler.set_epoch(epoch_offset + epoch, state.batch)
        bar = progress(loader, total=steps_per_epoch, initial=state.batch,
                       desc=f"{stage} {epoch + 1}/{epochs}", enabled=ctx.is_main and cfg.progress)
        for batch in bar:
            gstep = state.global_step + 1
            parts = step(batch, gstep, epoch)
            state.global_step = gstep
            state.batch += 1
            log_now = gstep % cfg.log_steps == 0 or state.batch == steps_per_epoch
            save_now = gstep % cfg.save_steps == 0 and state.batch < steps_per_epoch
            if log_now or save_now:  # the only host reads of the step's values
                watch.check()
            if log_now:
                parts = host_scalars(parts)
                if ctx.is_main and cfg.progress:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in parts.items() if k in ("loss", "ratio", "tau")})
                log.log(stage, step=gstep, epoch=epoch, **parts)
            if save_now:
                save_ckpt()
            if cfg.stop_after_steps is not None and gstep >= cfg.stop_after_steps:
                raise RunInterrupted(f"stopped after step {gstep} (stop_after_steps)")
        bar.close()
        watch.check()
        after_epoch(epoch)
        state.epoch, state.batch = epoch + 1, 0
        save_ckpt()
