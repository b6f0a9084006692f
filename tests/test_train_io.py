"""Atomic writes and the output-folder rules: a failure never leaves a half-written result."""
import json
import os

import pytest

from ddk_fast.errors import UserError
from ddk_fast._io import atomic_directory, atomic_write, atomic_write_json
from ddk_fast.runs.rundir import finalize, prepare, run_dirs, stage_dir


def test_failed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(str(target), {"f1": 0.5})

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(str(target), broken)
    assert json.loads(target.read_text()) == {"f1": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary left behind


def test_failed_folder_build_keeps_the_old_folder(tmp_path):
    out = tmp_path / "student"
    with atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(out)) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("v2-partial")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["student"]
    with atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "b.txt"), "w").write("v3")
    assert os.listdir(out) == ["b.txt"]


def test_output_rules(tmp_path):
    dirs = run_dirs(str(tmp_path / "out"))
    assert prepare(dirs, overwrite=False, resume=False) == "fresh" and os.path.isdir(dirs.work)
    with pytest.raises(UserError, match="unfinished run"):
        prepare(dirs, overwrite=False, resume=False)
    assert prepare(dirs, overwrite=False, resume=True) == "resume"
    staged = stage_dir(dirs)
    open(os.path.join(staged, "model.safetensors"), "w").write("x")
    finalize(dirs, staged)
    assert not os.path.exists(dirs.work) and os.listdir(dirs.output) == ["model.safetensors"]
    with pytest.raises(UserError, match="--overwrite"):
        prepare(dirs, overwrite=False, resume=False)
    assert prepare(dirs, overwrite=False, resume=True) == "done"
    assert prepare(dirs, overwrite=True, resume=False) == "fresh"
    assert os.listdir(dirs.output) == ["model.safetensors"]  # replaced only when the new run finishes


def test_kept_checkpoints_do_not_count_as_an_unfinished_run(tmp_path):
    dirs = run_dirs(str(tmp_path / "out"))
    prepare(dirs, overwrite=False, resume=False)
    staged = stage_dir(dirs)
    open(os.path.join(staged, "x"), "w").write("x")
    finalize(dirs, staged, keep_work=True)
    assert os.path.isdir(dirs.work)
    assert prepare(dirs, overwrite=False, resume=True) == "done"
    with pytest.raises(UserError, match="--overwrite"):
        prepare(dirs, overwrite=False, resume=False)
