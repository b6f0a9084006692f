"""`ddk-fast` command line. Each subcommand parses flags and calls the Python API; no logic lives here.

``parser``: sub-command parsers generated from the config dataclasses (grouped ``--help`` with defaults
and choices, one-line errors); ``commands``: the training and deployment commands. ``benchmark``
registers itself from ``ddk_fast.bench``.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from ddk_fast._version import __version__
from ddk_fast.bench import commands as bench_commands
from ddk_fast.bench import environment
from ddk_fast.cli import commands
from ddk_fast.cli.parser import Parser
from ddk_fast.doctor import format_report
from ddk_fast.errors import UserError


def _cmd_doctor(args: argparse.Namespace) -> int:
    report = environment.collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ddk-fast",
        description="Compress fine-tuned BERT-family models by structured pruning + knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"ddk-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="versions, built extension, and which fast path each op uses")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_cmd_doctor)
    commands.register(sub)
    bench_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ddk-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        step, log = _run_position()
        where = f" at step {step}" if step is not None else ""
        hint = ("rerun the same command with --resume to continue from the last checkpoint"
                if hasattr(args, "resume") else "rerun the same command")
        print(f"ddk-fast {args.command}: interrupted{where}; {hint}", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: the traceback is for the report, the log for the context
        traceback.print_exc()
        _, log = _run_position()
        print(f"ddk-fast {args.command}: internal error (please report it with the traceback above"
              + (f" and the run log {log}" if log else "") + ")", file=sys.stderr)
        return 1


def _run_position() -> tuple:
    """(last logged step, log path) of the run this process was in, if any run logged anything."""
    logging_module = sys.modules.get("ddk_fast.runs.logging")
    logger = getattr(getattr(logging_module, "RunLogger", None), "last", None)
    if logger is None:
        return None, None
    return logger.last_step, logger.jsonl_path
