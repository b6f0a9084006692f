"""Every Triton kernel, at every launch configuration its launcher can choose on a GPU, compiles for
sm_80 and sm_90 on this CPU machine, with no register spills and within each GPU's shared memory.

The compile runs once per session in a subprocess (``python -m ddk_fast.kernels.aot``): the other
tests import the kernels under TRITON_INTERPRET=1, where they are interpreted functions that cannot be
compiled. The launches come from replaying the launchers (kernels/aot.py), with the tiles of
kernels/configs.py; CI compiles the launches that bound the others (``aot.representatives``), and
``python -m ddk_fast.kernels.aot --full`` compiles all of them (docs/gpu_aot.md).
"""
import json
import os
import subprocess
import sys

import pytest

from ddk_fast.kernels import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    proc = subprocess.run([sys.executable, "-m", "ddk_fast.kernels.aot", "--quiet", "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _rows(report):
    return report["compiled"]


def test_every_kernel_in_the_package_is_replayed(report):
    launched = {desc["kernel"] for desc in report["launches"]}
    assert len(report["launchable_kernels"]) >= 7
    assert launched == set(report["launchable_kernels"])


def test_every_tile_of_the_table_is_launched(report):
    for kernel, tiles in report["tiles"].items():
        launched = {aot.launch_tile(d) for d in report["launches"] if d["kernel"] == kernel}
        assert set(tiles) <= launched, (kernel, sorted(set(tiles) - launched))


def test_launches_are_replayed_as_on_a_gpu(report):
    """The interpreter-only choices never appear: no bf16 upcast, no fp32 dot operands, no 16x16 1-warp tile."""
    for desc in report["launches"]:
        c = desc["constexprs"]
        assert not c.get("UPCAST") and not c.get("DOT_FP32"), desc
        assert not (desc["num_warps"] == 1 and c.get("BLOCK_M") == 16), desc


def test_every_representative_compiles_for_both_architectures(report):
    rows = _rows(report)
    failed = [(r["kernel"], r["arch"], r["error"]) for r in rows if not r["ok"]]
    assert not failed, failed[:10]
    compiled = {(r["launch"], r["arch"]) for r in rows}
    reps = {d["bound_by"] for d in report["launches"]}
    assert compiled == {(i, arch) for i in reps for arch in aot.ARCHS}


def test_no_register_spills(report):
    spilled = [(r["kernel"], aot.launch_tile(r), r["dtype"], r["arch"], r["spill_stores"]) for r in _rows(report)
               if r["spill_stores"] > aot.allowed_spill_bytes(r)]
    assert not spilled, spilled


def test_shared_memory_within_each_gpus_limit(report):
    over = [(r["kernel"], aot.launch_tile(r), r["dtype"], r["arch"], r["shared"]) for r in _rows(report)
            if r["shared"] > aot.SHARED_LIMIT_BYTES[r["arch"]]]
    assert not over, over
    assert all(r["shared"] > 0 for r in _rows(report))  # the metadata was read, not defaulted


def test_every_launch_is_bounded_by_a_compiled_one(report):
    launches = report["launches"]
    for i, desc in enumerate(launches):
        rep = launches[desc["bound_by"]]
        assert desc["bound_by"] == i or aot._dominates(rep, desc), (desc, rep)
        assert aot._group_key(rep) == aot._group_key(desc)
