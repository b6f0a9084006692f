"""Intra-op CPU threads of a run: --threads, else OMP_NUM_THREADS, else the physical cores this process
may use; applied at the start of every run command and recorded in its log and report."""
import json

import pytest
import torch

from train_support import make_tiny_bert

import ddk_fast
from ddk_fast.cli import build_parser, main
from ddk_fast.errors import UserError
from ddk_fast.runs import threads as threads_mod
from ddk_fast.pipelines.configs import CompressConfig, FinetuneConfig, PruneConfig
from ddk_fast.runs.config import build_config
from ddk_fast.pipelines.lm import build_lm_config
from ddk_fast.pipelines.distill import build_distill_config
from ddk_fast.runs.threads import (MAX_DEFAULT_THREADS, cgroup_cpu_limit, default_threads, physical_cores,
                                    resolve_threads, usable_cpus)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _sys_cpus(root, siblings):
    for cpu, text in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(text + "\n")
    return str(root)


def test_hyper_thread_siblings_count_as_one_core(tmp_path):
    root = _sys_cpus(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert physical_cores([0, 1, 2, 3], root) == 2
    assert physical_cores([0, 2], root) == 1  # both threads of one core
    assert physical_cores([0, 1, 7], root) == 3  # cpu7 has no topology files: counted as its own core


def test_a_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(v2)) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "v1")) == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(tmp_path / "v1")) is None


def test_the_default_is_the_usable_physical_cores_within_quota_and_shared_by_local_ranks(monkeypatch):
    monkeypatch.setattr(threads_mod, "usable_cpus", lambda: list(range(96)))
    monkeypatch.setattr(threads_mod, "physical_cores", lambda cpus: len(cpus) // 2)
    monkeypatch.setattr(threads_mod, "cgroup_cpu_limit", lambda: None)
    assert default_threads({}) == MAX_DEFAULT_THREADS  # 48 cores, capped
    assert default_threads({"LOCAL_WORLD_SIZE": "4"}) == 12
    monkeypatch.setattr(threads_mod, "cgroup_cpu_limit", lambda: 6.5)
    assert default_threads({}) == 6
    assert default_threads({"LOCAL_WORLD_SIZE": "8"}) == 1  # never 0
    # on this machine: within what the affinity allows
    monkeypatch.undo()
    assert 1 <= default_threads({}) <= min(len(usable_cpus()), MAX_DEFAULT_THREADS)


def test_the_flag_beats_the_environment_which_beats_the_default():
    assert resolve_threads(None, {}) == (default_threads({}), "default")
    assert resolve_threads(None, {"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    assert resolve_threads(None, {"OMP_NUM_THREADS": " 5,2 "}) == (5, "OMP_NUM_THREADS")  # outer level
    assert resolve_threads(2, {"OMP_NUM_THREADS": "3"}) == (2, "--threads")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UserError, match=r"--threads .*: expected a positive integer"):
            resolve_threads(bad, {})
    for bad in ("abc", "0"):
        with pytest.raises(UserError, match=rf"OMP_NUM_THREADS={bad!r}: expected a positive integer"):
            resolve_threads(None, {"OMP_NUM_THREADS": bad})


def test_every_run_command_takes_the_flag():
    parser = build_parser()
    for argv in (["finetune"], ["compress"], ["compress", "--task", "lm"], ["prune"], ["distill"],
                 ["evaluate", "--model", "m"], ["sweep"]):
        assert parser.parse_args(argv + ["--threads", "3"]).threads == 3, argv
        assert parser.parse_args(argv).threads is None, argv
    for cls, command in ((FinetuneConfig, "finetune"), (CompressConfig, "compress"), (PruneConfig, "prune")):
        assert build_config(cls, command, {"threads": 3}).threads == 3
    assert build_distill_config({"threads": 3}).threads == build_lm_config({"threads": 3}).threads == 3


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rows = ["sentence\tlabel"] + [f"{w} movie {i}\t{i % 2}" for i, w in enumerate(["good", "bad", "fine", "dull"] * 4)]
    for name in ("train.tsv", "dev.tsv"):
        (root / "SST-2" / name).write_text("\n".join(rows) + "\n")
    return str(root), make_tiny_bert(root / "teacher", num_labels=2)


def test_evaluate_sets_torch_threads_from_the_flag_else_the_environment(sst2, monkeypatch, capsys):
    data_dir, teacher = sst2
    args = ["evaluate", "--model", teacher, "--task", "sst2", "--data-dir", data_dir, "--max-seq-len", "16"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert main(args + ["--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert json.loads(capsys.readouterr().out)["threads"] == {"intra_op": 2, "source": "--threads"}
    assert main(args) == 0  # no flag: OMP_NUM_THREADS wins over the default
    assert torch.get_num_threads() == 1
    assert json.loads(capsys.readouterr().out)["threads"] == {"intra_op": 1, "source": "OMP_NUM_THREADS"}
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert main(args) == 0
    assert torch.get_num_threads() == default_threads({})
    assert json.loads(capsys.readouterr().out)["threads"]["source"] == "default"
    assert main(args + ["--threads", "0"]) == 2
    assert "--threads 0: expected a positive integer" in capsys.readouterr().err
    # the Python API takes the same option
    assert ddk_fast.evaluate(teacher, "sst2", data_dir, max_seq_len=16, threads=2)["threads"]["source"] == "--threads"
    assert torch.get_num_threads() == 2


def test_finetune_records_the_threads_in_its_log_and_metrics(sst2, tmp_path, monkeypatch, capsys):
    data_dir, teacher = sst2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "teacher"
    assert main(["finetune", "--model", teacher, "--task", "sst2", "--data-dir", data_dir, "--output", str(out),
                 "--epochs", "1", "--batch-size", "8", "--max-seq-len", "16", "--no-progress", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    record = {"intra_op": 2, "source": "--threads"}
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["threads"] == record
    assert json.loads((out / "metrics.json").read_text())["threads"] == record
