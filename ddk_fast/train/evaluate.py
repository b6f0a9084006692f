"""`ddk-fast evaluate`: dev metrics of a teacher folder (stock transformers) or a pruned export."""
from __future__ import annotations

import os
import time
from typing import Optional

import torch

from ddk_fast.errors import UserError
from ddk_fast.train import ddp
from ddk_fast.train.batching import eval_loader
from ddk_fast.train.evaluation import encode_split, evaluate, load_split, task_spec
from ddk_fast._io import atomic_write_json, read_json


def is_pruned_export(folder: str) -> bool:
    """A folder written by ``ddk_fast.export.save_pruned`` (a `ddk-fast compress` output)."""
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        from ddk_fast.export import MODEL_TYPE

        return read_json(cfg).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def load_any(folder: str, spec, path: str = "auto"):
    """(model, tokenizer, logits_fn, kind) for a teacher folder or a pruned export."""
    from ddk_fast.train.hf import load_classifier, load_tokenizer, logits_of

    if not os.path.isdir(folder):
        raise UserError(f"--model {folder!r} is not a folder")
    if is_pruned_export(folder):
        from ddk_fast.export import load_pruned

        try:
            model = load_pruned(folder)
        except (ValueError, OSError, KeyError) as exc:
            raise UserError(f"cannot load the pruned model in {folder!r}: {exc}") from None
        _check_pruned_labels(folder, model, spec)
        tokenizer = load_tokenizer(folder)
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
    for name, key in (("report.json", "task"), ("metrics.json", "task"), ("config.json", "finetuning_task")):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            try:
                task = read_json(p).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(task, str) and task:
                return task, name
    return None, None


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


def run_evaluate(model: str, task: str, data_dir=None, output=None, batch_size: int = 64, max_seq_len=None,
                 max_eval_examples=None, split: str = "validation", device: str = "auto", path: str = "auto",
                 force: bool = False) -> dict:
    spec = task_spec(task)
    if not model:
        raise UserError("--model is required")
    if os.path.isdir(model):
        check_task(model, spec, force)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected a positive integer")
    dev = ddp.resolve_device(device)
    t0 = time.time()
    net, tokenizer, logits_fn, kind = load_any(model, spec, path)
    seq = max_seq_len or trained_seq_len(model) or 128
    from ddk_fast.train.validate import check_seq_len

    check_seq_len(seq, getattr(net, "config", {}), "--max-seq-len")
    net.to(dev)
    examples = load_split(spec.name, split, data_dir, max_eval_examples, 0)
    loader = eval_loader(encode_split(examples, tokenizer, seq), batch_size)
    with torch.inference_mode():
        metrics = evaluate(net, logits_fn, loader, dev, spec.name)
    result = {"model": os.path.abspath(model), "kind": kind, "task": spec.name, "split": split,
              "examples": len(examples), "max_seq_len": seq, "main_metric": spec.main_metric, "metrics": metrics,
              "wall_time_s": round(time.time() - t0, 2)}
    if output:
        atomic_write_json(output, result)
    return result
