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
from ddk_fast.bench.environment import collect
from ddk_fast.bench.report import write_reports

TIMERS = {"wall": "time.perf_counter", "cpu": "time.process_time"}


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


def machine_load() -> str:
    """The 1/5/15-minute load averages against the core count, e.g. "7.9 / 8.3 / 6.1 on 2 cores".

    Why: on a shared machine every absolute time moves with what else runs; the header says how busy
    it was, so a reader can tell a slow machine from a slow path."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not available on this platform
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def run_suite(device: str = "cpu", quick: bool = False, output: str | None = None, bench_dir: str | None = None,
              select: str | None = None, extra_pytest_args: list[str] | None = None,
              threads: int | None = None, timer: str = "wall") -> tuple[str, str]:
    """Run the suites; return (markdown table, output folder).

    ``threads``: CPU threads for the suites (OMP/MKL thread count of the pytest process); None keeps
    torch's default (one per core). On an oversubscribed machine one thread gives far steadier times:
    a multi-threaded op stalls whenever one of its threads is descheduled.
    ``timer``: "wall" (perf_counter) or "cpu" (the process's CPU time, ``time.process_time``): on a
    machine shared with other jobs, CPU time of a single-threaded run does not count the time spent
    waiting for a core. CPU device only; with several threads it also counts their spin-waiting.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {sorted(TIMERS)}, got {timer!r}")
    if timer == "cpu" and device != "cpu":
        raise ValueError(f"timer 'cpu' measures host CPU time and cannot time device {device!r}; use 'wall'")
    bench_dir = find_benchmarks_dir(bench_dir)
    if output is None:
        output = os.path.join(bench_dir, "results", device)
    env = dict(os.environ)
    env[DEVICE_ENV] = device
    env[QUICK_ENV] = "1" if quick else "0"
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    if device == "cpu":
        env.setdefault("TRITON_INTERPRET", "0")
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw.json")
        # The suites are bench_*.py, which pytest's default file pattern (test_*.py) does not collect.
        cmd = [sys.executable, "-m", "pytest", bench_dir, "-q", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
               f"--benchmark-json={raw_path}", "--benchmark-sort=name", "--benchmark-columns=median,rounds"]
        if quick:
            cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.05", "--benchmark-warmup=off"]
        else:
            cmd += ["--benchmark-min-rounds=5", "--benchmark-warmup=on"]
        cmd += [f"--benchmark-timer={TIMERS[timer]}"]
        if select:
            cmd += ["-k", select]
        cmd += list(extra_pytest_args or [])
        started, load_before = time.time(), machine_load()
        proc = subprocess.run(cmd, env=env, cwd=os.path.dirname(bench_dir))
        load_after = machine_load()
        raw = {}
        if os.path.exists(raw_path):
            with open(raw_path) as fh:
                raw = json.load(fh)
        elif proc.returncode != 5:  # 5: pytest collected nothing (no JSON then); reported below
            raise RuntimeError(f"benchmark run failed (pytest exit {proc.returncode}): {' '.join(cmd)}")
    if not raw.get("benchmarks"):
        raise RuntimeError(f"no benchmark case ran (pytest exit {proc.returncode}"
                           + (f", -k {select!r} selected nothing" if select else "") + f"): {' '.join(cmd)}")
    report = collect()
    header = {
        "device": device if device == "cpu" else ", ".join(report["gpus"]) or device,
        "quick": quick,
        "torch": report["torch"], "triton": report["triton"], "transformers": report["transformers"],
        "ddk_fast": report["ddk_fast"], "cpu threads": threads or report["cpu_threads"],
        "timer": {"wall": "wall clock (time.perf_counter)", "cpu": "process CPU time (time.process_time)"}[timer],
        "extension": "cpu+cuda" if report["extension_cuda"] else ("cpu" if report["extension_cpu"] else "missing"),
        "load average (1/5/15 min) at start": load_before,
        "load average (1/5/15 min) at end": load_after,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "wall s": round(time.time() - started, 1),
        "command": "ddk-fast benchmark --device " + device + (" --quick" if quick else "")
                   + (f" --threads {threads}" if threads else "") + (" --timer cpu" if timer == "cpu" else "")
                   + (f" -k {select!r}" if select else ""),
    }
    if proc.returncode not in (0, 5):
        header["pytest exit"] = f"{proc.returncode} (some cases failed; their rows are missing)"
    md = write_reports(raw, output, header)
    if proc.returncode not in (0, 5):  # keep what did run, but do not report success
        raise RuntimeError(f"some benchmark cases failed (pytest exit {proc.returncode}); the cases that ran "
                           f"are in {output}. Command: {' '.join(cmd)}")
    return md, output
