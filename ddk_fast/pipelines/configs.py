"""The config dataclasses of the GLUE/user-data pipelines (finetune, compress, prune, evaluate).

Every field is declared with ``options.option(...)`` (flag, type, default, choices, help, group) or
``options.api_only(...)``; ``ddk_fast.runs.config.build_config`` merges defaults < preset < YAML < flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ddk_fast.data.custom import EXTENSIONS, KINDS
from ddk_fast.distill.objectives import FUSION_KINDS, HIDDEN_LOSSES, LAYER_WEIGHTINGS
from ddk_fast.search.budget import BUDGETS
from ddk_fast.search.registry import SEARCHES
from ddk_fast.runs import shared_options as shared
from ddk_fast.pipelines.oneshot import IMPORTANCE_KINDS
from ddk_fast.runs.options import NON_NEGATIVE, POSITIVE, api_only, option
from ddk_fast.runs.presets import PRESETS


_FORMATS = "/".join(e[1:] for e in EXTENSIONS)


INITS = ("oneshot", "weights")  # where compress's search starts


LATENCY_RUNTIMES = ("torch", "onnx")  # where a --target latency budget is measured and checked


@dataclass
class DataOptions:
    """A user's own dataset instead of a GLUE task (see ``ddk_fast.data.custom``): files or a dataset,
    which columns hold the text and the label, and the task kind when the label column's type is not
    what is meant (e.g. integer scores for regression)."""

    train_file: Optional[str] = option(None, group="data", help=f"your own training data ({_FORMATS}; a SQuAD "
                                                                "v1.1/v2.0 .json for QA); the label set comes from "
                                                                "it (--task lm: a plain-text file)")
    validation_file: Optional[str] = option(None, group="data", help=f"your own validation data ({_FORMATS}); "
                                                                     "default: a seeded 10% of --train-file")
    dataset: Optional[str] = option(None, group="data", help="a hub dataset NAME[:CONFIG], a datasets.save_to_disk "
                                                             "folder or a folder of data files")
    text_columns: Optional[str] = option(None, group="data", help="the text column, or two for sentence pairs: a[,b] "
                                                                  "(default: text, sentence, sentence1,sentence2, ..., "
                                                                  "tokens; QA: question,context)")
    label_column: Optional[str] = option(None, group="data", help="the label column (default: label, labels, score, "
                                                                  "ner_tags, tags or answers)")
    task_kind: Optional[str] = option(None, group="data", choices=KINDS,
                                      help="default: inferred: a text column of word lists (or a .conll file) -> "
                                           "token_classification, SQuAD answers ({text, answer_start}) -> qa, label "
                                           "lists -> multilabel, floats -> regression, else classification")


@dataclass
class BatchOptions:
    """Batch sizes and input length, the same for the GLUE-style runs (finetune, prune, compress, distill)."""

    batch_size: int = shared.batch_size(32)
    eval_batch_size: int = shared.eval_batch_size(64)
    max_seq_len: int = shared.max_seq_len()


@dataclass
class OptimizerOptions:
    """AdamW and its schedule around the learning rate (which each command sets itself)."""

    weight_decay: float = shared.weight_decay()
    warmup_ratio: float = shared.warmup_ratio(0.1)
    max_grad_norm: float = shared.max_grad_norm()


@dataclass
class FinetuneConfig(OptimizerOptions, BatchOptions, DataOptions):
    """Teacher fine-tuning: a stock transformers sequence classifier, AdamW, linear warmup/decay."""

    task: str = shared.task()
    output: str = shared.output("folder for the fine-tuned teacher (written atomically)")
    model: Optional[str] = option(None, group="task",
                                  help="local model folder (default: the packaged pretrained MiniLM-L6 BERT)")
    data_dir: Optional[str] = shared.data_dir()
    preset: str = shared.preset(PRESETS["finetune"])
    epochs: int = option(3, group="train", minimum=POSITIVE, help="training epochs")
    lr: float = shared.lr(1e-4, help="learning rate of the model weights (the full schedule of CoLA: 5e-5 for "
                                     "5 epochs, chosen by the sweep in docs/results.md)")
    seed: int = shared.seed()
    max_train_examples: Optional[int] = shared.max_train_examples()
    max_eval_examples: Optional[int] = shared.max_eval_examples()
    save_steps: int = shared.save_steps(500)
    log_steps: int = shared.log_steps(10)
    device: str = shared.device()
    threads: Optional[int] = shared.threads()
    overwrite: bool = shared.overwrite()
    resume: bool = shared.resume()
    progress: bool = shared.progress()
    keep_checkpoints: bool = shared.keep_checkpoints()
    stop_after_steps: Optional[int] = shared.stop_after_steps()
    fault_nan_at_step: Optional[int] = api_only(None, why="testing hook: poison the loss at this global step")


@dataclass
class CompressionRunConfig(BatchOptions, DataOptions):
    """What every run that cuts a fine-tuned teacher down to a budget takes (``prune`` and ``compress``):
    the teacher and the task, the budget, the calibration data of the one-shot step, the report."""

    teacher: str = shared.teacher("fine-tuned teacher folder (from `ddk-fast finetune` or any BERT, RoBERTa, XLM-R, "
                                  "ELECTRA or DistilBERT classifier; docs/models.md)")
    task: str = shared.task()
    output: str = shared.output("folder for the model, report.json and plots (written atomically)")
    target: str = option("params=0.5", group="budget",
                         help="params=RATIO, flops=RATIO or latency=RATIO (measured on this machine at "
                              "--latency-batch-size x --latency-seq-len), RATIO in (0, 1]")
    seq_len: int = option(128, group="budget", minimum=POSITIVE,
                          help="sequence length of the FLOPs count and the budget")
    data_dir: Optional[str] = shared.data_dir()
    preset: str = shared.preset(PRESETS["prune"], PRESETS["compress"])
    seed: int = shared.seed()
    overwrite: bool = shared.overwrite()
    progress: bool = shared.progress()
    device: str = shared.device()
    threads: Optional[int] = shared.threads()
    path: str = shared.kernel_path()
    max_eval_examples: Optional[int] = shared.max_eval_examples()
    # one-shot step: Fisher importance from these train examples, least squares on a spread subset
    calibration_examples: int = option(2048, group="oneshot", minimum=POSITIVE,
                                       help="labelled train examples for the one-shot Fisher importance and least "
                                            "squares")
    tuning_examples: int = option(512, group="oneshot", minimum=POSITIVE,
                                  help="of the calibration examples, how many the least-squares tuning uses")
    tuning_check_examples: int = option(512, group="oneshot", minimum=NON_NEGATIVE,
                                        help="other calibration examples on which the tuned scales must score higher "
                                             "(the task's score; the loss breaks a tie) to be kept (0: kept unchecked)")
    importance_iterations: int = option(1, group="oneshot", minimum=POSITIVE,
                                        help="prune in K steps of the budget, re-scoring the remaining units each "
                                             "step (Fisher; each step costs one importance pass)")
    # reporting
    latency_batch_size: int = option(32, group="deploy", minimum=POSITIVE,
                                     help="batch size of the CPU latency measurement")
    latency_seq_len: int = option(128, group="deploy", minimum=POSITIVE,
                                  help="sequence length of the CPU latency measurement")
    latency_repeats: int = option(10, group="deploy", minimum=POSITIVE,
                                  help="timed teacher/student pairs of the latency measurement")
    latency_threads: int = option(1, group="deploy", minimum=POSITIVE,
                                  help="CPU threads of the latency measurement (1: a ratio a busy machine cannot "
                                       "drown)")
    # deployment: export the result to ONNX (fp32 + int8), score it there, time it against the teacher
    onnx: bool = option(False, group="deploy", help="also export the result to ONNX (OUT/onnx: fp32 + int8), score "
                                                    "it in ONNX Runtime and time it against the teacher in PyTorch "
                                                    "and ONNX Runtime")
    # runtime of the --target latency budget and its check: the engine (torch) or ONNX Runtime (onnx)
    latency_runtime: str = option("torch", group="deploy", choices=LATENCY_RUNTIMES,
                                  help="runtime a --target latency budget is measured and checked in: torch (the "
                                       "engine) or onnx (ONNX Runtime; implies --onnx)")
    latency_shapes: Optional[str] = option(None, group="deploy", metavar="BxS[,BxS]",
                                           help="shapes of the --onnx latency table (default 1xSEQ; the "
                                                "--latency-batch-size x --latency-seq-len shape is always added)")


@dataclass
class CompressConfig(OptimizerOptions, CompressionRunConfig):
    """DDK: width search + recursive adaptive KD, physical pruning, distillation of the pruned model."""

    search: str = option("gumbel", group="search", choices=tuple(SEARCHES),
                         help="structure search: gumbel (DDK width search), hard_concrete (CoFi-style L0 gates) or "
                              "progressive (GPP-style fading indicators)")
    init: str = option("oneshot", group="search", choices=INITS,
                       help="where the search starts: oneshot (the `prune` structure and tuned weights, logits "
                            "centred on it, Fisher ranking) or weights (the teacher's weights, weight-norm ranking, "
                            "near-uniform logits)")
    fixed_structure: Optional[str] = option(None, group="search", metavar="uniform|oneshot|FILE.json",
                                            help="no search; distil a fixed structure: uniform widths, the one-shot "
                                                 "(`prune`) structure and weights, or a JSON file (an export's "
                                                 "structure.json, or {\"heads\": [...], \"ffn\": [...]} per layer "
                                                 "with kept indices or counts)")
    resume: bool = shared.resume()
    keep_checkpoints: bool = shared.keep_checkpoints()
    max_train_examples: Optional[int] = shared.max_train_examples()
    # schedule
    search_epochs: int = option(3, group="search", minimum=NON_NEGATIVE, help="epochs of the structure search")
    distill_epochs: int = option(6, group="distill", minimum=NON_NEGATIVE, help="epochs of distillation after pruning")
    lr: float = shared.lr(5e-5)
    search_lr: Optional[float] = option(None, group="search", minimum=POSITIVE,
                                        help="learning rate of the model weights during the search (default: --lr)")
    arch_lr: float = option(0.05, group="search", minimum=POSITIVE, help="learning rate of the architecture parameters")
    tau_start: float = option(5.0, group="search", minimum=POSITIVE,
                             help="Gumbel-softmax temperature at the start of the search")
    tau_end: float = option(0.5, group="search", minimum=POSITIVE,
                           help="Gumbel-softmax temperature at the end of the search")
    channel_granularity: int = option(64, group="search", minimum=POSITIVE, help="FFN widths are multiples of this")
    importance_momentum: float = option(0.9, group="search",
                                        help="momentum of the running unit importance that ranks units in the search")
    budget_weight: float = option(5.0, group="search", help="weight of the one_sided budget penalty")
    budget_kind: str = option("lagrangian", group="search", choices=tuple(BUDGETS),
                              help="budget loss: lagrangian (a learned multiplier) or one_sided (a penalty above "
                                   "the target)")
    lambda_lr: float = option(0.05, group="search", help="learning rate of the lagrangian budget's multipliers")
    # fraction of the search over which the budget target ramps from the full model to --target
    budget_warmup: float = option(0.0, group="search", help="fraction of the search over which the budget target "
                                                            "ramps from 1 to --target")
    # distillation
    temperature: float = option(2.0, group="distill", minimum=POSITIVE, help="prediction-KD temperature T")
    pred_weight: float = option(1.0, group="distill", help="weight of the prediction KD (soft cross-entropy at T)")
    hidden_weight: float = option(1.0, group="distill", help="weight of the hidden-state KD")
    task_weight: float = option(0.5, group="distill", help="weight of the hard-label task loss")
    attention_weight: float = option(0.0, group="distill", help="weight of the attention KD (a KD catalog term)")
    hidden_loss: str = option("mse", group="distill", choices=HIDDEN_LOSSES, help="hidden-state distillation loss")
    # width pruning keeps the depth, so student layer l learns teacher layer l ("none"); "param_free" /
    # "learned": DDK's recursive fusion of teacher layers (docs/method.md says why it is not the default)
    fusion: str = option("none", group="distill", choices=FUSION_KINDS,
                         help="hidden-state target: none (layer to layer) or DDK's recursive fusion of teacher "
                              "layers (param_free, learned)")
    layer_weighting: str = option("adaptive", group="distill", choices=LAYER_WEIGHTINGS,
                                  help="per-layer weights of the hidden-state KD: adaptive (each layer's share of "
                                       "the loss) or uniform")
    # extra terms of the KD catalog (ddk_fast.distill.objectives), "KEY=VALUE,..." e.g.
    # "attention_weight=1,query_relation_weight=1"; empty: the DDK objective alone
    kd: Optional[str] = shared.kd()
    save_steps: int = shared.save_steps(500)
    log_steps: int = shared.log_steps(10)
    # teacher outputs computed once per example and reused (ddk_fast.runs.teacher_cache)
    teacher_cache: str = shared.teacher_cache()
    teacher_cache_dtype: str = shared.teacher_cache_dtype()
    stop_after_steps: Optional[int] = shared.stop_after_steps()
    fault_nan_at_step: Optional[int] = api_only(None, why="testing hook: poison the loss at this global step")


@dataclass
class PruneConfig(CompressionRunConfig):
    """One-shot, retraining-free pruning: Fisher importance on calibration data, global mask search,
    rearrangement, least-squares unit scales, physical pruning, export."""

    batch_size: int = shared.batch_size(32, help="calibration batch size")
    importance: str = option("fisher", group="oneshot", choices=IMPORTANCE_KINDS,
                             help="fisher (squared gate gradients of the task loss) or activation (label-free)")
    rearrange: bool = option(True, group="oneshot", flag="--no-rearrange",
                             help="skip the per-layer rearrangement with the block-diagonal Fisher")
    tune: bool = option(True, group="oneshot", flag="--no-tune",
                        help="skip the least-squares tuning of the kept units' scales")
    ridge: float = option(1e-3, group="oneshot", minimum=NON_NEGATIVE,
                          help="ridge weight pulling the tuned scales towards 1")
    channel_granularity: int = option(8, group="oneshot", minimum=POSITIVE, help="FFN widths are multiples of this")


@dataclass
class EvaluateConfig(DataOptions):
    """Scoring a model folder (teacher, compressed export or ONNX export) on a dev split or new rows."""

    model: str = option("", group="task", required=True,
                        help="teacher folder, `ddk-fast compress` output or `export-onnx` output")
    task: Optional[str] = shared.task("GLUE task (default: the task the model's run recorded, GLUE or your own data)",
                                        None)
    data_dir: Optional[str] = shared.data_dir()
    output: Optional[str] = option(None, group="run", help="write the metrics JSON here (a file path)")
    split: str = option("validation", group="task", help="split to evaluate (validation = dev.tsv)")
    batch_size: int = option(64, group="train", help="batch size")
    max_seq_len: Optional[int] = shared.max_seq_len(None, help="truncate inputs (default: the length the model was "
                                                               "trained with)")
    max_eval_examples: Optional[int] = shared.max_eval_examples("evaluate a seeded subset")
    device: str = shared.device()
    threads: Optional[int] = shared.threads()
    path: str = shared.kernel_path("kernel path for a pruned export")
    force: bool = option(False, group="task", help="evaluate on --task even if the model was trained for another task")
    int8: bool = option(False, group="deploy", help="int8: model.int8.onnx of an ONNX export, or torch.ao dynamic "
                                                    "int8 of a model folder's linear layers")


__all__ = ["BatchOptions", "CompressConfig", "CompressionRunConfig", "DataOptions", "EvaluateConfig", "FinetuneConfig", "INITS", "LATENCY_RUNTIMES", "OptimizerOptions", "PruneConfig"]
