"""`ddk-fast benchmark`: the reporter's ratio tables and the command end to end (quick mode).

No timing is asserted (the machine is shared); what is checked is that every suite ran, tagged its
cases so that each comparison row has a pure-PyTorch baseline, and that the reports land where asked
and nowhere else.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

from ddk_fast.bench.report import comparison_table, markdown, rows_from_pytest_benchmark, write_reports
from ddk_fast.bench.runner import find_benchmarks_dir, run_suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")


def _case(file, test, provider, median, keep=0.5, subject="op", mode="fwd", shape="B1"):
    info = {"subject": subject, "provider": provider, "mode": mode, "keep": keep, "shape": shape}
    return {"fullname": f"benchmarks/{file}.py::{test}[{provider}]", "name": f"{test}[{provider}]",
            "extra_info": info, "stats": {"median": median, "min": median * 0.9, "mean": median,
                                          "stddev": 0.0, "rounds": 3}}


def test_comparison_table_ratios_to_the_baseline_of_each_group():
    raw = {"benchmarks": [
        _case("bench_a", "t", "reference", 2.0), _case("bench_a", "t", "compact", 0.5),
        _case("bench_a", "t", "reference", 4.0, keep=1.0), _case("bench_a", "t", "compact", 3.0, keep=1.0),
        _case("bench_b", "u", "transformers", 1.0, subject="infer"), _case("bench_b", "u", "pruned", 0.25,
                                                                           subject="infer"),
        _case("bench_c", "v", "fused", 1.0, subject="loss", keep=None),  # no baseline in its group
    ]}
    table = comparison_table(rows_from_pytest_benchmark(raw))
    by = {(r["subject"], r["keep"], r["provider"]): r for r in table}
    assert by[("op", 0.5, "compact")]["ratio_to_baseline"] == pytest.approx(0.25)
    assert by[("op", 1.0, "compact")]["ratio_to_baseline"] == pytest.approx(0.75)
    assert by[("op", 0.5, "reference")]["ratio_to_baseline"] == pytest.approx(1.0)
    assert by[("infer", 0.5, "pruned")]["baseline"] == "transformers"
    assert by[("infer", 0.5, "pruned")]["ratio_to_baseline"] == pytest.approx(0.25)
    assert by[("loss", None, "fused")]["ratio_to_baseline"] is None
    assert {r["suite"] for r in table} == {"bench_a", "bench_b", "bench_c"}
    md = markdown(table, {"device": "cpu"})
    assert "| fwd | 0.5 | B1 | compact | 500.00 | 0.250 |" in md
    assert "## infer" in md and "## loss" in md


def test_write_reports_writes_the_three_files(tmp_path):
    raw = {"benchmarks": [_case("bench_a", "t", "reference", 2.0), _case("bench_a", "t", "compact", 1.0)]}
    md = write_reports(raw, str(tmp_path), {"device": "cpu", "load": "1.0"})
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "results.png"]
    assert (tmp_path / "results.md").read_text() == md
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["header"]["load"] == "1.0"
    assert [r["provider"] for r in payload["table"]] == ["compact", "reference"]


def test_runner_refuses_a_cpu_timer_on_cuda_and_a_bad_thread_count(tmp_path):
    with pytest.raises(ValueError, match="timer 'cpu'"):
        run_suite(device="cuda", timer="cpu", output=str(tmp_path))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        run_suite(threads=0, output=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_find_benchmarks_dir_is_the_source_tree_and_names_a_missing_folder(tmp_path):
    assert find_benchmarks_dir() == BENCH_DIR
    with pytest.raises(FileNotFoundError, match="--bench-dir"):
        find_benchmarks_dir(str(tmp_path / "nowhere"))


def _default_results_state():
    """Files (and their modification times) under benchmarks/results/, which tests must not touch."""
    root = os.path.join(BENCH_DIR, "results")
    if not os.path.isdir(root):  # glob("missing/**") still yields "missing/"
        return {}
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(root, "**"), recursive=True)}


def _cli(*args, timeout):
    return subprocess.run([sys.executable, "-m", "ddk_fast.cli", "benchmark", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_selecting_no_case_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _cli("--quick", "--output", str(out), "-k", "no_such_case_anywhere", timeout=600)
    assert proc.returncode != 0
    assert "no benchmark case ran" in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.slow
def test_cli_quick_run_covers_every_suite_with_baseline_ratios(tmp_path):
    before = _default_results_state()
    out = tmp_path / "tmp"
    proc = _cli("--quick", "--output", str(out), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["results.json", "results.md", "results.png"]
    assert (out / "results.png").stat().st_size > 1000
    payload = json.loads((out / "results.json").read_text())
    assert payload["header"]["quick"] is True
    assert "on" in payload["header"]["load average (1/5/15 min) at start"]
    suites = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(BENCH_DIR, "bench_*.py")))
    assert len(suites) >= 6
    for suite in suites:
        rows = [r for r in payload["table"] if r["suite"] == suite]
        assert rows, f"{suite} contributed no rows"
        compared = [r for r in rows if r["ratio_to_baseline"] is not None and r["provider"] != r["baseline"]]
        assert compared, f"{suite}: no row has a baseline to compare with ({sorted({r['provider'] for r in rows})})"
        assert all(r["median_ms"] > 0 for r in rows)
    md = (out / "results.md").read_text()
    for subject in {r["subject"] for r in payload["table"]}:
        assert f"## {subject}" in md
    assert _default_results_state() == before, "a test run wrote into benchmarks/results/"


def test_targets_section_says_met_or_missed():
    cases = [_case("bench_a", "t", "reference", 2.0), _case("bench_a", "t", "compact", 1.0),
             _case("bench_a", "t", "reference", 2.0, keep=0.25), _case("bench_a", "t", "compact", 1.5, keep=0.25)]
    cases[1]["extra_info"]["target_ratio"] = 0.6   # 0.5 <= 0.6: met
    cases[3]["extra_info"]["target_ratio"] = 0.6   # 0.75 > 0.6: missed
    md = markdown(comparison_table(rows_from_pytest_benchmark({"benchmarks": cases})), {})
    assert "| op | fwd | 0.5 | compact | reference | 0.500 |  | <= 0.600 | 2.00x | yes (no spread" in md
    assert "| op | fwd | 0.25 | compact | reference | 0.750 |  | <= 0.600 | 1.33x | NO (no spread" in md
    assert md.index("## Targets") < md.index("## op")
