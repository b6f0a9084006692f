"""Answers from start/end logits: the n best spans of every question over all of its windows.

A span of window w from token i to token j scores ``start[w, i] + end[w, j]`` (BERT's SQuAD decoding);
it must lie inside the context (both tokens are context tokens), end at or after its start and be
at most ``max_answer_tokens`` tokens long. Every valid span is scored (not only the top starts and
ends), so the best candidate is the exact maximum. A question's candidates are those of all its
windows, best first. "No answer" scores ``start[w, cls] + end[w, cls]``, the lowest over the
question's windows (the window most sure that the answer is elsewhere, as BERT's SQuAD 2.0 code
takes it); with ``allow_no_answer`` it is the prediction when it beats the best span.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ddk_fast.data.qa_encoding import QAFeatures, answer_text
from ddk_fast.data.tasks import DataError

N_BEST = 20
MAX_ANSWER_TOKENS = 30
_WINDOWS_PER_PASS = 256  # windows scored together: bounds the [windows, length, tokens] score tensor


@dataclass(frozen=True)
class Candidate:
    """One answer span: its text, score and where it is (window index, first and last token)."""

    text: str
    score: float
    window: int
    start: int
    end: int


@dataclass
class QuestionAnswers:
    """A question's candidates (best first, at most ``n_best``) and its no-answer score (None: no window)."""

    candidates: List[Candidate]
    null_score: Optional[float]

    def best(self, allow_no_answer: bool) -> str:
        """The predicted text: the best span, or "" (no answer) when allowed and it scores higher, or when
        no window has a valid span."""
        if not self.candidates:
            return ""
        top = self.candidates[0]
        if allow_no_answer and self.null_score is not None and self.null_score > top.score:
            return ""
        return top.text


def span_scores(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor,
                max_answer_tokens: int) -> torch.Tensor:
    """``[W, L, T]`` scores of the span of length ``l + 1`` starting at token ``t`` in each of W windows
    (``start``/``end`` ``[W, T]`` logits, ``context`` bool ``[W, T]``); -inf where a span leaves the
    context or the window."""
    w, t = start.shape
    length = min(max_answer_tokens, t)
    out = torch.full((w, length, t), float("-inf"), dtype=torch.float32)
    for d in range(length):
        valid = context[:, :t - d] & context[:, d:]
        out[:, d, :t - d] = torch.where(valid, start[:, :t - d] + end[:, d:], float("-inf"))
    return out


def answer_candidates(features: QAFeatures, logits: torch.Tensor, n_best: int = N_BEST,
                      max_answer_tokens: int = MAX_ANSWER_TOKENS) -> Dict[str, QuestionAnswers]:
    """Question id -> its ``QuestionAnswers``, from ``logits`` ``[W, T, 2]`` (start, end) of the W windows
    of ``features`` in their order (T may exceed a window's own length: padding is never context)."""
    if logits.dim() != 3 or logits.shape[-1] != 2 or logits.shape[0] != len(features):
        raise DataError(f"QA logits have shape {tuple(logits.shape)}; expected [{len(features)} windows, tokens, 2]")
    if n_best < 1 or max_answer_tokens < 1:
        raise DataError(f"n_best={n_best}, max_answer_tokens={max_answer_tokens}: expected positive integers")
    logits = logits.detach().float().cpu()
    out = {ex.id: QuestionAnswers([], None) for ex in features.examples}
    tokens = logits.shape[1]
    for first in range(0, len(features), _WINDOWS_PER_PASS):
        windows = range(first, min(first + _WINDOWS_PER_PASS, len(features)))
        context = torch.zeros(len(windows), tokens, dtype=torch.bool)
        for row, w in enumerate(windows):
            spans = features.offsets[w]
            context[row, :min(len(spans), tokens)] = torch.from_numpy(spans[:tokens, 0] >= 0)
        part = logits[first:first + len(windows)]
        scores = span_scores(part[..., 0], part[..., 1], context, max_answer_tokens).flatten(1)
        best, where = scores.topk(min(n_best, scores.shape[1]), dim=1)
        for row, w in enumerate(windows):
            example = features.examples[features.example_index[w]]
            answers = out[example.id]
            cls = features.cls_index[w]
            null = float(part[row, cls, 0] + part[row, cls, 1])
            answers.null_score = null if answers.null_score is None else min(answers.null_score, null)
            for score, flat in zip(best[row].tolist(), where[row].tolist()):
                if score == float("-inf"):
                    break
                length, i = divmod(flat, tokens)
                text = answer_text(example, features.offsets[w], i, i + length)
                answers.candidates.append(Candidate(text, score, w, i, i + length))
    for answers in out.values():
        answers.candidates.sort(key=lambda c: -c.score)
        del answers.candidates[n_best:]
    return out


def best_answers(features: QAFeatures, logits: torch.Tensor, allow_no_answer: bool = False, n_best: int = N_BEST,
                 max_answer_tokens: int = MAX_ANSWER_TOKENS) -> Dict[str, str]:
    """Question id -> predicted answer text ("" = no answer), what the SQuAD metric scores."""
    return {qid: answers.best(allow_no_answer)
            for qid, answers in answer_candidates(features, logits, n_best, max_answer_tokens).items()}


__all__ = ["Candidate", "MAX_ANSWER_TOKENS", "N_BEST", "QuestionAnswers", "answer_candidates", "best_answers",
           "span_scores"]
