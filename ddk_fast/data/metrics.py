"""Task metrics through scikit-learn and scipy (the libraries the GLUE scorer itself builds on),
seqeval's entity-level scores for token classification (the CoNLL-2003 shared task's conlleval measure)
and SQuAD's exact match / F1 for extractive QA (``ddk_fast.data.qa_metrics``).

The only convention of our own: a correlation with a constant input (or an MCC that is undefined) is
reported as 0.0 instead of NaN, so a collapsed model still gets a comparable score and checkpoint
selection never compares against NaN.
"""
import warnings
from typing import Dict

import numpy as np
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as skm

from ddk_fast.data.encoding import IGNORE_INDEX
from ddk_fast.data.qa_metrics import squad_scores
from ddk_fast.data.tasks import DataError, get_task


def accuracy(predictions, labels) -> float:
    return float(skm.accuracy_score(np.asarray(labels), np.asarray(predictions)))


def f1_binary(predictions, labels) -> float:
    """F1 of the positive class 1; 0.0 when there are no positives at all (zero_division=0)."""
    return float(skm.f1_score(np.asarray(labels) == 1, np.asarray(predictions) == 1, zero_division=0))


def f1_macro(predictions, labels) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    return float(skm.f1_score(np.asarray(labels), np.asarray(predictions), average="macro", zero_division=0))


def f1_micro(predictions, labels) -> float:
    """Micro-averaged F1 of multi-hot [N, C] label matrices (multi-label classification)."""
    return float(skm.f1_score(np.asarray(labels), np.asarray(predictions), average="micro", zero_division=0))


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation for any number of classes; 0.0 when undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = skm.matthews_corrcoef(np.asarray(labels), np.asarray(predictions))
    return 0.0 if not np.isfinite(value) else float(value)


def _correlation(fn, x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = fn(x, y)[0]
    return 0.0 if not np.isfinite(value) else float(np.clip(value, -1.0, 1.0))


def pearson(x, y) -> float:
    return _correlation(stats.pearsonr, x, y)


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions (scipy.stats.rankdata 'average')."""
    return stats.rankdata(np.asarray(values), method="average").astype(np.float64)


def spearman(x, y) -> float:
    return _correlation(stats.spearmanr, x, y)


_METRICS = {"accuracy": accuracy, "f1": f1_binary, "f1_macro": f1_macro, "f1_micro": f1_micro,
            "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def _to_numpy(x, name):
    if hasattr(x, "detach"):  # torch tensor; bf16 has no numpy dtype
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.size == 0:
        raise DataError(f"{name} is empty; expected at least one value")
    return x


def _class_ids(spec, predictions):
    if predictions.ndim == 2:
        if predictions.shape[1] != spec.num_labels:
            raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; expected logits "
                            f"[N, {spec.num_labels}] or class ids [N]")
        return predictions.argmax(axis=1).astype(np.int64)
    if predictions.ndim != 1:
        raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; expected [N, "
                        f"{spec.num_labels}] or [N]")
    if np.issubdtype(predictions.dtype, np.floating) and not np.all(predictions == np.round(predictions)):
        raise DataError(f"predictions for {spec.name} are 1-D non-integer floats; expected class ids or "
                        f"[N, {spec.num_labels}] logits")
    return predictions.astype(np.int64)


def _multi_hot(spec, predictions, labels):
    """Logits [N, C] -> 0/1 at logit 0 (sigmoid 0.5); labels stay [N, C] multi-hot."""
    if predictions.ndim != 2 or predictions.shape[1] != spec.num_labels:
        raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; expected logits "
                        f"[N, {spec.num_labels}]")
    return (predictions > 0).astype(np.int64), labels.reshape(len(predictions), -1).astype(np.int64)


def tag_sequences(label_names, predictions, labels):
    """(gold, predicted) tag-name lists per sentence from ``labels`` [N, T] (``IGNORE_INDEX`` where
    not scored) and ``predictions``: logits [N, T, C] or tag ids [N, T]."""
    if predictions.ndim == 3:
        predictions = predictions.argmax(axis=-1)
    if predictions.shape != labels.shape:
        raise DataError(f"token predictions have shape {predictions.shape} but labels {labels.shape}; "
                        f"expected [N, T] (or [N, T, C] logits) like the labels")
    names = np.asarray(label_names, dtype=object)
    gold, guess = [], []
    for pred_row, gold_row in zip(predictions.astype(np.int64), labels.astype(np.int64)):
        keep = gold_row != IGNORE_INDEX
        gold.append(list(names[gold_row[keep]]))
        guess.append(list(names[pred_row[keep]]))
    return gold, guess


def entity_scores(gold, guess) -> Dict[str, float]:
    """seqeval's micro-averaged entity precision/recall/F1 (an entity counts when type and span match)
    and the accuracy over all scored tags."""
    return {"entity_f1": float(seqeval_metrics.f1_score(gold, guess, zero_division=0)),
            "entity_precision": float(seqeval_metrics.precision_score(gold, guess, zero_division=0)),
            "entity_recall": float(seqeval_metrics.recall_score(gold, guess, zero_division=0)),
            "tag_accuracy": float(seqeval_metrics.accuracy_score(gold, guess))}


def compute_metrics(task, predictions, labels) -> Dict[str, float]:
    """The task's metrics plus ``score`` (their mean, as the GLUE average does).

    ``task``: a GLUE name or any task object (``TaskSpec``, ``CustomTask``). ``predictions``: logits
    [N, num_labels] (argmax taken) or class ids [N]; for regression the predicted scores [N] or [N, 1];
    for multi-label the logits [N, C]. ``labels``: [N] class ids or gold scores ([N, C] multi-hot for
    multi-label). Token classification: logits [N, T, C] or tag ids [N, T] against [N, T] tag ids
    (``IGNORE_INDEX`` where not scored); the results are seqeval's entity scores. numpy arrays, lists
    or tensors. Extractive QA: ``predictions`` maps question id -> predicted text ("" = no answer, see
    ``ddk_fast.data.qa_answers.best_answers``), ``labels`` question id -> gold answer texts; the
    results are SQuAD's ``exact_match`` and ``f1``.
    """
    spec = get_task(task)
    if getattr(spec, "is_qa", False):
        if not isinstance(predictions, dict) or not isinstance(labels, dict):
            raise DataError(f"QA predictions and labels are dicts question id -> text / gold texts; got "
                            f"{type(predictions).__name__} and {type(labels).__name__}")
        results = squad_scores(predictions, labels)
        results["score"] = float(np.mean([results[name] for name in spec.metric_names]))
        return results
    predictions, labels = _to_numpy(predictions, "predictions"), _to_numpy(labels, "labels")
    if getattr(spec, "is_token_classification", False):
        results = entity_scores(*tag_sequences(spec.label_names, predictions, labels))
        results["score"] = float(np.mean([results[name] for name in spec.metric_names]))
        return results
    if getattr(spec, "is_multilabel", False):
        predictions, labels = _multi_hot(spec, predictions, labels)
    elif spec.is_regression:
        labels = labels.reshape(-1)
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise DataError(f"predictions for {spec.name} have shape {predictions.shape}; "
                            f"expected [N] or [N, 1] scores")
    else:
        predictions, labels = _class_ids(spec, predictions), labels.reshape(-1).astype(np.int64)
    if len(predictions) != len(labels):
        raise DataError(f"predictions has {len(predictions)} rows but labels has {len(labels)}")
    results = {name: _METRICS[name](predictions, labels) for name in spec.metric_names}
    results["score"] = float(np.mean([results[name] for name in spec.metric_names]))
    return results
