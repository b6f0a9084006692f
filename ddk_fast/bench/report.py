"""Turn pytest-benchmark JSON into ratio tables (markdown), a tidy results.json and a plot.

Why ratios: absolute times move with the machine and its load; the ratio of our path to the
pure-PyTorch path measured in the same run is what a user can compare across machines.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

from ddk_fast.bench.conventions import BASELINES


def rows_from_pytest_benchmark(data: dict) -> list[dict]:
    """One flat row per timed case: subject, provider, mode, keep, shape, median/mean seconds, memory."""
    rows = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        stats = bench["stats"]
        name = bench.get("fullname", bench.get("name"))
        rows.append({
            "name": name,
            "suite": os.path.splitext(os.path.basename(name.split("::")[0]))[0] if "::" in name else "",
            "subject": info.get("subject", bench.get("group") or bench.get("name")),
            "provider": info.get("provider", info.get("path", bench.get("name"))),
            "mode": info.get("mode", ""),
            "keep": info.get("keep"),
            "shape": info.get("shape", ""),
            "median_s": stats["median"],
            "min_s": stats.get("min"),
            "max_s": stats.get("max"),
            "mean_s": stats["mean"],
            "stddev_s": stats["stddev"],
            "rounds": stats["rounds"],
            "peak_mem_bytes": info.get("peak_mem_bytes"),
            "extra": {k: v for k, v in info.items() if k not in ("subject", "provider", "mode", "keep", "shape")},
        })
    return rows


def comparison_table(rows: list[dict]) -> list[dict]:
    """Group rows by everything but the provider; give each provider's time ratio to the baseline."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        key = (row["subject"], row["mode"], row["keep"] if row["keep"] is not None else -1, row["shape"])
        groups[key][row["provider"]] = row
    table = []
    for (subject, mode, keep, shape), providers in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][3])):
        baseline_name = next((b for b in BASELINES if b in providers), None)
        base = providers.get(baseline_name) if baseline_name else None
        for name, row in sorted(providers.items()):
            table.append({
                "suite": row.get("suite", ""),
                "subject": subject, "mode": mode, "keep": None if keep == -1 else keep, "shape": shape,
                "provider": name, "baseline": baseline_name, "median_ms": row["median_s"] * 1e3,
                "ratio_to_baseline": (row["median_s"] / base["median_s"]) if base else None,
                "ratio_spread": ratio_spread(row, base) if base else None,
                "peak_mem_mb": None if row["peak_mem_bytes"] is None else row["peak_mem_bytes"] / 2**20,
                "target_ratio": row["extra"].get("target_ratio"),
            })
    return table


def ratio_spread(row: dict, base: dict) -> list[float] | None:
    """The range the time ratio can take over the timed rounds: [fastest row / slowest baseline,
    slowest row / fastest baseline]; None when either side ran a single round (no spread known).

    Why: a verdict on a median ratio means little when the rounds of either path scatter across the
    target; the range says how far the verdict can be trusted."""
    if min(row.get("rounds") or 0, base.get("rounds") or 0) < 2:
        return None
    lows, highs = (row.get("min_s"), base.get("min_s")), (row.get("max_s"), base.get("max_s"))
    if None in lows or None in highs or lows[1] <= 0:
        return None
    return [lows[0] / highs[1], highs[0] / lows[1]]


def verdict(ratio: float | None, bound: float, spread: list[float] | None, quick: bool) -> str:
    """"yes"/"NO" when the whole spread is on one side of the bound; "unclear" when it straddles it;
    "not judged" in quick mode, whose small shapes do not show what the target is about."""
    if quick:
        return "not judged (quick shapes)"
    if ratio is None:
        return "unknown"
    met = "yes" if ratio <= bound else "NO"
    if spread is None:
        return f"{met} (no spread: one round or no min/max)"
    if spread[0] <= bound < spread[1]:
        return f"unclear (median {'meets' if met == 'yes' else 'misses'}; spread crosses the target)"
    return met


def markdown(table: list[dict], header: dict) -> str:
    lines = ["# ddk_fast benchmark results", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Ratio = median time of the provider / median time of the baseline (pure-PyTorch path) "
              "in the same run; < 1 means faster.", ""]
    lines += target_lines(table, quick=bool(header.get("quick")))
    subjects = []
    for row in table:
        if row["subject"] not in subjects:
            subjects.append(row["subject"])
    for subject in subjects:
        lines += [f"## {subject}", "", "| mode | keep | shape | provider | median ms | ratio | peak MiB |",
                  "|---|---|---|---|---:|---:|---:|"]
        for row in (r for r in table if r["subject"] == subject):
            ratio = "" if row["ratio_to_baseline"] is None else f"{row['ratio_to_baseline']:.3f}"
            mem = "" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.1f}"
            keep = "" if row["keep"] is None else f"{row['keep']:g}"
            lines.append(f"| {row['mode']} | {keep} | {row['shape']} | {row['provider']} | "
                         f"{row['median_ms']:.2f} | {ratio} | {mem} |")
        lines.append("")
    return "\n".join(lines)


def target_lines(table: list[dict], quick: bool = False) -> list[str]:
    """A "Targets" section: every row whose case declared ``target_ratio`` (met when ratio <= target),
    with the ratio's spread over the rounds; quick runs list the rows but judge none."""
    rows = [r for r in table if r.get("target_ratio") is not None]
    if not rows:
        return []
    lines = ["## Targets", ""]
    if quick:
        lines += ["Quick run: small shapes and one round, where these ratios do not carry over to the sizes the "
                  "targets are about; no verdict is given (run without --quick to judge them).", ""]
    lines += ["| subject | mode | keep | provider | vs | ratio | spread | target | speed-up | met |",
              "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio, keep, spread = r["ratio_to_baseline"], "" if r["keep"] is None else f"{r['keep']:g}", r.get("ratio_spread")
        met = verdict(ratio, r["target_ratio"], spread, quick)
        if ratio is None:
            got, speedup = "no baseline", ""
        else:
            got, speedup = f"{ratio:.3f}", f"{1 / ratio:.2f}x"
        spread_txt = "" if spread is None else f"{spread[0]:.3f}-{spread[1]:.3f}"
        lines.append(f"| {r['subject']} | {r['mode']} | {keep} | {r['provider']} | {r['baseline'] or ''} | {got} | "
                     f"{spread_txt} | <= {r['target_ratio']:.3f} | {speedup} | {met} |")
    return lines + [""]


def plot(table: list[dict], path: str) -> None:
    """Time vs keep ratio per provider, one panel per subject+mode (only rows with a keep ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in table:
        if row["keep"] is not None:
            panels[(row["subject"], row["mode"], row["shape"])][row["provider"]].append((row["keep"], row["median_ms"]))
    if not panels:
        return
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, ((subject, mode, shape), providers) in zip(axes.flat, sorted(panels.items())):
        for provider, points in sorted(providers.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.set_title(f"{subject} {mode}\n{shape}", fontsize=9)
        ax.set_xlabel("keep ratio")
        ax.set_ylabel("median ms")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(raw: dict, out_dir: str, header: dict) -> str:
    """Write results.json, results.md and results.png into ``out_dir`` atomically; return the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    rows = rows_from_pytest_benchmark(raw)
    table = comparison_table(rows)
    md = markdown(table, header)
    payload = {"header": header, "rows": rows, "table": table}
    for name, text in (("results.json", json.dumps(payload, indent=2)), ("results.md", md)):
        tmp = os.path.join(out_dir, f".{name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    tmp_png = os.path.join(out_dir, ".results.tmp.png")
    plot(table, tmp_png)
    if os.path.exists(tmp_png):
        os.replace(tmp_png, os.path.join(out_dir, "results.png"))
    return md
