"""scripts/gpu_check.sh --dry-run: every step of the prepared GPU check is wired (it runs on CPU in CI,
so the check cannot rot before it meets a GPU), and the report writer labels a dry run as such."""
import json
import os
import subprocess

import pytest

from ddk_fast.bench.targets import Measurement, Target, evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_RESULTS = os.path.join(ROOT, "benchmarks", "results", "gpu")
STEPS = ("environment", "build", "gpu-tests", "benchmarks")


def _snapshot(folder):
    if not os.path.isdir(folder):
        return None
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    before = _snapshot(GPU_RESULTS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    return proc, out, before


def test_every_step_runs_in_the_dry_run(dry_run):
    proc, _, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for step in STEPS:
        assert f"== [{step}] ok (dry run" in proc.stdout, step
    assert "GPU tests collected" in proc.stdout
    assert "== gpu_check done (dry run)" in proc.stdout


def test_dry_run_report_is_labelled_and_every_target_was_measured(dry_run):
    _, out, _ = dry_run
    report = json.loads((out / "results.json").read_text())
    assert report["header"]["dry_run"] is True and report["header"]["failed cases"] == "none"
    subjects = {m["subject"] for m in report["measurements"]}
    assert subjects == {"gated_attention", "masked_ffn", "distill_losses", "search_step"}
    names = [t["name"] for t in report["targets"]]
    assert len(names) == 7 and "attention dense vs SDPA" in names and "search step keep 0.5 vs reference" in names
    # every target found both of its measurements: each case produced what its targets compare
    assert all(t["status"] in ("met", "missed") and t["ratio"] > 0 for t in report["targets"]), report["targets"]
    md = (out / "results.md").read_text()
    assert "**DRY RUN**" in md and "(dry run)" in md
    assert (out / "results.png").stat().st_size > 1000


def test_dry_run_never_touches_the_gpu_results(dry_run):
    _, _, before = dry_run
    assert _snapshot(GPU_RESULTS) == before


def test_target_evaluation_met_missed_and_not_measured():
    rows = [Measurement("a", "fast", "fwd", 1.0, "", 1.0), Measurement("a", "base", "fwd", 1.0, "", 2.0)]
    targets = [Target("half", ("a", "fast", "fwd", 1.0), ("a", "base", "fwd", 1.0), 0.5, "2x"),
               Target("third", ("a", "fast", "fwd", 1.0), ("a", "base", "fwd", 1.0), 1 / 3, "3x"),
               Target("absent", ("a", "other", "fwd", 1.0), ("a", "base", "fwd", 1.0), 1.0, "-")]
    got = {r["name"]: (r["status"], r["ratio"]) for r in evaluate(rows, targets)}
    assert got == {"half": ("met", 0.5), "third": ("missed", 0.5), "absent": ("not measured", None)}
