"""Teacher fine-tuning: a stock transformers sequence (or token) classifier or QA model, AdamW with linear
warmup/decay, dynamic padding, dev evaluation each epoch, the best epoch kept, checkpoints and exact resume.

The teacher is a plain ``AutoModelForSequenceClassification`` (``AutoModelForTokenClassification`` for
token classification, ``AutoModelForQuestionAnswering`` for extractive QA) on purpose: it is what users
already have, and what ``compress`` consumes.
"""
from __future__ import annotations

import math
import os
import shutil
import time

import torch

from ddk_fast._io import atomic_directory, atomic_write_json
from ddk_fast.data.custom import KINDS, write_task_file
from ddk_fast.errors import UserError
from ddk_fast.train import ddp
from ddk_fast.train.batching import eval_loader, train_loader
from ddk_fast.train.checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
                                       weights_digest)
from ddk_fast.train.config import FinetuneConfig, config_dict, packaged_model_dir, resume_mismatches
from ddk_fast.train.errors import RunInterrupted
from ddk_fast.train.evaluation import encode_split, evaluate, load_split, resolve_task, to_device
from ddk_fast.train.hf import label_arguments, load_classifier, logits_of, save_classifier
from ddk_fast.train.logging import RunLogger, progress
from ddk_fast.train.loop import FiniteWatch, host_scalars
from ddk_fast.train.optim import adamw, linear_schedule
from ddk_fast.train.options import check_fields
from ddk_fast.train.rundir import copy_logs, finalize, finished_result, prepare, run_dirs, stage_dir
from ddk_fast.train.threads import apply_threads
from ddk_fast.train.validate import check_seq_len


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
        state = {"epoch": 0, "batch": 0, "global_step": 0, "best_score": -math.inf, "best_metrics": None,
                 "history": [], "loss_sum": 0.0}
        if mode == "resume":
            state = _resume(cfg, dirs, ctx, model, optimizer, scheduler, log) or state
        else:
            torch.manual_seed(cfg.seed + 1000 * ctx.rank)
        train_model = ddp.wrap(model, ctx)
        log.log("start", step=state["global_step"], mode=mode, task=spec.name, model=model_path,
                train_examples=len(train_ds), dev_examples=len(dev_ds), steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, world_size=ctx.world_size, threads=threads, config=config_dict(cfg))
        if ctx.is_main:
            log.info(f"finetune {spec.name}: {len(train_ds)} train / {len(dev_ds)} dev examples, "
                     f"{cfg.epochs} epoch(s) x {steps_per_epoch} steps, {mode} run, work folder {dirs.work}")

        def save_ckpt():
            rng = ddp.gather_objects(ctx, rng_state())
            if ctx.is_main:
                payload = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "loop": dict(state, best_score=float(state["best_score"])), "rng": rng}
                save_checkpoint(dirs.checkpoints, state["global_step"], model, payload,
                                meta={"epoch": state["epoch"], "batch": state["batch"], "config": config_dict(cfg),
                                      "kind": "finetune"})
            ddp.barrier(ctx)

        model.train()
        watch = FiniteWatch(ctx, dirs.checkpoints, log)
        loss_acc = None
        for epoch in range(state["epoch"], cfg.epochs):
            loader.batch_sampler.set_epoch(epoch, state["batch"])
            bar = progress(loader, total=steps_per_epoch, initial=state["batch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=ctx.is_main and cfg.progress)
            for batch in bar:
                step = state["global_step"] + 1
                batch = to_device(batch, ctx.device)
                out = train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  token_type_ids=batch.get("token_type_ids"), **label_arguments(spec, batch["labels"]))
                loss = out.loss
                if cfg.fault_nan_at_step is not None and step == cfg.fault_nan_at_step:
                    loss = loss * float("nan")
                watch.observe(step, epoch, "loss", loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                watch.observe(step, epoch, "gradient norm", grad_norm)
                optimizer.step()
                scheduler.step()
                state["global_step"] = step
                state["batch"] += 1
                # the losses are summed on the device and read with the log: no host read per step
                loss_acc = loss.detach().double() if loss_acc is None else loss_acc + loss.detach()
                log_now = step % cfg.log_steps == 0
                save_now = step % cfg.save_steps == 0 and state["batch"] < steps_per_epoch
                if log_now or save_now or state["batch"] == steps_per_epoch:
                    watch.check()
                    read = host_scalars({"loss": loss, "sum": loss_acc, "grad_norm": grad_norm})
                    state["loss_sum"] += read["sum"]
                    loss_acc = None
                    if ctx.is_main and cfg.progress:
                        bar.set_postfix(loss=f"{read['loss']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                    if log_now:
                        log.log("train", step=step, epoch=epoch, loss=read["loss"], lr=scheduler.get_last_lr()[0],
                                grad_norm=read["grad_norm"])
                if save_now:
                    save_ckpt()
                if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
                    raise RunInterrupted(f"stopped after step {step} (stop_after_steps)")
            bar.close()
            metrics = evaluate(model, lambda b: logits_of(model, b), dev_loader, ctx.device, spec)
            score = metrics[spec.main_metric]
            improved = score > state["best_score"]
            state["history"].append({"epoch": epoch + 1, "step": state["global_step"], **metrics,
                                     "train_loss": state["loss_sum"] / steps_per_epoch})
            log.log("eval", step=state["global_step"], epoch=epoch + 1, best=improved, **metrics)
            if ctx.is_main:
                log.info(f"epoch {epoch + 1}: dev " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                         + (" (best)" if improved else ""))
            if improved:
                state["best_score"], state["best_metrics"] = score, dict(metrics, epoch=epoch + 1)
                if ctx.is_main:
                    with atomic_directory(dirs.best) as tmp:
                        save_classifier(model, tokenizer, tmp)
            state["epoch"], state["batch"], state["loss_sum"] = epoch + 1, 0, 0.0
            save_ckpt()

        result = {"task": spec.name, "main_metric": spec.main_metric, "metric_names": list(spec.metric_names),
                  "dev": state["best_metrics"], "history": state["history"], "base_model": model_path,
                  "train_examples": len(train_ds), "dev_examples": len(dev_ds), "seed": cfg.seed,
                  "world_size": ctx.world_size, "threads": threads, "wall_time_s": round(time.time() - t_start, 1),
                  "config": config_dict(cfg)}
        log.log("done", step=state["global_step"], dev=state["best_metrics"])
        log.close()
        if ctx.is_main:
            staged = stage_dir(dirs)
            try:
                for name in os.listdir(dirs.best):
                    shutil.copy2(os.path.join(dirs.best, name), os.path.join(staged, name))
                atomic_write_json(os.path.join(staged, "metrics.json"), result)
                write_task_file(spec, staged)
                copy_logs(dirs, staged)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            finalize(dirs, staged, keep_work=cfg.keep_checkpoints)
            log.info(f"teacher saved to {dirs.output}: dev {spec.main_metric}={state['best_score']:.4f}")
        ddp.barrier(ctx)
        # the in-memory weights after the last step, on this rank (ranks must agree under DDP)
        return dict(result, output=dirs.output, final_weights_sha256=weights_digest(model), rank=ctx.rank)
    finally:
        log.close()


def _resume(cfg, dirs, ctx, model, optimizer, scheduler, log):
    path = latest_checkpoint(dirs.checkpoints, warn=log.info if ctx.is_main else None)
    if path is None:
        if ctx.is_main:
            log.info(f"no complete checkpoint in {dirs.checkpoints}; starting from the beginning")
        torch.manual_seed(cfg.seed + 1000 * ctx.rank)
        return None
    tensors, payload, meta = load_checkpoint(path)
    mism = resume_mismatches(meta.get("config", {}), config_dict(cfg))
    if mism:
        raise UserError(f"--resume: the run in {dirs.work!r} was started with different settings ({'; '.join(mism)})")
    if len(payload["rng"]) != ctx.world_size:
        raise UserError(f"--resume: checkpoint was written by {len(payload['rng'])} process(es), now "
                        f"{ctx.world_size}; resume with the same number of processes")
    model.load_state_dict(tensors)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"][ctx.rank])
    loop = dict(payload["loop"])
    if ctx.is_main:
        log.info(f"resumed from {path} (step {loop['global_step']}, epoch {loop['epoch'] + 1}, batch {loop['batch']})")
    log.log("resume", step=loop["global_step"], checkpoint=path)
    return loop
