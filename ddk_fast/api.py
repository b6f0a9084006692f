"""Public Python API: ``ddk_fast.finetune``, ``compress``, ``prune``, ``sweep``, ``evaluate``, and
``ddk_fast.api.distill`` (``ddk_fast.distill`` is the package of distillation terms).

Each takes the same options as the matching ``ddk-fast`` command (flag names with underscores), plus
``config="file.yaml"``; precedence is defaults < preset < config file < keyword arguments.
Bad input raises ``ddk_fast.errors.UserError`` with a one-line message.

    import ddk_fast
    ddk_fast.finetune(task="mrpc", data_dir="glue", output="teacher", preset="quick")
    ddk_fast.compress(teacher="teacher", task="mrpc", data_dir="glue", target="params=0.5", output="student")
    ddk_fast.evaluate(model="student", task="mrpc", data_dir="glue")
"""
from __future__ import annotations

from typing import Optional

from ddk_fast.pipelines.compress import run_compress
from ddk_fast.pipelines.configs import CompressConfig, DataOptions, EvaluateConfig, FinetuneConfig, PruneConfig
from ddk_fast.pipelines.distill import build_distill_config, run_distill
from ddk_fast.pipelines.evaluate import run_evaluate
from ddk_fast.pipelines.finetune import run_finetune
from ddk_fast.pipelines.lm import compress_lm, is_lm_run
from ddk_fast.pipelines.prune import run_prune
from ddk_fast.pipelines.sweep import sweep_from_flags
from ddk_fast.runs.config import build_config


def finetune(task: Optional[str], output: str, model: Optional[str] = None, data_dir: Optional[str] = None, *,
             config: Optional[str] = None, **options) -> dict:
    """Fine-tune a stock transformers classifier (the teacher) on a GLUE task, or on your own data
    (``task=None`` or a name of yours, with ``train_file=``/``validation_file=``/``dataset=``,
    ``text_columns=``, ``label_column=``, ``task_kind=`` among the options; docs/data.md).

    ``model``: a local model folder (default: the packaged MiniLM-L6 BERT). Writes a standard
    transformers folder (config.json, model.safetensors, tokenizer, metrics.json, log.jsonl) to
    ``output``. Returns the metrics dict (best dev metrics under ``"dev"``).
    """
    flags = dict(options, task=task, output=output, model=model, data_dir=data_dir)
    return run_finetune(build_config(FinetuneConfig, "finetune", flags, config))


def compress(teacher: str, task: Optional[str], output: str, target: Optional[str] = None, data_dir: Optional[str] = None, *,
             config: Optional[str] = None, **options) -> dict:
    """DDK compression of a fine-tuned teacher to ``target`` ("params=0.5" or "flops=0.4").

    Searches the number of heads and FFN channels per layer with recursive adaptive KD, prunes
    physically, distills the pruned student, and exports it with report.json. Returns the report.
    ``task="lm"`` (or ``task: lm`` in the config file) compresses a GPT-2 on plain text, as
    ``ddk-fast compress --task lm`` does (``train_file=``, ``eval_file=``, ``block_size=``...).
    """
    flags = dict(options, teacher=teacher, task=task, output=output, target=target, data_dir=data_dir)
    if is_lm_run(flags, config):  # task "lm" (here or in the config file): a GPT-2 on plain text
        return compress_lm(flags, config)
    return run_compress(build_config(CompressConfig, "compress", flags, config))


def prune(teacher: str, task: Optional[str], output: str, target: Optional[str] = None, data_dir: Optional[str] = None, *,
          config: Optional[str] = None, **options) -> dict:
    """One-shot, retraining-free pruning of a fine-tuned teacher to ``target`` (minutes on a CPU).

    Fisher importance from ``calibration_examples`` train examples, global mask search, rearrangement,
    least-squares unit scales, physical pruning; exports like ``compress``. Returns the report.
    """
    flags = dict(options, teacher=teacher, task=task, output=output, target=target, data_dir=data_dir)
    return run_prune(build_config(PruneConfig, "prune", flags, config))


def distill(teacher: str, task: Optional[str], output: Optional[str] = None, *, config: Optional[str] = None,
            **options) -> dict:
    """Distil a fixed smaller student (``recipe=`` a TinyBERT / MaKD / fusion recipe, ``student_layers=``)
    from ``teacher``, as ``ddk-fast distill`` does; ``task="lm"`` for a GPT-2 teacher on plain text.
    ``output=None``: nothing is written (the student is scored and returned in the metrics).
    Returns the metrics dict."""
    flags = dict(options, teacher=teacher, task=task, output=output)
    return run_distill(build_distill_config(flags, config))


def sweep(teacher: str, task: str, output: str, grid: Optional[str] = None, *, config: Optional[str] = None,
          **options) -> dict:
    """A grid of distillation settings, as ``ddk-fast sweep`` does: ``grid="temperature=1,2,4;pred_weight=0.5,1"``
    (or ``grid_file=``), each point a student run (``mode="student"``) or a DDK compression
    (``mode="ddk"``) with the other ``options``; resumable point by point. Returns the summary."""
    flags = dict(options, teacher=teacher, task=task, output=output, grid=grid)
    return sweep_from_flags(flags, config)


def evaluate(model: str, task: Optional[str] = None, data_dir: Optional[str] = None, *, output: Optional[str] = None,
             batch_size: int = EvaluateConfig.batch_size, max_seq_len: Optional[int] = None,
             max_eval_examples: Optional[int] = None, split: str = EvaluateConfig.split,
             device: str = EvaluateConfig.device, path: str = EvaluateConfig.path, force: bool = False,
             int8: bool = EvaluateConfig.int8, threads: Optional[int] = EvaluateConfig.threads, **data) -> dict:
    """Dev-set metrics of a teacher folder or a pruned export; written as JSON to ``output`` if given.

    ``task=None``: the task saved with a model trained on your own data; ``data``: ``DataOptions``
    fields (``validation_file=``, ``text_columns=``...) to score it on other rows."""
    try:
        options = DataOptions(**data)
    except TypeError as exc:
        raise TypeError(f"evaluate(): {exc}") from None
    return run_evaluate(model=model, task=task, data_dir=data_dir, output=output, batch_size=batch_size,
                        max_seq_len=max_seq_len, max_eval_examples=max_eval_examples, split=split, device=device,
                        path=path, force=force, int8=int8, threads=threads, data=options)
