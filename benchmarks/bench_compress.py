"""One real ``compress`` run on MRPC (fixed steps), with the teacher cache off and in memory.

What is timed: ``ddk_fast.api.compress`` end to end (data loading, one-shot start, search,
pruning, distillation, dev evaluations, export and its latency report), one round per provider; the
stage times (``report.json`` ``times_s``: oneshot, search, distill, evaluation) and the cache's size
and hits go into ``extra_info``. Threads are pinned (``THREADS``, torch.set_num_threads) and the load
average is recorded before and after each run: on a shared machine it says how far to trust the times.

Teacher: the packaged pretrained MiniLM-L6 (L6 d384 H12 I1536) with a seeded fresh classifier head,
not fine-tuned (the timings do not depend on its accuracy). Data: the MRPC train/dev TSVs of
``$DDK_GLUE_DIR`` (default /work/shared/data/glue), 256 train examples (max 64 tokens), batch 16: 16
steps per epoch, 2 search epochs + 1 distillation epoch = 48 steps; 64 dev examples. Quick mode: the
first 2 layers of the teacher, 64 examples of at most 32 tokens, batch 16, 1 + 1 epochs.
Providers: "uncached" (``--teacher-cache off``, today's path, the baseline) and "cache memory"
(``--teacher-cache memory``, bf16).
Run: python -m pytest benchmarks/bench_compress.py -q -s   (about 2 x 1-2 minutes on one CPU thread)
"""
import json
import os

import pytest
import torch

from ddk_fast.bench.conventions import tag
from ddk_fast.bench.runner import machine_load
from ddk_fast.api import compress
from ddk_fast.runs.config import packaged_model_dir

GLUE_DIR = os.environ.get("DDK_GLUE_DIR", "/work/shared/data/glue")
THREADS = 1
TARGET_SPEEDUP = 1.6  # goal: compress with the teacher cached at least 1.6x faster than today's run
PROVIDERS = {"uncached": "off", "cache memory": "memory"}


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(layers=2, max_train_examples=64, max_seq_len=32, batch_size=16, search_epochs=1, distill_epochs=1)
    return dict(layers=6, max_train_examples=256, max_seq_len=64, batch_size=16, search_epochs=2, distill_epochs=1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, is_quick):
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    source = packaged_model_dir()
    model = BertForSequenceClassification.from_pretrained(source, num_labels=2,
                                                          num_hidden_layers=_sizes(is_quick)["layers"])
    folder = str(tmp_path_factory.mktemp("teacher") / "minilm")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_compress_mrpc(benchmark, device, is_quick, teacher_dir, tmp_path, provider):
    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.skip(f"MRPC not found under {GLUE_DIR} (set DDK_GLUE_DIR)")
    z = _sizes(is_quick)
    options = dict(max_train_examples=z["max_train_examples"], max_eval_examples=64, batch_size=z["batch_size"],
                   eval_batch_size=64, max_seq_len=z["max_seq_len"], seq_len=z["max_seq_len"],
                   search_epochs=z["search_epochs"], distill_epochs=z["distill_epochs"], channel_granularity=64,
                   calibration_examples=64, tuning_examples=32, latency_batch_size=8, latency_seq_len=z["max_seq_len"],
                   latency_repeats=1, progress=False, save_steps=10_000, device=device.type,
                   teacher_cache=PROVIDERS[provider])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    runs = []

    def run():
        out = str(tmp_path / f"student{len(runs)}")
        runs.append(compress(teacher_dir, "mrpc", out, target="params=0.5", data_dir=GLUE_DIR, **options))

    load_before = machine_load()
    try:
        benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(threads_before)
    report = runs[-1]
    with open(os.path.join(report["output"], "report.json")) as fh:
        saved = json.load(fh)
    steps = (z["search_epochs"] + z["distill_epochs"]) * -(-z["max_train_examples"] // z["batch_size"])
    shape = (f"MRPC L{z['layers']} d384 H12, {z['max_train_examples']} ex x <={z['max_seq_len']} tok, "
             f"B{z['batch_size']}, {steps} steps")
    goal = 1 / TARGET_SPEEDUP if provider != "uncached" else None
    tag(benchmark, "compress_mrpc", provider, "run", 0.5, shape, target_ratio=goal, threads=THREADS,
        times_s={k: round(v, 2) for k, v in saved["times_s"].items()}, teacher_cache=saved["teacher_cache"],
        student_dev=saved["student_dev"], load_before=load_before, load_after=machine_load())
    cache = saved["teacher_cache"]
    assert cache["mode"] == PROVIDERS[provider]
    if cache["mode"] != "off":
        assert cache["hit_batches"] > 0 and cache["cached_examples"] == z["max_train_examples"]
