"""Run the pytest-benchmark suites in ``benchmarks/`` and write the ratio reports.

Why a subprocess: the suites are ordinary pytest files (so `pytest benchmarks/` works on its own);
the command only adds the environment (quick subset, device), collects the JSON and formats it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from ddk_fast.bench.conventions import DEVICE_ENV, QUICK_ENV
from ddk_fast.bench.report import write_reports


def find_benchmarks_dir(explicit: str | None = None) -> str:
    """The suites folder: ``explicit``, else ``benchmarks/`` beside the installed source tree."""
    candidates = [explicit] if explicit else [
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"),
        os.path.join(os.getcwd(), "benchmarks"),
    ]
    for path in candidates:
        if path and os.path.isdir(path):
            return os.path.abspath(path)
    raise FileNotFoundError(
        f"benchmark suites not found (looked in {', '.join(c for c in candidates if c)}); "
        "run from a source checkout or pass --bench-dir")


def run_suite(device: str = "cpu", quick: bool = False, output: str | None = None, bench_dir: str | None = None,
              select: str | None = None, extra_pytest_args: list[str] | None = None) -> tuple[str, str]:
    """Run the suites; return (markdown table, output folder)."""
    from ddk_fast.doctor import collect

    bench_dir = find_benchmarks_dir(bench_dir)
    if output is None:
        output = os.path.join(bench_dir, "results", device)
    env = dict(os.environ)
    env[DEVICE_ENV] = device
    env[QUICK_ENV] = "1" if quick else "0"
    if device == "cpu" and "cuda" not in device:
        env.setdefault("TRITON_INTERPRET", "0")
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw.json")
        cmd = [sys.executable, "-m", "pytest", bench_dir, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={raw_path}", "--benchmark-sort=name", "--benchmark-columns=median,rounds"]
        if quick:
            cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.05", "--benchmark-warmup=off"]
        else:
            cmd += ["--benchmark-min-rounds=5", "--benchmark-warmup=on"]
        if select:
            cmd += ["-k", select]
        cmd += list(extra_pytest_args or [])
        started = time.time()
        proc = subprocess.run(cmd, env=env, cwd=os.path.dirname(bench_dir))
        if proc.returncode not in (0, 5) or not os.path.exists(raw_path):
            raise RuntimeError(f"benchmark run failed (pytest exit {proc.returncode}): {' '.join(cmd)}")
        with open(raw_path) as fh:
            raw = json.load(fh)
    report = collect()
    header = {
        "device": device if device == "cpu" else ", ".join(report["gpus"]) or device,
        "quick": quick,
        "torch": report["torch"], "triton": report["triton"], "transformers": report["transformers"],
        "ddk_fast": report["ddk_fast"], "cpu threads": report["cpu_threads"],
        "extension": "cpu+cuda" if report["extension_cuda"] else ("cpu" if report["extension_cpu"] else "missing"),
        "wall s": round(time.time() - started, 1),
        "command": "ddk-fast benchmark --device " + device + (" --quick" if quick else ""),
    }
    md = write_reports(raw, output, header)
    return md, output
