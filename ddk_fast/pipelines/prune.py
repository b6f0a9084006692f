"""`ddk-fast prune`: one-shot, retraining-free compression of a fine-tuned teacher (minutes on a CPU).

Fisher importance of every head and FFN channel from ``--calibration-examples`` train examples, the
global mask search under the budget, rearrangement inside each layer, physical pruning and
least-squares unit scales (``ddk_fast.pipelines.oneshot``); then the same export, report.json and plots as
``compress``. The dev score is measured after each stage so the report says what each one bought.
No checkpoints: the whole run takes minutes; an interrupted run leaves the previous output untouched
and is simply started again.
"""
from __future__ import annotations

import os
import shutil
import time

import torch

from ddk_fast.data.custom import task_files
from ddk_fast.data.glue import subsample_indices
from ddk_fast.errors import UserError
from ddk_fast.export import load_pruned, save_pruned
from ddk_fast.pipelines.deploy import add_deployment, check_pruning_run
from ddk_fast.runs.batching import eval_loader
from ddk_fast.pipelines.compress import open_teacher
from ddk_fast.pipelines.configs import PruneConfig
from ddk_fast.runs.config import config_dict
from ddk_fast.runs.evaluation import encode_split, evaluate, load_split, score_of, to_device
from ddk_fast._io import atomic_write_json
from ddk_fast.runs.logging import RunLogger
from ddk_fast.runs.threads import apply_threads
from ddk_fast.pipelines.oneshot import one_shot
from ddk_fast.pipelines.report import Report, build_report, write_plots
from ddk_fast.runs.rundir import copy_logs, finalize, prepare, stage_dir


def validate(cfg: PruneConfig) -> tuple[str, float]:
    metric, ratio = check_pruning_run(cfg)
    if cfg.importance_iterations > 1 and cfg.importance != "fisher":
        raise UserError(f"--importance-iterations {cfg.importance_iterations} needs --importance fisher "
                        "(the masked model's gate gradients)")
    return metric, ratio


def calibration_batches(encoded, cfg, device) -> list[dict]:
    """Encoded calibration examples as batches on ``device`` (longest first, dynamic padding)."""
    return [to_device(b, device) for b in eval_loader(encoded, cfg.batch_size)]


def load_calibration(cfg, spec, log) -> list:
    """``--calibration-examples`` seeded train examples; all of them (said on the console) when the
    train split is smaller."""
    examples = load_split(spec, "train", cfg.data_dir, None, cfg.seed)
    if cfg.calibration_examples > len(examples):
        log(f"--calibration-examples {cfg.calibration_examples} is more than the {len(examples)} train "
            f"examples: using all {len(examples)}")
    keep = subsample_indices(len(examples), min(cfg.calibration_examples, len(examples)), cfg.seed)
    return examples if keep is None else [examples[i] for i in keep]


def gated_logits(model, gates, path):
    head_gates, ffn_gates = gates

    def logits(b):
        return model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids"),
                     head_gates=head_gates, ffn_gates=ffn_gates, path=path).logits

    return logits


class _PruneRun:
    """One pruning run: its inputs, and in ``state`` what it measures for the report."""

    def __init__(self, cfg, spec, metric, ratio, teacher, teacher_path, cost_model, train_ds, dev_ds, threads):
        self.cfg, self.spec, self.metric, self.ratio, self.threads = cfg, spec, metric, ratio, threads
        self.teacher, self.teacher_path, self.cost_model = teacher, teacher_path, cost_model
        self.train_ds, self.dev_ds = train_ds, dev_ds
        self.t_start = time.time()
        self.state = {"teacher_dev": None, "best_metrics": None, "pruned_dev": None, "history": [],
                      "search_summary": None, "times_s": {}}

    def report_source(self) -> Report:
        st = self.state
        return Report(cfg=self.cfg, spec=self.spec, teacher=self.teacher, teacher_path=self.teacher_path,
                      cost_model=self.cost_model, metric=self.metric, ratio=self.ratio,
                      method=f"oneshot-{self.cfg.importance}", train_ds=self.train_ds, dev_ds=self.dev_ds,
                      world_size=1, wall_time_s=time.time() - self.t_start, teacher_dev=st["teacher_dev"],
                      student_dev=st["best_metrics"], pruned_dev=st["pruned_dev"], history=st["history"],
                      search_summary=st["search_summary"], times_s=st["times_s"], threads=self.threads,
                      exported_from="oneshot")


def run_prune(cfg: PruneConfig) -> dict:
    metric, ratio = validate(cfg)
    threads = apply_threads(cfg.threads)
    teacher_path, spec, teacher, tokenizer, cost_model, dirs = open_teacher(cfg, metric, ratio)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    messages = []
    calib_ex = load_calibration(cfg, spec, messages.append)
    dev_ex = load_split(spec, "validation", cfg.data_dir, cfg.max_eval_examples, 0)
    teacher = teacher.to(device).eval().requires_grad_(False)
    calib_ds = encode_split(calib_ex, tokenizer, cfg.max_seq_len)
    dev_ds = encode_split(dev_ex, tokenizer, cfg.max_seq_len)
    calib = calibration_batches(calib_ds, cfg, device)
    prepare(dirs, cfg.overwrite, False, disposable_work=True)
    log = RunLogger(dirs.logs, enabled=True, console=cfg.progress)
    try:
        for m in messages:
            log.info(m)
        run = _PruneRun(cfg, spec, metric, ratio, teacher, teacher_path, cost_model, calib_ds, dev_ds, threads)
        return _run(run, calib, tokenizer, dirs, log, device)
    finally:
        log.close()


def _run(run, calib, tokenizer, dirs, log, device) -> dict:
    cfg, spec, teacher, state = run.cfg, run.spec, run.teacher, run.state
    dev_loader = eval_loader(run.dev_ds, cfg.eval_batch_size)
    log.log("start", step=0, task=spec.name, teacher=run.teacher_path, target=cfg.target,
            calibration_examples=len(run.train_ds), dev_examples=len(run.dev_ds), threads=run.threads,
            config=config_dict(cfg))
    log.info(f"prune {spec.name} to {cfg.target}: {cfg.importance} importance from {len(run.train_ds)} "
             f"calibration examples ({len(calib)} batches), {len(run.dev_ds)} dev examples")

    def dev_score(model, gates=None):
        fn = gated_logits(model, gates or (None, None), cfg.path)
        return evaluate(model, fn, dev_loader, device, spec)

    t0 = time.perf_counter()
    state["teacher_dev"] = dev_score(teacher)
    eval_s = time.perf_counter() - t0
    log.info("teacher dev: " + _fmt(state["teacher_dev"]))
    result = one_shot(teacher, calib, run.cost_model, run.metric, run.ratio, granularity=cfg.channel_granularity,
                      importance=cfg.importance, rearrange_units=cfg.rearrange, tune=cfg.tune, path=cfg.path,
                      ridge=cfg.ridge, tuning_examples=cfg.tuning_examples,
                      tuning_check_examples=cfg.tuning_check_examples, score_logits=score_of(spec),
                      importance_iterations=cfg.importance_iterations)
    stages = [("mask_search", result.searched)]
    if result.rearrangement is not None:
        stages.append(("rearranged", result.structure))
    t0 = time.perf_counter()
    for name, structure in stages:
        gates = structure.gates(teacher.num_heads, teacher.intermediate_sizes, device=device)
        metrics = dev_score(teacher, gates)
        entry = {"stage": name, "epoch": 0, "step": 0, **metrics, "derived_ratio": structure.ratio(run.cost_model,
                 run.metric), "heads": structure.head_counts, "ffn": structure.ffn_counts}
        state["history"].append(entry)
        log.log("eval", **entry)
        log.info(f"after {name.replace('_', ' ')}: dev " + _fmt(metrics))
    student = result.student
    final = dev_score(student)
    eval_s += time.perf_counter() - t0
    tuned = result.tuning is not None and result.tuning.kept is not False
    state["history"].append({"stage": "tuned" if tuned else "pruned", "epoch": 0, "step": 0, **final})
    if result.tuning is not None and result.tuning.kept is not None:
        t = result.tuning
        score = ("" if t.held_out_score_untuned is None else
                 f"score {t.held_out_score_untuned:.4f} untuned, {t.held_out_score_tuned:.4f} tuned; ")
        log.info(f"least-squares tuning {'kept' if tuned else 'dropped'}: held-out calibration {score}"
                 f"loss {t.held_out_loss_untuned:.4f} untuned, {t.held_out_loss_tuned:.4f} tuned")
    log.info(f"after {'least-squares tuning' if tuned else 'pruning'}: dev " + _fmt(final))
    state["best_metrics"] = dict(final, epoch=0)
    state["pruned_dev"] = final
    timings = {k: round(v, 2) for k, v in result.timings.items()}
    timings["evaluation_s"] = round(eval_s, 2)
    state["search_summary"] = {
        "kind": f"oneshot-{cfg.importance}", "derived_ratio": result.structure.ratio(run.cost_model, run.metric),
        "rearrangement": result.rearrangement, "timings_s": timings,
        "tuning": None if result.tuning is None else {
            "error_before": result.tuning.error_before, "error_after": result.tuning.error_after,
            "sublayers_tuned": sum(r["tuned"] for r in result.tuning.rows), "rows": result.tuning.rows,
            "kept": result.tuning.kept, "held_out_loss_untuned": result.tuning.held_out_loss_untuned,
            "held_out_loss_tuned": result.tuning.held_out_loss_tuned,
            "held_out_score_untuned": result.tuning.held_out_score_untuned,
            "held_out_score_tuned": result.tuning.held_out_score_tuned}}
    state["times_s"] = {k[:-2]: v for k, v in timings.items()}
    log.info("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in state["times_s"].items()))
    return _export(run, student.cpu() if device.type != "cpu" else student, tokenizer, dirs, log)


def _export(run, student, tokenizer, dirs, log) -> dict:
    student.eval()
    save_pruned(student, dirs.best, overwrite=True)
    exported = load_pruned(dirs.best)
    report = build_report(run.report_source(), exported)
    staged = stage_dir(dirs)
    try:
        save_pruned(exported, staged, tokenizer=tokenizer, overwrite=True, extra_files=task_files(run.spec))
        add_deployment(report, staged, run.cfg, run.teacher_path, run.spec, run.dev_ds, log.info)
        atomic_write_json(os.path.join(staged, "report.json"), report)
        write_plots(report, staged, log_path=os.path.join(dirs.logs, "log.jsonl"))
        log.log("done", step=0, student_dev=report["student_dev"])
        log.close()
        copy_logs(dirs, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finalize(dirs, staged)
    main = run.spec.main_metric
    log.info(f"pruned model saved to {dirs.output}: dev {main}={report['student_dev'][main]:.4f} (teacher "
             f"{report['teacher_dev'][main]:.4f}), {run.metric} ratio {report[run.metric]['ratio']:.3f}, "
             f"CPU latency x{report['latency']['speedup']}")
    if report["latency"]["warning"]:
        log.info("warning: " + report["latency"]["warning"])
    return dict(report, output=dirs.output)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))


__all__ = ["run_prune", "load_calibration", "calibration_batches"]
