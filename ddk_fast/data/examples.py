"""The units loaders produce: one labelled text or text pair (``Example``), one extractive-QA question
on its context (``QAExample``), and seeded subsampling of them."""
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union


@dataclass(frozen=True, slots=True)
class Example:
    """One example. ``label`` is a class id (int), a score (float, regression) or a multi-hot tuple of
    floats (multi-label). Token classification: ``text_a`` is the tuple of words and ``label`` the list
    of their tag ids, one per word."""

    text_a: Union[str, Tuple[str, ...]]
    text_b: Optional[str]
    label: Union[int, float, Tuple[float, ...], List[int]]


@dataclass(frozen=True, slots=True)
class QAExample:
    """One extractive-QA question. ``answers``: the gold ``(text, answer_start)`` pairs, character offsets
    into ``context`` (the first one is what training aims at; the metric takes the best over all); empty
    for a question the context does not answer (SQuAD 2.0)."""

    id: str
    question: str
    context: str
    answers: Tuple[Tuple[str, int], ...]

    @property
    def answer_texts(self) -> Tuple[str, ...]:
        return tuple(text for text, _ in self.answers)


def subsample_indices(n: int, max_examples: Optional[int], seed: int) -> Optional[List[int]]:
    """Sorted indices of a seeded random subset of size ``max_examples`` (None: keep everything)."""
    if max_examples is None or max_examples >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), max_examples))
