"""The teacher cache: what it returns equals the teacher's forward, later epochs hit it, the disk copy
round-trips, an absurd size is refused, and a resumed run with the cache equals an uninterrupted one.

Tolerances (stated in ddk_fast/runs/teacher_cache.py): an fp32 cache returns exactly what the forward
of the batch that filled it gave; a row re-padded into another batch differs from that batch's own
forward by fp32 kernel noise only (atol 1e-5 here); bf16 storage moves the KD loss by < 2 % relative.
"""
import copy
import json
import os

import pytest
import torch

from train_support import make_tiny_bert, safetensors_equal

from ddk_fast.data import EncodedDataset, collate
from ddk_fast.distill.objectives import KDObjective
from ddk_fast.errors import UserError
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.runs import teacher_cache as tc
from ddk_fast.api import compress
from ddk_fast.runs.batching import collate_with_ids, train_loader
from ddk_fast.errors import RunInterrupted
from ddk_fast.runs.stages import teacher_outputs

KD = {"hidden_weight": 1.0, "hidden_embeddings": True, "attention_weight": 1.0, "attention_loss": "kl",
      "pred_weight": 1.0, "task_weight": 0.5}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=100, hidden_size=32, head_dim=8, num_heads=[4, 4], intermediate_sizes=[64, 64])
    teacher = MaskedTransformer(config).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():  # a student that differs from the teacher, so the KD terms are not zero
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = KDObjective.from_config(KD, student, teacher)
    return teacher, student.eval(), objective  # student in eval: both losses see the same forward


@pytest.fixture(scope="module")
def dataset():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 24, (12,), generator=gen).tolist()
    ids = [torch.randint(1, 100, (n,), generator=gen).tolist() for n in lengths]
    return EncodedDataset(ids, [[0] * n for n in lengths], [i % 2 for i in range(12)], 0, False)


def _batch(ds, indices, multiple=None):
    batch = collate([ds[i] for i in indices], pad_token_id=0, pad_to_multiple_of=multiple)
    batch["example_ids"] = torch.tensor(indices)
    return batch


def _cache(ds, teacher, objective, mode="memory", dtype="fp32", folder="."):
    return tc.build(mode, dtype, teacher, ds, lambda items: collate_with_ids(items, 0), objective.forward_kwargs(),
                    str(folder), "cpu", info=lambda msg: None)


def _loss(student, objective, batch, t_out):
    s_out = student(batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], **objective.forward_kwargs())
    return objective(s_out, t_out, batch)[0]


def _valid(t, mask):
    return t[mask.bool()] if t.dim() == 3 else t


def test_cache_equals_the_teacher_forward_on_batches_of_other_lengths(models, dataset, tmp_path):
    teacher, student, objective = models
    kwargs = objective.forward_kwargs()
    assert kwargs.get("output_attention_scores")  # attention cached only because a term asks for it
    cache = _cache(dataset, teacher, objective, folder=tmp_path)
    fills = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    direct = {}
    for ids in fills:
        b = _batch(dataset, ids)
        out = cache.outputs(teacher, b, b["example_ids"], kwargs=kwargs)
        direct[tuple(ids)] = (b, out)
    assert cache.stats["miss_batches"] == 3 and cache.filled.all()
    # the same batch again: a hit, equal to its own forward exactly (fp32 storage)
    b, out = direct[(4, 5, 6, 7)]
    hit = cache.outputs(teacher, b, b["example_ids"], kwargs=kwargs)
    assert cache.stats["hit_batches"] == 1
    mask = b["attention_mask"]
    for a, h in zip(out.hidden_states, hit.hidden_states):
        assert torch.equal(_valid(a, mask), _valid(h, mask))
    assert torch.equal(out.logits, hit.logits)
    assert torch.equal(_loss(student, objective, b, out), _loss(student, objective, b, hit))
    # rows from three fills, padded to another length (and to a multiple of 16): equal up to fp32 noise
    for ids, multiple in (([11, 2, 5], None), ([0, 9, 6, 3, 1], 16)):
        b = _batch(dataset, ids, multiple)
        hit = cache.outputs(teacher, b, b["example_ids"], kwargs=kwargs)
        ref = teacher_outputs(teacher, b, "auto", kwargs)
        mask = b["attention_mask"]
        assert hit.hidden_states[0].shape == ref.hidden_states[0].shape
        for a, h in zip(ref.hidden_states, hit.hidden_states):
            torch.testing.assert_close(_valid(h, mask), _valid(a, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hit.logits, ref.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_loss(student, objective, b, hit), _loss(student, objective, b, ref),
                                   atol=1e-5, rtol=1e-5)
    assert cache.summary()["hit_batches"] == 3


def test_bf16_cache_moves_the_loss_within_its_precision(models, dataset, tmp_path):
    teacher, student, objective = models
    cache = _cache(dataset, teacher, objective, dtype="bf16", folder=tmp_path)
    b = _batch(dataset, list(range(12)))
    exact = cache.outputs(teacher, b, b["example_ids"])  # the fill returns the forward itself
    cached = cache.outputs(teacher, b, b["example_ids"])
    assert cache.stats == dict(cache.stats, hit_batches=1, miss_batches=1)
    assert cache.nbytes == tc.estimate_bytes(cache.entries, dataset.lengths, torch.bfloat16)
    ref, got = _loss(student, objective, b, exact), _loss(student, objective, b, cached)
    assert not torch.equal(ref, got)  # bf16 rounding is visible ...
    assert abs(float(got - ref)) <= 0.02 * abs(float(ref))  # ... and small


def test_second_epoch_hits_and_disk_round_trips(models, dataset, tmp_path):
    teacher, _, objective = models
    loader = train_loader(dataset, 4, seed=3)
    memory = _cache(dataset, teacher, objective, folder=tmp_path)
    disk = _cache(dataset, teacher, objective, mode="disk", folder=tmp_path / "run")
    assert disk.mode == "disk" and os.path.getsize(disk.file) == disk.nbytes
    steps = loader.batch_sampler.batches_per_epoch()
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            a = memory.outputs(teacher, batch, batch["example_ids"])
            b = disk.outputs(teacher, batch, batch["example_ids"])
            for x, y in zip(a.hidden_states + a.attention_scores, b.hidden_states + b.attention_scores):
                assert torch.equal(x, y)
        summary = disk.summary()
        assert summary["miss_batches"] == steps and summary["hit_batches"] == epoch * steps
    assert summary["hit_rate"] == 0.5 and summary["cached_examples"] == len(dataset)
    disk.close()
    assert not os.path.exists(disk.file)


def test_fit_estimate_refuses_an_absurd_size_and_auto_falls_back():
    gib = 2**30
    with pytest.raises(UserError, match="--teacher-cache memory: the cache needs"):
        tc.choose_mode("memory", 10**15, 8 * gib, 100 * gib)
    with pytest.raises(UserError, match="--teacher-cache disk"):
        tc.choose_mode("disk", 10**15, 8 * gib, 100 * gib)
    assert tc.choose_mode("auto", gib, 8 * gib, 100 * gib)[0] == "memory"
    assert tc.choose_mode("auto", 4 * gib, 8 * gib, 100 * gib)[0] == "disk"
    mode, why = tc.choose_mode("auto", 10**15, 8 * gib, 100 * gib)
    assert mode == "off" and why.startswith("warning")


def test_outputs_it_cannot_cache_are_refused_or_left_uncached(models, dataset):
    teacher, _, _ = models
    kwargs = {"output_hidden_states": True, "output_qkv": True}
    assert "output_qkv" in tc.cacheable(kwargs)
    with pytest.raises(UserError, match="--teacher-cache memory"):
        tc.build("memory", "bf16", teacher, dataset, lambda items: collate_with_ids(items, 0), kwargs, ".", "cpu")
    assert tc.build("auto", "bf16", teacher, dataset, lambda items: collate_with_ids(items, 0), kwargs, ".", "cpu",
                    info=lambda msg: None) is None


def test_no_cache_for_padded_query_readers_or_ddp_ranks(models, dataset):
    """TinyBERT's attention MSE counts padded query rows, which the cache does not store (zeros there
    would change the loss); under DDP each rank sees other examples every epoch."""
    teacher, student, _ = models
    mse = KDObjective.from_config(dict(KD, attention_loss="mse"), student, teacher)
    assert mse.reads_padded_queries and not KDObjective.from_config(KD, student, teacher).reads_padded_queries
    collate_fn = lambda items: collate_with_ids(items, 0)  # noqa: E731
    with pytest.raises(UserError, match="padded query positions"):
        tc.build("memory", "bf16", teacher, dataset, collate_fn, mse.forward_kwargs(), ".", "cpu",
                 reads_padded_queries=mse.reads_padded_queries)
    assert tc.build("auto", "bf16", teacher, dataset, collate_fn, mse.forward_kwargs(), ".", "cpu",
                    info=lambda msg: None, reads_padded_queries=True) is None
    assert tc.build("auto", "bf16", teacher, dataset, collate_fn, mse.forward_kwargs(), ".", "cpu",
                    info=lambda msg: None, world_size=2) is None


FAST = dict(max_train_examples=32, max_eval_examples=16, batch_size=8, eval_batch_size=16, max_seq_len=32, seq_len=32,
            search_epochs=2, distill_epochs=1, channel_granularity=8, latency_batch_size=2, latency_seq_len=16,
            latency_repeats=1, progress=False, save_steps=2, lr=1e-3, calibration_examples=8)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_resume_with_the_cache_equals_an_uninterrupted_run(tmp_path, glue_dir, mode):
    teacher = make_tiny_bert(tmp_path / "teacher", layers=2, heads=4, hidden=32, intermediate=64)
    common = dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target="params=0.5", teacher_cache=mode)
    reference = compress(**common, output=str(tmp_path / "ref"))
    out = str(tmp_path / "student")
    # 4 steps per epoch: search epochs at steps 1-8, distillation 9-12; checkpoints every 2 steps
    with pytest.raises(RunInterrupted):
        compress(**common, output=out, stop_after_steps=7)  # killed in the search's second epoch
    with pytest.raises(RunInterrupted):
        compress(**common, output=out, resume=True, stop_after_steps=11)  # killed during distillation
    report = compress(**common, output=out, resume=True)
    same, why = safetensors_equal(os.path.join(reference["output"], "model.safetensors"),
                                  os.path.join(out, "model.safetensors"))
    assert same, why
    assert report["history"] == reference["history"]
    # the export may be an early candidate (the one-shot student): the last step's weights must agree too
    assert report["final_weights_sha256"] == reference["final_weights_sha256"]
    cache = json.loads(open(os.path.join(reference["output"], "report.json")).read())["teacher_cache"]
    # epoch 1 fills (4 batches), search epoch 2 and the distillation stage hit (8 batches)
    assert cache["mode"] == mode and cache["miss_batches"] == 4 and cache["hit_batches"] == 8
    assert cache["cached_examples"] == 32 and cache["bytes"] > 0
    assert report["teacher_cache"]["rebuild_batches"] == 4  # the last resume replayed the filling epoch
    assert not any(name.startswith("teacher_cache") for _, _, files in os.walk(out) for name in files)


def test_distill_command_fills_in_the_first_epoch_and_hits_after(tmp_path, glue_dir):
    from ddk_fast.pipelines.distill import build_distill_config, run_distill

    teacher = make_tiny_bert(tmp_path / "teacher", layers=2, heads=4, hidden=32, intermediate=64)
    flags = dict(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "student"), recipe="tinybert",
                 student_layers=1, steps=8, max_train_examples=32, max_eval_examples=16, max_seq_len=24, batch_size=8, lr=1e-3,
                 progress=False, device="cpu", teacher_cache="memory", teacher_cache_dtype="fp16",
                 kd="attention_loss=kl")  # the recipe's TinyBERT attention MSE reads padded rows: not cached
    report = run_distill(build_distill_config(flags))
    cache = report["teacher_cache"]
    # 4 batches per epoch: the first stage's 4 steps fill, the second stage's 4 steps hit
    assert cache["mode"] == "memory" and cache["dtype"] == "float16"
    assert (cache["miss_batches"], cache["hit_batches"], cache["cached_examples"]) == (4, 4, 32)
    assert "hidden_states" in cache["outputs"] and "logits" in cache["outputs"]
    off = run_distill(build_distill_config(dict(flags, output=str(tmp_path / "off"), teacher_cache="off")))
    assert off["teacher_cache"] == {"mode": "off"}
    # the first stage (all misses) is the uncached run itself
    first = report["history"][0]["stage"]
    assert [h for h in off["history"] if h["stage"] == first] == [h for h in report["history"] if h["stage"] == first]
