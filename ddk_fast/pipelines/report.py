"""report.json, structure.png and curves.png for a compression run.

The report answers what a user asks first: how good is the student against the teacher, how much
smaller (encoder parameters, FLOPs at --seq-len) and how much faster (measured CPU latency, same
engine), and what structure was kept per layer; plus seeds, versions and wall time to reproduce it.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ddk_fast._io import atomic_write
from ddk_fast._version import __version__
from ddk_fast.model import encoder_param_count
from ddk_fast.runs.config import config_dict
from ddk_fast.runs.evaluation import constant_baseline
from ddk_fast.runs.latency import compare
from ddk_fast.runs.logging import read_log


def versions() -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "ddk_fast": __version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional
        pass
    return out


@dataclass
class Report:
    """What report.json is built from besides the exported student, handed over by the run (``compress``,
    ``prune``) instead of read from its attributes.

    cfg: the run's config (latency shape, seq_len, seed, target; recorded whole). metric / ratio: the
    budget. method: e.g. "ddk-gumbel", "uniform", "oneshot-fisher"; init: where a search started (None
    without a search). train_ds / dev_ds: the encoded splits (counts, the majority baseline).
    student_dev: the exported student's dev scores; pruned_dev: right after pruning; wall_time_s: all
    attempts of the run together; times_s: seconds per part of the run; threads: the intra-op threads.
    """

    cfg: Any
    spec: Any
    teacher: Any
    teacher_path: str
    cost_model: Any
    metric: str
    ratio: float
    method: str
    train_ds: Any
    dev_ds: Any
    world_size: int
    wall_time_s: float
    teacher_dev: dict
    student_dev: dict
    pruned_dev: Optional[dict]
    history: list
    init: Optional[str] = None
    oneshot: Optional[dict] = None
    search_summary: Optional[dict] = None
    times_s: dict = field(default_factory=dict)
    threads: Optional[dict] = None  # what ddk_fast.runs.threads.apply_threads set at the run's start
    exported_from: Optional[str] = None  # which candidate the export is: "oneshot", "pruned", "distill"


def build_report(source: Report, student) -> dict:
    """report.json's content for the run ``source`` describes and ``student``, the exported model."""
    cfg, spec, teacher = source.cfg, source.spec, source.teacher
    t_params, s_params = encoder_param_count(teacher), encoder_param_count(student)
    t_flops = source.cost_model.full_cost("flops")
    s_flops = source.cost_model.structure_cost(student.num_heads, student.intermediate_sizes, "flops")
    structure = student.pruned_from
    latency = compare(teacher, student.to("cpu"), cfg.latency_batch_size, cfg.latency_seq_len,
                      teacher.config.vocab_size, cfg.latency_repeats, path="auto", threads=cfg.latency_threads)
    latency["ratio"] = latency["ratio_student_over_teacher"]
    if source.metric == "latency":  # the budget was measured latency: predicted (the fit) beside measured
        predicted = (source.cost_model.structure_cost(student.num_heads, student.intermediate_sizes, "latency")
                     / source.cost_model.full_cost("latency"))
        latency.update(target_ratio=source.ratio, predicted_ratio=round(predicted, 4),
                       target_met=latency["ratio"] <= source.ratio + 0.05, fit=source.cost_model.latency.to_dict())
    per_layer = []
    for l in range(teacher.num_layers):
        per_layer.append({"layer": l, "heads": student.num_heads[l], "heads_total": teacher.num_heads[l],
                          "ffn": student.intermediate_sizes[l], "ffn_total": teacher.intermediate_sizes[l],
                          "kept_heads": list(structure.heads[l]) if structure is not None else None})
    return {
        "task": spec.name,
        "main_metric": spec.main_metric,
        "metric_names": list(spec.metric_names),
        "method": source.method,
        "init": source.init,
        "target": cfg.target,
        "target_metric": source.metric,
        "target_ratio": source.ratio,
        "teacher": source.teacher_path,
        "teacher_dev": source.teacher_dev,
        "majority_dev": constant_baseline(spec, source.train_ds, source.dev_ds),
        "student_dev": source.student_dev,
        "exported_from": source.exported_from,
        "pruned_before_distillation_dev": source.pruned_dev,
        "oneshot": source.oneshot,
        "params": {"what": "encoder (transformer layers; no embeddings, pooler, classifier)", "teacher": t_params,
                   "student": s_params, "ratio": s_params / t_params},
        "flops": {"what": "encoder forward FLOPs per sequence", "seq_len": cfg.seq_len, "teacher": t_flops,
                  "student": s_flops, "ratio": s_flops / t_flops},
        "latency": latency,
        "structure": {"heads": list(student.num_heads), "ffn": list(student.intermediate_sizes),
                      "heads_total": list(teacher.num_heads), "ffn_total": list(teacher.intermediate_sizes),
                      "per_layer": per_layer},
        "search": source.search_summary,
        "history": source.history,
        "train_examples": len(source.train_ds),
        "dev_examples": len(source.dev_ds),
        "seed": cfg.seed,
        "world_size": source.world_size,
        "threads": source.threads,
        "versions": versions(),
        "wall_time_s": round(source.wall_time_s, 1),
        "times_s": {k: round(v, 3) for k, v in source.times_s.items()},
        "config": config_dict(cfg),
    }


def write_plots(report: dict, folder: str, log_path: str | None = None) -> None:
    """structure.png (kept heads / FFN channels per layer) and curves.png (losses, cost ratio, dev score)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    st = report["structure"]
    layers = list(range(len(st["heads"])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kept, total, title in ((axes[0], st["heads"], st["heads_total"], "attention heads"),
                                   (axes[1], st["ffn"], st["ffn_total"], "FFN channels")):
        ax.bar(layers, total, color="#dddddd", label="teacher")
        ax.bar(layers, kept, color="#3b6ea5", label="student")
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.set_xticks(layers)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['task']} {report['method']} {report['target']}: params x{report['params']['ratio']:.2f}, "
                 f"FLOPs x{report['flops']['ratio']:.2f}")
    fig.tight_layout()
    atomic_write(os.path.join(folder, "structure.png"), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)

    records = []
    if log_path and os.path.isfile(log_path):
        records = read_log(log_path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for stage, color in (("search", "#c0504d"), ("distill", "#3b6ea5")):
        rows = [r for r in records if r.get("event") == stage and "loss" in r]
        if rows:
            axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], color=color, label=f"{stage} loss")
        ratio_rows = [r for r in rows if "ratio" in r]
        if ratio_rows:
            axes[1].plot([r["step"] for r in ratio_rows], [r["ratio"] for r in ratio_rows], color=color,
                         label="expected cost ratio")
    axes[1].axhline(report["target_ratio"], color="black", linestyle="--", linewidth=1, label="target")
    hist = report.get("history") or []
    main = report["main_metric"]
    for stage, color in (("search", "#c0504d"), ("distill", "#3b6ea5")):
        pts = [h for h in hist if h.get("stage") == stage and main in h]
        if pts:
            axes[2].plot([h["step"] for h in pts], [h[main] for h in pts], "o-", color=color, label=f"{stage} dev")
    if report.get("teacher_dev"):
        axes[2].axhline(report["teacher_dev"][main], color="black", linestyle="--", linewidth=1, label="teacher")
    for ax, title in zip(axes, ("training loss", f"{report['target_metric']} ratio", f"dev {main}")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(os.path.join(folder, "curves.png"), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
