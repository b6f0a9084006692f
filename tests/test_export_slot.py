"""The export of a run that picks among candidates changes only after the checkpoint that records it."""
import itertools
import os

import pytest
import torch

from test_compress_init import FAST as COMPRESS_FAST
from test_train_finetune import FAST as FINETUNE_FAST
from train_support import make_tiny_bert

from ddk_fast.api import compress, finetune
from ddk_fast.export import load_pruned, save_pruned
from ddk_fast.model import MaskedTransformer
from ddk_fast.pipelines import compress as compress_module
from ddk_fast.pipelines import finetune as finetune_module
from ddk_fast.runs.checkpoint import latest_checkpoint
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.runs.export_slot import ExportSlot

FAST = dict(COMPRESS_FAST, save_steps=100)  # checkpoints at the epoch ends only


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", layers=2, heads=4, hidden=32, intermediate=64)


def _make_scores_rise(monkeypatch, module):
    """Every dev evaluation of ``module`` (a pipeline) scores higher than the one before, so each
    candidate replaces the export."""
    real_evaluate, counter = module.evaluate, itertools.count(1)

    def rising(*args, **kwargs):
        value = next(counter) / 100.0
        return {k: (value if isinstance(v, float) else v) for k, v in real_evaluate(*args, **kwargs).items()}

    monkeypatch.setattr(module, "evaluate", rising)


@pytest.fixture
def rising_scores(monkeypatch):
    _make_scores_rise(monkeypatch, compress_module)


def _model(teacher, scale):
    model = MaskedTransformer.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
    return model


def _writer(teacher, scale):
    return lambda folder: save_pruned(_model(teacher, scale), folder, overwrite=True)


def test_a_staged_candidate_is_the_export_only_once_committed(teacher, tmp_path):
    slot = ExportSlot(str(tmp_path / "best"))
    slot.stage(_writer(teacher, 1.0), "a")
    assert not os.path.exists(slot.folder) and slot.pending_identity() == "a"
    slot.commit()
    assert slot.committed_identity() == "a" and not os.path.exists(slot.pending)
    slot.stage(_writer(teacher, 2.0), "b")
    slot.recover("a")  # the checkpoint names "a": "b" was written after it and is dropped
    assert slot.committed_identity() == "a" and not os.path.exists(slot.pending)
    slot.stage(_writer(teacher, 2.0), "b")
    slot.recover("b")  # the checkpoint names "b": the kill came after it, so "b" becomes the export
    assert slot.committed_identity() == "b" and not os.path.exists(slot.pending)
    expected = _model(teacher, 2.0).classifier.weight
    assert torch.equal(load_pruned(slot.folder).classifier.weight, expected)
    assert slot.commit() is False  # nothing pending
    assert "candidate.json" not in slot.files() and "model.safetensors" in slot.files()
    # an older checkpoint resumed (the newest was unreadable): the newer export stays, with a warning
    assert slot.recover("b") is None
    warning = slot.recover("a")
    assert "(b) is newer than the checkpoint resumed (a)" in warning and slot.committed_identity() == "b"


def test_a_kill_between_a_new_best_and_its_checkpoint_leaves_the_recorded_export(teacher, glue_dir, tmp_path,
                                                                                  monkeypatch, rising_scores):
    real_save = Checkpointer.save

    def killed_before_the_distill_checkpoint(self, step, state, *args, **kwargs):
        if state["stage"] == "distill":
            raise KeyboardInterrupt("killed")  # the pruned student is staged, its checkpoint not yet written
        return real_save(self, step, state, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", killed_before_the_distill_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), **FAST)
    work = str(out) + ".inprogress"
    slot = ExportSlot(os.path.join(work, "best"))
    recorded = torch.load(os.path.join(latest_checkpoint(os.path.join(work, "checkpoints")), "state.pt"),
                          weights_only=True)["loop"]["export_candidate"]
    assert recorded.startswith("oneshot:") and slot.committed_identity() == recorded
    assert slot.pending_identity().startswith("pruned:")  # written, not yet the export

    monkeypatch.setattr(Checkpointer, "save", real_save)
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), resume=True, **FAST)
    assert report["exported_from"] == "distill"  # the last candidate scored highest
    assert os.path.isfile(os.path.join(out, "model.safetensors")) and not os.path.exists(work)


def test_a_kill_after_the_checkpoint_but_before_the_swap_promotes_the_recorded_candidate(teacher, glue_dir, tmp_path,
                                                                                          monkeypatch, rising_scores):
    real_commit, real_recover = ExportSlot.commit, ExportSlot.recover

    def killed_before_the_swap(self):
        if (self.pending_identity() or "").startswith("pruned:"):
            raise KeyboardInterrupt("killed")  # its checkpoint is written, best/ not yet swapped
        return real_commit(self)

    monkeypatch.setattr(ExportSlot, "commit", killed_before_the_swap)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), **FAST)
    work = str(out) + ".inprogress"
    recorded = torch.load(os.path.join(latest_checkpoint(os.path.join(work, "checkpoints")), "state.pt"),
                          weights_only=True)["loop"]["export_candidate"]
    slot = ExportSlot(os.path.join(work, "best"))
    assert recorded.startswith("pruned:") and slot.pending_identity() == recorded
    assert slot.committed_identity().startswith("oneshot:")

    after_recover = []

    def watched_recover(self, identity):
        warning = real_recover(self, identity)
        after_recover.append((self.committed_identity(), load_pruned(self.folder).num_heads))
        return warning

    monkeypatch.setattr(ExportSlot, "commit", real_commit)
    monkeypatch.setattr(ExportSlot, "recover", watched_recover)
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), resume=True, **FAST)
    assert after_recover[0][0] == recorded  # the checkpoint's candidate became the export on resume
    assert list(after_recover[0][1]) == report["structure"]["heads"]  # the pruned student's weights


def test_finetune_keeps_its_best_epoch_pending_until_the_checkpoint_that_records_it(glue_dir, tmp_path, monkeypatch):
    """finetune's best/ follows the same rule: a kill between a new best epoch and its checkpoint leaves
    the recorded epoch as the export, the resume drops the unrecorded one, and the output folder gets the
    model files without the identity file."""
    base = make_tiny_bert(tmp_path / "base", layers=2, heads=4, hidden=32, intermediate=64)
    _make_scores_rise(monkeypatch, finetune_module)
    real_save, saves = Checkpointer.save, itertools.count(1)

    def killed_at_the_second_checkpoint(self, *args, **kwargs):
        if next(saves) == 2:
            raise KeyboardInterrupt("killed")  # epoch 2 is staged as the best, its checkpoint not yet written
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", killed_at_the_second_checkpoint)
    out = tmp_path / "teacher"
    options = dict(FINETUNE_FAST, save_steps=100)  # checkpoints at the epoch ends only
    with pytest.raises(KeyboardInterrupt):
        finetune(task="mrpc", output=str(out), model=base, data_dir=glue_dir, **options)
    slot = ExportSlot(os.path.join(str(out) + ".inprogress", "best"))
    assert slot.committed_identity().startswith("train:1:") and slot.pending_identity().startswith("train:2:")

    real_recover, after_recover = ExportSlot.recover, []

    def watched_recover(self, identity):
        warning = real_recover(self, identity)
        after_recover.append((identity, self.committed_identity(), os.path.exists(self.pending)))
        return warning

    monkeypatch.setattr(Checkpointer, "save", real_save)
    monkeypatch.setattr(ExportSlot, "recover", watched_recover)
    result = finetune(task="mrpc", output=str(out), model=base, data_dir=glue_dir, resume=True, **options)
    recorded, committed, pending_left = after_recover[0]
    # the checkpoint names epoch 1: the pending epoch 2 is dropped, epoch 1 stays the export
    assert recorded.startswith("train:1:") and committed == recorded and not pending_left
    assert result["dev"]["epoch"] == 2  # the replayed epoch 2 scored highest and was exported
    assert (out / "model.safetensors").is_file() and not (out / "candidate.json").exists()
