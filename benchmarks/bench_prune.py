"""One-shot pruning (``ddk-fast prune``'s work between loading and export) on a MiniLM-L6-shaped model:
the Fisher importance pass alone and the whole one-shot step (importance + mask search +
rearrangement + least-squares tuning), each on the compact path against the plain-PyTorch reference
path (the same computation with every unit computed and multiplied by its gate).

Calibration data: 256 synthetic examples of GLUE-pair length (64 tokens, every other one 3/4 full),
batches of 32 (8 importance batches); the full ``prune`` default is 2048 examples, eight times this.
Shape: L6 d384 H12 I1536, fp32 on CPU; quick mode L2 with 64 examples of 32 tokens.
Run: python -m pytest benchmarks/bench_prune.py --benchmark-min-rounds=3 -q
"""
import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.model import MaskedTransformer
from ddk_fast.model.config import TransformerConfig
from ddk_fast.search import CostModel
from ddk_fast.search.calibration import gate_gradients
from ddk_fast.pipelines.oneshot import one_shot

HIDDEN, HEADS, INTERMEDIATE = 384, 12, 1536


def _setup(device, quick):
    layers, examples, seq = (2, 64, 32) if quick else (6, 256, 64)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=30522, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS,
                               num_heads=[HEADS] * layers, intermediate_sizes=[INTERMEDIATE] * layers)
    model = MaskedTransformer(config).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    batches = []
    for start in range(0, examples, 32):
        ids = torch.randint(1000, 30000, (32, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[1::2, (3 * seq) // 4:] = 0
        labels = torch.randint(0, 2, (32,), generator=gen)
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    cost = CostModel(HIDDEN, HIDDEN // HEADS, [HEADS] * layers, [INTERMEDIATE] * layers, seq_len=seq)
    shape = f"L{layers} d{HIDDEN} H{HEADS} I{INTERMEDIATE}, {examples} examples x {seq} tokens"
    return model, batches, cost, shape


@pytest.mark.parametrize("provider", ("reference", "compact"))
def test_importance_pass(benchmark, device, is_quick, provider):
    model, batches, _, shape = _setup(device, is_quick)
    tag(benchmark, "fisher_importance", provider, "calibrate", None, shape)
    benchmark(lambda: gate_gradients(model, batches, path=provider))


@pytest.mark.parametrize("provider", ("reference", "compact"))
def test_one_shot_prune(benchmark, device, is_quick, provider):
    model, batches, cost, shape = _setup(device, is_quick)
    tag(benchmark, "oneshot_prune", provider, "prune", 0.5, shape)
    benchmark(lambda: one_shot(model, batches, cost, "params", 0.5, granularity=8, path=provider))
