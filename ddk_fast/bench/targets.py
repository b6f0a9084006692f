"""Performance targets as ratios of measured times, and the report (json, md, png) that says met/missed.

A ``Measurement`` is one timed case (subject, provider, keep, median ms). A ``Target`` names two
measurements and a bound on their time ratio (``numerator / denominator <= bound``); a "1.6x faster"
goal is the bound 1/1.6. Why ratios of times measured in the same run: absolute times move with the
machine, clocks and load; a ratio of two paths timed back to back is what carries across machines.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ddk_fast._io import atomic_write_text


@dataclass(frozen=True)
class Measurement:
    subject: str
    provider: str
    mode: str
    keep: float | None
    shape: str
    median_ms: float
    low_ms: float | None = None  # fastest and slowest of the timed reps: the spread behind the median
    high_ms: float | None = None

    @property
    def key(self) -> tuple:
        return (self.subject, self.provider, self.mode, self.keep)


@dataclass(frozen=True)
class Target:
    """``numerator`` time / ``denominator`` time must be at most ``bound`` (keys: subject, provider,
    mode, keep)."""

    name: str
    numerator: tuple
    denominator: tuple
    bound: float
    goal: str

    def evaluate(self, measured: dict[tuple, Measurement]) -> dict:
        num, den = measured.get(self.numerator), measured.get(self.denominator)
        row = {"name": self.name, "goal": self.goal, "bound": self.bound, "numerator": list(self.numerator),
               "denominator": list(self.denominator)}
        if num is None or den is None or den.median_ms <= 0:
            missing = [str(k) for k, m in ((self.numerator, num), (self.denominator, den)) if m is None]
            return dict(row, ratio=None, status="not measured", missing=missing)
        ratio = num.median_ms / den.median_ms
        spread = None
        if None not in (num.low_ms, num.high_ms, den.low_ms, den.high_ms) and den.low_ms > 0:
            spread = [num.low_ms / den.high_ms, num.high_ms / den.low_ms]
        crosses = spread is not None and spread[0] <= self.bound < spread[1]
        return dict(row, ratio=ratio, spread=spread, spread_crosses_bound=crosses,
                    status="met" if ratio <= self.bound else "missed")


def evaluate(measurements: list[Measurement], targets: list[Target]) -> list[dict]:
    measured = {m.key: m for m in measurements}
    return [t.evaluate(measured) for t in targets]


def markdown(header: dict, measurements: list[Measurement], results: list[dict]) -> str:
    lines = ["# ddk_fast GPU benchmark results", ""]
    if header.get("dry_run"):
        lines += ["**DRY RUN** on the CPU with tiny shapes: it checks that every case and target is wired; the "
                  "times and ratios below are not measurements of anything.", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "dry_run"]
    lines += ["", "## Targets", "", "| target | goal | ratio | spread | bound | status |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        spread = r.get("spread")
        spread_txt = "" if spread is None else f"{spread[0]:.3f}-{spread[1]:.3f}"
        if header.get("dry_run"):
            status = "not judged (dry run)"
        elif r.get("spread_crosses_bound"):
            status = f"unclear (median: {r['status']}; spread crosses the bound)"
        else:
            status = r["status"] + ("" if spread is not None or r["ratio"] is None else " (no spread)")
        lines.append(f"| {r['name']} | {r['goal']} | {ratio} | {spread_txt} | <= {r['bound']:.3f} | {status} |")
    lines += ["", "## Times", "", "| subject | mode | keep | shape | provider | median ms |",
              "|---|---|---|---|---|---:|"]
    for m in measurements:
        keep = "" if m.keep is None else f"{m.keep:g}"
        lines.append(f"| {m.subject} | {m.mode} | {keep} | {m.shape} | {m.provider} | {m.median_ms:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str, dry_run: bool) -> None:
    """One bar per target: measured ratio / bound on a log axis (met left of the line at 1, green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.45 * max(len(rows), 1)))
    for i, r in enumerate(rows):
        ax.barh(i, r["ratio"] / r["bound"], color="tab:green" if r["status"] == "met" else "tab:red")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured time ratio / target bound (<= 1: met)")
    ax.set_title("DRY RUN (CPU, tiny shapes): not a measurement" if dry_run else "GPU targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: str, header: dict, measurements: list[Measurement], targets: list[Target]) -> list[dict]:
    """Write results.json, results.md and results.png into ``out_dir``; return the evaluated targets."""
    os.makedirs(out_dir, exist_ok=True)
    results = evaluate(measurements, targets)
    payload = {"header": header, "measurements": [asdict(m) for m in measurements], "targets": results}
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(payload, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "results.md"), markdown(header, measurements, results))
    tmp_png = os.path.join(out_dir, ".results.tmp.png")
    plot(results, tmp_png, bool(header.get("dry_run")))
    os.replace(tmp_png, os.path.join(out_dir, "results.png"))
    return results
