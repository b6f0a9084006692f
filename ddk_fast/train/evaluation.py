"""Dev-set evaluation shared by every loop: run a model over a loader, compute the task's metrics."""
from __future__ import annotations

from typing import Callable

import torch

from ddk_fast.errors import UserError


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def predict(logits_fn: Callable[[dict], torch.Tensor], loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32 on CPU, labels [N]) over the whole loader, in loader order."""
    all_logits, all_labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        logits = logits_fn(batch)
        all_logits.append(logits.detach().float().cpu())
        all_labels.append(batch["labels"].detach().cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate_logits(task: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    from ddk_fast.data import compute_metrics

    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    return {k: float(v) for k, v in compute_metrics(task, preds.numpy(), labels.numpy()).items()}


def evaluate(model, logits_fn, loader, device, task: str) -> dict:
    was_training = model.training
    model.eval()
    try:
        logits, labels = predict(logits_fn, loader, device)
    finally:
        model.train(was_training)
    return evaluate_logits(task, logits, labels)


def majority_baseline(task: str, train_labels, dev_labels) -> dict:
    """Dev metrics of a constant predictor: the most frequent train label (classification) or the
    mean train score (regression, whose correlations are then 0). What a model must clearly beat."""
    import numpy as np

    from ddk_fast.data import get_task

    train, dev = np.asarray(list(train_labels)), np.asarray(list(dev_labels))
    if get_task(task).is_regression:
        return _constant_metrics(task, np.full(len(dev), float(train.mean())), dev)
    values, counts = np.unique(train.astype(np.int64), return_counts=True)
    return _constant_metrics(task, np.full(len(dev), values[counts.argmax()]), dev)


def _constant_metrics(task, predictions, labels) -> dict:
    """Metrics of a constant prediction; correlations of a constant are undefined (NaN), reported as 0."""
    import math
    import warnings

    from ddk_fast.data import compute_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_metrics(task, predictions, labels)
    return {k: (0.0 if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in out.items()}


def load_split(task: str, split: str, data_dir, max_examples=None, seed: int = 0):
    """``ddk_fast.data.load_task`` with data errors turned into one-line user errors."""
    from ddk_fast.data import DataError, load_task

    if max_examples is not None and (not isinstance(max_examples, int) or isinstance(max_examples, bool)
                                     or max_examples < 1):
        flag = "--max-train-examples" if split == "train" else "--max-eval-examples"
        raise UserError(f"{flag} {max_examples!r}: expected a positive integer")
    try:
        examples = load_task(task, split=split, data_dir=data_dir, max_examples=max_examples, seed=seed)
    except DataError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - file system or hub failure: the user must fix the source
        where = data_dir or "the Hugging Face hub (no --data-dir given)"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot read {task} {split} from {where}: {first}") from None
    if not examples:
        raise UserError(f"{task} {split} split is empty (data dir {data_dir!r})")
    return examples


def encode_split(examples, tokenizer, max_seq_len: int):
    """``ddk_fast.data.encode`` with its errors as one-line user errors naming ``--max-seq-len``."""
    from ddk_fast.data import DataError, encode

    try:
        return encode(examples, tokenizer, max_length=max_seq_len)
    except DataError as exc:
        raise UserError(f"--max-seq-len {max_seq_len!r}: {exc}") from None


def task_spec(task: str):
    from ddk_fast.data import DataError, get_task

    try:
        return get_task(task)
    except DataError as exc:
        raise UserError(f"--task: {exc}") from None
