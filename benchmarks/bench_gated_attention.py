"""gated_attention and masked_self_attention: fast paths vs the plain-PyTorch reference, forward and
forward+backward, at head keep ratios 1.0 / 0.75 / 0.5 / 0.25.

CPU: compact vs reference, fp32, BERT-MiniLM shape (B32 H12 S128 D32; the block with d=384).
CUDA: triton vs compact vs reference vs torch SDPA over every head ("sdpa", no pruning), bf16,
B32 H12 S128 D64 (the block with d=768).
Inputs carry a padding mask (every other sequence 3/4 full), as GLUE batches do.
Cases sharing subject, mode and keep form one group, so the ratio to "reference" reads off one table
(`ddk-fast benchmark` prints it).
Run: python -m pytest benchmarks/bench_gated_attention.py --benchmark-min-rounds=3 -q
"""
import pytest
import torch
import torch.nn.functional as F

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.memory import peak_memory_bytes
from ddk_fast.ops.gated_attention import gated_attention, masked_self_attention

KEEPS = (1.0, 0.75, 0.5, 0.25)
MODES = ("fwd", "fwd+bwd")
HEADS = 12


def _config(device, quick):
    """(batch, seq, head_dim, dtype) for the device."""
    if device.type == "cuda":
        return (8 if quick else 32), 128, 64, torch.bfloat16
    return (4 if quick else 32), (64 if quick else 128), 32, torch.float32


def _providers(device, with_sdpa):
    if device.type != "cuda":
        return ("reference", "compact")
    return ("reference", "compact", "triton") + (("sdpa",) if with_sdpa else ())


def _gate(keep, gen, device, want_grad):
    gate = torch.zeros(HEADS)
    kept = torch.randperm(HEADS, generator=gen)[: round(keep * HEADS)]
    gate[kept] = 0.5 + torch.rand(len(kept), generator=gen)
    return gate.to(device).requires_grad_(want_grad)


def _mask(batch, seq, device):
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1::2, (3 * seq) // 4:] = 0
    return mask.to(device)


def _sync(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed(fn_fwd, leaves, grad_out, mode, device):
    sync = _sync(device)

    def fwd():
        with torch.no_grad():
            fn_fwd()
        sync()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn_fwd().backward(grad_out)
        sync()

    return fwd if mode == "fwd" else fwd_bwd


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ("reference", "compact", "triton", "sdpa"))
def test_gated_attention(benchmark, device, is_quick, provider, mode, keep):
    if provider not in _providers(device, with_sdpa=True):
        pytest.skip(f"{provider} is timed on CUDA only")
    batch, seq, head_dim, dtype = _config(device, is_quick)
    gen = torch.Generator().manual_seed(0)
    want_grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(batch, HEADS, seq, head_dim, generator=gen).to(device, dtype).requires_grad_(want_grad)
               for _ in range(3))
    gate = _gate(keep, gen, device, want_grad)
    mask = _mask(batch, seq, device)
    grad_out = torch.randn(batch, HEADS, seq, head_dim, generator=gen).to(device, dtype)

    if provider == "sdpa":  # every head computed, gate multiplied: what dense attention costs
        key_ok = (mask != 0)[:, None, None, :]

        def call():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok)
            return out * gate.to(dtype)[:, None, None]
    else:
        def call():
            return gated_attention(q, k, v, gate, attention_mask=mask, path=provider)

    fn = _timed(call, (q, k, v, gate), grad_out, mode, device)
    fn()  # warm-up (Triton compile, allocator)
    shape = f"B{batch} H{HEADS} S{seq} D{head_dim} {str(dtype).replace('torch.', '')}"
    tag(benchmark, "gated_attention", provider, mode, keep, shape, peak_mem_bytes=peak_memory_bytes(fn, device),
        path=provider)
    benchmark(fn)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ("reference", "compact", "triton"))
def test_masked_self_attention(benchmark, device, is_quick, provider, mode, keep):
    if provider not in _providers(device, with_sdpa=False):
        pytest.skip(f"{provider} is timed on CUDA only")
    batch, seq, head_dim, dtype = _config(device, is_quick)
    d = HEADS * head_dim
    gen = torch.Generator().manual_seed(0)
    want_grad = mode == "fwd+bwd"

    def leaf(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device, dtype).requires_grad_(want_grad)

    x = leaf(batch, seq, d)
    weights = []
    for _ in range(3):
        weights += [leaf(d, d, scale=d ** -0.5), leaf(d, scale=0.1)]
    weights += [leaf(d, d, scale=d ** -0.5), leaf(d, scale=0.1)]
    gate = _gate(keep, gen, device, want_grad)
    mask = _mask(batch, seq, device)
    grad_out = torch.randn(batch, seq, d, generator=gen).to(device, dtype)

    def call():
        return masked_self_attention(x, *weights, gate, HEADS, attention_mask=mask, path=provider).out

    fn = _timed(call, [x, gate] + weights, grad_out, mode, device)
    fn()
    shape = f"B{batch} S{seq} d{d} H{HEADS} {str(dtype).replace('torch.', '')}"
    tag(benchmark, "masked_self_attention", provider, mode, keep, shape,
        peak_mem_bytes=peak_memory_bytes(fn, device), path=provider)
    benchmark(fn)
