"""`ddk-fast benchmark`: run the suites and print ratio tables."""
from __future__ import annotations

import argparse

import torch

from ddk_fast.bench import runner
from ddk_fast.errors import UserError


def _cmd_benchmark(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    try:
        md, out = runner.run_suite(device=args.device, quick=args.quick, output=args.output,
                                   bench_dir=args.bench_dir, select=args.select, threads=args.threads,
                                   timer=args.timer)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(md)
    print(f"results written to {out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="time the fast paths against the pure-PyTorch paths (ratio tables)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="small shapes, one round each (under 3 minutes on CPU)")
    p.add_argument("--output", default=None, help="folder for results.json/md/png (default benchmarks/results/<device>)")
    p.add_argument("--bench-dir", default=None, help="folder of pytest-benchmark suites (default: the source tree's)")
    p.add_argument("-k", "--select", default=None, help="pytest -k expression to run a subset")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for the suites (default: torch's, one per core); 1 gives steadier times "
                        "on a machine shared with other jobs")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: the process's CPU time (CPU device only; with --threads 1 it "
                        "leaves out the time spent waiting for a busy core)")
    p.set_defaults(func=_cmd_benchmark)
