"""masked_ffn: compact / triton paths vs the plain-PyTorch reference, forward and forward+backward,
at FFN keep ratios 1.0 / 0.75 / 0.5 / 0.25 on a BERT-layer shape (B32 S128 d384 I1536, fp32).

Cases sharing mode and keep form one group, so the ratio to "reference" reads off one table
(`ddk-fast benchmark` prints it). Triton cases run only on CUDA.
Run: python -m pytest benchmarks/bench_masked_ffn.py --benchmark-min-rounds=3 -q
"""
import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.memory import peak_memory_bytes
from ddk_fast.ops.masked_ffn import masked_ffn

KEEPS = (1.0, 0.75, 0.5, 0.25)
MODES = ("fwd", "fwd+bwd")
TARGET_RATIO = 0.6  # goal: compact fwd+bwd at keep 0.5 in at most 0.6x the reference's time
PROVIDERS = ("reference", "compact", "triton")


def _shape(quick: bool):
    return (4, 64, 384, 1536) if quick else (32, 128, 384, 1536)


def _setup(device, quick, keep, mode):
    """(fn, shape string): one call of the op in ``mode`` on fresh-leaf inputs with the given keep."""
    batch, seq, d, n_ch = _shape(quick)
    gen = torch.Generator().manual_seed(0)
    want_grad = mode == "fwd+bwd"

    def leaf(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device).requires_grad_(want_grad)

    x = leaf(batch, seq, d)
    w_in, b_in = leaf(n_ch, d, scale=d ** -0.5), leaf(n_ch)
    w_out, b_out = leaf(d, n_ch, scale=n_ch ** -0.5), leaf(d)
    gate = torch.zeros(n_ch)
    gate[torch.randperm(n_ch, generator=gen)[: round(keep * n_ch)]] = 1.0
    gate = gate.to(device).requires_grad_(want_grad)
    grad_y = torch.randn(batch, seq, d, generator=gen).to(device)
    leaves = (x, w_in, b_in, w_out, b_out, gate)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return leaves, grad_y, sync, f"B{batch} S{seq} d{d} I{n_ch}"


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_masked_ffn(benchmark, device, is_quick, provider, mode, keep):
    if provider == "triton" and device.type != "cuda":
        pytest.skip("triton cases need CUDA")
    leaves, grad_y, sync, shape = _setup(device, is_quick, keep, mode)

    def fwd():
        with torch.no_grad():
            masked_ffn(*leaves, activation="gelu", path=provider)
        sync()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        masked_ffn(*leaves, activation="gelu", path=provider).backward(grad_y)
        sync()

    fn = fwd if mode == "fwd" else fwd_bwd
    fn()  # warm-up (Triton compile / autotune, allocator)
    goal = TARGET_RATIO if (provider, mode, keep) == ("compact", "fwd+bwd", 0.5) else None
    tag(benchmark, "masked_ffn", provider, mode, keep, shape, peak_mem_bytes=peak_memory_bytes(fn, device),
        target_ratio=goal)
    benchmark(fn)
