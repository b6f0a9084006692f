"""The GPU benchmark suite of ``scripts/gpu_check.sh``: bf16, the shapes of the targets, met or missed.

Cases (forward + backward, bf16 on CUDA):
  gated_attention  B32 H12 S128 D64, no padding: Triton with every head on, Triton with half the heads gated
                   off, torch SDPA (flash) over every head
  masked_ffn       B32 S128 d768 I3072 (BERT-base FFN, erf GELU): Triton at keep 0.25 / 0.5 / 1, and the dense
                   FFN of the kept width in plain torch (cuBLAS GEMMs on physically sliced weights)
  distill_losses   hidden MSE over 7 states + attention KL over 6 layers + soft CE, L6 B32 S128 d384 A12: fused
                   (ddk_fast._C CUDA kernels) vs the eager references vs torch.compile of the references
  search_step      the whole width-search step of benchmarks/bench_search_step.py (6-layer MiniLM-shaped BERT,
                   B32 S128) under bf16 autocast at keep 0.5: triton+fused vs the reference path
Times: CUDA events, median of REPS after WARMUP calls (compilation and autotuning are not timed).

``--dry-run`` (CPU, CI): tiny shapes in fp32, Triton in the interpreter, torch.compile with its eager backend,
one warm-up and two timed calls: every case and every target runs once so that nothing rots. The report
then says DRY RUN and goes to ``--out``, never to benchmarks/results/gpu.

Run: python benchmarks/gpu_suite.py [--out DIR] [--dry-run] [--only SUBJECT ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # run as a script: the sibling suites import as top-level modules
    sys.path.insert(0, HERE)

from bench_search_step import make_step  # noqa: E402

from ddk_fast.bench.targets import Measurement, Target, write_report  # noqa: E402
from ddk_fast.bench.timing import spread_ms  # noqa: E402
from ddk_fast.bench.environment import collect  # noqa: E402
from ddk_fast.ops import distill_losses as D  # noqa: E402
from ddk_fast.ops.gated_attention import gated_attention  # noqa: E402
from ddk_fast.ops.masked_ffn import masked_ffn  # noqa: E402

GPU_RESULTS = os.path.join(HERE, "results", "gpu")
SUBJECTS = ("gated_attention", "masked_ffn", "distill_losses", "search_step")
FFN_KEEPS = (0.25, 0.5, 1.0)
SEARCH_KEEP = 0.5


def _key(subject, provider, keep=None, mode="fwd+bwd"):
    return (subject, provider, mode, keep)


TARGETS = [
    Target("attention dense vs SDPA", _key("gated_attention", "triton", 1.0), _key("gated_attention", "sdpa", 1.0),
           1 / 0.9, ">= 0.9x the speed of torch SDPA"),
    Target("attention 50% heads off vs own dense", _key("gated_attention", "triton", 0.5),
           _key("gated_attention", "triton", 1.0), 0.55, "<= 0.55x its own dense time"),
    *[Target(f"masked FFN keep {r:g} vs own full width", _key("masked_ffn", "triton", r),
             _key("masked_ffn", "triton", 1.0), r + 0.05, f"<= {r + 0.05:g}x the dense full-width time")
      for r in FFN_KEEPS if r < 1],
    Target("masked FFN keep 1 vs cuBLAS", _key("masked_ffn", "triton", 1.0), _key("masked_ffn", "cublas", 1.0),
           1 / 0.9, ">= 0.9x cuBLAS of the kept size"),
    Target("fused KD losses vs torch.compile", _key("distill_losses", "fused"), _key("distill_losses", "compile"),
           1 / 1.5, ">= 1.5x torch.compile of the reference"),
    Target("search step keep 0.5 vs reference", _key("search_step", "triton+fused", SEARCH_KEEP, "step"),
           _key("search_step", "reference", SEARCH_KEEP, "step"), 1 / 1.6, ">= 1.6x the reference path"),
]


@dataclass
class Setting:
    """Device, dtype, shapes and repetitions of a run (the GPU run or the dry run)."""

    device: torch.device
    dtype: torch.dtype
    dry_run: bool
    warmup: int
    reps: int

    @classmethod
    def for_run(cls, dry_run: bool) -> "Setting":
        if dry_run:
            return cls(torch.device("cpu"), torch.float32, True, 1, 2)
        return cls(torch.device("cuda"), torch.bfloat16, False, 5, 20)

    def sizes(self, subject: str) -> dict:
        full = {"gated_attention": dict(batch=32, heads=12, seq=128, head_dim=64),
                "masked_ffn": dict(tokens=32 * 128, hidden=768, channels=3072),
                "distill_losses": dict(layers=6, batch=32, seq=128, hidden=384, heads=12),
                "search_step": dict(layers=6, batch=32, seq=128, vocab=30522, hidden=384, heads=12,
                                    intermediate=1536)}
        tiny = {"gated_attention": dict(batch=2, heads=4, seq=16, head_dim=16),
                "masked_ffn": dict(tokens=32, hidden=32, channels=64),
                "distill_losses": dict(layers=2, batch=2, seq=8, hidden=16, heads=2),
                "search_step": dict(layers=1, batch=2, seq=8, vocab=100, hidden=32, heads=4, intermediate=64)}
        return (tiny if self.dry_run else full)[subject]

    def randn(self, *shape, scale=1.0, grad=False, gen=None):
        t = (torch.randn(*shape, generator=gen) * scale).to(self.device, self.dtype)
        return t.requires_grad_(grad)

    def time(self, fn, inner: int = 1) -> tuple[float, float, float]:
        """(median, fastest, slowest) ms: unpack into a Measurement's median_ms, low_ms, high_ms."""
        return spread_ms(fn, self.device, warmup=self.warmup, reps=self.reps, inner=inner)


# ---- cases -------------------------------------------------------------------------------------------

def attention_case(s: Setting) -> list[Measurement]:
    z = s.sizes("gated_attention")
    b, h, n, d = z["batch"], z["heads"], z["seq"], z["head_dim"]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (s.randn(b, h, n, d, grad=True, gen=gen) for _ in range(3))
    grad = s.randn(b, h, n, d, gen=gen)
    shape = f"B{b} H{h} S{n} D{d} {str(s.dtype).replace('torch.', '')}"
    out = []
    for keep in (1.0, 0.5):
        gate = torch.ones(h, device=s.device)
        gate[1::2] = 0.0 if keep < 1 else 1.0
        active = torch.nonzero(gate).flatten()  # found once here: the timed calls read nothing back

        def triton_call(gate=gate, active=active):
            o = gated_attention(q, k, v, gate, path="triton", active=active)
            torch.autograd.grad(o, (q, k, v), grad)

        out.append(Measurement("gated_attention", "triton", "fwd+bwd", keep, shape, *s.time(triton_call)))

    def sdpa_call():
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)

    out.append(Measurement("gated_attention", "sdpa", "fwd+bwd", 1.0, shape, *s.time(sdpa_call)))
    return out


def ffn_case(s: Setting) -> list[Measurement]:
    z = s.sizes("masked_ffn")
    m, d, n_ch = z["tokens"], z["hidden"], z["channels"]
    gen = torch.Generator().manual_seed(1)
    x = s.randn(m, d, grad=True, gen=gen)
    w_in, b_in = s.randn(n_ch, d, scale=d ** -0.5, grad=True, gen=gen), s.randn(n_ch, scale=0.1, grad=True, gen=gen)
    w_out, b_out = s.randn(d, n_ch, scale=n_ch ** -0.5, grad=True, gen=gen), s.randn(d, scale=0.1, grad=True, gen=gen)
    grad = s.randn(m, d, gen=gen)
    shape = f"M{m} d{d} I{n_ch} {str(s.dtype).replace('torch.', '')}"
    out = []
    for keep in FFN_KEEPS:
        kept = round(keep * n_ch)
        gate = torch.zeros(n_ch, device=s.device)
        gate[torch.randperm(n_ch, generator=gen)[:kept].to(s.device)] = 1.0
        gate.requires_grad_(True)
        active = torch.nonzero(gate.detach()).flatten()

        def triton_call(gate=gate, active=active):
            y = masked_ffn(x, w_in, b_in, w_out, b_out, gate, "gelu", path="triton", active=active)
            torch.autograd.grad(y, (x, w_in, b_in, w_out, b_out, gate), grad)

        # the physically pruned FFN of the same width: plain torch GEMMs (cuBLAS)
        wi, bi = w_in.detach()[active].clone().requires_grad_(True), b_in.detach()[active].clone().requires_grad_(True)
        wo = w_out.detach()[:, active].contiguous().requires_grad_(True)

        def cublas_call(wi=wi, bi=bi, wo=wo):
            y = F.linear(F.gelu(F.linear(x, wi, bi)), wo, b_out)
            torch.autograd.grad(y, (x, wi, bi, wo, b_out), grad)

        out.append(Measurement("masked_ffn", "triton", "fwd+bwd", keep, shape, *s.time(triton_call)))
        out.append(Measurement("masked_ffn", "cublas", "fwd+bwd", keep, shape, *s.time(cublas_call)))
    return out


def _reference_losses(hs, ht, as_, at, ls, lt, hw, aw, mask):
    hidden, _ = D.hidden_distill_loss_reference(hs, ht, hw, mask, "mse")
    attention, _ = D.attention_distill_loss_reference(as_, at, aw, mask, "kl")
    return hidden + attention + D.soft_cross_entropy_reference(ls, lt, 2.0)


def losses_case(s: Setting) -> list[Measurement]:
    z = s.sizes("distill_losses")
    layers, b, n, d, a = z["layers"], z["batch"], z["seq"], z["hidden"], z["heads"]
    gen = torch.Generator().manual_seed(2)
    hs = [s.randn(b, n, d, grad=True, gen=gen) for _ in range(layers + 1)]
    ht = [s.randn(b, n, d, gen=gen) for _ in range(layers + 1)]
    as_ = [s.randn(b, a, n, n, grad=True, gen=gen) for _ in range(layers)]
    at = [s.randn(b, a, n, n, gen=gen) for _ in range(layers)]
    ls, lt = s.randn(b, 2, grad=True, gen=gen), s.randn(b, 2, gen=gen)
    hw = torch.full((layers + 1,), 1.0 / (layers + 1), device=s.device, requires_grad=True)
    aw = torch.full((layers,), 1.0 / layers, device=s.device, requires_grad=True)
    lengths = torch.randint(n // 2, n + 1, (b,), generator=gen)
    mask = (torch.arange(n)[None, :] < lengths[:, None]).long().to(s.device)
    leaves = [*hs, *as_, ls, hw, aw]

    def fused():
        loss = (D.hidden_distill_loss(hs, ht, hw, mask, path="fused", check_finite=False)
                + D.attention_distill_loss(as_, at, aw, mask, path="fused", check_finite=False)
                + D.soft_cross_entropy(ls, lt, 2.0, path="fused", check_finite=False))
        torch.autograd.grad(loss, leaves)

    def eager():
        torch.autograd.grad(_reference_losses(hs, ht, as_, at, ls, lt, hw, aw, mask), leaves)

    compiled_loss = torch.compile(_reference_losses, backend="eager" if s.dry_run else "inductor")

    def compiled():
        torch.autograd.grad(compiled_loss(hs, ht, as_, at, ls, lt, hw, aw, mask), leaves)

    shape = f"L{layers} B{b} S{n} d{d} A{a} {str(s.dtype).replace('torch.', '')}"
    return [Measurement("distill_losses", name, "fwd+bwd", None, shape, *s.time(fn))
            for name, fn in (("fused", fused), ("eager", eager), ("compile", compiled))]


def search_case(s: Setting) -> list[Measurement]:
    z = s.sizes("search_step")
    out = []
    for provider in ("reference", "triton+fused"):
        step, shape, _ = make_step(provider, SEARCH_KEEP, z["layers"], z["batch"], z["seq"], s.device, z["vocab"],
                                   hidden=z["hidden"], heads=z["heads"], intermediate=z["intermediate"])

        def call(step=step):
            with torch.autocast(s.device.type, dtype=s.dtype, enabled=not s.dry_run):
                step()

        label = shape + ("" if s.dry_run else " bf16 autocast")
        out.append(Measurement("search_step", provider, "step", SEARCH_KEEP, label,
                               *spread_ms(call, s.device, warmup=min(s.warmup, 2), reps=min(s.reps, 5))))
    return out


CASES = {"gated_attention": attention_case, "masked_ffn": ffn_case, "distill_losses": losses_case,
         "search_step": search_case}


# ---- driver ------------------------------------------------------------------------------------------

def run(out_dir: str, dry_run: bool, only: tuple[str, ...] = SUBJECTS) -> tuple[list[dict], list[str]]:
    """Run the cases, write the report; return (evaluated targets, failed cases)."""
    if dry_run and os.path.abspath(out_dir) == os.path.abspath(GPU_RESULTS):
        raise ValueError(f"a dry run never writes {GPU_RESULTS}: pass another --out")
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run on a GPU machine, or pass --dry-run")
    setting = Setting.for_run(dry_run)
    measurements, failed = [], []
    started = time.time()
    for subject in only:
        t0 = time.time()
        try:
            measurements += CASES[subject](setting)
            print(f"[gpu_suite] {subject}: {time.time() - t0:.1f} s", flush=True)
        except Exception:  # noqa: BLE001 - one broken case must not hide the others' results
            failed.append(subject)
            print(f"[gpu_suite] {subject} FAILED:\n{traceback.format_exc()}", flush=True)
    env = collect()
    header = {"dry_run": dry_run, "device": ", ".join(env["gpus"]) or str(setting.device),
              "dtype": str(setting.dtype).replace("torch.", ""), "torch": env["torch"], "triton": env["triton"],
              "ddk_fast": env["ddk_fast"], "extension": "cpu+cuda" if env["extension_cuda"] else
              ("cpu" if env["extension_cpu"] else "missing"), "timer": "CUDA events" if not dry_run else "perf_counter",
              "warmup / reps": f"{setting.warmup} / {setting.reps}", "date": time.strftime("%Y-%m-%d %H:%M"),
              "wall s": round(time.time() - started, 1), "failed cases": ", ".join(failed) or "none"}
    results = write_report(out_dir, header, measurements, TARGETS)
    return results, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help=f"report folder (default {GPU_RESULTS}; required with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check the wiring, measure nothing")
    parser.add_argument("--only", nargs="+", choices=SUBJECTS, default=list(SUBJECTS))
    opts = parser.parse_args(argv)
    if opts.out is None and opts.dry_run:
        parser.error("--dry-run needs --out (a dry run never writes benchmarks/results/gpu)")
    results, failed = run(opts.out or GPU_RESULTS, opts.dry_run, tuple(opts.only))
    for r in results:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        spread = "" if not r.get("spread") else f" spread {r['spread'][0]:.3f}-{r['spread'][1]:.3f}"
        status = "not judged (dry run)" if opts.dry_run else r["status"] + (" (spread crosses the bound)"
                                                                             if r.get("spread_crosses_bound") else "")
        print(f"[gpu_suite] target {r['name']}: {ratio}{spread} (bound {r['bound']:.3f}) {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
