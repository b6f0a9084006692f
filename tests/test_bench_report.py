"""The benchmark reporter: ratios against the baseline in the same run, tables, plot, atomic files."""
import json

from ddk_fast.bench.report import comparison_table, markdown, rows_from_pytest_benchmark, write_reports
from ddk_fast.bench.targets import Measurement, Target, evaluate, write_report


def _case(provider, median, keep=0.5, mode="fwd+bwd", subject="masked_ffn", mem=None):
    info = {"subject": subject, "provider": provider, "mode": mode, "keep": keep, "shape": "B2"}
    if mem is not None:
        info["peak_mem_bytes"] = mem
    return {"name": f"test_{provider}", "fullname": f"x::test_{provider}[{keep}]", "group": "g",
            "extra_info": info, "stats": {"median": median, "mean": median, "stddev": 0.0, "rounds": 3}}


def test_ratios_are_against_the_baseline_of_the_same_row():
    raw = {"benchmarks": [_case("reference", 0.2), _case("compact", 0.1, mem=2**20),
                          _case("reference", 0.2, keep=1.0), _case("compact", 0.25, keep=1.0)]}
    table = comparison_table(rows_from_pytest_benchmark(raw))
    by = {(r["provider"], r["keep"]): r for r in table}
    assert abs(by[("compact", 0.5)]["ratio_to_baseline"] - 0.5) < 1e-12
    assert abs(by[("compact", 1.0)]["ratio_to_baseline"] - 1.25) < 1e-12
    assert by[("reference", 0.5)]["ratio_to_baseline"] == 1.0
    assert abs(by[("compact", 0.5)]["peak_mem_mb"] - 1.0) < 1e-12


def test_row_without_baseline_has_no_ratio():
    table = comparison_table(rows_from_pytest_benchmark({"benchmarks": [_case("compact", 0.1)]}))
    assert table[0]["ratio_to_baseline"] is None


def test_write_reports(tmp_path):
    raw = {"benchmarks": [_case("reference", 0.2), _case("compact", 0.1)]}
    md = write_reports(raw, str(tmp_path), {"device": "cpu"})
    assert "| fwd+bwd | 0.5 | B2 | compact | 100.00 | 0.500 |" in md
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["rows"]) == 2
    assert (tmp_path / "results.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))


def _timed(provider, median, low, high, rounds=5, keep=0.5, target=None):
    case = _case(provider, median, keep=keep)
    case["stats"].update(min=low, max=high, rounds=rounds)
    if target is not None:
        case["extra_info"]["target_ratio"] = target
    return case


def test_target_verdict_carries_the_spread_and_says_unclear_when_it_crosses():
    raw = {"benchmarks": [_timed("reference", 1.0, 0.9, 1.1), _timed("compact", 0.5, 0.45, 0.55, target=0.6),
                          _timed("reference", 1.0, 0.8, 1.25, keep=0.25),
                          _timed("compact", 0.55, 0.5, 0.8, keep=0.25, target=0.6)]}
    table = comparison_table(rows_from_pytest_benchmark(raw))
    by = {(r["provider"], r["keep"]): r for r in table}
    low, high = by[("compact", 0.5)]["ratio_spread"]
    assert abs(low - 0.45 / 1.1) < 1e-12 and abs(high - 0.55 / 0.9) < 1e-12
    md = markdown(table, {"quick": False})
    # keep 0.5: the whole spread 0.409-0.611 does not sit below 0.6 -> unclear, though the median meets it
    assert "| 0.500 | 0.409-0.611 | <= 0.600 | 2.00x | unclear (median meets" in md
    assert "| 0.550 | 0.400-1.000 | <= 0.600 | 1.82x | unclear" in md
    firm = {"benchmarks": [_timed("reference", 1.0, 0.95, 1.05), _timed("compact", 0.5, 0.48, 0.52, target=0.6)]}
    assert "| 0.500 | 0.457-0.547 | <= 0.600 | 2.00x | yes |" in markdown(
        comparison_table(rows_from_pytest_benchmark(firm)), {"quick": False})


def test_quick_run_judges_no_target():
    raw = {"benchmarks": [_timed("reference", 1.0, 1.0, 1.0, rounds=1), _timed("compact", 2.0, 2.0, 2.0, rounds=1,
                                                                                target=0.6)]}
    md = markdown(comparison_table(rows_from_pytest_benchmark(raw)), {"quick": True})
    assert "| 2.000 |  | <= 0.600 | 0.50x | not judged (quick shapes) |" in md
    assert "| NO" not in md and "| yes" not in md


def test_gpu_targets_carry_the_spread_and_a_dry_run_judges_none(tmp_path):
    rows = [Measurement("a", "fast", "fwd", 1.0, "", 1.0, 0.9, 1.2), Measurement("a", "base", "fwd", 1.0, "", 2.0, 1.8, 2.2)]
    target = Target("half", ("a", "fast", "fwd", 1.0), ("a", "base", "fwd", 1.0), 0.6, "1.67x")
    (result,) = evaluate(rows, [target])
    assert result["status"] == "met" and abs(result["spread"][0] - 0.9 / 2.2) < 1e-12
    assert result["spread_crosses_bound"] is True  # 1.2 / 1.8 = 0.667 > 0.6
    write_report(str(tmp_path / "real"), {}, rows, [target])
    assert "unclear (median: met; spread crosses the bound)" in (tmp_path / "real" / "results.md").read_text()
    write_report(str(tmp_path / "dry"), {"dry_run": True}, rows, [target])
    md = (tmp_path / "dry" / "results.md").read_text()
    assert "not judged (dry run)" in md and "| met" not in md
