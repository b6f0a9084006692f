"""The epoch/step driver shared by the compression stages.

It owns what every stage does the same way: resumable batch order, progress bar, JSONL/TensorBoard
logging cadence, checkpoint cadence, the stop-after testing hook, and the "loss is not finite" stop.
A stage supplies ``step(batch, global_step, epoch) -> dict of floats`` (forward, backward, optimizer
steps) and ``after_epoch(epoch)`` (evaluation, keeping the best).
"""
from __future__ import annotations

from typing import Callable

import torch

from ddk_fast.train import ddp
from ddk_fast.train.checkpoint import latest_checkpoint
from ddk_fast.train.errors import RunInterrupted, TrainingDiverged
from ddk_fast.train.logging import progress


def check_finite(ctx, value: torch.Tensor, what: str, step: int, epoch: int, ckpt_root: str, log) -> None:
    """Stop every rank with a one-line error if ``value`` (the loss, checked before backward; the
    gradient norm, checked before the optimizer step) is NaN/inf. Nothing is updated or saved, so the
    weights on disk stay the last good ones."""
    value = torch.as_tensor(value).detach()
    bad = not bool(torch.isfinite(value).all().item())
    if not ddp.any_true(ctx, bad):
        return
    last = latest_checkpoint(ckpt_root)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    number = float(value.float().reshape(-1)[0])
    log.log("diverged", step=step, epoch=epoch, what=what, value=number)
    log.close()
    raise TrainingDiverged(f"{what} is {number} (not finite) at step {step} (epoch {epoch + 1}); {where}; "
                           f"lower the learning rate and rerun with --resume, or --overwrite to start again")


def run_epochs(*, ctx, cfg, log, loader, epochs: int, state: dict, stage: str, epoch_offset: int,
               step: Callable[[dict, int, int], dict], after_epoch: Callable[[int], None],
               save_ckpt: Callable[[], None]) -> None:
    """Train ``epochs`` epochs from ``state['epoch']`` / ``state['batch']`` (a resumed position)."""
    steps_per_epoch = loader.batch_sampler.batches_per_epoch()
    for epoch in range(state["epoch"], epochs):
        loader.batch_sampler.set_epoch(epoch_offset + epoch, state["batch"])
        bar = progress(loader, total=steps_per_epoch, initial=state["batch"],
                       desc=f"{stage} {epoch + 1}/{epochs}", enabled=ctx.is_main and cfg.progress)
        for batch in bar:
            gstep = state["global_step"] + 1
            parts = step(batch, gstep, epoch)
            state["global_step"] = gstep
            state["batch"] += 1
            if ctx.is_main and cfg.progress:
                bar.set_postfix({k: f"{v:.4g}" for k, v in parts.items() if k in ("loss", "ratio", "tau")})
            if gstep % cfg.log_steps == 0 or state["batch"] == steps_per_epoch:
                log.log(stage, step=gstep, epoch=epoch, **parts)
            if gstep % cfg.save_steps == 0 and state["batch"] < steps_per_epoch:
                save_ckpt()
            if cfg.stop_after_steps is not None and gstep >= cfg.stop_after_steps:
                raise RunInterrupted(f"stopped after step {gstep} (stop_after_steps)")
        bar.close()
        after_epoch(epoch)
        state["epoch"], state["batch"] = epoch + 1, 0
        save_ckpt()
