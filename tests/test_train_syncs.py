"""Host syncs on the training path: the project's code reads device values back only at log steps,
checkpoints and epoch ends, plus one read per sampled structure in the search.

On a GPU every ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()`` and ``torch.nonzero`` of a device
tensor waits for the whole queue. The test runs ``compress`` (search + distillation) on CPU with
those calls counted wherever ddk_fast itself makes them, attributed to the training step they happen
in, and with ``may_read_on_host`` answering as it does for a CUDA tensor (the shortcuts that read a
value only because the tensor is in host memory are then off, as on a GPU).
"""
import sys
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from train_support import make_tiny_bert

import ddk_fast
from ddk_fast import _runtime
from ddk_fast.api import compress
from ddk_fast.errors import TrainingDiverged
from ddk_fast.runs.loop import FiniteWatch, TrainLoop

PROJECT_DIRS = tuple(str(Path(p).resolve()) for p in (Path(ddk_fast.__file__).parent,
                                                     Path(ddk_fast.__file__).parent.parent / "kernels"))
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "nonzero")
LOG_STEPS, SAVE_STEPS, STEPS_PER_EPOCH = 4, 3, 8
RUN = dict(max_train_examples=64, max_eval_examples=16, batch_size=8, eval_batch_size=16, max_seq_len=32, seq_len=32,
           search_epochs=1, distill_epochs=1, channel_granularity=8, latency_batch_size=2, latency_seq_len=16,
           latency_repeats=1, progress=False, save_steps=SAVE_STEPS, log_steps=LOG_STEPS, lr=1e-3,
           calibration_examples=8)


class SyncCounter:
    """Counts device-to-host reads made directly by project code, by the label active at the time."""

    def __init__(self):
        self.label = None
        self.events = defaultdict(list)  # label -> [(function, file:line)]

    def _record(self, name):
        if self.label is None:
            return
        caller = sys._getframe(2)
        path = str(Path(caller.f_code.co_filename).resolve())
        if path.startswith(PROJECT_DIRS):
            self.events[self.label].append((name, f"{Path(path).name}:{caller.f_lineno}"))

    @contextmanager
    def counting(self, monkeypatch):
        for name in READS:
            original = getattr(torch.Tensor, name)

            def wrapper(self_, *args, _original=original, _name=name, **kwargs):
                counter._record(_name)
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, wrapper)
        original_nonzero = torch.nonzero

        def nonzero(*args, **kwargs):
            counter._record("torch.nonzero")
            return original_nonzero(*args, **kwargs)

        monkeypatch.setattr(torch, "nonzero", nonzero)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: counter._record("cuda.synchronize"))
        counter = self
        yield self


def _label_steps(counter, monkeypatch):
    """Attribute every read between the start of step N and the start of the next step to N."""
    real = TrainLoop.run_epochs

    def run_epochs(self, loader, state, epochs, after_epoch, epoch_offset=0):
        step, save = self.step, self.save

        def labelled_step(batch, gstep, epoch):
            counter.label = (self.stage, gstep)
            return step(batch, gstep, epoch)

        def unlabelled(fn):
            def call(*args):
                before, counter.label = counter.label, None  # evaluation and checkpoints are not steps
                try:
                    return fn(*args)
                finally:
                    counter.label = before
            return call

        self.step, self.save = labelled_step, unlabelled(save)
        try:
            return real(self, loader, state, epochs, unlabelled(after_epoch), epoch_offset)
        finally:
            counter.label = None
            self.step, self.save = step, save

    monkeypatch.setattr(TrainLoop, "run_epochs", run_epochs)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", layers=2, heads=4, hidden=32, intermediate=64)


# the DDK objective (the ddk preset of distill/objectives.py), alone and with an attention term of the catalog
OBJECTIVES = {"ddk": {}, "catalog": {"attention_weight": 1.0}}


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def counted_run(request, teacher, glue_dir, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    counter = SyncCounter()
    try:
        # answer as for a CUDA tensor: the host-memory shortcuts are off, as on a GPU
        monkeypatch.setattr(_runtime, "may_read_on_host", lambda t: False)
        _label_steps(counter, monkeypatch)
        with counter.counting(monkeypatch):
            report = compress(**dict(RUN, **OBJECTIVES[request.param], teacher=teacher, task="mrpc",
                                     data_dir=glue_dir, output=str(tmp_path_factory.mktemp("run") / "student"),
                                     target="params=0.5"))
    finally:
        monkeypatch.undo()
    return counter, report


def _reads(counter, stage):
    return {step: events for (name, step), events in counter.events.items() if name == stage}


def _kind(step):
    """What the loop does after this step besides stepping: "epoch end", "log", "save" or "plain"."""
    if step % STEPS_PER_EPOCH == 0:
        return "epoch end"
    if step % LOG_STEPS == 0:
        return "log"
    return "save" if step % SAVE_STEPS == 0 else "plain"


def _stage_steps(stage):
    first = 1 if stage == "search" else STEPS_PER_EPOCH + 1
    return range(first, first + STEPS_PER_EPOCH)


def test_search_steps_read_once_per_sampled_structure(counted_run):
    counter, report = counted_run
    assert report["structure"]  # the run went through the search
    reads = _reads(counter, "search")
    plain = [s for s in _stage_steps("search") if _kind(s) == "plain"]
    assert len(plain) >= 2
    for step in plain:
        # the student's gates are sampled anew every step: their active units, one read for all layers
        assert [(fn, where.split(":")[0]) for fn, where in reads.get(step, [])] == [("tolist", "active.py")], \
            (step, reads.get(step))


def test_distill_steps_read_nothing_between_log_steps(counted_run):
    counter, _ = counted_run
    reads = _reads(counter, "distill")
    steps = _stage_steps("distill")
    plain = [s for s in steps if _kind(s) == "plain"]
    assert len(plain) >= 2
    for step in plain:
        assert reads.get(step, []) == [], (step, reads.get(step))
    # the counter does see this stage: its log steps read the logged values and the non-finite record
    assert all(reads.get(s) for s in steps if _kind(s) in ("log", "epoch end"))


def test_reads_per_step_do_not_grow_with_the_run(counted_run):
    counter, _ = counted_run
    for stage in ("search", "distill"):
        reads = _reads(counter, stage)
        by_kind = defaultdict(set)
        for step in _stage_steps(stage):
            by_kind[_kind(step)].add(len(reads.get(step, [])))
        assert all(len(counts) == 1 for counts in by_kind.values()), (stage, dict(by_kind))
        # a log step: structure (search), non-finite record, the logged values; an epoch end checks once more
        assert max(max(c) for c in by_kind.values()) <= 4, (stage, dict(by_kind))


def test_finite_watch_names_the_first_bad_step_without_reading_per_step(tmp_path, monkeypatch):
    """observe() stays on the device; check() names the first step whose value was not finite."""
    class Log:
        def log(self, *a, **k):
            pass

        def close(self):
            pass

    class Ctx:
        distributed = False

    watch = FiniteWatch(Ctx(), str(tmp_path), Log())
    counter = SyncCounter()
    counter.label = "observe"
    with counter.counting(monkeypatch):
        for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0], start=1):
            watch.observe(step, 0, "loss", torch.tensor(value))
            watch.observe(step, 0, "gradient norm", torch.tensor(float("inf") if step == 4 else 1.0))
    assert counter.events.get("observe", []) == []
    with pytest.raises(TrainingDiverged, match=r"loss is nan \(not finite\) at step 3 \(epoch 1\)"):
        watch.check()


def test_finite_watch_reports_the_gradient_norm_when_only_it_is_bad(tmp_path):
    class Log:
        def log(self, *a, **k):
            pass

        def close(self):
            pass

    class Ctx:
        distributed = False

    watch = FiniteWatch(Ctx(), str(tmp_path), Log())
    watch.observe(1, 0, "loss", torch.tensor(0.5))
    watch.observe(1, 0, "gradient norm", torch.tensor(1.0))
    watch.check()  # all finite: no error
    watch.observe(2, 0, "loss", torch.tensor(0.4))
    watch.observe(2, 0, "gradient norm", torch.tensor(float("inf")))
    with pytest.raises(TrainingDiverged, match=r"gradient norm is inf \(not finite\) at step 2"):
        watch.check()
