"""What batching costs next to the step it feeds: is there anything for a data-loader worker to overlap?

Tokenisation happens once, before training (``encode_split``); each step then only draws a batch from
the resumable length-grouped sampler and pads it (``train_loader``). This suite times one epoch of that
loader per batch, and, on the same batches, one forward + backward of the 6-layer MiniLM-shaped masked
student on the compact path (the cheapest thing a training step does; a real search step adds the
teacher, the objective and the optimizers). ``extra_info["loader_share_of_step"]`` is the loader's time
per batch over the step's: when it is a fraction of a percent, a worker process would buy nothing and
would take a core from the step's intra-op threads, which is why the loaders use ``num_workers=0``.

Data: 1,600 MRPC train pairs of ``$DDK_GLUE_DIR`` (default /work/shared/data/glue), max 128 tokens,
batch 32 (50 batches); quick mode: 256 pairs, max 64 tokens, 2 layers. One thread.
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
_STEP_MS: dict = {}


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(train examples, max tokens, layers)."""
    return (256, 64, 2) if quick else (1600, 128, 6)


@pytest.fixture(scope="module")
def encoded(is_quick):
    from transformers import AutoTokenizer

    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.skip(f"MRPC not found under {GLUE_DIR} (set DDK_GLUE_DIR)")
    examples, max_len, _ = _sizes(is_quick)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir())
    spec = resolve_task("mrpc")
    return encode_split(load_split(spec, "train", GLUE_DIR, examples, 42), tokenizer, max_len)


def _epoch(loader):
    for _ in loader:
        pass


def test_student_step(benchmark, device, encoded, is_quick):
    """Forward + backward of the masked student on one batch of the same data (compact path)."""
    torch.set_num_threads(1)
    _, max_len, layers = _sizes(is_quick)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=VOCAB, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS,
                               num_heads=[HEADS] * layers, intermediate_sizes=[INTERMEDIATE] * layers)
    model = MaskedTransformer(config).to(device).train()
    loader = train_loader(encoded, BATCH, seed=42)
    batch = next(iter(loader))
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(ids, attention_mask=mask, path="compact")
        out.logits.float().square().mean().backward()

    tag(benchmark, "train_batching", "student fwd+bwd", "step", 1.0,
        f"L{layers} d{HIDDEN} H{HEADS} I{INTERMEDIATE}, B{BATCH} S{ids.shape[1]}")
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    _STEP_MS["step"] = benchmark.stats.stats.median * 1e3


def test_loader_epoch(benchmark, encoded, is_quick):
    torch.set_num_threads(1)
    loader = train_loader(encoded, BATCH, seed=42)
    batches = loader.batch_sampler.batches_per_epoch()
    examples, max_len, _ = _sizes(is_quick)
    tag(benchmark, "train_batching", "loader", "epoch", None, f"MRPC {examples} pairs, B{BATCH}, max {max_len}",
        batches=batches)
    benchmark.pedantic(_epoch, args=(loader,), rounds=5, warmup_rounds=1)
    per_batch_ms = benchmark.stats.stats.median * 1e3 / batches
    benchmark.extra_info["ms_per_batch"] = per_batch_ms
    if "step" in _STEP_MS:
        benchmark.extra_info["loader_share_of_step"] = per_batch_ms / _STEP_MS["step"]
