"""The training and deployment commands of ``ddk-fast``: each a parser generated from its config
dataclass(es) and a handler that hands the flags given to the Python pipeline and prints a summary.

No logic lives here beyond choosing the pipeline (``compress --task lm`` is the GPT-2 one).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from ddk_fast.cli.parser import Options, add_command
from ddk_fast.errors import UserError
from ddk_fast.pipelines import compress
from ddk_fast.pipelines import data_check
from ddk_fast.pipelines import deploy
from ddk_fast.pipelines import evaluate
from ddk_fast.pipelines import finetune
from ddk_fast.pipelines import lm
from ddk_fast.pipelines import lm_teacher
from ddk_fast.pipelines import prune
from ddk_fast.pipelines import distill as student_kd
from ddk_fast.pipelines import sweep
from ddk_fast.pipelines.configs import CompressConfig, DataOptions, EvaluateConfig, FinetuneConfig, PruneConfig
from ddk_fast.runs.config import build_config
from ddk_fast.runs.presets import PRESETS

CONFIG_HELP = "YAML file of options (keys = flag names); flags given here override it"
_CLI_DESTS = ("command", "data_command", "func", "config")
# compress's options that only --task lm reads (the GLUE pipeline refuses them)
LM_ONLY = tuple(f.name for f in dataclasses.fields(lm.LMCompressConfig)
                if f.name not in {g.name for g in dataclasses.fields(CompressConfig)})
# the run options a sweep passes to every point: a student run's, and a DDK run's budget and LM steps
SWEEP_POINT_OPTIONS = (
    Options(student_kd.DistillConfig, presets=PRESETS["distill"],
            names=("data_dir", *(f.name for f in dataclasses.fields(DataOptions)), "preset", "recipe", "student_layers",
                   "layer_init", "student_heads", "student_intermediate", "student_hidden", "steps", "kd", "eval_file",
                   "block_size", "lr", "batch_size", "eval_batch_size", "max_seq_len", "max_train_examples",
                   "max_eval_examples", "seed", "device", "threads", "path")),
    Options(CompressConfig, names=("target",)),
    Options(lm.LMCompressConfig, names=("search_steps", "distill_steps")),
)


def given(args: argparse.Namespace) -> dict:
    """The options of a parsed command line (None: not given), without the parser's own entries."""
    return {k: v for k, v in vars(args).items() if k not in _CLI_DESTS}


def _given_fields(args: argparse.Namespace, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in given(args).items() if k in names and v is not None}


def _print(value) -> None:
    print(json.dumps(value, indent=2))


def _summary(report: dict) -> dict:
    keys = ("output", "task", "target", "teacher_dev", "student_dev", "exported_from", "params", "flops", "latency",
            "structure")
    out = {k: report[k] for k in keys if k in report}
    if isinstance(out.get("structure"), dict):
        out["structure"] = {k: out["structure"][k] for k in ("heads", "ffn") if k in out["structure"]}
    return out


# ------------------------------------------------------------------------------------------ handlers
def _finetune(args: argparse.Namespace) -> int:
    result = finetune.run_finetune(build_config(FinetuneConfig, "finetune", given(args), args.config))
    _print({"output": result.get("output"), "task": result.get("task"), "dev": result.get("dev") or {}})
    return 0


def _compress(args: argparse.Namespace) -> int:
    flags = given(args)
    if lm.is_lm_run(flags, args.config):  # GPT-2 on plain text (--task lm, or task: lm in --config): its own pipeline
        _print(_summary(lm.compress_lm(flags, args.config)))
        return 0
    for name in LM_ONLY:
        if flags.pop(name, None) is not None:
            raise UserError(f"--{name.replace('_', '-')} is an option of --task lm only")
    _print(_summary(compress.run_compress(build_config(CompressConfig, "compress", flags, args.config))))
    return 0


def _prune(args: argparse.Namespace) -> int:
    _print(_summary(prune.run_prune(build_config(PruneConfig, "prune", given(args), args.config))))
    return 0


def _distill(args: argparse.Namespace) -> int:
    result = student_kd.run_distill(student_kd.build_distill_config(given(args), args.config))
    _print({k: result[k] for k in ("output", "task", "recipe", "teacher_dev", "student_dev")})
    return 0


def _sweep(args: argparse.Namespace) -> int:
    summary = sweep.sweep_from_flags(given(args), args.config)
    best = summary["best"]
    _print({"output": summary["output"], "points": summary["points"], "heatmap": summary["heatmap"],
            "best": {"point": best["point"], "dev": best["dev"]} if best else None})
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = EvaluateConfig(**_given_fields(args, EvaluateConfig))
    data = DataOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataOptions)})
    _print(evaluate.run_evaluate(model=cfg.model, task=cfg.task, data_dir=cfg.data_dir, output=cfg.output,
                                 batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len,
                                 max_eval_examples=cfg.max_eval_examples, split=cfg.split, device=cfg.device,
                                 path=cfg.path, force=cfg.force, int8=cfg.int8, threads=cfg.threads, data=data))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    cfg = data_check.DataCheckConfig(**_given_fields(args, data_check.DataCheckConfig))
    data = DataOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataOptions)})
    report = data_check.check_data(cfg.task, data, cfg.data_dir, cfg.model, cfg.max_seq_len)
    print(json.dumps(report, indent=2) if cfg.json else data_check.format_check(report))
    return 0


def _pretrain_lm(args: argparse.Namespace) -> int:
    _print(lm_teacher.pretrain_gpt2(**_given_fields(args, lm_teacher.PretrainLMConfig)))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    cfg = deploy.ExportOnnxConfig(**_given_fields(args, deploy.ExportOnnxConfig))
    report = deploy.run_export_onnx(cfg.model, cfg.output, cfg.opset, cfg.int8, cfg.overwrite)
    _print({k: report[k] for k in ("source", "opset", "inputs", "files", "check", "int8_check") if k in report})
    return 0


def _latency(args: argparse.Namespace) -> int:
    cfg = deploy.LatencyConfig(**_given_fields(args, deploy.LatencyConfig))
    result = deploy.run_latency(cfg.model, teacher=cfg.teacher, shapes=cfg.latency_shapes, runtimes=cfg.runtimes,
                                threads=cfg.latency_threads, repeats=cfg.latency_repeats, output=cfg.output)
    print(deploy.format_table(result["rows"]))
    return 0


# ------------------------------------------------------------------------------------------ parsers
def register(sub) -> None:
    add_command(sub, "finetune", help="fine-tune a teacher (stock transformers classifier) on a GLUE task or your data",
                description="Fine-tune a BERT-family model on a GLUE task or your own data; saves a standard "
                            "transformers folder (safetensors + tokenizer + metrics.json).",
                options=[Options(FinetuneConfig, presets=PRESETS["finetune"])], func=_finetune,
                config_help=CONFIG_HELP)
    add_command(sub, "compress", help="DDK: search heads/FFN widths with recursive KD, prune, distill, export",
                description="Compress a fine-tuned teacher to a parameter, FLOPs or latency budget: differentiable "
                            "width search with recursive adaptive KD, physical pruning, distillation of the pruned "
                            "student, export + report.json. --task lm compresses a GPT-2 on plain text.",
                options=[Options(CompressConfig, presets=PRESETS["compress"]),
                         Options(lm.LMCompressConfig, presets=PRESETS["compress-lm"], note="--task lm")],
                func=_compress, config_help=CONFIG_HELP)
    add_command(sub, "distill", help="distil a fixed smaller student (TinyBERT / MaKD / fusion recipes)",
                description="Distil a TinyBERT-style student (fewer layers, optionally narrower) from a teacher with "
                            "a recipe of the KD catalog; GLUE task, your own data or --task lm.",
                options=[Options(student_kd.DistillConfig, presets=PRESETS["distill"])], func=_distill,
                config_help="YAML file of options (keys = flag names)")
    add_command(sub, "sweep", help="grid of KD settings (loss weights, temperature, mapping...), resumable",
                description="Run a grid of distillation settings: each point a TinyBERT-style student (--mode "
                            "student) or a DDK compression (--mode ddk); results.md/.csv sorted by dev score and a "
                            "heat map over two axes. The run options below are every point's.",
                options=[Options(sweep.SweepConfig), *SWEEP_POINT_OPTIONS], func=_sweep,
                config_help="YAML file of base options for every point")
    add_command(sub, "pretrain-lm", help="train a small GPT-2 teacher from scratch on a text file",
                description="Train a byte-level BPE tokenizer and a small GPT2LMHeadModel on a plain-text file; "
                            "writes a stock transformers folder usable as --teacher for --task lm.",
                options=[Options(lm_teacher.PretrainLMConfig)], func=_pretrain_lm)
    data = sub.add_parser("data", help="check a dataset before training (`ddk-fast data check ...`)")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    add_command(data_sub, "check", help="validate a dataset against the task and print what it holds",
                description="Read a dataset exactly as training would (every row checked: columns, empty text, "
                            "labels) and print rows, columns, the label set and counts, token length percentiles "
                            "and the share --max-seq-len truncates.",
                options=[Options(data_check.DataCheckConfig)], func=_data_check)
    data.set_defaults(func=lambda args: data.print_help() or 0)
    add_command(sub, "prune", help="one-shot, retraining-free pruning (Fisher mask search + least squares), minutes",
                description="Prune a fine-tuned teacher to a parameter, FLOPs or latency budget without training: "
                            "Fisher importance of every head and FFN channel from calibration examples, a global "
                            "mask search, rearrangement inside each layer, least-squares unit scales, physical "
                            "pruning, export + report.json.",
                options=[Options(PruneConfig, presets=PRESETS["prune"])], func=_prune, config_help=CONFIG_HELP)
    add_command(sub, "export-onnx", help="export a compressed folder or a teacher to ONNX (checked against PyTorch)",
                description="Export a model folder to ONNX with dynamic batch and sequence axes; the graph is run in "
                            "ONNX Runtime on padded and unpadded batches and must match PyTorch (fp32, atol 1e-4). "
                            "The tokenizer and onnx_report.json go beside it.",
                options=[Options(deploy.ExportOnnxConfig)], func=_export_onnx)
    add_command(sub, "latency", help="teacher vs student latency in PyTorch and ONNX Runtime (fp32, int8)",
                description="Time a compressed folder against its teacher (alternating pairs, threads pinned, median "
                            "of repeats) in each runtime at each shape.",
                options=[Options(deploy.LatencyConfig)], func=_latency)
    add_command(sub, "evaluate", help="dev-set metrics of a teacher folder, a compressed export or an ONNX export",
                description="Score a model on a GLUE task's dev split or on your own data. A model trained on your "
                            "own data knows its task (task.json): `evaluate --model DIR` rescores it, "
                            "`--validation-file F` scores it on new rows with the same labels.",
                options=[Options(EvaluateConfig)], func=_evaluate)


__all__ = ["LM_ONLY", "given", "register"]
