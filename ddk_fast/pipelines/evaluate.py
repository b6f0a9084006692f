"""`ddk-fast evaluate`: dev metrics of a teacher folder (stock transformers) or a pruned export."""
from __future__ import annotations

import os
import time
from typing import Optional

import torch

from ddk_fast._io import atomic_write_json, json_value, read_json
from ddk_fast.data import GLUE_TASKS
from ddk_fast.data.custom import KINDS, read_task_file
from ddk_fast.errors import UserError
from ddk_fast.export import MODEL_TYPE, load_pruned
from ddk_fast.export.onnx import (INT8_FILE, ONNX_FILE, OnnxExportError, OnnxModel, is_onnx_folder, load_for_export,
                                  read_onnx_report)
from ddk_fast.runs import ddp
from ddk_fast.runs.batching import eval_loader
from ddk_fast.pipelines.configs import DataOptions, EvaluateConfig
from ddk_fast.pipelines.deploy import score_onnx, torch_int8
from ddk_fast.runs.evaluation import encode_split, evaluate, has_own_data, load_split, resolve_task, task_spec
from ddk_fast.runs.hf import load_classifier, load_tokenizer, logits_of
from ddk_fast.runs.threads import apply_threads
from ddk_fast.runs.validate import check_seq_len


def is_pruned_export(folder: str) -> bool:
    """A folder written by ``ddk_fast.export.save_pruned`` (a `ddk-fast compress` output)."""
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        return read_json(cfg).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def load_any(folder: str, spec, path: str = "auto"):
    """(model, tokenizer, logits_fn, kind) for a teacher folder or a pruned export."""
    if not os.path.isdir(folder):
        raise UserError(f"--model {folder!r} is not a folder")
    if is_pruned_export(folder):
        try:
            model = load_pruned(folder)
        except (ValueError, OSError, KeyError) as exc:
            raise UserError(f"cannot load the pruned model in {folder!r}: {exc}") from None
        _check_pruned_labels(folder, model, spec)
        tokenizer = load_tokenizer(folder, spec)
        return model, tokenizer, (lambda b: _pruned_logits(model, b, path)), "pruned"
    model, tokenizer = load_classifier(folder, spec, require_head=True)
    return model, tokenizer, (lambda b: logits_of(model, b)), "transformers"


def _check_pruned_labels(folder, model, spec):
    n = getattr(model, "num_labels", None)
    if n is None:
        n = getattr(getattr(model, "config", None), "num_labels", None)
    if n is not None and int(n) != spec.num_labels:
        raise UserError(f"the model at {folder!r} has {n} output label(s) but task {spec.name} needs {spec.num_labels}")


def _pruned_logits(model, batch, path):
    kwargs = {} if path == "auto" else {"path": path}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"), **kwargs)
    return getattr(out, "logits", out)


def trained_seq_len(folder: str) -> Optional[int]:
    seq = json_value(os.path.join(folder, "onnx_report.json"), "max_seq_len")
    if seq:
        return int(seq)
    for name in ("report.json", "metrics.json"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            try:
                cfg = read_json(p).get("config", {})
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(cfg, dict) and cfg.get("max_seq_len"):
                return int(cfg["max_seq_len"])
    return None


def recorded_task(folder: str) -> tuple[Optional[str], Optional[str]]:
    """(task, file that says so) a model folder was trained for: report.json / metrics.json of our runs,
    else ``finetuning_task`` in config.json; (None, None) when nothing says."""
    for name, key in (("report.json", "task"), ("metrics.json", "task"), ("onnx_report.json", "task"),
                      ("config.json", "finetuning_task")):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            try:
                task = read_json(p).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(task, str) and task:
                return task, name
    return None, None


def _recorded_glue_task(folder: str) -> Optional[str]:
    task, _ = recorded_task(folder)
    return task if task and task.lower() in GLUE_TASKS else None


def check_task(folder: str, spec, force: bool) -> None:
    """Refuse to score a model on a task it was not trained for (a silently wrong number) unless forced."""
    task, source = recorded_task(folder)
    if task is None or force:
        return
    try:
        recorded = task_spec(task).name
    except UserError:  # a task name we do not know (e.g. another tool's label): nothing to compare
        return
    if recorded != spec.name:
        raise UserError(f"--task {spec.name}: the model at {folder!r} was trained for {recorded} ({source}); "
                        f"pass --force to evaluate it on {spec.name} anyway")


def run_evaluate(model: str, task: str, data_dir=None, output=None, batch_size: int = EvaluateConfig.batch_size,
                 max_seq_len=None, max_eval_examples=None, split: str = EvaluateConfig.split,
                 device: str = EvaluateConfig.device, path: str = EvaluateConfig.path, force: bool = False,
                 int8: bool = False, threads: Optional[int] = None, data: Optional[DataOptions] = None) -> dict:
    """Metrics of ``model`` on a split of a GLUE task, or of the user's data (``data``: files, columns;
    a model trained on the user's data needs none of it: its task.json names the files and labels).
    ``threads``: intra-op CPU threads of PyTorch and of ONNX Runtime (``ddk_fast.runs.threads``)."""
    if not model:
        raise UserError("--model is required")
    cpu_threads = apply_threads(threads)
    if not task and not has_own_data(data) and os.path.isdir(model) and read_task_file(model) is None:
        task = _recorded_glue_task(model)  # `evaluate --model OUT` of a GLUE run needs no --task either
    spec = resolve_task(task, data, model, kinds=KINDS)
    if os.path.isdir(model):
        check_task(model, spec, force)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected a positive integer")
    if os.path.isdir(model) and is_onnx_folder(model):
        return _evaluate_onnx(model, spec, data_dir, output, batch_size, max_seq_len, max_eval_examples, split,
                              int8, cpu_threads)
    if int8:
        return _evaluate_torch_int8(model, spec, data_dir, output, batch_size, max_seq_len, max_eval_examples, split,
                                    cpu_threads)
    dev = ddp.resolve_device(device)
    t0 = time.time()
    net, tokenizer, logits_fn, kind = load_any(model, spec, path)
    seq = max_seq_len or trained_seq_len(model) or 128

    check_seq_len(seq, getattr(net, "config", {}), "--max-seq-len")
    net.to(dev)
    examples = load_split(spec, split, data_dir, max_eval_examples, 0)
    loader = eval_loader(encode_split(examples, tokenizer, seq), batch_size)
    with torch.inference_mode():
        metrics = evaluate(net, logits_fn, loader, dev, spec)
    result = {"model": os.path.abspath(model), "kind": kind, "task": spec.name, "split": split,
              "examples": len(examples), "max_seq_len": seq, "main_metric": spec.main_metric, "metrics": metrics,
              "threads": cpu_threads, "wall_time_s": round(time.time() - t0, 2)}
    if output:
        atomic_write_json(output, result)
    return result


def _evaluate_torch_int8(folder, spec, data_dir, output, batch_size, max_seq_len, max_eval_examples, split,
                         threads) -> dict:
    """Dev metrics of a model folder after torch.ao dynamic int8 of its linear layers (CPU)."""
    t0 = time.time()
    if not os.path.isdir(folder):
        raise UserError(f"--model {folder!r} is not a folder")
    try:
        module, _ = load_for_export(folder)
    except OnnxExportError as exc:
        raise UserError(f"--int8: {exc}") from None
    _check_pruned_labels(folder, module.model, spec)
    quantised = torch_int8(module)
    seq = max_seq_len or trained_seq_len(folder) or 128
    check_seq_len(seq, module.model.config, "--max-seq-len")
    examples = load_split(spec, split, data_dir, max_eval_examples, 0)
    loader = eval_loader(encode_split(examples, load_tokenizer(folder, spec), seq), batch_size)
    with torch.inference_mode():
        metrics = evaluate(quantised, lambda b: quantised(b["input_ids"], b["attention_mask"],
                                                          b.get("token_type_ids")), loader, torch.device("cpu"),
                           spec)
    result = {"model": os.path.abspath(folder), "kind": "torch-int8", "task": spec.name, "split": split,
              "examples": len(examples), "max_seq_len": seq, "main_metric": spec.main_metric, "metrics": metrics,
              "threads": threads, "wall_time_s": round(time.time() - t0, 2)}
    if output:
        atomic_write_json(output, result)
    return result


def _evaluate_onnx(folder, spec, data_dir, output, batch_size, max_seq_len, max_eval_examples, split, int8,
                   threads) -> dict:
    """Dev metrics of an ONNX export in ONNX Runtime (fp32, or int8 with ``int8``)."""
    t0 = time.time()
    path = os.path.join(folder, INT8_FILE if int8 else ONNX_FILE)
    if not os.path.isfile(path):
        raise UserError(f"--int8: {folder!r} has no {INT8_FILE} (export with `ddk-fast export-onnx --int8`)")
    info = read_onnx_report(folder)
    if info.get("num_labels") is not None and int(info["num_labels"]) != spec.num_labels:
        raise UserError(f"the model at {folder!r} has {info['num_labels']} output label(s) but task {spec.name} "
                        f"needs {spec.num_labels}")
    seq = max_seq_len or trained_seq_len(folder) or 128
    examples = load_split(spec, split, data_dir, max_eval_examples, 0)
    encoded = encode_split(examples, load_tokenizer(folder, spec), seq)
    metrics = score_onnx(OnnxModel(path, threads["intra_op"]), eval_loader(encoded, batch_size), spec)
    result = {"model": os.path.abspath(folder), "kind": "onnx-int8" if int8 else "onnx", "task": spec.name,
              "split": split, "examples": len(examples), "max_seq_len": seq, "main_metric": spec.main_metric,
              "metrics": metrics, "threads": threads, "wall_time_s": round(time.time() - t0, 2)}
    if output:
        atomic_write_json(output, result)
    return result
