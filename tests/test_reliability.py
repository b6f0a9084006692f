"""Faults survived: damaged checkpoints, writes that fail half-way, two writers of one output, Ctrl-C
and bugs at the command line."""
import errno
import os
import subprocess
import sys

import pytest
import torch

from train_support import make_tiny_bert

import ddk_fast.runs.checkpoint as checkpoint
from ddk_fast.cli import main
from ddk_fast.errors import UserError
from ddk_fast.api import finetune, prune
from ddk_fast.errors import CheckpointWriteError, RunInterrupted

TINY = dict(task="mrpc", max_train_examples=24, max_eval_examples=8, batch_size=8, max_seq_len=32, epochs=2,
            save_steps=1, progress=False, lr=1e-3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("rel") / "bert", layers=1, heads=2, hidden=16, intermediate=32)


def _module(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    root = str(tmp_path / "ckpt")
    first = checkpoint.save_checkpoint(root, 1, _module(1), {"x": 1})
    latest = checkpoint.save_checkpoint(root, 2, _module(2), {"x": 2})
    assert checkpoint.latest_checkpoint(root) == latest
    weights = os.path.join(latest, "model.safetensors")
    with open(weights, "r+b") as fh:  # flip bytes in place: the size stays, the digest does not
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x01\x02\x03")
    said = []
    assert checkpoint.latest_checkpoint(root, warn=said.append) == first
    assert len(said) == 1 and "does not match its recorded sha256" in said[0]
    os.remove(os.path.join(first, "state.pt"))
    assert checkpoint.latest_checkpoint(root, warn=said.append) is None and "state.pt is missing" in said[-1]


def test_resume_after_a_truncated_checkpoint_continues_from_the_intact_one(teacher, glue_dir, tmp_path):
    out = tmp_path / "t"
    with pytest.raises(RunInterrupted):
        finetune(output=str(out), model=teacher, data_dir=glue_dir, stop_after_steps=3, **TINY)
    ckpts = os.path.join(str(out) + ".inprogress", "checkpoints")
    newest = checkpoint.latest_checkpoint(ckpts)
    older = sorted(d for d in os.listdir(ckpts) if d.startswith("step-"))[-2]
    path = os.path.join(newest, "state.pt")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    result = finetune(output=str(out), model=teacher, data_dir=glue_dir, resume=True, **TINY)
    assert result["dev"] is not None
    log = open(os.path.join(out, "log.jsonl"), encoding="utf-8").read()
    assert f"{os.path.basename(newest)} is damaged" in log and f"resumed from {os.path.join(ckpts, older)}" in log


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(teacher, glue_dir, tmp_path, monkeypatch):
    out = tmp_path / "full"
    real, calls = checkpoint.save_tensors, []

    def disk_full_on_third(path, tensors):
        calls.append(path)
        if len(calls) == 3:
            real(path, tensors)  # the file is half there when the disk fills up
            with open(path, "r+b") as fh:
                fh.truncate(10)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors)

    monkeypatch.setattr(checkpoint, "save_tensors", disk_full_on_third)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*step-00000002.*intact"):
        finetune(output=str(out), model=teacher, data_dir=glue_dir, **TINY)
    ckpts = os.path.join(str(out) + ".inprogress", "checkpoints")
    intact = checkpoint.latest_checkpoint(ckpts)
    assert intact.endswith("step-00000002") and checkpoint.checkpoint_problem(intact) is None
    assert not any(d.endswith(".partial") for d in os.listdir(ckpts))
    assert not out.exists()  # no half result either
    monkeypatch.setattr(checkpoint, "save_tensors", real)
    assert finetune(output=str(out), model=teacher, data_dir=glue_dir, resume=True, **TINY)["dev"] is not None


HOLD = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid()}).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_two_writers_of_one_output_cannot_both_win(teacher, glue_dir, tmp_path, capsys):
    out = tmp_path / "p"
    lock = str(out) + ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, lock], stdout=subprocess.PIPE, text=True)
    options = dict(calibration_examples=8, max_eval_examples=8, batch_size=8, max_seq_len=32, seq_len=32,
                   latency_batch_size=2, latency_seq_len=16, latency_repeats=1, progress=False)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"being written by process {holder.pid}"):
            prune(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), **options)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    report = prune(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), **options)  # stale now
    assert report["output"] == str(out) and not os.path.exists(lock)
    assert f"taking over the stale lock {lock} (process {holder.pid} is gone)" in capsys.readouterr().err


def test_prune_keeps_another_commands_unfinished_run(teacher, glue_dir, tmp_path):
    out = tmp_path / "c"
    ckpt = tmp_path / "c.inprogress" / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    options = dict(calibration_examples=8, max_eval_examples=8, batch_size=8, max_seq_len=32, seq_len=32,
                   latency_batch_size=2, latency_seq_len=16, latency_repeats=1, progress=False)
    with pytest.raises(UserError, match="unfinished run"):
        prune(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), **options)
    assert ckpt.is_dir()  # a compress run's checkpoints survive
    nested = prune(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "new" / "deep" / "p"),
                   **options)  # parent folders that do not exist yet are created
    assert os.path.isdir(nested["output"])


def test_ctrl_c_names_the_step_and_the_resume_flag(teacher, glue_dir, tmp_path, capsys, monkeypatch):
    import ddk_fast.pipelines.finetune as ft

    real = ft.FiniteWatch.observe

    def interrupt_at_step_4(self, step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return real(self, step, *args)

    monkeypatch.setattr(ft.FiniteWatch, "observe", interrupt_at_step_4)
    rc = main(["finetune", "--model", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output",
               str(tmp_path / "c"), "--max-train-examples", "48", "--batch-size", "8", "--max-seq-len", "32",
               "--log-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("ddk-fast finetune: interrupted at step 3") and "--resume" in err[-1]


def test_a_bug_shows_its_traceback_and_the_log(teacher, glue_dir, tmp_path, capsys, monkeypatch):
    import ddk_fast.pipelines.finetune as ft

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ft.FiniteWatch, "observe", broken)
    rc = main(["finetune", "--model", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output",
               str(tmp_path / "b"), "--max-train-examples", "16", "--batch-size", "8", "--max-seq-len", "32",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "RuntimeError: a bug" in err
    assert "internal error" in err and os.path.join(str(tmp_path / "b") + ".inprogress", "log.jsonl") in err
