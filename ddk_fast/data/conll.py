"""CoNLL-2003 layout files: one ``token ... tag`` line per word, a blank line between sentences.

The first column is the word and the last the tag (CoNLL-2003 has POS and chunk columns between them);
``-DOCSTART-`` lines and the blank lines around them are skipped. The file becomes a ``datasets``
table with a ``tokens`` and a ``ner_tags`` column, one row per sentence, so token classification reads
it through the same path as JSON/JSONL rows with those columns. Each row remembers the line its
sentence starts on, so an error about a sentence names the line to fix.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from ddk_fast.data.tasks import DataError

EXTENSIONS = (".conll",)
TOKENS_COLUMN, TAGS_COLUMN = "tokens", "ner_tags"


class SentenceRow(int):
    """A 1-based sentence number that reads as ``3 (line 12)`` in error messages."""

    line: int

    def __new__(cls, number: int, line: int):
        row = super().__new__(cls, number)
        row.line = line
        return row

    def __format__(self, spec) -> str:
        return f"{int(self)} (line {self.line})" if not spec else format(int(self), spec)

    __str__ = __repr__ = lambda self: self.__format__("")


def parse_conll(path: str) -> Tuple[List[List[str]], List[List[str]], List[SentenceRow]]:
    """(tokens, tags, rows) per sentence; a line without a tag column is a one-line error naming it."""
    sentences, tags, rows = [], [], []
    words, labels, start = [], [], 0

    def flush():
        if words:
            sentences.append(words.copy())
            tags.append(labels.copy())
            rows.append(SentenceRow(len(rows) + 1, start))
            words.clear()
            labels.clear()

    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                flush()
                continue
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            if len(fields) < 2:
                raise DataError(f"{path}, line {number}: expected 'token ... tag' (at least two columns separated "
                                f"by spaces or tabs), found {line.strip()!r}")
            if not words:
                start = number
            words.append(fields[0])
            labels.append(fields[-1])
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (expected 'token ... tag' lines, a blank line between sentences)")
    return sentences, tags, rows


def read_conll(path: str):
    """The file as a ``datasets.Dataset`` (``tokens``, ``ner_tags`` string lists) plus each row's number."""
    import datasets

    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    sentences, tags, rows = parse_conll(path)
    return datasets.Dataset.from_dict({TOKENS_COLUMN: sentences, TAGS_COLUMN: tags}), rows
