"""The one training loop of every run: epoch mode (``finetune``, the ``compress`` stages) and step mode
(``distill``, ``compress --task lm``).

It owns what every run does the same way: the batch order (a loader with the resumable batch sampler,
or a seeded endless iterator), the progress bar, the JSONL/TensorBoard log cadence with one host read of
the step's values at log steps (:func:`host_scalars`), the checkpoint cadence, the "loss is not finite"
stop (:class:`FiniteWatch`, checked at log steps, before checkpoints and before the epoch-end work) and
the testing hooks (:class:`RunHooks`). A run supplies ``step(batch, step, epoch) -> dict`` (forward,
backward, optimizer steps; the values may be device tensors, read at log steps only) and its epoch-end
(or stage-end) work; its step feeds the loop's FiniteWatch.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch

from ddk_fast.runs import ddp
from ddk_fast.runs.checkpoint import latest_checkpoint
from ddk_fast.errors import RunInterrupted, TrainingDiverged
from ddk_fast.runs.logging import progress


class FirstNonFinite:
    """The first step whose loss (or gradient norm, ...) was NaN/inf, tracked on the device.

    Why: ``bool(torch.isfinite(loss))`` every step is a device sync every step. ``observe`` compares
    on the device and keeps the first non-finite value -- its step, name, value and epoch -- in a
    small device tensor; ``read`` fetches that record in one transfer, at the loop's check points.
    """

    def __init__(self):
        self.names: list[str] = []
        self._first = None  # [step, name index, value, epoch]; step -1: nothing non-finite yet

    def observe(self, step: int, epoch: Optional[int], what: str, value: torch.Tensor) -> None:
        """Note ``value`` (one number: a loss, a gradient norm) of ``step``; nothing is read back.
        ``epoch``: None in step mode."""
        if what not in self.names:
            self.names.append(what)
        value = torch.as_tensor(value).detach().reshape(()).to(torch.float64)
        if self._first is None:
            self._first = torch.full((4,), -1.0, dtype=torch.float64, device=value.device)
        record = torch.stack([torch.full_like(value, step), torch.full_like(value, self.names.index(what)), value,
                              torch.full_like(value, -1 if epoch is None else epoch)])
        first_bad = ~torch.isfinite(value) & (self._first[0] < 0)
        self._first = torch.where(first_bad, record, self._first)

    def read(self) -> tuple[int, str, float, Optional[int]] | None:
        """(step, name, value, epoch or None) of the first non-finite value, or None (one host read)."""
        if self._first is None:
            return None
        step, which, value, epoch = self._first.tolist()
        return None if step < 0 else (int(step), self.names[int(which)], value, None if epoch < 0 else int(epoch))


class FiniteWatch(FirstNonFinite):
    """The "loss is not finite" stop of the loop, read at check points instead of every step.

    The steps observe the loss and the gradient norm; the loop calls :meth:`check` at every log step,
    before every checkpoint and before each epoch's evaluation: nothing is saved after the step where
    the run went non-finite, so the weights on disk stay the last good ones (the steps in between change
    only memory), and the error names that step. ``ckpt_root`` None: a run that writes no checkpoints;
    ``stage`` names the stage in step mode, whose step numbers count from each stage's start.
    """

    def __init__(self, ctx, ckpt_root: Optional[str], log, stage: Optional[str] = None):
        super().__init__()
        self.ctx, self.ckpt_root, self.log, self.stage = ctx, ckpt_root, log, stage

    def check(self) -> None:
        """Raise ``TrainingDiverged`` on every rank if any rank observed a NaN/inf."""
        found = self.read()
        if self.ctx.distributed:
            found = min((f for f in ddp.gather_objects(self.ctx, found) if f is not None), default=None)
        if found is None:
            return
        step, what, value, epoch = found
        self.log.log("diverged", step=step, epoch=epoch, what=what, value=value)
        self.log.close()
        if epoch is not None:
            at = f"step {step} (epoch {epoch + 1})"
        else:
            at = f"{self.stage} step {step}" if self.stage else f"step {step}"
        if self.ckpt_root is None:
            raise TrainingDiverged(f"{what} is {value} (not finite) at {at}; lower the learning rate")
        last = latest_checkpoint(self.ckpt_root)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"{what} is {value} (not finite) at {at}; {where}; "
                               "the weights on disk are from before the loss diverged; rerun with a lower --lr and --overwrite "
                               "(--resume continues only with the same settings)")


def host_scalars(values: dict) -> dict:
    """``values`` with every tensor read to a float, one device-to-host transfer per device.

    Why: the step functions return their loss parts as device tensors; reading each one would be a
    device sync per value per step, so the loop reads them together, and only at log steps."""
    by_device: dict = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(key)
    out = dict(values)
    for keys in by_device.values():
        read = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in keys]).tolist()
        out.update(zip(keys, read))
    return out


class RunHooks:
    """The testing hooks of a run, so that no pipeline carries them in its loop.

    ``stop_after_steps``: stop as if killed right after that (global) step, once the step's work is
    done -- its checkpoint, and at the end of an epoch or stage that epoch's or stage's work
    (``RunInterrupted``). ``fault_nan_at_step``: that step's loss becomes NaN (the divergence path)."""

    def __init__(self, stop_after_steps: Optional[int] = None, fault_nan_at_step: Optional[int] = None):
        self.stop_after_steps, self.fault_nan_at_step = stop_after_steps, fault_nan_at_step

    @classmethod
    def of(cls, cfg) -> "RunHooks":
        """The hooks a run config sets (a config without a fault hook has none)."""
        return cls(getattr(cfg, "stop_after_steps", None), getattr(cfg, "fault_nan_at_step", None))

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` of ``step``, made NaN at the fault step."""
        return loss * float("nan") if step == self.fault_nan_at_step else loss

    def stop(self, step: int) -> None:
        if self.stop_after_steps is not None and step >= self.stop_after_steps:
            raise RunInterrupted(f"stopped after step {step} (stop_after_steps)")


def skip_batches(batches: Iterator, count: int) -> None:
    """Advance a seeded endless batch iterator past the ``count`` batches a resumed step-mode run used."""
    for _ in range(count):
        next(batches)


class TrainLoop:
    """Drives ``step`` over batches: :meth:`run_epochs` (epoch mode) or :meth:`run_steps` (step mode).

    The step number the loop passes to ``step``, logs and counts its cadence on is the run's global
    step in epoch mode and the stage's own step in step mode. After every step: at log steps (every
    ``log_steps``, and the last step of an epoch or stage) and checkpoint steps (every ``save_steps``)
    the watch is checked; at log steps the values are read to the host once, logged as event ``stage``
    and handed to ``on_log(step, values)``; at checkpoint steps other than the last of an epoch or stage
    ``save()`` runs (None: a run that writes no checkpoints); then the stop hook."""

    def __init__(self, *, stage: str, step: Callable[[dict, int, Optional[int]], dict], watch: FiniteWatch, log,
                 log_steps: int, save_steps: int, save: Optional[Callable[[], None]] = None,
                 hooks: Optional[RunHooks] = None, progress_bar: bool = False,
                 on_log: Optional[Callable[[int, dict], None]] = None):
        self.stage, self.step, self.watch, self.log = stage, step, watch, log
        self.log_steps, self.save_steps, self.save = log_steps, save_steps, save
        self.hooks = hooks if hooks is not None else RunHooks()
        self.progress_bar, self.on_log = progress_bar, on_log

    def run_epochs(self, loader, state, epochs: int, after_epoch: Callable[[int], None], epoch_offset: int = 0) -> None:
        """Train ``epochs`` epochs from ``state.epoch`` / ``state.batch`` (a resumed position), counting
        ``state.global_step``; ``loader.batch_sampler`` is the resumable sampler (its epoch
        ``epoch_offset + epoch``). At each epoch's end: the watch is checked, ``after_epoch(epoch)``
        runs (evaluation, keeping the best), the position moves to the next epoch and a checkpoint is
        written."""
        per_epoch = loader.batch_sampler.batches_per_epoch()
        for epoch in range(state.epoch, epochs):
            loader.batch_sampler.set_epoch(epoch_offset + epoch, state.batch)
            base = state.global_step - state.batch

            def advance(position, base=base):
                state.batch, state.global_step = position, base + position

            def end_epoch(epoch=epoch):
                self.watch.check()
                after_epoch(epoch)
                state.epoch, state.batch = epoch + 1, 0
                if self.save is not None:
                    self.save()

            self._span(loader, state.batch, per_epoch, epoch, f"{self.stage} {epoch + 1}/{epochs}",
                       count=lambda position, base=base: base + position, advance=advance, end=end_epoch, offset=0)

    def run_steps(self, batches: Iterable, state: dict, steps: int, offset: int = 0,
                  after_stage: Optional[Callable[[], None]] = None) -> None:
        """Train the stage up to ``steps`` steps from ``state['step']`` (a resumed run has already skipped
        the consumed batches, :func:`skip_batches`), advancing ``state['step']``; ``offset``: the run's
        steps before this stage (the stop hook counts the run's steps). ``after_stage()`` runs after the
        last step (the stage boundary), before the stop hook of that step."""
        self._span(batches, state["step"], steps, None, self.stage, count=lambda position: position,
                   advance=lambda position: state.__setitem__("step", position), end=after_stage, offset=offset)

    def _span(self, batches: Iterable, first: int, last: int, epoch: Optional[int], desc: str, *, count, advance,
              end, offset: int) -> None:
        """Steps ``first + 1 .. last`` of one epoch (or stage), then its end work and the last stop hook."""
        # the bar counts positions, not batches: a bar wrapping an endless iterator closes it when dropped
        bar = progress(range(first + 1, last + 1), total=last, initial=first, desc=desc, enabled=self.progress_bar)
        done = None
        for position, batch in zip(bar, batches):
            done = count(position)
            values = self.step(batch, done, epoch)
            advance(position)
            self._after_step(done, epoch, values, position == last, bar)
            if position < last:
                self.hooks.stop(offset + done)
        bar.close()
        if end is not None:
            end()
        if done is not None:
            self.hooks.stop(offset + done)

    def _after_step(self, step: int, epoch: Optional[int], values: dict, last: bool, bar) -> None:
        log_now = step % self.log_steps == 0 or last
        save_step = step % self.save_steps == 0
        if log_now or save_step:  # the only host reads of the step's values
            self.watch.check()
        if log_now:
            values = host_scalars(values)
            if self.progress_bar:
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "ratio", "tau", "lr")})
            self.log.log(self.stage, step=step, **({} if epoch is None else {"epoch": epoch}), **values)
            if self.on_log is not None:
                self.on_log(step, values)
        if save_step and not last and self.save is not None:
            self.save()


__all__ = ["FiniteWatch", "FirstNonFinite", "RunHooks", "TrainLoop", "host_scalars", "skip_batches"]
