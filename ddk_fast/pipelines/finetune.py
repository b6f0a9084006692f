"""Teacher fine-tuning: a stock transformers sequence (or token) classifier or QA model, AdamW with linear
warmup/decay, dynamic padding, dev evaluation each epoch, the best epoch kept, checkpoints and exact resume.

The teacher is a plain ``AutoModelForSequenceClassification`` (``AutoModelForTokenClassification`` for
token classification, ``AutoModelForQuestionAnswering`` for extractive QA) on purpose: it is what users
already have, and what ``compress`` consumes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ddk_fast._io import atomic_write_json
from ddk_fast.data.custom import KINDS, write_task_file
from ddk_fast.errors import UserError
from ddk_fast.runs import ddp
from ddk_fast.runs.batching import eval_loader, train_loader
from ddk_fast.runs.checkpoint import weights_digest
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.pipelines.configs import FinetuneConfig
from ddk_fast.runs.config import config_dict, packaged_model_dir
from ddk_fast.runs.evaluation import encode_split, evaluate, load_split, resolve_task, to_device
from ddk_fast.runs.export_slot import ExportSlot
from ddk_fast.runs.hf import label_arguments, load_classifier, logits_of, save_classifier
from ddk_fast.runs.logging import RunLogger
from ddk_fast.runs.loop import FiniteWatch, RunHooks, TrainLoop
from ddk_fast.runs.optim import adamw, linear_schedule
from ddk_fast.runs.options import check_fields
from ddk_fast.runs.rundir import copy_logs, finalize, finished_result, prepare, run_dirs, stage_dir
from ddk_fast.runs.threads import apply_threads
from ddk_fast.runs.validate import check_seq_len


def validate(cfg: FinetuneConfig) -> None:
    if not cfg.output:
        raise UserError("--output is required")
    check_fields(cfg)


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune and write the teacher folder; returns the best dev metrics (with 'output')."""
    validate(cfg)
    threads = apply_threads(cfg.threads)
    model_path = cfg.model or packaged_model_dir()
    spec = resolve_task(cfg.task, cfg, model_path, kinds=KINDS)  # finetune trains multi-label too (BCE)
    dirs = run_dirs(cfg.output)
    ctx = ddp.setup(cfg.device)
    try:
        t_start = time.time()
        # everything the user can get wrong is checked before the output folders are touched
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_classifier(model_path, spec)
        check_seq_len(cfg.max_seq_len, model.config, "--max-seq-len")
        train_ex = load_split(spec, "train", cfg.data_dir, cfg.max_train_examples, cfg.seed)
        dev_ex = load_split(spec, "validation", cfg.data_dir, cfg.max_eval_examples, 0)
        train_ds = encode_split(train_ex, tokenizer, cfg.max_seq_len)
        dev_ds = encode_split(dev_ex, tokenizer, cfg.max_seq_len)
        mode = prepare(dirs, cfg.overwrite, cfg.resume) if ctx.is_main else None
        mode = ddp.broadcast_object(ctx, mode)
        if mode == "done":
            return finished_result(dirs, "metrics.json", config_dict(cfg), announce=ctx.is_main)
        return _train(cfg, spec, model_path, model, tokenizer, train_ds, dev_ds, dirs, ctx, mode, t_start, threads)
    finally:
        ddp.teardown(ctx)


@dataclass
class FinetuneState:
    """Position and measurements of one fine-tuning run (what a checkpoint holds besides tensors).

    epoch / batch: where the run is (the batch is the next one of the epoch); global_step: steps done;
    best_score / best_metrics: the best dev epoch so far; history: one entry per epoch; loss_sum: the
    training losses of this epoch up to the last checkpoint (the rest is summed on the device until then).
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_metrics: Optional[dict] = None
    history: list = field(default_factory=list)
    loss_sum: float = 0.0
    # the identity of the best epoch's saved model (``runs.export_slot``); None in older checkpoints
    export_candidate: Optional[str] = None

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), best_score=float(self.best_score))

    @classmethod
    def from_dict(cls, data: dict, path: str) -> "FinetuneState":
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"--resume: the checkpoint {path!r} holds no finetune run state ({exc})") from None


def _train(cfg, spec, model_path, model, tokenizer, train_ds, dev_ds, dirs, ctx, mode, t_start, threads) -> dict:
    log = RunLogger(dirs.logs, enabled=ctx.is_main, console=cfg.progress)
    try:
        model.to(ctx.device)
        loader = train_loader(train_ds, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
        dev_loader = eval_loader(dev_ds, cfg.eval_batch_size)
        steps_per_epoch = loader.batch_sampler.batches_per_epoch()
        total_steps = steps_per_epoch * cfg.epochs

        optimizer = adamw(model, cfg.lr, cfg.weight_decay)
        scheduler = linear_schedule(optimizer, total_steps, cfg.warmup_ratio)
        optimizers, schedulers = {"weights": optimizer}, {"weights": scheduler}
        checkpoints = Checkpointer(dirs, "finetune", cfg, log, ctx, t_start=t_start)
        state = FinetuneState()
        resumed = checkpoints.load() if mode == "resume" else None
        if resumed is not None:
            state = FinetuneState.from_dict(resumed.state, resumed.path)
            checkpoints.restore(resumed, model, optimizers, schedulers)
        else:
            torch.manual_seed(cfg.seed + 1000 * ctx.rank)
        # best/ changes only after the checkpoint that records the new best epoch (see ExportSlot)
        export = ExportSlot(dirs.best)
        if ctx.is_main:
            warning = export.recover(state.export_candidate if resumed is not None else None)
            if warning:
                log.info(warning)
        train_model = ddp.wrap(model, ctx)
        log.log("start", step=state.global_step, mode=mode, task=spec.name, model=model_path,
                train_examples=len(train_ds), dev_examples=len(dev_ds), steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, world_size=ctx.world_size, threads=threads, config=config_dict(cfg))
        if ctx.is_main:
            log.info(f"finetune {spec.name}: {len(train_ds)} train / {len(dev_ds)} dev examples, "
                     f"{cfg.epochs} epoch(s) x {steps_per_epoch} steps, {mode} run, work folder {dirs.work}")

        model.train()
        watch = FiniteWatch(ctx, dirs.checkpoints, log)
        hooks = RunHooks.of(cfg)
        loss_acc = None  # the losses since the last checkpoint, summed on the device: no host read per step

        def step(batch, gstep, epoch):
            nonlocal loss_acc
            batch = to_device(batch, ctx.device)
            out = train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch.get("token_type_ids"), **label_arguments(spec, batch["labels"]))
            loss = hooks.loss(gstep, out.loss)
            watch.observe(gstep, epoch, "loss", loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            watch.observe(gstep, epoch, "gradient norm", grad_norm)
            optimizer.step()
            scheduler.step()
            loss_acc = loss.detach().double() if loss_acc is None else loss_acc + loss.detach()
            return {"loss": loss.detach(), "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.detach()}

        def add_losses():  # one host read, at checkpoints and at the epoch's end
            nonlocal loss_acc
            if loss_acc is not None:
                state.loss_sum += float(loss_acc)
                loss_acc = None

        def save():
            add_losses()
            checkpoints.save(state.global_step, state.to_dict(), model, optimizers, schedulers,
                             meta={"epoch": state.epoch, "batch": state.batch})
            if ctx.is_main:
                export.commit()  # the checkpoint just written names the pending best epoch

        def after_epoch(epoch):
            add_losses()
            metrics = evaluate(model, lambda b: logits_of(model, b), dev_loader, ctx.device, spec)
            score = metrics[spec.main_metric]
            improved = score > state.best_score
            state.history.append({"epoch": epoch + 1, "step": state.global_step, **metrics,
                                  "train_loss": state.loss_sum / steps_per_epoch})
            log.log("eval", step=state.global_step, epoch=epoch + 1, best=improved, **metrics)
            if ctx.is_main:
                log.info(f"epoch {epoch + 1}: dev " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                         + (" (best)" if improved else ""))
            if improved:
                state.best_score, state.best_metrics = score, dict(metrics, epoch=epoch + 1)
                state.export_candidate = f"train:{epoch + 1}:{state.global_step}"
                if ctx.is_main:
                    export.stage(lambda folder: save_classifier(model, tokenizer, folder), state.export_candidate)
            state.loss_sum = 0.0

        TrainLoop(stage="train", step=step, watch=watch, log=log, log_steps=cfg.log_steps, save_steps=cfg.save_steps,
                  save=save, hooks=hooks, progress_bar=ctx.is_main and cfg.progress).run_epochs(
            loader, state, cfg.epochs, after_epoch)

        result = {"task": spec.name, "main_metric": spec.main_metric, "metric_names": list(spec.metric_names),
                  "dev": state.best_metrics, "history": state.history, "base_model": model_path,
                  "train_examples": len(train_ds), "dev_examples": len(dev_ds), "seed": cfg.seed,
                  "world_size": ctx.world_size, "threads": threads, "wall_time_s": round(checkpoints.wall_time_s(), 1),
                  "config": config_dict(cfg)}
        log.log("done", step=state.global_step, dev=state.best_metrics)
        log.close()
        if ctx.is_main:
            staged = stage_dir(dirs)
            try:
                export.commit()  # a no-op: every epoch's end is followed by a checkpoint
                for name in export.files():
                    shutil.copy2(os.path.join(dirs.best, name), os.path.join(staged, name))
                atomic_write_json(os.path.join(staged, "metrics.json"), result)
                write_task_file(spec, staged)
                copy_logs(dirs, staged)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            finalize(dirs, staged, keep_work=cfg.keep_checkpoints)
            log.info(f"teacher saved to {dirs.output}: dev {spec.main_metric}={state.best_score:.4f}")
        ddp.barrier(ctx)
        # the in-memory weights after the last step, on this rank (ranks must agree under DDP)
        return dict(result, output=dirs.output, final_weights_sha256=weights_digest(model), rank=ctx.rank)
    finally:
        log.close()
