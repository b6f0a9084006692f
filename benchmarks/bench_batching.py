"""What batching costs next to the step it feeds: is there anything for a data-loader worker to overlap?

Tokenisation happens once, before training (``encode_split``); each step then only draws a batch from
the resumable length-grouped sampler and pads it (``train_loader``). This suite times, per batch, drawing
one batch from a fresh pass of that loader ("loader"), and, on a batch of the same data, one forward +
backward of the 6-layer MiniLM-shaped masked student on the compact path ("student step", the
baseline: the cheapest thing a training step does; a real search step adds the teacher, the objective
and the optimizers). The ratio is the loader's share of a step: when it is a fraction of a percent, a
worker process would buy nothing and would take a core from the step's intra-op threads, which is why
the loaders use ``num_workers=0``.

Data: 1,600 MRPC train pairs of ``$DDK_GLUE_DIR`` (default /work/shared/data/glue), max 128 tokens,
batch 32; quick mode: 256 pairs, max 64 tokens, 2 layers. One thread.
Run: python -m pytest benchmarks/bench_batching.py -q
"""
import os

import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.runs.batching import train_loader
from ddk_fast.runs.config import packaged_model_dir
from ddk_fast.runs.evaluation import encode_split, load_split, resolve_task

GLUE_DIR = os.environ.get("DDK_GLUE_DIR", "/work/shared/data/glue")
HIDDEN, HEADS, INTERMEDIATE, VOCAB = 384, 12, 1536, 30522
BATCH = 32


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(train examples, max tokens, layers)."""
    return (256, 64, 2) if quick else (1600, 128, 6)


def _shape(quick: bool) -> str:
    examples, max_len, _ = _sizes(quick)
    return f"MRPC {examples} pairs, B{BATCH}, max {max_len} tokens"


@pytest.fixture(scope="module")
def encoded(is_quick):
    from transformers import AutoTokenizer

    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.skip(f"MRPC not found under {GLUE_DIR} (set DDK_GLUE_DIR)")
    examples, max_len, _ = _sizes(is_quick)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir())
    return encode_split(load_split(resolve_task("mrpc"), "train", GLUE_DIR, examples, 42), tokenizer, max_len)


def test_student_step(benchmark, device, encoded, is_quick):
    """Forward + backward of the masked student on one batch of the data (compact path)."""
    torch.set_num_threads(1)
    layers = _sizes(is_quick)[2]
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=VOCAB, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS,
                               num_heads=[HEADS] * layers, intermediate_sizes=[INTERMEDIATE] * layers)
    model = MaskedTransformer(config).to(device).train()
    batch = next(iter(train_loader(encoded, BATCH, seed=42)))
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def step():
        model.zero_grad(set_to_none=True)
        model(ids, attention_mask=mask, path="compact").logits.float().square().mean().backward()

    tag(benchmark, "train_batching", "student step", "per batch", None, _shape(is_quick),
        model=f"L{layers} d{HIDDEN} H{HEADS} I{INTERMEDIATE}, S{ids.shape[1]}")
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


def test_loader_batch(benchmark, encoded, is_quick):
    """One batch drawn from a fresh pass of the training loader (sampling, gathering, padding)."""
    torch.set_num_threads(1)
    loader = train_loader(encoded, BATCH, seed=42)
    tag(benchmark, "train_batching", "loader", "per batch", None, _shape(is_quick))
    benchmark.pedantic(next, setup=lambda: ((iter(loader),), {}), rounds=20, warmup_rounds=2)
