"""One full masked BERT layer (attention block + FFN block, each with its residual LayerNorm):
compact vs the plain-PyTorch reference, forward and forward+backward, at keep ratios
1.0 / 0.75 / 0.5 / 0.25 (that fraction of the heads *and* of the FFN channels kept, chosen at random).

The layer is the model's own ``ddk_fast.model.layers.MaskedLayer`` (what ``MaskedTransformer`` stacks),
so the numbers include everything a layer does between two hidden states: the gated Q/K/V and output
projections, attention with a GLUE-like padding mask (every other sequence 3/4 full), both LayerNorms,
the masked FFN and BERT's hidden dropout (train mode, p=0.1, in fwd+bwd; eval mode in fwd).
fwd+bwd takes gradients for the input, every weight and both gates (what the width search needs).

Shape: B32 S128 d384 H12 (head dim 32) I1536, fp32 on CPU (MiniLM-L12/L6 width); quick mode B4 S32.

``bert_layer_vs_sgemm`` (CPU): the compact layer fwd+bwd at keep 1 against back-to-back square fp32
matmuls (torch.mm 1536^3, the machine's one-thread sgemm rate) timed in the same run. The goal is a
layer that runs at >= 70 % of that rate over its useful FLOPs (the GEMMs and attention matmuls of
forward and backward, ~45.9 GFLOP; SDPA's recomputation is not counted): the ratio
layer time / sgemm time is bounded by (layer FLOPs / sgemm FLOPs) / 0.7, judged at one thread only.

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
SGEMM_SIZE = 1536
SGEMM_FRACTION = 0.7  # goal: compact fwd+bwd at keep 1 at >= 70 % of the one-thread sgemm rate


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


def layer_flops(batch: int, seq: int) -> int:
    """Useful FLOPs of one layer fwd+bwd at keep 1: every GEMM of the forward (Q/K/V, output, FFN up
    and down, q k^T and p v) and its two backward GEMMs (input and weight / the other operand)."""
    tokens, head_dim = batch * seq, HIDDEN // HEADS
    projections = 2 * tokens * (HIDDEN * 3 * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE)
    attention = 2 * 2 * batch * HEADS * seq * seq * head_dim
    return 3 * (projections + attention)


def _sgemm_reps(flops: int) -> int:
    return max(1, round(flops / (2 * SGEMM_SIZE ** 3)))


@pytest.mark.parametrize("provider", ("compact", "sgemm"))
def test_layer_vs_sgemm(benchmark, device, is_quick, provider):
    if device.type != "cpu":
        pytest.skip("the sgemm-rate goal is about the CPU path")
    layer, x, head_gate, ffn_gate, mask, grad_y, leaves, shape = _setup(device, is_quick, 1.0, "fwd+bwd")
    batch, seq = _batch_seq(is_quick)
    flops = layer_flops(batch, seq)
    reps = _sgemm_reps(flops)
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(SGEMM_SIZE, SGEMM_SIZE, generator=gen) for _ in range(2))

    def sgemm():
        for _ in range(reps):
            torch.mm(a, b)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        layer(x, mask, head_gate, ffn_gate, path="compact")[0].backward(grad_y)

    fn = fwd_bwd if provider == "compact" else sgemm
    fn()
    one_thread = torch.get_num_threads() == 1
    goal = flops / (reps * 2 * SGEMM_SIZE ** 3) / SGEMM_FRACTION if provider == "compact" and one_thread else None
    tag(benchmark, "bert_layer_vs_sgemm", provider, "fwd+bwd", 1.0, shape, target_ratio=goal,
        layer_gflop=flops / 1e9, sgemm_gflop=reps * 2 * SGEMM_SIZE ** 3 / 1e9, threads=torch.get_num_threads())
    benchmark(fn)
