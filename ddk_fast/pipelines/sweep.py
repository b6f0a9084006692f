"""`ddk-fast sweep`: a grid of distillation settings, run point by point, resumable, summarised.

    ddk-fast sweep --teacher DIR --task mrpc --data-dir glue \\
        --grid "attn_weight=0.5,1;hidden_weight=1,2;temperature=1,4" --output sweep-mrpc [--preset quick]
        [--mode student|ddk] [--recipe tinybert] [--heatmap attention_weight,temperature] [--resume]

Grid keys: objective options (``ddk_fast.distill.objectives.DEFAULTS``; ``attn_`` is short for
``attention_``), or run options of the mode (``steps``, ``lr``, ``student_layers``, ``recipe`` ... for
``student``; any ``ddk-fast compress`` option for ``ddk``). ``--grid-file`` reads a YAML mapping
``key: [values]`` instead.

Modes: ``student`` (default) distils a fixed TinyBERT-style student (``ddk-fast distill``) per point;
``ddk`` runs the DDK compression (``ddk-fast compress``; the grid sets its options).

Output folder: ``points/NNN.json`` (one per finished point, written atomically: a killed sweep loses
only the point it was running; ``--resume`` skips finished points), ``grid.json`` (the grid, checked
on resume), ``results.csv`` and ``results.md`` (sorted by dev score, best first), ``heatmap.png``
(dev score over two axes; the best over the other axes).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

from ddk_fast._io import atomic_write_json, output_dir_state, read_json, atomic_write_text
from ddk_fast.distill.objectives import DEFAULTS
from ddk_fast.errors import UserError
from ddk_fast.runs import shared_options as shared
from ddk_fast.pipelines.compress import run_compress
from ddk_fast.pipelines.configs import CompressConfig
from ddk_fast.runs.config import load_yaml, parse_kd, build_config
from ddk_fast.runs.evaluation import resolve_task
from ddk_fast.pipelines.lm import LMCompressConfig, build_lm_config, run_compress_lm
from ddk_fast.runs.options import check_value, option
from ddk_fast.pipelines.distill import DistillConfig, build_distill_config, is_lm_task, run_distill
from ddk_fast.runs.threads import apply_threads

ALIASES = {"attn_weight": "attention_weight", "attn_loss": "attention_loss", "embd_weight": "embedding_weight",
           "T": "temperature"}
MODES = ("student", "ddk")


@dataclass
class SweepConfig:
    """The sweep's own options; the run options of every point (``--recipe``, ``--lr``, ``--target``...) are
    the distill / compress options given beside them (``sweep_from_flags``)."""

    teacher: str = shared.teacher("teacher folder")
    task: str = shared.task(shared.LM_TASK_HELP)
    grid: Optional[str] = option(None, group="distill",
                                 help='e.g. "attn_weight=0.5,1;hidden_weight=1,2;temperature=1,4"')
    grid_file: Optional[str] = option(None, group="distill", help="YAML mapping key: [values]")
    output: str = shared.output("sweep folder")
    mode: str = option("student", group="distill", choices=MODES,
                       help="student (a fixed student per point, `distill`) or ddk (a `compress` run per point)")
    heatmap: Optional[str] = option(None, group="run", help="two grid keys X,Y for heatmap.png (default: the first "
                                                            "two)")
    resume: bool = shared.resume("skip finished points")
    overwrite: bool = shared.overwrite("start the sweep again")


# ------------------------------------------------------------------------------------------- grid
def _value(text: str):
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(text: Optional[str] = None, grid_file: Optional[str] = None) -> dict[str, list]:
    """``"a=1,2;b=x,y"`` or a YAML file ``{a: [1, 2], b: [x, y]}`` -> ordered {key: [values]}."""
    if (text is None) == (grid_file is None):
        raise UserError("give exactly one of --grid or --grid-file")
    grid: dict[str, list] = {}
    if grid_file is not None:
        raw = load_yaml(grid_file)
        for key, values in raw.items():
            grid[key] = list(values) if isinstance(values, (list, tuple)) else [values]
    else:
        for part in str(text).split(";"):
            if not part.strip():
                continue
            key, sep, values = part.partition("=")
            if not sep or not key.strip() or not values.strip():
                raise UserError(f"--grid {text!r}: expected KEY=V1,V2;KEY=V1,... got {part!r}")
            if key.strip() in grid:
                raise UserError(f"--grid {text!r}: key {key.strip()!r} given twice")
            grid[key.strip()] = [_value(v) for v in values.split(",") if v.strip()]
    out: dict[str, list] = {}
    for key, values in grid.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise UserError(f"grid key {key!r} given twice (as {name!r})")
        if not values:
            raise UserError(f"grid key {key!r} has no values")
        out[name] = values
    if not out:
        raise UserError("the grid is empty")
    return out


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _run_keys(mode: str, task: str) -> set:
    cls = DistillConfig if mode == "student" else LMCompressConfig if is_lm_task(task) else CompressConfig
    return {f.name for f in dataclasses.fields(cls)} - {"kd", "output", "teacher", "task"}


def check_grid_keys(grid: dict[str, list], mode: str, task: str = "") -> None:
    """Grid keys must be objective options (student runs, LM compression) or run options of the mode."""
    objective_keys = set(DEFAULTS) if (mode == "student" or is_lm_task(task)) else set()
    valid = _run_keys(mode, task) | objective_keys
    bad = sorted(k for k in grid if k not in valid)
    if bad:
        raise UserError(f"grid key(s) {bad} are not options of a {mode} run; expected objective options "
                        f"({', '.join(sorted(DEFAULTS))}) or run options")


# -------------------------------------------------------------------------------------------- run
def _point_name(index: int) -> str:
    return f"{index:03d}"


def _label(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def run_point(mode: str, base: dict, point: dict, folder: str) -> dict:
    """One grid point -> {"dev": metrics, "teacher_dev": metrics, "main_metric", "higher_is_better", ...}."""
    if mode == "student":
        run_keys = {f.name for f in dataclasses.fields(DistillConfig)}
        flags = dict(base)
        kd = dict(flags.pop("kd", None) or {})
        for key, value in point.items():
            if key in DEFAULTS:
                kd[key] = value
            elif key in run_keys:
                flags[key] = value
        flags.update(kd=kd, save_model=False, output="", progress=False)
        cfg = build_distill_config(flags, None)
        report = run_distill(cfg)
        return {"dev": report["student_dev"], "teacher_dev": report["teacher_dev"],
                "main_metric": report["main_metric"], "higher_is_better": report["higher_is_better"],
                "student": report["student"], "steps": cfg.steps, "history": report["history"][-3:]}
    if is_lm_task(base["task"]):
        flags = dict(base)
        kd = dict(flags.pop("kd", None) or {})
        kd.update({k: v for k, v in point.items() if k in DEFAULTS})
        flags.update({k: v for k, v in point.items() if k not in DEFAULTS})
        flags.update(kd=kd, output=os.path.join(folder, "model"), overwrite=True, progress=False)
        report = run_compress_lm(build_lm_config(flags))
        return {"dev": report["student_dev"], "teacher_dev": report["teacher_dev"], "main_metric": "perplexity",
                "higher_is_better": False, "structure": report["structure"]["heads"], "params": report["params"]}

    flags = {k: v for k, v in dict(base, **point).items() if k not in ("kd",)}
    flags.update(output=os.path.join(folder, "model"), overwrite=True, progress=False)
    report = run_compress(build_config(CompressConfig, "compress", flags, None))
    return {"dev": report["student_dev"], "teacher_dev": report["teacher_dev"], "main_metric": report["main_metric"],
            "higher_is_better": True, "structure": report.get("structure"), "params": report.get("params")}


def score_of(result: dict) -> float:
    """The dev score a point is ranked by: GLUE ``score`` (mean of the task's metrics), or perplexity."""
    dev = result["dev"]
    return float(dev["score"] if "score" in dev else dev[result["main_metric"]])


def run_sweep(teacher: str, task: str, output: str, grid: dict[str, list], mode: str = "student",
              base: Optional[dict] = None, resume: bool = False, overwrite: bool = False,
              heatmap: Optional[tuple[str, str]] = None, log=print) -> dict:
    """Run every grid point not finished yet, then write results.csv/.md and heatmap.png. Returns the summary."""
    check_value(SweepConfig, "mode", mode)
    for flag, value in (("--teacher", teacher), ("--output", output)):
        if not value:
            raise UserError(f"{flag} is required")
    check_grid_keys(grid, mode, task)
    threads = apply_threads((base or {}).get("threads"))
    if not is_lm_task(task or ""):  # a bad task or dataset is refused before the sweep folder exists
        resolve_task(task, base, teacher)
    out = os.path.abspath(output)
    points_dir = os.path.join(out, "points")
    grid_file = os.path.join(out, "grid.json")
    base = dict(base or {}, teacher=teacher, task=task, threads=threads["intra_op"])  # every point: the same
    # progress and threads change how a point runs, not its result: a resume may use others
    spec = {"mode": mode, "grid": grid, "base": {k: v for k, v in base.items() if k not in ("progress", "threads")}}
    state = output_dir_state(out)
    if state == "nonempty":
        if resume and os.path.isfile(grid_file):
            saved = read_json(grid_file)
            if json.loads(json.dumps(spec)) != saved:
                raise UserError(f"--resume: {out!r} holds a sweep with other settings (grid.json differs); "
                                f"use another --output or --overwrite")
        elif overwrite:
            shutil.rmtree(out)
        else:
            raise UserError(f"--output {out!r} exists and is not empty; pass --resume to continue its sweep or "
                            f"--overwrite to start again")
    os.makedirs(points_dir, exist_ok=True)
    atomic_write_json(grid_file, spec)
    points = grid_points(grid)
    log(f"{len(points)} point(s), {threads['intra_op']} CPU thread(s) ({threads['source']})")
    results = []
    for index, point in enumerate(points):
        path = os.path.join(points_dir, _point_name(index) + ".json")
        if os.path.isfile(path):
            saved = read_json(path)
            if saved.get("point") == json.loads(json.dumps(point)):
                log(f"[{index + 1}/{len(points)}] {_label(point)}: done already, skipped")
                results.append(saved)
                continue
        t0 = time.time()
        log(f"[{index + 1}/{len(points)}] {_label(point)}: running")
        result = run_point(mode, base, point, os.path.join(points_dir, _point_name(index)))
        result = dict(result, point=point, index=index, wall_time_s=round(time.time() - t0, 1))
        atomic_write_json(path, result)
        results.append(json.loads(json.dumps(result)))
        log(f"[{index + 1}/{len(points)}] {_label(point)}: dev {result['main_metric']}="
            f"{result['dev'][result['main_metric']]:.4f}")
    return dict(write_results(out, grid, results, heatmap), threads=threads)


# ---------------------------------------------------------------------------------------- results
def _sorted(results: list[dict]) -> list[dict]:
    higher = results[0].get("higher_is_better", True) if results else True
    return sorted(results, key=lambda r: (-score_of(r) if higher else score_of(r), r["index"]))


def write_results(out: str, grid: dict[str, list], results: list[dict],
                  heatmap: Optional[tuple[str, str]] = None) -> dict:
    ranked = _sorted(results)
    keys = list(grid)
    main = ranked[0]["main_metric"] if ranked else "score"
    metric_names = sorted({k for r in ranked for k, v in r["dev"].items() if k != "epoch" and isinstance(v, float)})
    header = ["rank", "point"] + keys + metric_names + ["wall_time_s"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    rows = []
    for rank, r in enumerate(ranked, 1):
        row = [rank, _point_name(r["index"])] + [r["point"].get(k) for k in keys] + \
              [_fmt(r["dev"].get(m)) for m in metric_names] + [r.get("wall_time_s")]
        rows.append(row)
        writer.writerow(row)
    atomic_write_text(os.path.join(out, "results.csv"), buf.getvalue())
    teacher = ranked[0].get("teacher_dev", {}) if ranked else {}
    higher = ranked[0].get("higher_is_better", True) if ranked else True
    ranking = "score (mean of the task metrics)" if higher else "perplexity (lower is better)"
    lines = [f"# Sweep results ({len(ranked)} points)", "",
             f"Ranked by dev {ranking}; main metric: {main}. Teacher: "
             + ", ".join(f"{k}={_fmt(v)}" for k, v in teacher.items()), "",
             "| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    if ranked:
        best = ",".join(f"{k}={v}" for k, v in ranked[0]["point"].items())
        lines += ["", f"Best point as flags: `--kd {best}` (objective options) -- run options among them go to "
                      f"their own flags."]
    atomic_write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")
    axes = heatmap or tuple(k for k in keys if len(grid[k]) > 1)[:2]
    plotted = None
    if len(axes) == 2 and ranked:
        plotted = _heatmap(out, grid, ranked, axes)
    return {"output": out, "points": len(ranked), "best": ranked[0] if ranked else None, "heatmap": plotted,
            "main_metric": main}


def _fmt(v):
    return None if v is None else (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)


def _heatmap(out: str, grid: dict, ranked: list[dict], axes) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x_key, y_key = axes
    for key in axes:
        if key not in grid:
            raise UserError(f"--heatmap axis {key!r} is not a grid key; expected two of {list(grid)}")
    xs, ys = grid[x_key], grid[y_key]
    higher = ranked[0].get("higher_is_better", True)
    cells = np.full((len(ys), len(xs)), np.nan)
    for r in ranked:
        i, j = ys.index(r["point"][y_key]), xs.index(r["point"][x_key])
        s = score_of(r)
        if np.isnan(cells[i, j]) or (s > cells[i, j] if higher else s < cells[i, j]):
            cells[i, j] = s
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(xs), 1.0 + 0.8 * len(ys)))
    im = ax.imshow(cells, cmap="viridis" if higher else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(cells[i, j]):
                ax.text(j, i, f"{cells[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    others = [k for k in grid if k not in axes and len(grid[k]) > 1]
    label = "dev perplexity" if not higher else "dev score"
    ax.set_title(label + (f" (best over {', '.join(others)})" if others else ""), fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = os.path.join(out, "heatmap.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------- from the flags
def sweep_from_flags(flags: dict, config_file: Optional[str] = None) -> dict:
    """``ddk-fast sweep ...``: ``flags`` are the ones given (None: not given), the sweep's own
    (``SweepConfig``) and the run options every point shares; ``config_file`` holds more of the latter."""
    own = {f.name for f in dataclasses.fields(SweepConfig)}
    opts = {k: v for k, v in flags.items() if k in own}
    grid = parse_grid(opts.get("grid"), opts.get("grid_file"))
    base = {k: parse_kd(v) if k == "kd" else v for k, v in flags.items() if k not in own and v is not None}
    if config_file:
        base = dict(load_yaml(config_file), **base)
    heatmap = None
    if opts.get("heatmap"):
        parts = [ALIASES.get(p.strip(), p.strip()) for p in opts["heatmap"].split(",")]
        if len(parts) != 2:
            raise UserError(f"--heatmap {opts['heatmap']!r}: expected two grid keys X,Y")
        heatmap = tuple(parts)
    task = opts.get("task")
    if opts.get("mode") == "ddk":
        lm_only = ("eval_file", "block_size", "kd", "search_steps", "distill_steps")
        for key in [k for k in base if k in ("recipe", "student_layers", "layer_init", "student_heads",
                                             "student_intermediate", "student_hidden", "steps")
                    or (k in lm_only and not is_lm_task(task or ""))]:
            raise UserError(f"--{key.replace('_', '-')} is not an option of --mode ddk"
                            + ("" if key in lm_only else " (it belongs to --mode student)"))
    else:
        for key in ("target", "search_steps", "distill_steps"):
            if key in base:
                raise UserError(f"--{key.replace('_', '-')} is an option of --mode ddk")
    return run_sweep(opts.get("teacher"), task, opts.get("output"), grid, mode=opts.get("mode") or "student",
                     base=base, resume=bool(opts.get("resume")), overwrite=bool(opts.get("overwrite")),
                     heatmap=heatmap)


__all__ = ["ALIASES", "MODES", "SweepConfig", "grid_points", "parse_grid", "run_sweep", "sweep_from_flags",
           "write_results"]
