"""Time one ``ddk-fast compress`` command on this checkout and on an earlier git revision, same machine.

Why a script and not a pytest-benchmark suite: "how much faster is a whole run than it was" compares
two versions of the library, which cannot be imported into one process. The script checks the
earlier revision out into a temporary worktree, builds its C++ extension with the same interpreter,
and runs the same command line under both, alternating (old, new, old, new, ...) so a change of
machine load hits both sides alike. Each run is timed from outside (wall clock, and the process's
user + system CPU time from ``os.wait4``); its ``report.json`` gives the dev scores and the time per
stage. The load average is recorded before and after every run.

Threads: ``--threads N`` sets ``OMP_NUM_THREADS`` for both sides and passes ``--threads N`` to
revisions whose ``compress`` has that flag (older ones take their thread count from torch, i.e. from
``OMP_NUM_THREADS``).

Example (against 78f6064, the code before the teacher cache; 75 MRPC steps, both cores):

    python benchmarks/compress_vs_revision.py --baseline 78f6064 --repeats 2 --threads 2 \\
        --output compress-vs-78f6064.json -- \\
        --teacher t-mrpc --task mrpc --data-dir ../shared/data/glue --target params=0.5 \\
        --max-train-examples 800 --search-epochs 1 --distill-epochs 2 --seed 42

It prints one row per run and the median ratios (baseline / this checkout; > 1 means faster now).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ddk_fast.bench.runner import machine_load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def prepare_baseline(revision: str, workdir: str) -> str:
    """Check ``revision`` out under ``workdir``, build its extension in place and return a folder that,
    put first on PYTHONPATH, imports that revision's ``ddk_fast`` (with its Triton ``kernels/`` folder
    mapped to ``ddk_fast.kernels`` as the installed package does)."""
    tree = os.path.join(workdir, "tree")
    package_root = os.path.join(workdir, "pkg")
    remove_baseline(workdir)  # a tree or package left by an earlier, interrupted run
    _git("worktree", "add", "--detach", "-f", tree, revision)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    shutil.copytree(os.path.join(tree, "ddk_fast"), os.path.join(package_root, "ddk_fast"))
    kernels = os.path.join(tree, "kernels")
    if os.path.isdir(kernels) and not os.path.isdir(os.path.join(package_root, "ddk_fast", "kernels")):
        shutil.copytree(kernels, os.path.join(package_root, "ddk_fast", "kernels"))
    return package_root


def remove_baseline(workdir: str) -> None:
    """Unregister and delete the baseline worktree and its package copy (idempotent)."""
    tree = os.path.join(workdir, "tree")
    if os.path.isdir(tree):
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, capture_output=True)
    subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True)
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(os.path.join(workdir, "pkg"), ignore_errors=True)


def _has_threads_flag(env: dict) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "ddk_fast.cli", "compress", "--help"], env=env,
                               capture_output=True, text=True).stdout
    return "--threads" in help_text


def run_once(label: str, env: dict, compress_args: list[str], output: str, log_path: str) -> dict:
    """One ``compress`` run in a child process; wall and CPU time measured from outside."""
    load_before = machine_load()
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "ddk_fast.cli", "compress", *compress_args,
                                  "--output", output], env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    row = dict(label=label, exit_code=code, wall_s=round(wall, 1), cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
               max_rss_mib=round(usage.ru_maxrss / 1024), load_before=load_before, load_after=machine_load(), log=log_path)
    report_path = os.path.join(output, "report.json")
    if code == 0 and os.path.exists(report_path):
        with open(report_path) as fh:
            report = json.load(fh)
        row.update(teacher_dev=report.get("teacher_dev"), student_dev=report.get("student_dev"),
                   times_s={k: round(v, 1) for k, v in (report.get("times_s") or {}).items()})
    return row


def _ratio(rows: list[dict], key: str) -> float | None:
    old = [r[key] for r in rows if r["label"] == "baseline" and r["exit_code"] == 0]
    new = [r[key] for r in rows if r["label"] == "head" and r["exit_code"] == 0]
    return round(statistics.median(old) / statistics.median(new), 3) if old and new else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (alternating)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every run")
    parser.add_argument("--output", required=True, help="JSON file for the rows and ratios")
    parser.add_argument("--workdir", default=None, help="where the runs and the baseline tree go (default: a temp dir)")
    parser.add_argument("compress_args", nargs=argparse.REMAINDER, help="-- then the compress flags (no --output)")
    args = parser.parse_args(argv)
    compress_args = [a for a in args.compress_args if a != "--"]
    if "--output" in compress_args:
        parser.error("leave --output out of the compress flags: every run gets its own folder")
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="compress-vs-"))
    os.makedirs(workdir, exist_ok=True)
    base_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    base_env.pop("PYTHONPATH", None)
    rows = []
    try:
        # head: this checkout first on the path, ddk_fast.kernels (kernels/) through the install's
        # editable finder; the baseline gets that mapping by copying (prepare_baseline)
        envs = {"baseline": dict(base_env, PYTHONPATH=prepare_baseline(args.baseline, workdir)),
                "head": dict(base_env, PYTHONPATH=REPO)}
        flags = {label: (["--threads", str(args.threads)] if _has_threads_flag(env) else [])
                 for label, env in envs.items()}
        for repeat in range(args.repeats):
            for label in ("baseline", "head"):
                out = os.path.join(workdir, f"{label}-{repeat}")
                shutil.rmtree(out, ignore_errors=True)
                row = run_once(label, envs[label], compress_args + flags[label], out, out + ".log")
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        remove_baseline(workdir)
    # "-dirty" when this checkout has uncommitted changes: the head side ran them too
    head = _git("describe", "--always", "--dirty")
    result = dict(baseline=args.baseline, head=head, threads=args.threads,
                  compress_args=compress_args, rows=rows,
                  wall_speedup=_ratio(rows, "wall_s"), cpu_speedup=_ratio(rows, "cpu_s"))
    tmp = args.output + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, args.output)
    print(f"median wall speed-up {result['wall_speedup']}x, CPU time {result['cpu_speedup']}x "
          f"({args.baseline} -> {head}, {args.threads} threads)")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
