"""Checks that need a CUDA device (``pytest -m gpu``; scripts/gpu_check.sh runs them): the compiled
Triton kernels against the plain-PyTorch references at the shapes and dtypes training uses, the
CUDA extension, torch.compile over the custom ops, and no host sync inside a search step.

On a machine without a GPU every test here is skipped; the CPU suite covers the same code in the
Triton interpreter (tests/test_gated_attention.py, test_masked_ffn.py, test_masked_linear.py).
"""
import os
import sys
import warnings

import pytest
import torch

from ddk_fast import _ext
from ddk_fast.kernels import configs
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.ops import distill_losses as D
from ddk_fast.ops.gated_attention import gated_attention, masked_self_attention
from ddk_fast.ops.masked_ffn import masked_ffn
from ddk_fast.ops.masked_linear import linear_active_in, linear_active_out

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TOL = {torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=5e-3, atol=5e-3),
       torch.float32: dict(rtol=1e-4, atol=1e-4)}


def _grads(fn, leaves, seed=0):
    out = fn(*leaves)
    torch.manual_seed(seed)
    dout = torch.randn_like(out)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _close(got, want, dtype):
    scale = max(float(want.float().abs().max()), 1.0)
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol["rtol"], atol=tol["atol"] * scale)


# Every tile of configs.ATTENTION_TILES for bf16 and fp32 (one per head-size bucket), fp16 at BERT's head
# size; each case compiles four kernels, so the grid stays small (the AOT check covers the rest).
ATTENTION_CASES = ([(torch.bfloat16, d, True, c) for d in (64, 128, 256) for c in (False, True)]
                   + [(torch.float32, d, True, False) for d in (64, 128, 256)] + [(torch.float16, 64, True, False),
                                                                                  (torch.bfloat16, 64, False, False)])


@pytest.mark.parametrize("dtype,head_dim,masked,causal", ATTENTION_CASES)
def test_attention_kernels_match_reference(dtype, head_dim, masked, causal):
    """The compiled tiles run and match the reference, forward and backward."""
    torch.manual_seed(0)
    B, H, S = 3, 4, 200  # S not a multiple of any block: the tails are exercised
    q, k, v = (torch.randn(B, H, S, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    gate = torch.tensor([1.0, 0.0, 0.5, 1.5], device="cuda")
    mask = None
    if masked:
        mask = torch.ones(B, S, dtype=torch.long, device="cuda")
        mask[1, 150:] = 0
        mask[2, 10:] = 0
    ref = _grads(lambda *t: gated_attention(*t, attention_mask=mask, causal=causal, path="reference"),
                 _leaves(q.float(), k.float(), v.float(), gate))
    got = _grads(lambda *t: gated_attention(*t, attention_mask=mask, causal=causal, path="triton"),
                 _leaves(q, k, v, gate))
    for a, b in zip(got, ref):
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("keep", [0.25, 1.0])
def test_ffn_and_linear_kernels_match_reference(dtype, keep):
    torch.manual_seed(1)
    M, d, n_ch = 1008, 768, 3072  # a multiple of 16 (the benchmark's specialisation), not of the blocks

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", dtype=dtype) * scale

    x = randn(M, d)
    w_in, b_in = randn(n_ch, d, scale=d ** -0.5), randn(n_ch)
    w_out, b_out = randn(d, n_ch, scale=n_ch ** -0.5), randn(d)
    gate = (torch.rand(n_ch, device="cuda") < keep).float()
    leaves = (x, w_in, b_in, w_out, b_out, gate)
    ref = _grads(lambda *t: masked_ffn(*t, path="reference"), _leaves(*(t.float() for t in leaves)))
    got = _grads(lambda *t: masked_ffn(*t, path="triton"), _leaves(*leaves))
    for a, b in zip(got, ref):
        _close(a, b, dtype)
    active = torch.nonzero(gate).flatten()
    for op in (linear_active_out, linear_active_in):
        w = w_in if op is linear_active_out else w_out
        inp = x if op is linear_active_out else torch.randn(M, active.numel(), device="cuda", dtype=dtype)
        bias = b_in if op is linear_active_out else b_out
        ref = _grads(lambda a, b, c: op(a, b, c, active, path="reference"),
                     _leaves(inp.float(), w.float(), bias.float()))
        got = _grads(lambda a, b, c: op(a, b, c, active, path="triton"), _leaves(inp, w, bias))
        for a, b in zip(got, ref):
            _close(a, b, dtype)


def test_model_triton_path_matches_compact_path():
    torch.manual_seed(2)
    cfg = TransformerConfig(vocab_size=1000, hidden_size=256, head_dim=64, num_heads=[4, 4],
                            intermediate_sizes=[512, 512], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            classifier_dropout=0.0)
    model = MaskedTransformer(cfg).cuda()
    ids = torch.randint(1, 1000, (4, 77), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0
    heads = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]], device="cuda")
    ffn = (torch.rand(2, 512, device="cuda") < 0.5).float()
    units = model.active_units(heads, ffn)
    out = {path: model(ids, mask, head_gates=heads, ffn_gates=ffn, path=path, output_hidden_states=True,
                       active_units=units) for path in ("compact", "triton")}
    torch.testing.assert_close(out["triton"].logits, out["compact"].logits, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="ddk_fast._C was built without CUDA kernels")
def test_fused_losses_on_cuda_match_reference_in_bf16():
    torch.manual_seed(3)
    s = [torch.randn(4, 64, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    t = [torch.randn(4, 64, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    w = torch.tensor([1.0, 0.5, 2.0], device="cuda")
    got = D.hidden_distill_loss(s, t, w, path="fused")
    ref = D.hidden_distill_loss([x.float() for x in s], [x.float() for x in t], w, path="reference")
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)


def test_triton_block_compiles_fullgraph_on_cuda():
    torch.manual_seed(4)
    d, h = 256, 4
    x = torch.randn(2, 64, d, device="cuda", requires_grad=True)
    weights = [torch.randn(d, d, device="cuda") * d ** -0.5 if i % 2 == 0 else torch.zeros(d, device="cuda")
               for i in range(8)]
    gate = torch.tensor([1.0, 0.0, 1.0, 1.0], device="cuda")
    active = torch.tensor([0, 2, 3], device="cuda")

    def block(x):
        return masked_self_attention(x, *weights, gate, h, path="triton", active=active).out

    eager = block(x)
    compiled = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_search_step_syncs_once_per_sampled_structure():
    """CUDA's own sync detector: a whole search step (triton + fused) waits on the device once, for the
    active units of the structure it sampled."""
    sys.path.insert(0, BENCHMARKS)
    try:
        from bench_search_step import make_step
    finally:
        sys.path.remove(BENCHMARKS)
    step, _, _ = make_step("triton+fused", 0.5, 2, 8, 64, torch.device("cuda"), vocab=1000, sync=False)
    step()  # compile and autotune first
    step()
    torch.cuda.synchronize()
    counts = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts == [1, 1, 1], counts


def test_configs_table_is_what_the_launchers_take():
    """The attention launcher picks its tile from the table on CUDA tensors (not the interpreter's)."""
    dev = torch.device("cuda")
    assert configs.compiled_launch(dev)
    tile = configs.attention_tile(64, torch.bfloat16, False, dev)
    assert tile == configs.ATTENTION_TILES[("16-bit", "D<=64", "fwd")]
