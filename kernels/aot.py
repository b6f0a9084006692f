"""Ahead-of-time compile of every Triton kernel launch for GPU targets, on a machine without a GPU.

How: each launcher is replayed for a GPU target (:func:`ddk_fast.kernels.configs.replaying_for_gpu`)
on small CPU tensors over every input it accepts (dtypes, head sizes, flags); the kernel launches
are intercepted instead of run (autotuned ones expanded over all their candidate tiles), and each
distinct launch -- kernel, argument types and specialisations, constexprs, warps, stages -- is
compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``. The ``ptxas -v``
that Triton bundles gives registers and spill bytes (Triton's own run of it, or a run on the cached
PTX), ``metadata.shared`` the shared memory. The interpreter flag does not matter for the replay, but
the kernels must be JIT functions, so this runs in a process without TRITON_INTERPRET.

Why replay the launchers instead of listing signatures: what gets compiled is then exactly what the
launchers would launch -- the tiles of :mod:`ddk_fast.kernels.configs`, the flags and strides they
pass -- so a new kernel, tile or flag is compiled without anyone listing it here.

The whole space is large (634 launches per architecture, about 27 minutes to compile on one core).
:func:`representatives` picks the launches that bound the others (109; see its docstring); CI
compiles those, ``--full`` compiles all (docs/gpu_aot.md holds its latest tables).

Run: ``python -m ddk_fast.kernels.aot [--full] [--arch 80 90] [--json FILE] [--markdown FILE]``
with TRITON_INTERPRET unset: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

import ddk_fast.kernels
from ddk_fast.kernels import configs
from ddk_fast.kernels import gated_attention as attention_kernels
from ddk_fast.kernels import masked_ffn as ffn_kernels
from ddk_fast.kernels import masked_linear as linear_kernels

NOT_KERNEL_MODULES = ("aot", "configs")  # the modules of the package that hold no kernel
ARCHS = (80, 90)
# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# A100 163 KiB and H100 227 KiB, 1 KiB under the per-SM 164 / 228 KiB that the driver keeps back.
SHARED_LIMIT_BYTES = {80: 163 * 1024, 90: 227 * 1024}
# Bytes of spill stores a launch may have, by (kernel, pointer dtype, BLOCK_D); every other launch: none.
# float64 attention backward at head size 256: its K, V, dK and dV tiles alone take 128 of the 255
# registers per thread at the smallest tile Triton's dot allows (16 x 16, 8 warps; 16 warps halve the
# register cap and spill more). float64 on the GPU serves exactness checks, not training; the spill
# costs speed only.
ALLOWED_SPILL_BYTES: dict[tuple[str, str, int], int] = {("_gated_attn_bwd_dkdv_kernel", "*fp64", 256): 128}


# ptxas-blackwell (CUDA 13, sm_90) run with --regAllocOptLevel=2 -- which Triton passes to work around a
# ptxas bug -- puts a few bytes on the stack in some kernels using as few as 80 registers; the same PTX
# has no spill without that flag. Far under the 255-register cap it is not register pressure.
ALLOCATOR_ARTIFACT = {"min_arch": 90, "max_registers": 128, "max_bytes": 16}


def allowed_spill_bytes(row: dict) -> int:
    """The spill-store bound of a compiled launch: ``ALLOWED_SPILL_BYTES``, the allocator artifact, else 0."""
    named = ALLOWED_SPILL_BYTES.get((row["kernel"], row["dtype"], row["constexprs"].get("BLOCK_D")), 0)
    artifact = ALLOCATOR_ARTIFACT
    if row["arch"] >= artifact["min_arch"] and row["registers"] <= artifact["max_registers"]:
        return max(named, artifact["max_bytes"])
    return named

# Constexpr flags whose True variant only adds instructions to the False one (an extra load, a
# masked compare, an epilogue term): the all-True launch needs at least the registers of the others.
ADDITIVE_FLAGS = frozenset({"HAS_MASK", "CAUSAL", "HAS_BIAS", "SAVE_Z", "HAS_EXTRA", "WANT_GATE", "WITH_ROWSUM"})
# Constexpr sizes that only widen the tiles (registers and shared memory grow with them).
GROWING_SIZES = frozenset({"BLOCK_D"})
# Pointer types compiled alike: same tile, same layouts, same instruction count, only the conversions
# differ (checked by the --full run, whose table is in docs/gpu_aot.md). The first is compiled.
SAME_AS = {"*fp16": "*bf16"}


# ------------------------------------------------------------------------------------------------
# intercepting launches
# ------------------------------------------------------------------------------------------------

@dataclass
class Launch:
    """One kernel launch a launcher would make on a GPU: the JIT function and its call arguments."""

    kernel: JITFunction
    args: tuple
    kwargs: dict
    key: str = ""
    describe: dict = field(default_factory=dict)


@contextlib.contextmanager
def intercepted_launches(sink: list):
    """Record every launch (``kernel[grid](...)`` and autotuned ones, once per candidate tile) in
    ``sink`` instead of running it, with the launchers choosing as they would on a GPU."""
    jit_run, tuned_run = JITFunction.run, Autotuner.run

    def record(self, *args, grid, warmup, **kwargs):
        sink.append(Launch(self, args, dict(kwargs)))

    def record_tuned(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        self.nargs = dict(zip(self.arg_names, args))
        try:
            for config in self.prune_configs(kwargs):
                sink.append(Launch(self.fn, args, {**kwargs, **config.all_kwargs()}))
        finally:
            self.nargs = None

    JITFunction.run, Autotuner.run = record, record_tuned
    try:
        with configs.replaying_for_gpu():
            yield sink
    finally:
        JITFunction.run, Autotuner.run = jit_run, tuned_run


# ------------------------------------------------------------------------------------------------
# the launch space: every launcher over every input it accepts
# ------------------------------------------------------------------------------------------------

def _attention_launches() -> None:
    """Forward and backward at every dtype, every head-size block, with and without padding mask and
    causal order. Layout as the op passes them: [B, H, S, D] views of [B, S, H, D] storage."""
    batch, heads, seq = 2, 4, 128
    head_dims = [16 << i for i in range(8) if 16 << i <= attention_kernels.MAX_HEAD_DIM]
    for dtype in attention_kernels.SUPPORTED_DTYPES:
        for head_dim in head_dims:
            def bhsd():
                return torch.zeros(batch, seq, heads, head_dim, dtype=dtype).transpose(1, 2)

            q, k, v, out, dout, dq, dk, dv = (bhsd() for _ in range(8))
            gate = torch.ones(heads)  # float32, as the searches hand gates over (one scalar load per program)
            head_index = torch.arange(heads)
            for key_valid in (None, torch.ones(batch, seq, dtype=torch.int32)):
                for causal in (False, True):
                    lse = attention_kernels.gated_attention_forward(q, k, v, gate, head_index, key_valid, causal,
                                                                    out)
                    attention_kernels.gated_attention_backward(q, k, v, gate, head_index, key_valid, causal, out,
                                                               lse, dout, dq, dk, dv)


@contextlib.contextmanager
def _fp32_matmul_precision(value: str):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _gemm_precisions(dtype: torch.dtype) -> tuple[str, ...]:
    """fp32 GEMMs compile two ways: exact ("highest" -> ieee) and TF32 ("high" -> tf32)."""
    return ("highest", "high") if dtype == torch.float32 else ("highest",)


def _linear_launches() -> None:
    """The six GEMMs of the masked linear layers, with and without bias, at every dtype/precision."""
    tokens, d_in, n_out, n_active = 256, 128, 256, 128
    for dtype in linear_kernels.SUPPORTED_DTYPES:
        for precision in _gemm_precisions(dtype):
            with _fp32_matmul_precision(precision):
                x = torch.zeros(tokens, d_in, dtype=dtype)
                w = torch.zeros(n_out, d_in, dtype=dtype)
                w_in_cols = torch.zeros(d_in, n_out, dtype=dtype)
                active = torch.arange(n_active)
                dy_rows = torch.zeros(tokens, n_active, dtype=dtype)
                dy_full = torch.zeros(tokens, d_in, dtype=dtype)
                for bias in (None, torch.zeros(n_out, dtype=dtype)):
                    linear_kernels.active_out_forward(x, w, bias, active)
                    linear_kernels.active_in_forward(dy_rows, w_in_cols, None if bias is None else bias[:d_in],
                                                     active)
                linear_kernels.active_out_backward_input(dy_rows, w, active)
                linear_kernels.active_in_backward_input(dy_full, w_in_cols, active)
                for want_bias in (False, True):
                    linear_kernels.active_out_backward_weight(dy_rows, x, active, n_out, want_bias)
                    linear_kernels.active_in_backward_weight(dy_full, dy_rows, active, n_out, want_bias)


def _ffn_launches() -> None:
    """FFN up-projection and backward epilogue kernels over every activation, flag and dtype."""
    tokens, hidden, channels, n_active = 256, 128, 256, 128
    for dtype in linear_kernels.SUPPORTED_DTYPES:
        for precision in _gemm_precisions(dtype):
            with _fp32_matmul_precision(precision):
                x = torch.zeros(tokens, hidden, dtype=dtype)
                w_in = torch.zeros(channels, hidden, dtype=dtype)
                w_out = torch.zeros(hidden, channels, dtype=dtype)
                gate = torch.ones(channels)
                active = torch.arange(n_active)
                z = torch.zeros(tokens, n_active, dtype=dtype)
                for activation in ffn_kernels.ACTIVATIONS:
                    for bias in (None, torch.zeros(channels, dtype=dtype)):
                        for save_z in (False, True):
                            ffn_kernels.ffn_up_forward(x, w_in, bias, gate, active, activation, save_z=save_z)
                    for grad_h in (None, torch.zeros_like(z)):
                        for want_gate in (False, True):
                            ffn_kernels.ffn_dh_backward(x, w_out, z, gate, active, activation, grad_h=grad_h,
                                                        want_gate=want_gate)


SCENARIOS = (_attention_launches, _linear_launches, _ffn_launches)


def launch_space() -> list[Launch]:
    """Every distinct launch the launchers make on a GPU, described and keyed (first seen first)."""
    if not isinstance(linear_kernels.indexed_matmul_kernel, JITFunction):
        raise RuntimeError("the kernels are interpreted (TRITON_INTERPRET=1): unset it to compile them ahead of time")
    seen: dict[str, Launch] = {}
    sink: list[Launch] = []
    with intercepted_launches(sink):
        for scenario in SCENARIOS:
            scenario()
    binder_backend = make_backend(GPUTarget("cuda", ARCHS[-1], 32))
    for launch in sink:
        _, specialization, options = _bind(launch, binder_backend)
        launch.key = f"{launch.kernel.__name__}|{specialization!r}|{sorted(options.items())!r}"
        if launch.key not in seen:
            launch.describe = _describe(launch, specialization, options)
            seen[launch.key] = launch
    return list(seen.values())


def launchable_kernels() -> list[str]:
    """Names of the JIT functions in the kernel modules that read a program id: those are launched
    with a grid; the others are device helpers inlined into them."""
    names = []
    for info in pkgutil.iter_modules(ddk_fast.kernels.__path__):
        if info.name in NOT_KERNEL_MODULES:
            continue
        module = importlib.import_module(f"ddk_fast.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and obj.__module__ == module.__name__ and "program_id" in obj.src:
                names.append(name)
    return sorted(names)


def _run_kwargs(launch: Launch) -> dict:
    """The keyword arguments ``JITFunction.run`` hands its binder (it adds these three itself)."""
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", launch.kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    return kwargs


_BINDERS: dict = {}


def _bind(launch: Launch, backend):
    """(bound args, specialisation, options) exactly as ``JITFunction.run`` computes them."""
    fn = launch.kernel
    cache_key = (id(fn), backend.target.arch)
    if cache_key not in _BINDERS:
        _BINDERS[cache_key] = create_function_from_signature(fn.signature, fn.params, backend)
    return _BINDERS[cache_key](*launch.args, **_run_kwargs(launch))


def _describe(launch: Launch, specialization, options) -> dict:
    fn = launch.kernel
    constexprs = {kp.name: value for kp, (kind, value) in zip(fn.params, specialization) if kp.is_constexpr}
    pointers = [kind for kind, _ in specialization if isinstance(kind, str) and kind.startswith("*")]
    return {"kernel": fn.__name__, "dtype": pointers[0] if pointers else "", "constexprs": constexprs,
            "num_warps": options.get("num_warps", 4), "num_stages": options.get("num_stages", 3)}


# ------------------------------------------------------------------------------------------------
# which launches bound the others
# ------------------------------------------------------------------------------------------------

def _group_key(desc: dict) -> str:
    rest = {k: v for k, v in desc["constexprs"].items() if k not in ADDITIVE_FLAGS and k not in GROWING_SIZES}
    dtype = SAME_AS.get(desc["dtype"], desc["dtype"])
    return json.dumps([desc["kernel"], dtype, desc["num_warps"], desc["num_stages"], sorted(rest.items())],
                      default=str)


def _dominates(rep: dict, other: dict) -> bool:
    a, b = rep["constexprs"], other["constexprs"]
    flags_ok = all(bool(a.get(f)) or not bool(b.get(f)) for f in ADDITIVE_FLAGS if f in b)
    sizes_ok = all(a.get(s, 0) >= b[s] for s in GROWING_SIZES if s in b)
    return flags_ok and sizes_ok


def representatives(launches: list[Launch]) -> tuple[list[int], list[int]]:
    """(indices of the launches to compile, for each launch the index of the one that bounds it).

    Launches that differ only in additive flags (``ADDITIVE_FLAGS``: the True branch adds code),
    in sizes that only grow the tile (``GROWING_SIZES``) or in pointer types compiled alike
    (``SAME_AS``) form a group; the launch with every flag on and the largest sizes has every
    instruction and the widest tiles of the group, so it needs at least as many registers and as
    much shared memory as any member. A member it does not dominate becomes a representative itself.
    """
    groups: dict[str, list[int]] = {}
    for i, launch in enumerate(launches):
        groups.setdefault(_group_key(launch.describe), []).append(i)
    chosen, bound_by = [], [-1] * len(launches)

    def strength(i):
        desc = launches[i].describe
        flags = sum(bool(desc["constexprs"].get(f)) for f in ADDITIVE_FLAGS)
        sizes = tuple(desc["constexprs"].get(s, 0) for s in sorted(GROWING_SIZES))
        return (flags, sizes, desc["dtype"] in SAME_AS.values())

    for members in groups.values():
        pending = sorted(members, key=strength, reverse=True)
        while pending:
            rep = pending.pop(0)
            chosen.append(rep)
            bound_by[rep] = rep
            left = []
            for i in pending:
                if _dominates(launches[rep].describe, launches[i].describe):
                    bound_by[i] = rep
                else:
                    left.append(i)
            pending = left
    return sorted(chosen), bound_by


# ------------------------------------------------------------------------------------------------
# compiling
# ------------------------------------------------------------------------------------------------

_USED = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict | None:
    """Registers, stack and spill bytes from a ``ptxas -v`` log (None if it has no such lines)."""
    used, spills = _USED.search(log), _SPILLS.search(log)
    if used is None or spills is None:
        return None
    return {"registers": int(used.group(1)), "stack_bytes": int(spills.group(1)),
            "spill_stores": int(spills.group(2)), "spill_loads": int(spills.group(3))}


def ptxas_usage(ptx: str, arch: int, fp_fusion: bool = True) -> dict:
    """Registers, stack and spill bytes of the one kernel in ``ptx``, from Triton's bundled ``ptxas -v``
    with the flags Triton itself passes."""
    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        cmd = [ptxas, "-v", "--regAllocOptLevel=2", *([] if fp_fusion else ["--fmad=false"]),
               f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    usage = parse_ptxas_log(log)
    if usage is None:
        raise RuntimeError(f"cannot read ptxas -v output:\n{log}")
    return usage


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile one launch for ``sm_<arch>``; its resource use, or the error."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    row = dict(launch.describe, arch=arch, shared_limit=SHARED_LIMIT_BYTES[arch])
    started = time.perf_counter()
    try:
        bound, specialization, options = _bind(launch, backend)
        opts, signature, constexprs, attrs = launch.kernel._pack_args(backend, _run_kwargs(launch), bound,
                                                                      specialization, options)
        # Triton runs ptxas -v itself; its log is kept (printed) only when asked for. A cached kernel runs
        # no ptxas: then the bundled ptxas is run on the cached PTX.
        log = io.StringIO()
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                      options=opts.__dict__)
        usage = parse_ptxas_log(log.getvalue()) or ptxas_usage(compiled.asm["ptx"], arch, opts.enable_fp_fusion)
        row.update(usage, shared=compiled.metadata.shared, ok=True, error=None)
    except Exception as exc:  # noqa: BLE001 - a failed compile is a result to report
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    row["compile_s"] = round(time.perf_counter() - started, 2)
    return row


def run(full: bool = False, archs=ARCHS, progress=None, kernels=None, dtypes=None) -> dict:
    """Compile the representatives (or every launch with ``full``) for each arch; a JSON-able report.
    ``kernels`` / ``dtypes`` (e.g. ``["ffn_dh_kernel"]``, ``["bf16"]``) restrict what is compiled."""
    launches = launch_space()
    chosen, bound_by = representatives(launches)
    targets = [i for i in (range(len(launches)) if full else chosen)
               if (not kernels or launches[i].describe["kernel"] in kernels)
               and (not dtypes or launches[i].describe["dtype"].lstrip("*") in dtypes)]
    compiled = []
    for i in targets:
        for arch in archs:
            row = compile_launch(launches[i], arch)
            row["launch"] = i
            compiled.append(row)
            if progress is not None:
                progress(row)
    return {"triton": triton.__version__, "full": full, "archs": list(archs),
            "launchable_kernels": launchable_kernels(),
            "tiles": _table_tiles(),
            "launches": [dict(launch.describe, bound_by=bound_by[i]) for i, launch in enumerate(launches)],
            "compiled": compiled}


def _table_tiles() -> dict:
    """Every tile of the configs table, by the kernels that take it (to check each was replayed)."""
    def flat(families):
        return sorted({str(t) for group in families.values() for t in group})

    def attention(direction):
        return sorted({str(t) for k, t in configs.ATTENTION_TILES.items() if k[2] == direction})

    return {"indexed_matmul_kernel": flat(configs.MATMUL_TILES), "ffn_up_kernel": flat(configs.FFN_UP_TILES),
            "ffn_dh_kernel": flat(configs.FFN_DH_TILES), "_gated_attn_fwd_kernel": attention("fwd"),
            "_gated_attn_bwd_dq_kernel": attention("bwd"), "_gated_attn_bwd_dkdv_kernel": attention("bwd")}


def launch_tile(desc: dict) -> str:
    """The ``Tile`` string of a described launch (block sizes in the kernel's BLOCK_* order)."""
    blocks = [str(v) for k, v in desc["constexprs"].items() if k.startswith("BLOCK_") and k != "BLOCK_D"]
    return f"{'x'.join(blocks)} w{desc['num_warps']} s{desc['num_stages']}"


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

_SHOWN_FLAGS = ("HAS_MASK", "CAUSAL", "HAS_BIAS", "SAVE_Z", "HAS_EXTRA", "WANT_GATE", "WITH_ROWSUM", "B_GATHER_R",
                "B_GATHER_N", "C_SCATTER_M", "C_SCATTER_N")


def _variant(desc: dict) -> str:
    c = desc["constexprs"]
    parts = [desc["dtype"].lstrip("*")]
    if "BLOCK_D" in c:
        parts.append(f"D{c['BLOCK_D']}")
    for name in ("ACTIVATION", "INPUT_PRECISION", "PRECISION"):
        if name in c and c[name] not in ("ieee",):
            parts.append(str(c[name]))
    parts += [f.lower() for f in _SHOWN_FLAGS if c.get(f)]
    return " ".join(parts)


def summary(report: dict) -> str:
    """One row per kernel: launches, and per arch the largest register count, spill bytes, shared memory."""
    rows = [r for r in report["compiled"] if r["ok"]]
    archs = report["archs"]
    head = "| kernel | launches | " + " | ".join(f"sm_{a} registers (max) | sm_{a} spill B (max) | sm_{a} shared KiB "
                                                f"(max, limit {SHARED_LIMIT_BYTES[a] // 1024})" for a in archs) + " |"
    lines = [head, "|---|---:|" + "---:|" * (3 * len(archs))]
    for kernel in sorted({r["kernel"] for r in rows}):
        mine = [r for r in rows if r["kernel"] == kernel]
        cells = [kernel, str(len({r["launch"] for r in mine}))]
        for a in archs:
            at = [r for r in mine if r["arch"] == a]
            cells += [str(max(r["registers"] for r in at)), str(max(r["spill_stores"] for r in at)),
                      f"{max(r['shared'] for r in at) / 1024:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The summary, then a table per kernel: one row per launch, registers / spills / shared per arch."""
    launches, archs = report["launches"], report["archs"]
    rows = report["compiled"]
    ok = [r for r in rows if r["ok"]]
    compiled = sorted({r["launch"] for r in rows})
    command = "python -m ddk_fast.kernels.aot" + (" --full" if report["full"] else "")
    lines = ["# Ahead-of-time compile of the Triton kernel launches", "",
             f"Generated by `{command} --markdown FILE` (kernels/aot.py; see docs/gpu.md). No GPU was used: "
             "each launch the launchers make on a GPU is compiled for the target, registers and spill bytes "
             "from ptxas -v, shared memory from the compiled metadata.", "",
             f"Triton {report['triton']}; {'every launch' if report['full'] else 'representative launches'}: "
             f"{len(compiled)} of {len(launches)} distinct launches, compiled for "
             + ", ".join(f"sm_{a}" for a in archs) + f"; {len(ok)} of {len(rows)} compiles succeeded; "
             f"{sum(r['spill_stores'] > allowed_spill_bytes(r) for r in ok)} over their spill bound, "
             f"{sum(r['shared'] > SHARED_LIMIT_BYTES[r['arch']] for r in ok)} over the shared-memory limit.",
             "", summary(report), ""]
    by_launch = {(r["launch"], r["arch"]): r for r in rows}
    for kernel in sorted({launches[i]["kernel"] for i in compiled}):
        lines += [f"### {kernel}", "", "| variant | tile | registers | spill stores B | shared KiB |",
                  "|---|---|---|---|---|"]
        for i in (i for i in compiled if launches[i]["kernel"] == kernel):
            got = [by_launch.get((i, a)) for a in archs]
            if not all(r is not None and r["ok"] for r in got):
                errors = "; ".join(f"sm_{a}: {r['error']}" for a, r in zip(archs, got) if r is not None and not r["ok"])
                lines.append(f"| {_variant(launches[i])} | {launch_tile(launches[i])} | failed: {errors} | | |")
                continue
            lines.append(f"| {_variant(launches[i])} | {launch_tile(launches[i])} | "
                         + " | ".join(" / ".join(str(r[k]) if k != "shared" else f"{r[k] / 1024:.1f}" for r in got)
                                      for k in ("registers", "spill_stores", "shared")) + " |")
        lines.append("")
    lines.append("Each cell: " + " / ".join(f"sm_{a}" for a in archs) + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="compile every launch, not only the representatives")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT_BYTES))
    parser.add_argument("--kernel", nargs="+", default=None, help="compile only these kernels")
    parser.add_argument("--dtype", nargs="+", default=None, help="compile only launches of these dtypes (bf16 ...)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--quiet", action="store_true")
    opts = parser.parse_args(argv)

    def progress(row):
        if not opts.quiet:
            state = f"{row['registers']} regs, {row['spill_stores']} B spilled, {row['shared']} B shared" \
                if row["ok"] else row["error"]
            print(f"sm_{row['arch']} {row['kernel']} [{_variant(row)}] {row['compile_s']}s: {state}", flush=True)

    report = run(full=opts.full, archs=tuple(opts.arch), progress=progress, kernels=opts.kernel, dtypes=opts.dtype)
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    if opts.markdown:
        with open(opts.markdown, "w") as fh:
            fh.write(markdown(report) + "\n")
    failed = [r for r in report["compiled"] if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
