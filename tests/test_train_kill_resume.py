"""A real `kill -9` in the middle of `ddk-fast finetune`, then `--resume`: the same final weights as
an uninterrupted run with the same seed (CPU)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from train_support import make_tiny_bert, safetensors_equal

ENTRY = "import sys; from ddk_fast.cli import main; sys.exit(main())"


def _cmd(model, glue_dir, out, *extra):
    return [sys.executable, "-c", ENTRY, "finetune", "--model", model, "--task", "mrpc", "--data-dir", glue_dir,
            "--output", str(out), "--epochs", "3", "--max-train-examples", "40", "--max-eval-examples", "16",
            "--batch-size", "8", "--max-seq-len", "32", "--lr", "0.001", "--save-steps", "1", "--no-progress",
            "--device", "cpu", *extra]


def _latest_step(out) -> int:
    pointer = os.path.join(str(out) + ".inprogress", "checkpoints", "LATEST")
    try:
        with open(pointer) as fh:
            return int(fh.read().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, glue_dir):
    model = make_tiny_bert(tmp_path / "base")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    full = tmp_path / "full"
    subprocess.run(_cmd(model, glue_dir, full), check=True, env=env, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(model, glue_dir, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _latest_step(killed) < 7 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    step_at_kill = _latest_step(killed)
    assert 7 <= step_at_kill < 15

    res = subprocess.run(_cmd(model, glue_dir, killed, "--resume"), env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    same, why = safetensors_equal(str(full / "model.safetensors"), str(killed / "model.safetensors"))
    assert same, why
    assert "resumed from" in (killed / "log.jsonl").read_text()
