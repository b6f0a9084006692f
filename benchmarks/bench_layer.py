"""One full masked BERT layer (attention block + FFN block, each with its residual LayerNorm):
compact vs the plain-PyTorch reference, forward and forward+backward, at keep ratios
1.0 / 0.75 / 0.5 / 0.25 (that fraction of the heads *and* of the FFN channels kept, chosen at random).

The layer is the model's own ``ddk_fast.model.layers.MaskedLayer`` (what ``MaskedTransformer`` stacks),
so the numbers include everything a layer does between two hidden states: the gated Q/K/V and output
projections, attention with a GLUE-like padding mask (every other sequence 3/4 full), both LayerNorms,
the masked FFN and BERT's hidden dropout (train mode, p=0.1, in fwd+bwd; eval mode in fwd).
fwd+bwd takes gradients for the input, every weight and both gates (what the width search needs).

Shape: B32 S128 d384 H12 (head dim 32) I1536, fp32 on CPU (MiniLM-L12/L6 width); quick mode B4 S32.
Run: python -m pytest benchmarks/bench_layer.py --benchmark-min-rounds=3 -q
"""
import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.memory import peak_memory_bytes
from ddk_fast.model.config import TransformerConfig
from ddk_fast.model.layers import MaskedLayer

KEEPS = (1.0, 0.75, 0.5, 0.25)
MODES = ("fwd", "fwd+bwd")
HIDDEN, HEADS, INTERMEDIATE = 384, 12, 1536
TARGET_RATIO = 0.6  # goal: compact fwd+bwd at keep 0.5 in at most 0.6x the reference's time


def _batch_seq(quick: bool) -> tuple[int, int]:
    return (4, 32) if quick else (32, 128)


def _providers(device):
    return ("reference", "compact", "triton") if device.type == "cuda" else ("reference", "compact")


def _gate(size: int, keep: float, gen: torch.Generator) -> torch.Tensor:
    gate = torch.zeros(size)
    gate[torch.randperm(size, generator=gen)[: round(keep * size)]] = 1.0
    return gate


def _setup(device, quick, keep, mode):
    batch, seq = _batch_seq(quick)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=30522, hidden_size=HIDDEN, head_dim=HIDDEN // HEADS, num_heads=[HEADS],
                               intermediate_sizes=[INTERMEDIATE])
    layer = MaskedLayer(config, 0).to(device)
    layer.train(mode == "fwd+bwd")
    layer.requires_grad_(mode == "fwd+bwd")
    gen = torch.Generator().manual_seed(1)
    want_grad = mode == "fwd+bwd"
    x = torch.randn(batch, seq, HIDDEN, generator=gen).to(device).requires_grad_(want_grad)
    head_gate = _gate(HEADS, keep, gen).to(device).requires_grad_(want_grad)
    ffn_gate = _gate(INTERMEDIATE, keep, gen).to(device).requires_grad_(want_grad)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1::2, (3 * seq) // 4:] = 0
    mask = mask.to(device)
    grad_y = torch.randn(batch, seq, HIDDEN, generator=gen).to(device)
    leaves = [x, head_gate, ffn_gate, *layer.parameters()]
    return layer, x, head_gate, ffn_gate, mask, grad_y, leaves, f"B{batch} S{seq} d{HIDDEN} H{HEADS} I{INTERMEDIATE}"


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ("reference", "compact", "triton"))
def test_layer(benchmark, device, is_quick, provider, mode, keep):
    if provider not in _providers(device):
        pytest.skip(f"{provider} is timed on CUDA only")
    layer, x, head_gate, ffn_gate, mask, grad_y, leaves, shape = _setup(device, is_quick, keep, mode)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        return layer(x, mask, head_gate, ffn_gate, path=provider)[0]

    def fwd():
        with torch.no_grad():
            call()
        sync()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        call().backward(grad_y)
        sync()

    fn = fwd if mode == "fwd" else fwd_bwd
    fn()  # warm-up (allocator, Triton compile)
    goal = TARGET_RATIO if (provider, mode, keep) == ("compact", "fwd+bwd", 0.5) else None
    tag(benchmark, "bert_layer", provider, mode, keep, shape, peak_mem_bytes=peak_memory_bytes(fn, device),
        target_ratio=goal)
    benchmark(fn)
