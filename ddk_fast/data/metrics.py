"""The official GLUE metrics, written out in numpy so that their definitions are visible and testable.

Conventions follow scikit-learn / scipy (what the GLUE scorer uses) except one: a correlation with
a constant input is reported as 0.0 instead of NaN, so a collapsed model still gets a comparable score
and checkpoint selection never compares against NaN.
"""
from typing import Dict

import numpy as np

from ddk_fast.data.tasks import DataError, get_task


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels))


def f1_binary(predictions, labels) -> float:
    """F1 of the positive class 1; 0.0 when there are no positives at all (sklearn's zero_division)."""
    predictions, labels = np.asarray(predictions) == 1, np.asarray(labels) == 1
    true_pos = np.sum(predictions & labels)
    wrong = np.sum(predictions != labels)
    denominator = 2 * true_pos + wrong
    return float(2 * true_pos / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0.0 when undefined."""
    predictions, labels = np.asarray(predictions).astype(np.int64), np.asarray(labels).astype(np.int64)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_per_class, pred_per_class = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    covariance = correct * total - pred_per_class @ true_per_class
    variance_pred = total ** 2 - pred_per_class @ pred_per_class
    variance_true = total ** 2 - true_per_class @ true_per_class
    denominator = np.sqrt(variance_pred * variance_true)
    return float(covariance / denominator) if denominator > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    if denominator == 0:
        return 0.0
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions (scipy.stats.rankdata 'average')."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    tie_ranks = (starts + 1 + ends) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(tie_ranks, ends - starts)
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


_METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def _to_numpy(x, name):
    if hasattr(x, "detach"):  # torch tensor; bf16 has no numpy dtype
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.size == 0:
        raise DataError(f"{name} is empty; expected at least one value")
    return x


def compute_metrics(task: str, predictions, labels) -> Dict[str, float]:
    """The task's official metrics plus ``score`` (their mean, as the GLUE average does).

    ``predictions``: logits [N, num_labels] (argmax taken) or class ids [N]; for stsb the predicted
    scores [N] or [N, 1]. ``labels``: [N] class ids or gold scores. numpy arrays, lists or tensors.
    """
    spec = get_task(task)
    predictions, labels = _to_numpy(predictions, "predictions"), _to_numpy(labels, "labels").reshape(-1)
    if spec.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; "
                            f"expected [N] or [N, 1] scores")
    else:
        if predictions.ndim == 2:
            if predictions.shape[1] != spec.num_labels:
                raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; expected logits "
                                f"[N, {spec.num_labels}] or class ids [N]")
            predictions = predictions.argmax(axis=1)
        elif predictions.ndim != 1:
            raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; expected [N, "
                            f"{spec.num_labels}] or [N]")
        elif np.issubdtype(predictions.dtype, np.floating) and not np.all(predictions == np.round(predictions)):
            raise DataError(f"predictions for {spec.name} are 1-D non-integer floats; expected class ids or "
                            f"[N, {spec.num_labels}] logits")
        predictions = predictions.astype(np.int64)
        labels = labels.astype(np.int64)
    if len(predictions) != len(labels):
        raise DataError(f"predictions has {len(predictions)} rows but labels has {len(labels)}")
    results = {name: _METRICS[name](predictions, labels) for name in spec.metric_names}
    results["score"] = float(np.mean([results[name] for name in spec.metric_names]))
    return results
