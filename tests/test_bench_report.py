"""The benchmark reporter: ratios against the baseline in the same run, tables, plot, atomic files."""
import json

from ddk_fast.bench.report import comparison_table, rows_from_pytest_benchmark, write_reports


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
