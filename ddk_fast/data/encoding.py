"""Tokenise examples once, keep them unpadded, and pad each batch only to its own longest row.

Padding to the batch's longest sequence instead of ``max_length`` is most of the CPU-time win on GLUE:
SST-2 sentences average ~13 tokens against a usual max_length of 128.
"""
import json
from typing import Iterator, List, NamedTuple, Optional, Sequence

import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from ddk_fast.data.tasks import DataError
from ddk_fast.ops.label_losses import IGNORE_INDEX  # word pieces no loss or metric looks at

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class SpanPositions(NamedTuple):
    """An extractive-QA window's label: the token positions of the answer's first and last character
    (both the ``[CLS]`` position when the window holds no answer). Batched as a ``[B, 2]`` int64 row."""

    start: int
    end: int


class EncodedDataset(Dataset):
    """Tokenised, unpadded examples; ``[i]`` is a dict of python lists plus the label.

    ``lengths[i]`` is the token count of example i (for length bucketing), ``pad_token_id`` the id
    ``collate`` pads ``input_ids`` with, ``is_regression`` tells whether labels are float scores.
    """

    def __init__(self, input_ids: List[List[int]], token_type_ids: List[List[int]], labels: Sequence,
                 pad_token_id: int, is_regression: bool):
        if not (len(input_ids) == len(token_type_ids) == len(labels)):
            raise ValueError(f"input_ids, token_type_ids and labels differ in length: "
                             f"{len(input_ids)}, {len(token_type_ids)}, {len(labels)}")
        self.input_ids = input_ids
        self.token_type_ids = token_type_ids
        self.labels = list(labels)
        self.pad_token_id = int(pad_token_id)
        self.is_regression = bool(is_regression)
        self.lengths = [len(ids) for ids in input_ids]

    def __len__(self):
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> "EncodedDataset":
        """The examples at ``indices`` (in that order) as a dataset of their own."""
        idx = list(indices)
        return EncodedDataset([self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx],
                              [self.labels[i] for i in idx], self.pad_token_id, self.is_regression)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "token_type_ids": self.token_type_ids[index],
                "labels": self.labels[index]}


def encode(examples, tokenizer, max_length: int = 128) -> EncodedDataset:
    """Tokenise ``Example``s (single sentences or pairs) with truncation 'longest_first'.

    ``tokenizer`` is a transformers tokenizer (fast ones are much quicker). Every example must have
    ``text_b`` (pair task) or none may. Tokenizers without segment ids (RoBERTa, GPT-2) get all-zero
    ``token_type_ids``.
    """
    examples = list(examples)
    if not examples:
        raise DataError("encode() got no examples")
    if not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length={max_length!r}; expected an int >= 2")
    if isinstance(examples[0].text_a, (list, tuple)):
        return encode_words(examples, tokenizer, max_length)
    n_pairs = sum(ex.text_b is not None for ex in examples)
    if n_pairs not in (0, len(examples)):
        raise DataError(f"encode() got a mix of pairs and single sentences ({n_pairs} of {len(examples)} have "
                        f"text_b); expected one kind")
    labels = [ex.label for ex in examples]
    is_regression = any(isinstance(label, float) for label in labels)
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b for ex in examples] if n_pairs else None
    wants_segments = "token_type_ids" in getattr(tokenizer, "model_input_names", ("token_type_ids",))
    encoded = tokenizer(texts_a, texts_b, truncation="longest_first", max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=wants_segments)
    input_ids = encoded["input_ids"]
    if wants_segments:
        token_type_ids = encoded["token_type_ids"]
    else:
        token_type_ids = [[0] * len(ids) for ids in input_ids]
    return EncodedDataset(input_ids, token_type_ids, [float(x) for x in labels] if is_regression else labels,
                          pad_token_id_of(tokenizer), is_regression)


def encode_words(examples, tokenizer, max_length: int = 128) -> EncodedDataset:
    """Token classification: tokenise pre-split words; each word's tag goes on its first word piece,
    the other pieces and the special tokens get ``IGNORE_INDEX`` (as BertForTokenClassification is
    trained in transformers' examples). Words cut off by ``max_length`` are not scored.

    Needs a fast tokenizer (its ``word_ids`` map pieces to words); a byte-level BPE one must add a
    space before each word (``needs_prefix_space``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"token classification needs a fast tokenizer (word ids per piece); "
                        f"{type(tokenizer).__name__} is not one")
    if needs_prefix_space(tokenizer):
        raise DataError(f"{type(tokenizer).__name__} is a byte-level BPE tokenizer without add_prefix_space: it "
                        f"splits pre-split words unlike running text; load it with "
                        f"AutoTokenizer.from_pretrained(path, add_prefix_space=True)")
    wants_segments = "token_type_ids" in getattr(tokenizer, "model_input_names", ("token_type_ids",))
    encoded = tokenizer([list(ex.text_a) for ex in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length, padding=False, return_attention_mask=False,
                        return_token_type_ids=wants_segments)
    labels = [align_labels(encoded.word_ids(i), ex.label) for i, ex in enumerate(examples)]
    input_ids = encoded["input_ids"]
    token_type_ids = encoded["token_type_ids"] if wants_segments else [[0] * len(ids) for ids in input_ids]
    return EncodedDataset(input_ids, token_type_ids, labels, pad_token_id_of(tokenizer), False)


def needs_prefix_space(tokenizer) -> bool:
    """True for a byte-level BPE tokenizer (RoBERTa, GPT-2 style) that adds no space before each word.

    Why it matters: such a tokenizer marks a word that follows a space with the piece prefix ``Ġ``, and
    the model learnt words that way. A word handed over alone has no space before it, so without
    ``add_prefix_space`` "Paris" in a word list becomes other pieces than "Paris" in a sentence. The
    test reads the backend pre-tokenizer (a ``ByteLevel`` step, alone or inside a ``Sequence``), not the
    class or model name, so any tokenizer built on that scheme is recognised.
    """
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre_tokenizer is None:
        return False
    try:
        state = json.loads(pre_tokenizer.__getstate__())
    except (AttributeError, TypeError, ValueError):  # a pre-tokenizer that does not serialise: not byte-level
        return False
    return any(not step.get("add_prefix_space", False) for step in _byte_level_steps(state))


def with_prefix_space(tokenizer):
    """``tokenizer`` with every ``ByteLevel`` step of its backend pre-tokenizer set to add the space.

    For fast tokenizers that ignore ``add_prefix_space=True`` at load time (a plain
    ``PreTrainedTokenizerFast`` read from a ``tokenizer.json``): the setting lives in the backend's
    serialised pre-tokenizer, so it is set there and the backend rebuilt from it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    state = json.loads(backend.to_str())
    for step in _byte_level_steps(state.get("pre_tokenizer") or {}):
        step["add_prefix_space"] = True
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    if hasattr(tokenizer, "add_prefix_space"):
        tokenizer.add_prefix_space = True
    return tokenizer


def _byte_level_steps(state: dict) -> Iterator[dict]:
    """The ``ByteLevel`` steps of a serialised pre-tokenizer, looking inside ``Sequence`` steps."""
    if state.get("type") == "ByteLevel":
        yield state
    for step in state.get("pretokenizers") or ():
        yield from _byte_level_steps(step)


def align_labels(word_ids: Sequence[Optional[int]], word_labels: Sequence[int]) -> List[int]:
    """Per-piece labels: the word's label on its first piece, ``IGNORE_INDEX`` elsewhere."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE_INDEX if word is None or word == previous else int(word_labels[word]))
        previous = word
    return out


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad id; GPT-2 has none, so its EOS id pads (the attention mask hides it)."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(features, pad_token_id: int = 0, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Stack features from ``EncodedDataset`` into right-padded tensors.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` ([B, T] int64, T = longest row,
    rounded up to ``pad_to_multiple_of`` if given) and ``labels`` ([B] int64 class ids, [B] float32 scores,
    [B, C] float32 multi-hot rows, [B, T] int64 per-piece tags padded with ``IGNORE_INDEX``, or [B, 2] int64
    answer start/end positions of QA windows).
    """
    if not features:
        raise DataError("collate() got an empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids, mask, segments = [], [], []
    for f in features:
        n_pad = longest - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_token_id] * n_pad)
        mask.append([1] * len(f["input_ids"]) + [0] * n_pad)
        segments.append(f["token_type_ids"] + [0] * n_pad)
    labels = [f["labels"] for f in features]
    if isinstance(labels[0], list):  # token classification: one label per piece, padding not scored
        labels = [row + [IGNORE_INDEX] * (longest - len(row)) for row in labels]
    # float scores (regression) and multi-hot rows (multi-label) are float32; class ids and QA positions int64
    span = isinstance(labels[0], SpanPositions)
    label_dtype = torch.float32 if isinstance(labels[0], (float, tuple)) and not span else torch.long
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long),
            "token_type_ids": torch.tensor(segments, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=label_dtype)}
