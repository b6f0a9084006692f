"""`ddk-fast finetune | compress | evaluate`: parse flags, call the Python API, print a short summary.

Every option defaults to None here so that a ``--config`` file and the preset can fill it; only flags
actually given override them.
"""
from __future__ import annotations

import argparse
import json

from ddk_fast.train.data_flags import add_data_flags, data_options
from ddk_fast.train.threads import add_threads_flag


def _flag(p, *names, **kw):
    kw.setdefault("default", None)
    p.add_argument(*names, **kw)


def _switch(p, name, help):
    p.add_argument(name, action="store_const", const=True, default=None, help=help)


def _run_flags(p, what: str, batch_help: str = "training batch size per process"):
    """What every command that reads a task (GLUE or the user's data) and writes an output takes."""
    _flag(p, "--task", required=False, help="GLUE task: cola sst2 mrpc stsb qqp mnli qnli rte wnli (or CoLA, SST-2, "
                                            "...); with --train-file/--dataset an optional name for your task")
    _flag(p, "--data-dir", help="folder of GLUE TSVs (DIR/MRPC/train.tsv); default: the Hugging Face hub")
    add_data_flags(p)
    _flag(p, "--output", help=f"folder for the {what} (written atomically)")
    _flag(p, "--preset", choices=("quick", "full"), help="schedule: quick (minutes on CPU) or full (default)")
    _flag(p, "--config", help="YAML file of options (keys = flag names); flags given here override it")
    _flag(p, "--seed", type=int, help="random seed (default 42)")
    _flag(p, "--batch-size", type=int, help=batch_help)
    _flag(p, "--eval-batch-size", type=int, help="evaluation batch size")
    _flag(p, "--max-seq-len", type=int, help="truncate inputs to this many tokens (batches use dynamic padding)")
    _flag(p, "--max-eval-examples", type=int, help="use a seeded random subset of the dev split")
    _flag(p, "--device", help="auto (default), cpu, cuda or cuda:N")
    add_threads_flag(p)
    _switch(p, "--overwrite", "replace an existing --output (and any unfinished run of it)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                   help="no progress bars or console messages")


def _common(p, what: str):
    """``_run_flags`` plus what every training command takes."""
    _run_flags(p, what)
    _flag(p, "--max-train-examples", type=int, help="use a seeded random subset of the train split")
    _flag(p, "--lr", type=float, help="learning rate of the model weights")
    _flag(p, "--save-steps", type=int, help="write a resumable checkpoint every N steps")
    _flag(p, "--log-steps", type=int, help="log the training loss every N steps")
    _switch(p, "--resume", "continue the unfinished run of --output from its last checkpoint")
    _switch(p, "--keep-checkpoints", "keep OUTPUT.inprogress/ (checkpoints) after the run finishes")


def _compression_flags(p):
    """The teacher, the budget, the one-shot calibration and the latency report (prune and compress)."""
    _flag(p, "--teacher", help="fine-tuned teacher folder (from `ddk-fast finetune` or any BERT, RoBERTa, XLM-R, "
                               "ELECTRA or DistilBERT classifier; docs/models.md)")
    _flag(p, "--target", help="budget: params=RATIO, flops=RATIO or latency=RATIO (measured on this machine at "
                              "--latency-batch-size x --latency-seq-len), RATIO in (0, 1] (default params=0.5)")
    _flag(p, "--seq-len", type=int, help="sequence length for FLOPs and the budget (default 128)")
    _flag(p, "--calibration-examples", type=int,
          help="labelled train examples for the one-shot Fisher importance and least squares (default 2048)")
    _flag(p, "--tuning-examples", type=int,
          help="of the calibration examples, how many the least-squares tuning uses (default 512)")
    _flag(p, "--tuning-check-examples", type=int,
          help="other calibration examples on which the tuned scales must lower the task loss to be kept "
               "(default 512; 0 keeps them unchecked)")
    _flag(p, "--importance-iterations", type=int,
          help="prune in K steps of the budget, re-scoring the remaining units each step (Fisher; default 1; "
               "each step costs one importance pass)")
    _flag(p, "--path", choices=("auto", "compact", "reference", "triton"), help="kernel path of the masked model")
    _flag(p, "--latency-batch-size", type=int, help="batch size of the CPU latency measurement (default 32)")
    _flag(p, "--latency-seq-len", type=int, help="sequence length of the CPU latency measurement (default 128)")
    _flag(p, "--latency-threads", type=int,
          help="CPU threads of the latency measurement (default 1: a ratio a busy machine cannot drown)")
    _switch(p, "--onnx", "also export the result to ONNX (OUT/onnx: fp32 + int8), score it in ONNX Runtime and "
                         "time it against the teacher in PyTorch and ONNX Runtime")
    _flag(p, "--latency-runtime", choices=("torch", "onnx"),
          help="runtime a --target latency budget is measured and checked in: torch (the engine, default) or onnx "
               "(ONNX Runtime; implies --onnx)")
    _flag(p, "--latency-shapes", metavar="BxS[,BxS]",
          help="shapes of the --onnx latency table (default 1xSEQ; the --latency-batch-size x --latency-seq-len "
               "shape is always added)")


def _flags(args: argparse.Namespace, drop=("command", "func", "config")) -> dict:
    return {k: v for k, v in vars(args).items() if k not in drop}


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ddk_fast.train.config import FinetuneConfig, build_config
    from ddk_fast.train.finetune import run_finetune

    result = run_finetune(build_config(FinetuneConfig, "finetune", _flags(args), args.config))
    dev = result.get("dev") or {}
    print(json.dumps({"output": result.get("output"), "task": result.get("task"), "dev": dev}, indent=2))
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from ddk_fast.train.compress import run_compress
    from ddk_fast.train.config import CompressConfig, build_config

    if (args.task or "").lower() == "lm":  # GPT-2 on plain text: its own pipeline (ddk_fast.train.lm)
        from ddk_fast.train.lm import compress_lm_from_args

        print(json.dumps(_compress_summary(compress_lm_from_args(args)), indent=2))
        return 0
    args = _drop_lm_only_flags(args)

    report = run_compress(build_config(CompressConfig, "compress", _flags(args), args.config))
    print(json.dumps(_compress_summary(report), indent=2))
    return 0


_LM_ONLY = ("eval_file", "block_size", "search_steps", "distill_steps")


def _drop_lm_only_flags(args: argparse.Namespace) -> argparse.Namespace:
    from ddk_fast.errors import UserError

    for name in _LM_ONLY:
        if getattr(args, name, None) is not None:
            raise UserError(f"--{name.replace('_', '-')} is an option of --task lm only")
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in _LM_ONLY})


def _compress_summary(report: dict) -> dict:
    keys = ("output", "task", "target", "teacher_dev", "student_dev", "params", "flops", "latency", "structure")
    out = {k: report[k] for k in keys if k in report}
    if isinstance(out.get("structure"), dict):
        out["structure"] = {k: out["structure"][k] for k in ("heads", "ffn") if k in out["structure"]}
    return out


def _cmd_prune(args: argparse.Namespace) -> int:
    from ddk_fast.train.config import PruneConfig, build_config
    from ddk_fast.train.prune import run_prune

    report = run_prune(build_config(PruneConfig, "prune", _flags(args), args.config))
    print(json.dumps(_compress_summary(report), indent=2))
    return 0


def _register_prune(sub) -> None:
    pr = sub.add_parser("prune", help="one-shot, retraining-free pruning (Fisher mask search + least squares), minutes",
                        description="Prune a fine-tuned teacher to a parameter or FLOPs budget without training: "
                                    "Fisher importance of every head and FFN channel from calibration examples, a "
                                    "global mask search, rearrangement inside each layer, least-squares unit "
                                    "scales, physical pruning, export + report.json.")
    _compression_flags(pr)
    _run_flags(pr, "pruned model, report.json and plots", batch_help="calibration batch size (default 32)")
    _flag(pr, "--importance", choices=("fisher", "activation"),
          help="fisher (squared gate gradients of the task loss, default) or activation (label-free)")
    pr.add_argument("--no-rearrange", dest="rearrange", action="store_const", const=False, default=None,
                    help="skip the per-layer rearrangement with the block-diagonal Fisher")
    pr.add_argument("--no-tune", dest="tune", action="store_const", const=False, default=None,
                    help="skip the least-squares tuning of the kept units' scales")
    _flag(pr, "--ridge", type=float, help="ridge weight pulling the tuned scales towards 1 (default 1e-3)")
    _flag(pr, "--channel-granularity", type=int, help="FFN widths are multiples of this (default 8)")
    pr.set_defaults(func=_cmd_prune)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ddk_fast.train.evaluate import run_evaluate

    from ddk_fast.train.config import DataOptions

    metrics = run_evaluate(model=args.model, task=args.task, data_dir=args.data_dir, output=args.output,
                           batch_size=64 if args.batch_size is None else args.batch_size, max_seq_len=args.max_seq_len,
                           max_eval_examples=args.max_eval_examples, split=args.split, device=args.device or "auto",
                           path=args.path or "auto", force=bool(args.force), int8=bool(args.int8),
                           threads=args.threads, data=DataOptions(**data_options(args)))
    print(json.dumps(metrics, indent=2))
    return 0


def _register_companions(sub, compress_parser) -> None:
    """Commands that live beside these in ddk_fast.train: fixed-student KD, KD sweeps, GPT-2 (--task lm)."""
    from ddk_fast.train import data_check, lm, lm_teacher, student_kd, sweep

    lm.add_lm_flags(compress_parser)  # --train-file/--eval-file/--block-size/... and --kd
    student_kd.register(sub)
    sweep.register(sub)
    lm_teacher.register(sub)
    data_check.register(sub)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from ddk_fast.train.deploy import run_export_onnx

    report = run_export_onnx(args.model, args.output, args.opset, bool(args.int8), bool(args.overwrite))
    print(json.dumps({k: report[k] for k in ("source", "opset", "inputs", "files", "check", "int8_check")
                      if k in report}, indent=2))
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    from ddk_fast.train.deploy import format_table, run_latency

    result = run_latency(args.model, teacher=args.teacher, shapes=args.latency_shapes, runtimes=args.runtimes,
                         threads=args.latency_threads, repeats=args.latency_repeats, output=args.output)
    print(format_table(result["rows"]))
    return 0


def _register_deploy(sub) -> None:
    from ddk_fast.export.onnx import DEFAULT_OPSET
    from ddk_fast.train.deploy import DEFAULT_RUNTIMES, RUNTIMES

    ex = sub.add_parser("export-onnx", help="export a compressed folder or a teacher to ONNX (checked against PyTorch)",
                        description="Export a model folder to ONNX with dynamic batch and sequence axes; the graph is "
                                    "run in ONNX Runtime on padded and unpadded batches and must match PyTorch "
                                    "(fp32, atol 1e-4). The tokenizer and onnx_report.json go beside it.")
    ex.add_argument("model", help="a `ddk-fast compress`/`prune` output or a `finetune` teacher")
    ex.add_argument("--output", required=True, help="folder for model.onnx, the tokenizer and onnx_report.json")
    ex.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ex.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantisation)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ex.set_defaults(func=_cmd_export_onnx)

    lt = sub.add_parser("latency", help="teacher vs student latency in PyTorch and ONNX Runtime (fp32, int8)",
                        description="Time a compressed folder against its teacher (alternating pairs, threads "
                                    "pinned, median of repeats) in each runtime at each shape.")
    lt.add_argument("model", help="a `ddk-fast compress`/`prune` output")
    lt.add_argument("--teacher", help="teacher folder (default: the one named in MODEL/report.json)")
    lt.add_argument("--latency-shapes", default="1x128,32x128", metavar="BxS[,BxS]",
                    help="batch x sequence length shapes (default 1x128,32x128)")
    lt.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                    help=f"comma list of {', '.join(RUNTIMES)} (default {','.join(DEFAULT_RUNTIMES)})")
    lt.add_argument("--latency-threads", type=int, default=1, help="intra-op threads of every runtime (default 1)")
    lt.add_argument("--latency-repeats", type=int, default=10, help="timed pairs per row, at least (default 10)")
    lt.add_argument("--output", help="write the table as JSON here (a file path)")
    lt.set_defaults(func=_cmd_latency)


def register(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a teacher (stock transformers classifier) on a GLUE task",
                        description="Fine-tune a BERT-family model on a GLUE task; saves a standard transformers "
                                    "folder (safetensors + tokenizer + metrics.json).")
    _flag(ft, "--model", help="local model folder (default: the packaged pretrained MiniLM-L6 BERT)")
    _common(ft, "fine-tuned teacher")
    _flag(ft, "--epochs", type=int, help="training epochs")
    _flag(ft, "--warmup-ratio", type=float, help="fraction of steps with linear warmup (default 0.1)")
    _flag(ft, "--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    ft.set_defaults(func=_cmd_finetune)

    cp = sub.add_parser("compress", help="DDK: search heads/FFN widths with recursive KD, prune, distill, export",
                        description="Compress a fine-tuned teacher to a parameter or FLOPs budget: differentiable "
                                    "width search with recursive adaptive KD, physical pruning, distillation of the "
                                    "pruned student, export + report.json.")
    _compression_flags(cp)
    _common(cp, "compressed student, report.json and plots")
    _flag(cp, "--search", choices=("gumbel", "hard_concrete", "progressive"),
          help="structure search: gumbel (DDK width search, default), hard_concrete (CoFi-style L0 gates) or "
               "progressive (GPP-style fading indicators)")
    _flag(cp, "--init", choices=("oneshot", "weights"),
          help="where the search starts: oneshot (default: the `prune` structure and tuned weights, logits centred "
               "on it, Fisher ranking) or weights (the teacher's weights, weight-norm ranking, near-uniform logits)")
    _flag(cp, "--budget-warmup", type=float,
          help="fraction of the search over which the budget target ramps from 1 to --target (default 0)")
    _flag(cp, "--fixed-structure", metavar="uniform|oneshot|FILE.json",
          help="no search; distil a fixed structure: uniform widths, the one-shot (`prune`) structure and weights, "
               "or a JSON file (an export's structure.json, or {\"heads\": [...], \"ffn\": [...]} per layer "
               "with kept indices or counts)")
    _flag(cp, "--search-epochs", type=int, help="epochs of the structure search")
    _flag(cp, "--distill-epochs", type=int, help="epochs of distillation after pruning")
    _flag(cp, "--arch-lr", type=float, help="learning rate of the architecture parameters")
    _flag(cp, "--temperature", type=float, help="prediction-KD temperature T")
    _flag(cp, "--fusion", choices=("param_free", "learned", "none"),
          help="hidden-state target: none (layer to layer, default) or DDK's recursive fusion of teacher layers")
    _flag(cp, "--hidden-loss", choices=("mse", "cosine"), help="hidden-state distillation loss")
    _flag(cp, "--teacher-cache", choices=("auto", "memory", "disk", "off"),
          help="teacher outputs computed once per example (first epoch) and reused by later epochs and the "
               "distillation stage: in memory, in a memory-mapped file under the run folder, auto (memory if it "
               "fits in a quarter of the available RAM, else disk, else off; default) or off")
    _flag(cp, "--teacher-cache-dtype", choices=("bf16", "fp16", "fp32"),
          help="storage precision of the teacher cache (default bf16; fp32 returns exactly what was stored)")
    cp.set_defaults(func=_cmd_compress)
    _register_companions(sub, cp)
    _register_prune(sub)
    _register_deploy(sub)

    ev = sub.add_parser("evaluate", help="dev-set metrics of a teacher folder, a compressed export or an ONNX export",
                        description="Score a model on a GLUE task's dev split or on your own data. A model trained "
                                    "on your own data knows its task (task.json): `evaluate --model DIR` rescores "
                                    "it, `--validation-file F` scores it on new rows with the same labels.")
    _flag(ev, "--model", required=True, help="teacher folder, `ddk-fast compress` output or `export-onnx` output")
    _flag(ev, "--task", help="GLUE task (default: the task the model's run recorded, GLUE or your own data)")
    _flag(ev, "--data-dir", help="folder of GLUE TSVs; default: the Hugging Face hub")
    add_data_flags(ev)
    _flag(ev, "--output", help="write the metrics JSON here (a file path)")
    _flag(ev, "--split", default="validation", help="split to evaluate (default validation = dev.tsv)")
    _flag(ev, "--batch-size", type=int, help="batch size (default 64)")
    _flag(ev, "--max-seq-len", type=int, help="truncate inputs (default: the length the model was trained with)")
    _flag(ev, "--max-eval-examples", type=int, help="evaluate a seeded subset")
    _flag(ev, "--device", help="auto (default), cpu, cuda")
    add_threads_flag(ev)
    _flag(ev, "--path", choices=("auto", "compact", "reference", "triton"), help="kernel path for a pruned export")
    _switch(ev, "--force", "evaluate on --task even if the model was trained for another task")
    _switch(ev, "--int8", "int8: model.int8.onnx of an ONNX export, or torch.ao dynamic int8 of a model folder's "
                          "linear layers")
    ev.set_defaults(func=_cmd_evaluate)
