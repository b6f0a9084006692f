"""`ddk-fast finetune / evaluate` through the real entry point: exit codes and one-line errors."""
import json
import subprocess
import sys

import pytest

from train_support import make_tiny_bert

from ddk_fast.cli import main


def _run(args, capsys):
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_unknown_task_exits_2_with_one_line(tmp_path, capsys):
    rc, out, err = _run(["finetune", "--task", "nope", "--output", str(tmp_path / "o")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unknown task 'nope'" in lines[0] and lines[0].startswith("ddk-fast finetune: error:")


def test_finetune_then_evaluate_cli(tmp_path, glue_dir, capsys):
    base = make_tiny_bert(tmp_path / "base")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nbatch-size: 8\nmax_train_examples: 24\nmax_eval_examples: 16\nmax_seq_len: 32\n"
                   "lr: 0.001\n")
    out = tmp_path / "teacher"
    rc, stdout, err = _run(["finetune", "--model", base, "--task", "MRPC", "--data-dir", glue_dir, "--output",
                            str(out), "--config", str(cfg), "--epochs", "2", "--no-progress"], capsys)
    assert rc == 0, err
    printed = json.loads(stdout)
    assert printed["task"] == "mrpc" and "f1" in printed["dev"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["batch_size"] == 8  # flag beats file
    assert len(metrics["history"]) == 2
    rc, stdout, err = _run(["evaluate", "--model", str(out), "--task", "mrpc", "--data-dir", glue_dir,
                            "--max-eval-examples", "16", "--output", str(tmp_path / "m.json")], capsys)
    assert rc == 0, err
    ev = json.loads(stdout)
    assert ev["metrics"]["f1"] == pytest.approx(metrics["dev"]["f1"])
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == ev["metrics"]
    # without --task: the task the run recorded (metrics.json)
    rc, stdout, err = _run(["evaluate", "--model", str(out), "--data-dir", glue_dir, "--max-eval-examples", "16"],
                           capsys)
    assert rc == 0, err
    assert json.loads(stdout)["task"] == "mrpc" and json.loads(stdout)["metrics"] == ev["metrics"]


def test_unknown_config_key_is_refused(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochz: 3\n")
    rc, _, err = _run(["finetune", "--task", "mrpc", "--output", str(tmp_path / "o"), "--config", str(cfg)], capsys)
    assert rc == 2 and "unknown option(s) epochz" in err


def test_console_script_runs(tmp_path):
    # the console entry point itself (``python -m ddk_fast.cli``: tests/test_cli_parser.py)
    proc = subprocess.run([sys.executable, "-c", "import sys; from ddk_fast.cli import main; sys.exit(main())",
                           "evaluate", "--model", str(tmp_path / "missing"),
                           "--task", "mrpc"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ddk-fast evaluate: error:")
    assert "is not a folder" in proc.stderr
