"""Dev-set evaluation shared by every loop: which task a run is on (GLUE or the user's own data), its
splits as one-line-error-checked examples, a model run over a loader, the task's metrics."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from ddk_fast._io import read_json
from ddk_fast.data import GLUE_TASKS, DataError, get_task, load_task, compute_metrics, encode
from ddk_fast.data.custom import CustomTask, DataSource, build_task, read_task_file
from ddk_fast.data.examples import QAExample
from ddk_fast.data.qa_answers import best_answers
from ddk_fast.data.qa_encoding import encode_qa
from ddk_fast.distill.objectives import next_token_loss
from ddk_fast.errors import UserError
from ddk_fast.ops.label_losses import IGNORE_INDEX


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def predict(logits_fn: Callable[[dict], torch.Tensor], loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32 on CPU, labels [N]) over the whole loader: in example order when the
    batches carry ``example_ids`` (``batching.eval_loader`` batches by length), else in loader order.
    Per-token logits [N, T, C] (token classification) are padded to the longest batch, their labels
    with -100."""
    all_logits, all_labels, all_ids = [], [], []
    for batch in loader:
        if "example_ids" in batch:
            all_ids.append(batch["example_ids"].cpu())
        batch = to_device(batch, device)
        logits = logits_fn(batch)
        all_logits.append(logits.detach().float().cpu())
        all_labels.append(batch["labels"].detach().cpu())
    if all_logits and all_logits[0].dim() == 3:
        logits, labels = _cat_padded(all_logits, 0.0), _cat_padded(all_labels, IGNORE_INDEX)
    else:
        logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    if all_ids:
        order = torch.argsort(torch.cat(all_ids))
        logits, labels = logits[order], labels[order]
    return logits, labels


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int, device, path: str = "auto") -> dict:
    """exp(mean next-token NLL) over every prediction in ``blocks`` [N, S] (no padding)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, blocks.shape[0], batch_size):
            ids = blocks[i:i + batch_size].to(device)
            logits = model(ids, path=path).logits
            total += float(next_token_loss(logits, ids, reduction="sum"))
            count += ids.numel() - ids.shape[0]
    finally:
        model.train(was)
    nll = total / max(count, 1)
    return {"perplexity": math.exp(min(nll, 50.0)), "nll": nll, "tokens": count}


def _cat_padded(parts, value) -> torch.Tensor:
    """Concatenate [B, T_i, ...] tensors along the batch, padding dim 1 to the longest T with ``value``."""
    longest = max(p.shape[1] for p in parts)
    out = parts[0].new_full((sum(p.shape[0] for p in parts), longest, *parts[0].shape[2:]), value)
    start = 0
    for p in parts:
        out[start:start + p.shape[0], :p.shape[1]] = p
        start += p.shape[0]
    return out


def evaluate_logits(task, logits: torch.Tensor, labels: torch.Tensor, dataset=None) -> dict:
    """The task's metrics of ``predict``'s output. Extractive QA reads its answers off the windows of
    ``dataset`` (the ``QAFeatures`` the loader ran over, in their order) and scores the texts."""
    if getattr(get_task(task), "is_qa", False):
        if not hasattr(dataset, "references"):
            raise ValueError("QA metrics need the QAFeatures the logits were computed on (dataset=...)")
        answers = best_answers(dataset, logits, allow_no_answer=get_task(task).allow_no_answer)
        return {k: float(v) for k, v in compute_metrics(task, answers, dataset.references).items()}
    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    return {k: float(v) for k, v in compute_metrics(task, preds.numpy(), labels.numpy()).items()}


def score_of(task):
    """``(logits, labels) -> the task's score`` (the mean of its metrics, higher is better) of sequence-level
    logits: what the one-shot step's held-out check compares the tuned and untuned students by."""
    return lambda logits, labels: evaluate_logits(task, logits, labels)["score"]


def evaluate(model, logits_fn, loader, device, task: str) -> dict:
    was_training = model.training
    model.eval()
    try:
        logits, labels = predict(logits_fn, loader, device)
    finally:
        model.train(was_training)
    # the loader's dataset wraps the encoded examples with their ids (``batching._WithIds``)
    return evaluate_logits(task, logits, labels, getattr(loader.dataset, "encoded", loader.dataset))


def constant_baseline(task, train_ds, dev_ds) -> dict:
    """Dev metrics of the constant predictor of ``majority_baseline``; for extractive QA, "no answer"
    for every question (what a model predicting nothing scores: the share of unanswerable ones)."""
    if getattr(get_task(task), "is_qa", False):
        return _constant_metrics(task, {qid: "" for qid in dev_ds.references}, dev_ds.references)
    return majority_baseline(task, train_ds.labels, dev_ds.labels)


def majority_baseline(task: str, train_labels, dev_labels) -> dict:
    """Dev metrics of a constant predictor: the most frequent train label (classification) or the
    mean train score (regression, whose correlations are then 0). What a model must clearly beat."""
    if getattr(get_task(task), "is_token_classification", False):  # the most frequent train tag everywhere
        tags = np.asarray([t for row in train_labels for t in row if t != IGNORE_INDEX], dtype=np.int64)
        dev = _cat_padded([torch.tensor([row]) for row in dev_labels], IGNORE_INDEX).numpy()
        return _constant_metrics(task, np.full(dev.shape, np.bincount(tags).argmax()), dev)
    train, dev = np.asarray(list(train_labels)), np.asarray(list(dev_labels))
    if getattr(get_task(task), "is_multilabel", False):  # each label on or off as in most train rows
        constant = np.where(train.mean(axis=0) > 0.5, 1.0, -1.0)
        return _constant_metrics(task, np.tile(constant, (len(dev), 1)), dev)
    if get_task(task).is_regression:
        return _constant_metrics(task, np.full(len(dev), float(train.mean())), dev)
    values, counts = np.unique(train.astype(np.int64), return_counts=True)
    return _constant_metrics(task, np.full(len(dev), values[counts.argmax()]), dev)


def _constant_metrics(task, predictions, labels) -> dict:
    """Metrics of a constant prediction; correlations of a constant are undefined (NaN), reported as 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_metrics(task, predictions, labels)
    return {k: (0.0 if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in out.items()}


def load_split(task, split: str, data_dir, max_examples=None, seed: int = 0):
    """``ddk_fast.data.load_task`` with data errors turned into one-line user errors. ``task``: a GLUE
    name or a task object (a ``CustomTask`` reads its own files; ``data_dir`` is then unused)."""
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
        raise UserError(f"cannot read {getattr(task, 'name', task)} {split} from {where}: {first}") from None
    if not examples:
        raise UserError(f"{getattr(task, 'name', task)} {split} split is empty (data dir {data_dir!r})")
    return examples


def encode_split(examples, tokenizer, max_seq_len: int):
    """``ddk_fast.data.encode`` (``encode_qa`` for QA questions: windows of ``max_seq_len`` tokens) with
    its errors as one-line user errors naming ``--max-seq-len``."""
    try:
        if examples and isinstance(examples[0], QAExample):
            return encode_qa(examples, tokenizer, max_length=max_seq_len)
        return encode(examples, tokenizer, max_length=max_seq_len)
    except DataError as exc:
        raise UserError(f"--max-seq-len {max_seq_len!r}: {exc}") from None


def task_spec(task):
    try:
        return get_task(task)
    except DataError as exc:
        raise UserError(f"--task: {exc}") from None


DATA_FLAGS = {"train_file": "--train-file", "validation_file": "--validation-file", "dataset": "--dataset"}
COLUMN_FLAGS = {"text_columns": "--text-columns", "label_column": "--label-column", "task_kind": "--task-kind"}
# kinds every command trains and scores
TRAINED_KINDS = ("classification", "regression", "multilabel", "token_classification", "qa")


def has_own_data(options) -> bool:
    return any(_option(options, key) for key in DATA_FLAGS)


def resolve_task(task: Optional[str], options=None, model_dir: Optional[str] = None, kinds=TRAINED_KINDS):
    """The task a run is on: the user's data (``--train-file``/``--validation-file``/``--dataset``,
    columns and kind from flags, else found), the custom task ``model_dir`` was trained on (its
    ``task.json``: label set, columns and files), or the GLUE task ``task`` names.

    A task saved with the model keeps its label set and order (the classifier's rows mean those labels);
    new files are checked against it. Without a saved task, a model whose config names its labels
    (``id2label``) fixes their order when the data has the same labels."""
    saved = _saved_task(model_dir)
    name = (task or "").strip() or None
    if has_own_data(options):
        if name is not None and name.lower() in GLUE_TASKS:
            raise UserError(f"--task {name}: a GLUE preset cannot be combined with --train-file/--dataset; "
                            f"drop --task or give your task another name")
        source = DataSource(*(_option(options, key) for key in DATA_FLAGS))
        try:
            if saved is not None and (name is None or name == saved.name):
                spec = _reuse(saved, source, options)
            else:
                spec = build_task(source, _option(options, "text_columns"), _option(options, "label_column"),
                                  _option(options, "task_kind"), name)
                spec = _labels_in_model_order(spec, model_dir)
        except DataError as exc:
            raise UserError(str(exc)) from None
    else:
        given = [flag for key, flag in COLUMN_FLAGS.items() if _option(options, key)]
        if given:
            raise UserError(f"{given[0]} needs --train-file or --dataset (your own data)")
        if saved is not None and (name is None or name == saved.name):
            spec = saved
        elif name is None:
            raise UserError("--task is required: a GLUE task, or --train-file/--dataset for your own data")
        else:
            spec = task_spec(name)
    if getattr(spec, "is_custom", False) and spec.kind not in kinds:
        raise UserError(f"{spec.kind} labels (column {spec.label_column!r} holds lists) are not supported by this "
                        f"command yet; it takes {' or '.join(kinds)} (see --task-kind)")
    return spec


def _option(options, key):
    if options is None:
        return None
    value = options.get(key) if isinstance(options, dict) else getattr(options, key, None)
    return value if value not in ("", None) else None


def _saved_task(model_dir) -> Optional[CustomTask]:
    if not model_dir or not os.path.isdir(model_dir):
        return None
    try:
        return read_task_file(model_dir)
    except DataError as exc:
        raise UserError(str(exc)) from None


def _reuse(saved: CustomTask, source: DataSource, options) -> CustomTask:
    """The saved task on new files; columns may be renamed, the kind and label set stay."""
    kind = _option(options, "task_kind")
    if kind is not None and kind != saved.kind:
        raise UserError(f"--task-kind {kind}: the model was trained for {saved.kind} ({saved.name})")
    texts = _option(options, "text_columns")
    texts = tuple(c.strip() for c in texts.split(",")) if texts else saved.text_columns
    if len(texts) != len(saved.text_columns):
        raise UserError(f"--text-columns {','.join(texts)}: the model was trained on {len(saved.text_columns)} "
                        f"text column(s) ({','.join(saved.text_columns)})")
    return dataclasses.replace(saved, text_columns=texts,
                               label_column=_option(options, "label_column") or saved.label_column,
                               source=source.absolute())


def _labels_in_model_order(spec: CustomTask, model_dir) -> CustomTask:
    if spec.is_regression or spec.is_qa or not model_dir:  # QA's two rows are start and end, whatever named
        return spec

    try:
        id2label = read_json(os.path.join(model_dir, "config.json")).get("id2label") or {}
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return spec
    by_lower = {n.lower(): n for n in spec.label_names}
    if len(by_lower) == len(names) and sorted(by_lower) == sorted(n.lower() for n in names):
        names = tuple(by_lower[n.lower()] for n in names)  # the model's order, the data's spelling
        if names == spec.label_names:
            return spec
        return dataclasses.replace(spec, label_names=names)
    if not all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        # named classifier rows that the data does not name: their order cannot be matched to the labels
        print(f"warning: {model_dir}: its classes {list(names)} are not the data's labels {list(spec.label_names)}; "
              "the data's labels are used in sorted order for the classifier rows", file=sys.stderr)
    return spec
