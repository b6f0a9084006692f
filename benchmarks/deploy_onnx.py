"""Deployment targets on CPU: a compressed student against its teacher in ONNX Runtime (fp32, int8).

Run (a real student and its teacher; threads pinned to --threads; load recorded in every row):

    python benchmarks/deploy_onnx.py --student RUNS/mrpc-student --teacher RUNS/t-mrpc --task mrpc \
        --data-dir ../shared/data/glue [--latency-run RUNS/mrpc-prune-lat50] --output benchmarks/results/cpu/deploy_onnx

What it measures, in one run:
- both folders exported to ONNX (fp32 + dynamic int8); the export's own check (ONNX vs PyTorch on a
  padded and an unpadded batch) gives the max abs difference;
- dev scores: PyTorch (the student's report.json), ONNX fp32 and ONNX int8 (ONNX Runtime here);
- latency rows (``ddk_fast.pipelines.deploy.latency_table``: alternating pairs, median) at 1x128 and 32x128.
Targets (the issue's): fp32 ONNX student >= 2.1x the fp32 ONNX teacher at 32x128 with outputs within
1e-4; int8 ONNX student >= 4.5x the fp32 ONNX teacher with the dev score within 1 point of the fp32
student; at 1x128 the student is faster; a ``--target latency=0.5`` run (``--latency-run``) measures
a ratio within 0.05 of 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from ddk_fast._io import atomic_write_json, atomic_write_text, read_json
from ddk_fast.export.onnx import export_onnx
from ddk_fast.pipelines.deploy import _Models, _quiet, latency_table, onnx_dev_scores
from ddk_fast.runs.evaluation import encode_split, load_split, task_spec
from ddk_fast.runs.hf import load_tokenizer


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--latency-run", help="a `prune`/`compress --target latency=R` output to check")
    p.add_argument("--output", required=True, help="path prefix for .json and .md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = task_spec(args.task)
    student_report = read_json(os.path.join(args.student, "report.json"))
    dev_examples = load_split(spec.name, "validation", args.data_dir)
    dev_ds = encode_split(dev_examples, load_tokenizer(args.student), 128)
    with tempfile.TemporaryDirectory(prefix="ddk-deploy-") as scratch, _quiet():
        exports = {}
        for name, folder in (("student", args.student), ("teacher", args.teacher)):
            exports[name] = export_onnx(folder, os.path.join(scratch, name), int8=True, overwrite=True,
                                        task=spec.name)
        dev = {name: onnx_dev_scores(os.path.join(scratch, name), spec.name, dev_ds, 64, args.threads)
               for name in ("student", "teacher")}
        student = _Models(args.student, os.path.join(scratch, "s"), args.threads, os.path.join(scratch, "student"))
        teacher = _Models(args.teacher, os.path.join(scratch, "t"), args.threads, os.path.join(scratch, "teacher"))
        rows = latency_table(student, teacher, [(1, 128), (32, 128)], ("torch", "onnx", "onnx-int8"),
                             args.threads, args.repeats)
    main_metric = spec.main_metric
    by = {(r["runtime"], r["batch_size"]): r for r in rows}
    worst_diff = max(c["max_abs_diff"] for c in exports["student"]["check"])
    fp32_dev, int8_dev = dev["student"]["fp32"][main_metric], dev["student"]["int8"][main_metric]
    checks = [
        ("ONNX fp32 student vs ONNX fp32 teacher, 32x128", by[("onnx", 32)]["speedup"], ">= 2.1x",
         by[("onnx", 32)]["speedup"] >= 2.1),
        ("ONNX vs PyTorch max abs diff (padded batch)", worst_diff, "<= 1e-4", worst_diff <= 1e-4),
        ("ONNX int8 student vs ONNX fp32 teacher, 32x128", by[("onnx-int8 student vs onnx teacher", 32)]["speedup"],
         ">= 4.5x", by[("onnx-int8 student vs onnx teacher", 32)]["speedup"] >= 4.5),
        (f"int8 dev {main_metric} minus fp32 dev {main_metric} (points)", round(100 * (int8_dev - fp32_dev), 2),
         ">= -1", 100 * (int8_dev - fp32_dev) >= -1),
        ("ONNX fp32 student vs teacher, 1x128", by[("onnx", 1)]["speedup"], "> 1x", by[("onnx", 1)]["speedup"] > 1),
    ]
    latency_run = None
    if args.latency_run:
        lat = read_json(os.path.join(args.latency_run, "report.json"))["latency"]
        latency_run = {k: lat.get(k) for k in ("target_ratio", "predicted_ratio", "ratio", "ratio_iqr", "fit",
                                               "load_avg_1m", "reliable")}
        checks.append((f"--target latency={lat['target_ratio']}: measured ratio (predicted {lat['predicted_ratio']})",
                       lat["ratio"], f"within 0.05 of {lat['target_ratio']}",
                       abs(lat["ratio"] - lat["target_ratio"]) <= 0.05))
    result = {"student": os.path.abspath(args.student), "teacher": os.path.abspath(args.teacher),
              "task": spec.name, "threads": args.threads, "cpu_count": os.cpu_count(),
              "student_dev_pytorch": student_report.get("student_dev"), "teacher_dev_pytorch":
              student_report.get("teacher_dev"), "dev_onnx": dev, "export_checks": {k: v["check"] for k, v in exports.items()},
              "int8_checks": {k: v["int8_check"] for k, v in exports.items()}, "latency": rows,
              "latency_run": latency_run,
              "targets": [{"what": w, "value": v, "target": t, "verdict": verdict(ok)} for w, v, t, ok in checks]}
    atomic_write_json(args.output + ".json", result)
    lines = [f"# Deployment on CPU: {spec.name}, {args.threads} thread(s)", "",
             f"student `{args.student}`, teacher `{args.teacher}`", "",
             "| runtime | shape | teacher ms | student ms | speed-up | load (1 min, before/after) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['batch_size']}x{r['seq_len']} | {r['teacher_ms']:.1f} | "
                     f"{r['student_ms']:.1f} | {r['speedup']:.2f}x | {r['load_avg_1m']} |")
    lines += ["", f"| dev {main_metric} | PyTorch | ONNX fp32 | ONNX int8 |", "|---|---|---|---|"]
    for name in ("student", "teacher"):
        torch_dev = (student_report.get(f"{name}_dev") or {}).get(main_metric)
        lines.append(f"| {name} | {torch_dev if torch_dev is None else round(torch_dev, 4)} | "
                     f"{dev[name]['fp32'][main_metric]:.4f} | {dev[name]['int8'][main_metric]:.4f} |")
    lines += ["", "| target | value | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {w} | {v} | {t} | {verdict(ok)} |" for w, v, t, ok in checks]
    atomic_write_text(args.output + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
