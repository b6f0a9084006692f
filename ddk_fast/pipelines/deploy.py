"""Deployment numbers: ONNX export, int8, and teacher-vs-student latency in the runtimes users serve with.

``ddk-fast export-onnx DIR --output ONNX_DIR [--opset N] [--int8]``: ``run_export_onnx``.
``ddk-fast latency DIR [--teacher T] [--latency-shapes 1x128,32x128] [--runtimes ...]``: ``run_latency``.
``compress --onnx`` / ``prune --onnx``: ``deployment_section`` exports the student (``OUT/onnx/``),
scores it on the dev set in ONNX Runtime fp32 and int8, and times it against the teacher.

Runtimes (teacher and student always in the same one, timed by ``train.latency``'s alternating pairs):
``torch`` (the folder loaded by transformers, as a user loads it), ``torch-int8`` (torch.ao dynamic
int8 of its linear layers), ``onnx`` (ONNX Runtime fp32), ``onnx-int8`` (dynamic int8 ONNX). Each int8
runtime also gets a row against the fp32 teacher of its runtime: the speed-up a user switching both
pruning and quantisation on sees.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ddk_fast._io import atomic_write_json, json_value
from ddk_fast.data import DataError
from ddk_fast.data.custom import TASK_FILE, read_task_file, write_task_file
from ddk_fast.errors import UserError
from ddk_fast.export.onnx import (DEFAULT_OPSET, INT8_FILE, ONNX_FILE, OnnxModel, export_onnx, example_inputs,
                                  is_onnx_folder, load_for_export, quantize_int8)
from ddk_fast.runs.batching import eval_loader
from ddk_fast.runs.evaluation import evaluate_logits, predict
from ddk_fast.runs.hf import quiet_transformers
from ddk_fast.runs.latency import compare_runners, pinned_threads, timed
from ddk_fast.runs.options import check_fields, option
from ddk_fast.runs.validate import parse_target

RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
DEFAULT_RUNTIMES = ("torch", "onnx", "onnx-int8")
ONNX_SUBDIR = "onnx"


@dataclass
class ExportOnnxConfig:
    """``ddk-fast export-onnx MODEL --output DIR``: a model folder as ONNX, checked against PyTorch."""

    model: str = option("", group="task", positional=True,
                        help="a `ddk-fast compress`/`prune` output or a `finetune` teacher")
    output: str = option("", group="run", required=True,
                         help="folder for model.onnx, the tokenizer and onnx_report.json")
    opset: int = option(DEFAULT_OPSET, group="deploy", help="ONNX opset")
    int8: bool = option(False, group="deploy", help="also write model.int8.onnx (dynamic int8 quantisation)")
    overwrite: bool = option(False, group="run", help="replace an existing --output")


@dataclass
class LatencyConfig:
    """``ddk-fast latency MODEL``: a compressed folder against its teacher in each runtime at each shape."""

    model: str = option("", group="task", positional=True, help="a `ddk-fast compress`/`prune` output")
    teacher: Optional[str] = option(None, group="task",
                                    help="teacher folder (default: the one named in MODEL/report.json)")
    latency_shapes: str = option("1x128,32x128", group="deploy", metavar="BxS[,BxS]",
                                 help="batch x sequence length shapes")
    runtimes: str = option(",".join(DEFAULT_RUNTIMES), group="deploy", help=f"comma list of {', '.join(RUNTIMES)}")
    latency_threads: int = option(1, group="deploy", help="intra-op threads of every runtime")
    latency_repeats: int = option(10, group="deploy", help="timed pairs per row, at least")
    output: Optional[str] = option(None, group="run", help="write the table as JSON here (a file path)")


def parse_shapes(text: str, flag: str = "--latency-shapes") -> list[tuple[int, int]]:
    """"1x128,32x128" -> [(1, 128), (32, 128)] (batch x sequence length)."""
    shapes = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise UserError(f"{flag} {text!r}: expected BATCHxSEQ[,BATCHxSEQ...] with positive integers, e.g. 1x128,32x128")
        shapes.append((int(match[1]), int(match[2])))
    return shapes


def parse_runtimes(text: str) -> list[str]:
    names = [r.strip() for r in str(text).split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNTIMES]
    if unknown or not names:
        raise UserError(f"--runtimes {text!r}: expected a comma list of {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def run_export_onnx(model: str, output: str, opset: int, int8: bool, overwrite: bool) -> dict:
    """``export_onnx`` plus the source's ``task.json`` (a model of the user's own data, e.g. NER), so that
    ``evaluate --model OUTPUT`` knows the labels and files as it does for the source folder."""
    if not model or not output:
        raise UserError("export-onnx needs a model folder and --output")
    try:
        task = read_task_file(model) if os.path.isdir(model) else None
    except DataError as exc:
        raise UserError(str(exc)) from None
    copy = (os.path.join(model, TASK_FILE),) if task is not None else ()  # published with the export
    with _quiet():
        return export_onnx(model, output, opset=opset, int8=int8, overwrite=overwrite, copy_files=copy)


class _Models:
    """One model folder in every runtime asked for, built on first use (ONNX export into a scratch
    folder unless the folder already has an ONNX export beside it)."""

    def __init__(self, folder: str, scratch: str, threads: int, onnx_dir: str | None = None):
        self.folder, self.scratch, self.threads, self.onnx_dir = folder, scratch, threads, onnx_dir
        self._cache: dict[str, object] = {}
        self.names: list[str] | None = None

    def _torch(self):
        if "torch" not in self._cache:
            module, self.names = load_for_export(self.folder)
            self._cache["torch"] = module
        return self._cache["torch"]

    def _onnx_files(self) -> str:
        if self.onnx_dir is None:
            self.onnx_dir = os.path.join(self.scratch, "onnx")
            export_onnx(self.folder, self.onnx_dir, int8=False)
        return self.onnx_dir

    def get(self, runtime: str):
        if runtime in self._cache:
            return self._cache[runtime]
        if runtime == "torch":
            return self._torch()
        if runtime == "torch-int8":
            model = torch_int8(self._torch())
        elif runtime == "onnx":
            model = OnnxModel(os.path.join(self._onnx_files(), ONNX_FILE), self.threads)
        else:
            folder = self._onnx_files()
            path = os.path.join(folder, INT8_FILE)
            if not os.path.isfile(path):
                path = os.path.join(self.scratch, INT8_FILE)
                quantize_int8(os.path.join(folder, ONNX_FILE), path)
            model = OnnxModel(path, self.threads)
        self._cache[runtime] = model
        return model

    def input_names(self) -> list[str]:
        self._torch()
        return self.names

    def vocab_size(self) -> int:
        return int(self._torch().model.config.vocab_size)


def torch_int8(module: nn.Module) -> nn.Module:
    """torch.ao dynamic int8 of every non-empty nn.Linear (weights int8, activations quantised per batch).
    A layer pruned to 0 units keeps its float zero-size projections: the model reads their bias."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec = {name: default_dynamic_qconfig for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and m.weight.numel() > 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice: the API still runs in this torch
        return quantize_dynamic(module, spec, dtype=torch.qint8)


def _runner(model, inputs: dict):
    if isinstance(model, nn.Module):
        def forward():
            with torch.inference_mode():
                model(**inputs)
        return timed(forward)
    return timed(lambda: model(**inputs))


def _rows(runtimes) -> list[tuple[str, str, str]]:
    """(row name, teacher runtime, student runtime)."""
    rows = [(r, r, r) for r in runtimes]
    for r in runtimes:
        base = r.removesuffix("-int8")
        if r != base:
            rows.append((f"{r} student vs {base} teacher", base, r))
    return rows


def latency_table(student: _Models, teacher: _Models, shapes, runtimes, threads: int, repeats: int) -> list[dict]:
    rows = []
    names, vocab = student.input_names(), student.vocab_size()
    with pinned_threads(threads):
        for batch, seq in shapes:
            inputs = example_inputs(names, vocab, batch, seq)
            for name, t_rt, s_rt in _rows(runtimes):
                result = compare_runners(_runner(teacher.get(t_rt), inputs), _runner(student.get(s_rt), inputs),
                                         batch, seq, repeats=repeats, threads=threads)
                rows.append({"runtime": name, "teacher_runtime": t_rt, "student_runtime": s_rt, **result})
    return rows


def _teacher_of(folder: str, teacher: str | None) -> str:
    if teacher:
        return os.path.abspath(teacher)
    recorded = json_value(os.path.join(folder, "report.json"), "teacher")
    if isinstance(recorded, str) and os.path.isdir(recorded):
        return recorded
    raise UserError(f"--teacher is required: {folder!r} has no report.json naming an existing teacher folder")


def format_table(rows: list[dict]) -> str:
    """The latency rows as an aligned text table (what the command prints)."""
    head = f"{'runtime':34s} {'shape':>8s} {'teacher ms':>11s} {'student ms':>11s} {'speed-up':>9s}  note"
    lines = [head]
    for r in rows:
        note = "" if r["reliable"] else "unreliable: see warning in JSON"
        lines.append(f"{r['runtime']:34s} {r['batch_size']:>3d}x{r['seq_len']:<4d} {r['teacher_ms']:11.2f} "
                     f"{r['student_ms']:11.2f} {r['speedup']:8.2f}x  {note}")
    return "\n".join(lines)


def run_latency(model: str, teacher: str | None = None, shapes: str = LatencyConfig.latency_shapes,
                runtimes: str = LatencyConfig.runtimes, threads: int = LatencyConfig.latency_threads,
                repeats: int = LatencyConfig.latency_repeats, output: str | None = None) -> dict:
    """Student (a compressed folder) vs its teacher in each runtime at each shape; JSON to ``output``."""
    if not model or not os.path.isdir(model):
        raise UserError(f"latency: {model!r} is not a model folder")
    if threads < 1 or repeats < 1:
        raise UserError("--latency-threads and --latency-repeats must be positive integers")
    shape_list, runtime_list = parse_shapes(shapes), parse_runtimes(runtimes)
    model = os.path.abspath(model)
    teacher_dir = _teacher_of(model, teacher)
    onnx_dir = os.path.join(model, ONNX_SUBDIR)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddk-latency-") as scratch, _quiet():
        student = _Models(model, os.path.join(scratch, "student"),
                          threads, onnx_dir if is_onnx_folder(onnx_dir) else None)
        teacher_models = _Models(teacher_dir, os.path.join(scratch, "teacher"), threads)
        for m in (student, teacher_models):
            os.makedirs(m.scratch, exist_ok=True)
        rows = latency_table(student, teacher_models, shape_list, runtime_list, threads, repeats)
    result = {"model": model, "teacher": teacher_dir, "threads": threads, "shapes": [list(s) for s in shape_list],
              "runtimes": runtime_list, "rows": rows, "wall_time_s": round(time.perf_counter() - t0, 1)}
    if output:
        atomic_write_json(output, result)
    return result


@contextlib.contextmanager
def _quiet():
    """The exporter's and quantiser's advice (FutureWarnings, root-logger notes) is not the user's business."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def onnx_dev_scores(onnx_dir: str, task, dev_ds, batch_size: int, threads: int) -> dict:
    """Dev metrics of ``model.onnx`` and (when present) ``model.int8.onnx`` in ONNX Runtime."""
    out = {}
    loader = eval_loader(dev_ds, batch_size)
    for key, name in (("fp32", ONNX_FILE), ("int8", INT8_FILE)):
        path = os.path.join(onnx_dir, name)
        if os.path.isfile(path):
            out[key] = score_onnx(OnnxModel(path, threads), loader, task)
    return out


def score_onnx(model: OnnxModel, loader, task) -> dict:
    logits, labels = predict(lambda b: model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")),
                             loader, torch.device("cpu"))
    return evaluate_logits(task, logits, labels)


def deployment_shapes(cfg) -> list[tuple[int, int]]:
    """The --onnx latency shapes of a prune/compress config: --latency-shapes, else batch 1 (online
    serving) and the --latency-batch-size x --latency-seq-len shape of the engine's ratio."""
    shapes = parse_shapes(cfg.latency_shapes) if cfg.latency_shapes else [(1, cfg.latency_seq_len)]
    return list(dict.fromkeys(shapes + [(cfg.latency_batch_size, cfg.latency_seq_len)]))


def check_pruning_run(cfg) -> tuple[str, float]:
    """The checks every pruning run (``prune``, ``compress``) makes before any work: teacher and output
    given, the ``--target`` parsed, the fields' choices and bounds, the deployment flags. Returns the
    target's (metric, ratio)."""
    for flag, value in (("--teacher", cfg.teacher), ("--output", cfg.output)):
        if not value:
            raise UserError(f"{flag} is required")
    metric, ratio = parse_target(cfg.target)
    check_fields(cfg)
    check_deployment_flags(cfg, metric)
    return metric, ratio


def check_deployment_flags(cfg, metric: str) -> None:
    """--latency-shapes / --latency-runtime, refused before any work; --latency-runtime onnx turns --onnx on
    (the budget is checked on the ONNX export's measured latency)."""
    if cfg.latency_shapes:
        parse_shapes(cfg.latency_shapes)
    if cfg.latency_runtime == "onnx":
        if metric != "latency":
            raise UserError("--latency-runtime onnx applies to --target latency=RATIO")
        cfg.onnx = True


def check_onnx_task(cfg, spec) -> None:
    """ONNX export covers sequence and token classifiers and causal LMs; a QA run asking for it is refused
    before any work, not after training."""
    if getattr(cfg, "onnx", False) and getattr(spec, "is_qa", False):
        raise UserError(f"--onnx: ONNX export does not cover question answering (task {spec.name}); use the "
                        f"PyTorch export, loaded with AutoModelForQuestionAnswering")


def add_deployment(report: dict, staged: str, cfg, teacher_dir: str, task, dev_ds, info) -> None:
    """``report["onnx"]`` for ``--onnx`` runs (the ONNX files land in ``staged/onnx``); a no-op otherwise.
    A budget on ONNX Runtime latency is checked here, on the exported student's measured ratio."""
    if not cfg.onnx:
        return
    info("ONNX export (fp32 + int8), dev scores in ONNX Runtime, latency against the teacher")
    report["onnx"] = deployment_section(staged, teacher_dir, task, dev_ds, deployment_shapes(cfg),
                                        cfg.latency_threads, cfg.latency_repeats, cfg.eval_batch_size)
    if report.get("target_metric") == "latency" and cfg.latency_runtime == "onnx":
        shape = (cfg.latency_batch_size, cfg.latency_seq_len)
        row = next(r for r in report["onnx"]["latency"] if r["runtime"] == "onnx"
                   and (r["batch_size"], r["seq_len"]) == shape)
        lat = report["latency"]
        lat.update(runtime="onnx", engine_ratio=lat["ratio"], ratio=row["ratio_student_over_teacher"],
                   ratio_iqr=row["ratio_iqr"], target_met=row["ratio_student_over_teacher"] <= lat["target_ratio"] + 0.05)
    dev = report["onnx"]["dev"]
    for row in report["onnx"]["latency"]:
        info(f"  {row['runtime']} {row['batch_size']}x{row['seq_len']}: student {row['student_ms']:.1f} ms, "
             f"teacher {row['teacher_ms']:.1f} ms, x{row['speedup']}")
    info("  dev (ONNX Runtime fp32, int8; torch.ao int8): " + ", ".join(f"{k} {v.get('score', next(iter(v.values()))):.4f}"
                                                for k, v in dev.items()))


def deployment_section(student_dir: str, teacher_dir: str, task, dev_ds, shapes, threads: int,
                       repeats: int, eval_batch_size: int) -> dict:
    """What ``compress --onnx`` / ``prune --onnx`` add to report.json: the student's ONNX export (fp32 +
    int8, in ``student_dir/onnx``), its dev scores there, and the latency table against the teacher."""
    t0 = time.perf_counter()
    onnx_dir = os.path.join(student_dir, ONNX_SUBDIR)
    with _quiet():
        export = export_onnx(student_dir, onnx_dir, int8=True, overwrite=True, task=getattr(task, "name", task))
        write_task_file(task, onnx_dir)
        dev = onnx_dev_scores(onnx_dir, task, dev_ds, eval_batch_size, threads)
        with tempfile.TemporaryDirectory(prefix="ddk-latency-") as scratch:
            student = _Models(student_dir, scratch, threads, onnx_dir)
            teacher = _Models(teacher_dir, scratch, threads)
            quantised = student.get("torch-int8")
            with torch.inference_mode():
                logits, labels = predict(lambda b: quantised(b["input_ids"], b["attention_mask"],
                                                             b.get("token_type_ids")),
                                         eval_loader(dev_ds, eval_batch_size), torch.device("cpu"))
            dev["torch-int8"] = evaluate_logits(task, logits, labels)
            rows = latency_table(student, teacher, shapes, DEFAULT_RUNTIMES, threads, repeats)
    return {"folder": ONNX_SUBDIR, "files": export["files"], "check": export["check"],
            "int8_check": export["int8_check"], "dev": dev, "latency": rows,
            "time_s": round(time.perf_counter() - t0, 1)}


__all__ = ["ExportOnnxConfig", "LatencyConfig", "run_export_onnx", "run_latency", "format_table", "deployment_section", "onnx_dev_scores", "score_onnx", "parse_shapes",
           "parse_runtimes", "torch_int8", "add_deployment", "deployment_shapes", "check_deployment_flags", "RUNTIMES", "ONNX_SUBDIR"]
