"""Exact match and F1 of extractive QA answers, as the official SQuAD v1.1 / v2.0 evaluation scripts
define them.

An answer is normalised before comparing: lower case, punctuation removed, the articles a / an / the
removed, runs of whitespace made one space. Exact match: the normalised prediction equals a normalised
gold answer. F1: over the tokens (whitespace-split words of the normalised text), the harmonic mean
of precision and recall of the shared tokens (a multiset intersection). Each question takes the best
score over its gold answers; a question without gold answers (SQuAD 2.0) is scored against the empty
answer, so only the prediction "no answer" ("") gets 1. Gold answers that normalise to nothing are
dropped, as the v2.0 script does. Scores are fractions in [0, 1] (the scripts print 100 times them).
"""
from __future__ import annotations

import collections
import re
import string
from typing import Dict, List, Mapping, Sequence

from ddk_fast.data.tasks import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> List[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Token-level F1; when either side has no tokens (no answer), 1 if both have none, else 0."""
    gold_tokens, pred_tokens = answer_tokens(gold), answer_tokens(prediction)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    shared = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred_tokens), shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[str], prediction: str) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the gold answers ([""] when there are none)."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(g, prediction) for g in golds), max(token_f1(g, prediction) for g in golds)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> Dict[str, float]:
    """``exact_match`` and ``f1`` averaged over the questions of ``references`` (question id -> gold
    answer texts, empty for no answer) given ``predictions`` (question id -> predicted text, "" for no
    answer). With unanswerable questions present, also ``has_answer_*`` / ``no_answer_*`` over each
    group (the v2.0 script's HasAns / NoAns)."""
    if not references:
        raise DataError("no questions to score")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise DataError(f"no prediction for {len(missing)} question(s), e.g. id {missing[0]!r}")
    groups: Dict[str, List[tuple[float, float]]] = {"all": [], "has_answer": [], "no_answer": []}
    for qid, golds in references.items():
        scores = question_scores(list(golds), predictions[qid])
        groups["all"].append(scores)
        groups["has_answer" if any(normalize_answer(g) for g in golds) else "no_answer"].append(scores)
    out = _means(groups["all"], "")
    if groups["no_answer"]:
        for name in ("has_answer", "no_answer"):
            out.update(_means(groups[name], name + "_"))
    return out


def _means(scores: List[tuple[float, float]], prefix: str) -> Dict[str, float]:
    if not scores:
        return {f"{prefix}exact_match": 0.0, f"{prefix}f1": 0.0}
    return {f"{prefix}exact_match": sum(s[0] for s in scores) / len(scores),
            f"{prefix}f1": sum(s[1] for s in scores) / len(scores)}


__all__ = ["answer_tokens", "exact_match", "normalize_answer", "question_scores", "squad_scores", "token_f1"]
