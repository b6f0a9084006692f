"""A small GPT-2 teacher trained from scratch on a text file, for experiments where no pretrained GPT-2
can be downloaded: ``ddk-fast pretrain-lm --train-file F --output DIR``.

It writes a stock transformers folder (``GPT2LMHeadModel`` safetensors + a byte-level BPE tokenizer
trained on the same text), which is exactly what ``ddk-fast compress --task lm --teacher DIR`` reads;
nothing here is specific to ddk_fast's engine.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ddk_fast._io import atomic_directory, atomic_write_json, output_dir_state
from ddk_fast.data import DataError, load_text_lm
from ddk_fast.distill.objectives import next_token_loss
from ddk_fast.errors import UserError
from ddk_fast.model.gpt2 import MaskedGPT2
from ddk_fast.runs import shared_options as shared
from ddk_fast.runs.evaluation import perplexity
from ddk_fast.runs.options import option

EOS = "<|endoftext|>"


@dataclass
class PretrainLMConfig:
    """``ddk-fast pretrain-lm``: the text, the size of the GPT-2 and its schedule (``pretrain_gpt2``'s defaults)."""

    train_file: str = option("", group="task", required=True, help="plain-text training file")
    eval_file: Optional[str] = option(None, group="task", help="plain-text file whose perplexity is reported")
    output: str = option("", group="run", required=True, help="folder for the GPT-2 teacher and its tokenizer")
    vocab_size: int = option(512, group="shape", help="byte-level BPE vocabulary size (at least 258)")
    n_layer: int = option(4, group="shape", help="transformer layers")
    n_embd: int = option(128, group="shape", help="hidden size")
    n_head: int = option(4, group="shape", help="attention heads")
    block_size: int = option(64, group="train", help="tokens per training block")
    steps: int = option(1000, group="train", help="optimizer steps")
    batch_size: int = shared.batch_size(16, help="training batch size")
    lr: float = shared.lr(1e-3, help="peak learning rate (warmup, then cosine decay)")
    seed: int = shared.seed(0)
    max_blocks: Optional[int] = option(None, group="train", help="train on at most this many blocks")
    overwrite: bool = shared.overwrite("replace an existing --output")


def train_tokenizer(text_file: str, vocab_size: int = PretrainLMConfig.vocab_size):
    """Byte-level BPE on ``text_file`` (GPT-2's scheme, a small vocabulary) as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise UserError(f"--vocab-size {vocab_size}: expected at least 258 (256 bytes + end of text + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([text_file], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


_D = PretrainLMConfig  # the defaults


def pretrain_gpt2(train_file: str, output: str, vocab_size: int = _D.vocab_size, n_layer: int = _D.n_layer,
                  n_embd: int = _D.n_embd, n_head: int = _D.n_head, block_size: int = _D.block_size,
                  steps: int = _D.steps, batch_size: int = _D.batch_size, lr: float = _D.lr, seed: int = _D.seed,
                  max_blocks: Optional[int] = None, eval_file: Optional[str] = None, overwrite: bool = False,
                  log=print) -> dict:
    """Tokenizer + GPT2LMHeadModel trained ``steps`` steps with AdamW (warmup + cosine) -> ``output``."""
    from transformers import GPT2Config, GPT2LMHeadModel


    out = os.path.abspath(output)
    if output_dir_state(out) == "nonempty" and not overwrite:
        raise UserError(f"--output {out!r} exists and is not empty; pass --overwrite to replace it")
    if not os.path.isfile(train_file):
        raise UserError(f"--train-file {train_file!r}: no such file")
    t0 = time.time()
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(train_file, vocab_size)
    try:
        blocks = load_text_lm(train_file, tokenizer, block_size, max_blocks=max_blocks)
    except DataError as exc:
        raise UserError(str(exc)) from None
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(block_size, 64), n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) /
                                                                              max(1, steps - warmup))))
    g = torch.Generator().manual_seed(seed)
    losses = []
    order, pos = torch.randperm(blocks.shape[0], generator=g), 0
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(blocks.shape[0], generator=g), 0
        ids = blocks[order[pos:pos + batch_size]]
        pos += batch_size
        loss = next_token_loss(model(ids).logits, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"pretrain step {step + 1}/{steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    result = {"steps": steps, "train_blocks": int(blocks.shape[0]), "final_train_loss": sum(losses[-20:]) / 20
              if len(losses) >= 20 else losses[-1], "params": sum(p.numel() for p in model.parameters()),
              "vocab_size": len(tokenizer), "wall_time_s": None}
    if eval_file:
        dev = load_text_lm(eval_file, tokenizer, block_size)
        result["eval"] = perplexity(MaskedGPT2.from_pretrained(model), dev, 32, torch.device("cpu"))
    result["wall_time_s"] = round(time.time() - t0, 1)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(os.path.join(tmp, "pretrain.json"), result)
    return dict(result, output=out)


__all__ = ["PretrainLMConfig", "pretrain_gpt2", "train_tokenizer"]
