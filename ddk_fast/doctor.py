"""`ddk-fast doctor`: which versions are installed and which fast paths are live on this machine.

Why: a missing extension or an interpreter-only Triton silently changes the speed a user sees; this
report makes it visible before a long run. The facts come from ``ddk_fast.bench.environment.collect``
(benchmarks stamp their results with the same record); this module only lays them out.
"""
from __future__ import annotations


def format_report(report: dict) -> str:
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k:<24} {v}" for k, v in value.items())
        else:
            lines.append(f"{key:<26} {value}")
    return "\n".join(lines)


__all__ = ["format_report"]
