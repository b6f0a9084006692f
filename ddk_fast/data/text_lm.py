"""Plain-text data for causal-LM distillation: one token stream cut into equal blocks."""
import os
from typing import Optional

import torch

from ddk_fast.data.tasks import DataError


def load_text_lm(path: str, tokenizer, block_size: int, max_blocks: Optional[int] = None) -> torch.Tensor:
    """Token blocks [n_blocks, block_size] (int64) from a UTF-8 text file.

    Each non-empty line is tokenised without special tokens and followed by the tokenizer's EOS id
    (SEP for BERT-style tokenizers) so documents stay separated; the stream is cut into blocks and the
    tail shorter than a block is dropped. ``max_blocks`` keeps the first blocks only.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise DataError(f"block_size={block_size!r}; expected an int >= 2")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
        raise DataError(f"max_blocks={max_blocks!r}; expected a positive int or None")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: file is empty (no non-blank lines)")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    needed = None if max_blocks is None else max_blocks * block_size
    stream = []
    chunk = 1000  # tokenise in chunks so max_blocks stops early on big files
    for start in range(0, len(lines), chunk):
        for ids in tokenizer(lines[start:start + chunk], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if separator is not None:
                stream.append(separator)
        if needed is not None and len(stream) >= needed:
            break
    n_blocks = len(stream) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        raise DataError(f"{path}: only {len(stream)} tokens, fewer than one block of block_size={block_size}")
    return torch.tensor(stream[:n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
