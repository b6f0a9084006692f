"""Extractive-QA features: question + context windows, the answer's token positions, and the offsets
that turn predicted positions back into context text.

A question and its context become ``[CLS] question [SEP] context [SEP]``, truncating the context only
(``truncation="only_second"``). A context that does not fit is cut into overlapping windows (BERT's
SQuAD "doc stride": consecutive windows share ``doc_stride`` context tokens), each window one feature
with its own label: the token positions of the answer's first and last character, or the ``[CLS]``
position twice when the answer is not (wholly) inside the window or the question has none -- what
``BertForQuestionAnswering`` is trained on. Each feature keeps its example and, per token, the
character span of the context it covers (-1 for question and special tokens), so post-processing
(``ddk_fast.data.qa_answers``) can read answers off any window.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ddk_fast.data.encoding import EncodedDataset, SpanPositions, pad_token_id_of
from ddk_fast.data.examples import QAExample
from ddk_fast.data.tasks import DataError

# consecutive windows share this share of max_length context tokens (transformers' run_qa: 128 of 384)
DOC_STRIDE_SHARE = 1 / 3
# a question keeps at most this share of max_length tokens (the rest of a longer one is cut), so every
# window has room for context
QUESTION_SHARE = 1 / 2
_CHUNK = 1024  # examples tokenised per tokenizer call (bounds the offsets' transient memory)


class QAFeatures(EncodedDataset):
    """Windows of tokenised question + context; ``labels[i]`` the answer's ``SpanPositions`` in window i.

    ``examples``: the ``QAExample``s; ``example_index[i]``: which one window i belongs to;
    ``offsets[i]``: int32 ``[T_i, 2]`` character span of each token in the context, -1 where the token
    is not context (question, special tokens); ``cls_index[i]``: the position of window i's ``[CLS]``
    (where "no answer" is read); ``doc_stride``: the windows' overlap in tokens.
    """

    keep_order = True  # answers are decoded by window position: evaluation must not reorder windows

    def __init__(self, input_ids, token_type_ids, labels, pad_token_id: int, examples: Sequence[QAExample],
                 example_index: Sequence[int], offsets: Sequence[np.ndarray], cls_index: Sequence[int],
                 doc_stride: int):
        super().__init__(input_ids, token_type_ids, labels, pad_token_id, False)
        if not (len(example_index) == len(offsets) == len(cls_index) == len(input_ids)):
            raise ValueError(f"{len(input_ids)} windows but {len(example_index)} example indices, "
                             f"{len(offsets)} offset rows and {len(cls_index)} [CLS] positions")
        self.examples = list(examples)
        self.example_index = list(example_index)
        self.offsets = list(offsets)
        self.cls_index = list(cls_index)
        self.doc_stride = int(doc_stride)

    def subset(self, indices: Sequence[int]) -> "QAFeatures":
        idx = list(indices)
        return QAFeatures([self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx],
                          [self.labels[i] for i in idx], self.pad_token_id, self.examples,
                          [self.example_index[i] for i in idx], [self.offsets[i] for i in idx],
                          [self.cls_index[i] for i in idx], self.doc_stride)

    @property
    def references(self) -> dict:
        """Question id -> its gold answer texts (empty: no answer), what the SQuAD metric scores against."""
        return {ex.id: list(ex.answer_texts) for ex in self.examples}


def default_doc_stride(max_length: int) -> int:
    return max(1, int(max_length * DOC_STRIDE_SHARE))


def encode_qa(examples: Sequence[QAExample], tokenizer, max_length: int = 384,
              doc_stride: Optional[int] = None) -> QAFeatures:
    """Tokenise ``QAExample``s into windows of at most ``max_length`` tokens (see the module docstring).

    ``doc_stride``: context tokens shared by consecutive windows (default ``max_length / 3``, at most
    what the shortest window leaves). Needs a fast tokenizer (character offsets per token)."""
    examples = list(examples)
    if not examples:
        raise DataError("encode_qa() got no examples")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"question answering needs a fast tokenizer (character offsets per token); "
                        f"{type(tokenizer).__name__} is not one")
    max_question = int(max_length * QUESTION_SHARE)
    room = max_length - max_question - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 2:
        raise DataError(f"max_length={max_length} leaves no room for the context beside the question; "
                        f"expected at least {max_length + 2 - room}")
    stride = min(default_doc_stride(max_length), room - 1) if doc_stride is None else doc_stride
    if not isinstance(stride, int) or not 0 <= stride < room:
        raise DataError(f"doc_stride={doc_stride!r}: expected an integer in [0, {room - 1}] (the windows of "
                        f"max_length={max_length} hold at least {room} context tokens)")
    wants_segments = "token_type_ids" in getattr(tokenizer, "model_input_names", ("token_type_ids",))
    ids, segments, labels, owners, offsets, cls_positions = [], [], [], [], [], []
    for first in range(0, len(examples), _CHUNK):
        chunk = examples[first:first + _CHUNK]
        questions = [_fit_question(ex.question, tokenizer, max_question) for ex in chunk]
        enc = tokenizer(questions, [ex.context for ex in chunk], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
                        return_attention_mask=False, return_token_type_ids=wants_segments)
        for i, window in enumerate(enc["input_ids"]):
            owner = first + enc["overflow_to_sample_mapping"][i]
            spans = context_offsets(enc["offset_mapping"][i], enc.sequence_ids(i))
            cls = window.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in window else 0
            answers = examples[owner].answers
            char_span = (answers[0][1], answers[0][1] + len(answers[0][0])) if answers else None
            ids.append(window)
            segments.append(enc["token_type_ids"][i] if wants_segments else [0] * len(window))
            labels.append(answer_positions(spans, char_span, cls))
            owners.append(owner)
            offsets.append(spans)
            cls_positions.append(cls)
    return QAFeatures(ids, segments, labels, pad_token_id_of(tokenizer), examples, owners, offsets, cls_positions,
                      stride)


def _fit_question(question: str, tokenizer, max_tokens: int) -> str:
    """The question without leading blanks (some SQuAD questions have many), cut after ``max_tokens`` tokens."""
    question = question.lstrip()
    pieces = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return question if len(pieces) <= max_tokens else question[:pieces[max_tokens - 1][1]]


def context_offsets(offset_mapping, sequence_ids) -> np.ndarray:
    """int32 ``[T, 2]`` character spans of the context tokens (sequence id 1), -1 for every other token."""
    out = np.full((len(offset_mapping), 2), -1, dtype=np.int32)
    for t, (span, seq) in enumerate(zip(offset_mapping, sequence_ids)):
        if seq == 1:
            out[t] = span
    return out


def answer_positions(offsets: np.ndarray, char_span: Optional[Tuple[int, int]], cls_index: int) -> SpanPositions:
    """Token positions of the first and last answer character in one window; ``cls_index`` twice when
    there is no answer (``char_span`` None) or it is not wholly inside the window's context."""
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if char_span is None or len(context) == 0:
        return SpanPositions(cls_index, cls_index)
    start_char, end_char = char_span
    if offsets[context[0], 0] > start_char or offsets[context[-1], 1] < end_char:
        return SpanPositions(cls_index, cls_index)
    starts, ends = offsets[context, 0], offsets[context, 1]
    start = context[np.flatnonzero(starts <= start_char)[-1]]  # the last token starting at or before it
    end = context[np.flatnonzero(ends >= end_char)[0]]  # the first token ending at or after it
    return SpanPositions(int(start), int(end))


def answer_text(example: QAExample, offsets: np.ndarray, start: int, end: int) -> str:
    """The context text from token ``start``'s first character to token ``end``'s last."""
    return example.context[int(offsets[start, 0]):int(offsets[end, 1])]


__all__ = ["QAFeatures", "answer_positions", "answer_text", "context_offsets", "default_doc_stride", "encode_qa"]
