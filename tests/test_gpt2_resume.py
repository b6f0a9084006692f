"""GPT-2 compression (``compress --task lm``) stopped during the search and again during distillation,
then resumed: the same student, history and structure as an uninterrupted run; and the output rules
(an unfinished run is neither overwritten silently nor resumed with other settings)."""
import json
import os

import pytest

from conftest import GLUE_PATH
from train_support import safetensors_equal, write_sst2_text

SST2 = os.path.join(GLUE_PATH, "SST-2", "train.tsv")
pytestmark = [pytest.mark.skipif(not os.path.isfile(SST2), reason="SST-2 train.tsv not present"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ddk_fast.pipelines.lm_teacher import pretrain_gpt2

    folder = tmp_path_factory.mktemp("lm")
    train, dev = write_sst2_text(SST2, folder, 600, 100)
    teacher = pretrain_gpt2(train, str(folder / "teacher"), vocab_size=300, n_layer=2, n_embd=32, n_head=4,
                            block_size=16, steps=30, batch_size=8, log=None)["output"]
    return teacher, train, dev


def _compress(setup, out, **extra):
    from ddk_fast.pipelines.lm import build_lm_config, run_compress_lm

    teacher, train, dev = setup
    flags = dict(teacher=teacher, train_file=train, eval_file=dev, output=str(out), target="params=0.5",
                 search_steps=6, distill_steps=6, block_size=16, batch_size=8, max_train_examples=96,
                 max_eval_examples=16, channel_granularity=16, save_steps=2, log_steps=1, progress=False,
                 device="cpu", kd={"query_relation_weight": 0.5, "relation_heads": 2}, **extra)
    return run_compress_lm(build_lm_config(flags))


def test_stop_in_search_and_in_distill_then_resume_equals_uninterrupted(setup, tmp_path):
    from ddk_fast.errors import RunInterrupted

    reference = _compress(setup, tmp_path / "ref")
    out = tmp_path / "resumed"
    with pytest.raises(RunInterrupted):
        _compress(setup, out, stop_after_steps=3)               # search step 3: resumes from step 2
    assert not out.exists() and (tmp_path / "resumed.inprogress" / "checkpoints" / "LATEST").is_file()
    with pytest.raises(RunInterrupted):
        _compress(setup, out, resume=True, stop_after_steps=9)  # distill step 3: resumes from step 2 of it
    report = _compress(setup, out, resume=True)
    same, why = safetensors_equal(str(tmp_path / "ref" / "model.safetensors"), str(out / "model.safetensors"))
    assert same, why
    assert report["resumed"] and not reference["resumed"]
    assert report["history"] == reference["history"] and len(report["history"]) == 6
    assert report["structure"] == reference["structure"] and report["search"] == reference["search"]
    assert report["student_dev"] == reference["student_dev"]
    assert not (tmp_path / "resumed.inprogress").exists()
    log = (out / "log.jsonl").read_text()
    assert log.count('"event": "resume"') == 2


def test_stop_at_the_stage_boundary_then_resume(setup, tmp_path):
    """The boundary checkpoint holds the pruned student only (no optimizer yet)."""
    from ddk_fast.errors import RunInterrupted

    reference = _compress(setup, tmp_path / "ref")
    out = tmp_path / "b"
    with pytest.raises(RunInterrupted):
        _compress(setup, out, stop_after_steps=6)
    latest = tmp_path / "b.inprogress" / "checkpoints" / "LATEST"
    assert latest.read_text().strip() == "step-00000006"  # the boundary checkpoint, not the last periodic one
    report = _compress(setup, out, resume=True)
    same, why = safetensors_equal(str(tmp_path / "ref" / "model.safetensors"), str(out / "model.safetensors"))
    assert same, why
    assert report["pruned_dev"] == reference["pruned_dev"]
    assert "step-00000006" in (out / "log.jsonl").read_text()  # resumed from the boundary


def test_unfinished_run_is_kept_and_settings_must_match(setup, tmp_path):
    from ddk_fast.errors import UserError
    from ddk_fast.errors import RunInterrupted

    out = tmp_path / "u"
    with pytest.raises(RunInterrupted):
        _compress(setup, out, stop_after_steps=2)
    with pytest.raises(UserError, match="unfinished run"):
        _compress(setup, out)
    with pytest.raises(UserError, match="different settings.*lr"):
        _compress(setup, out, resume=True, lr=1e-3)
    done = _compress(setup, out, resume=True)
    again = _compress(setup, out, resume=True)  # nothing left to do: the finished result is returned
    assert json.loads((out / "report.json").read_text())["student_dev"] == done["student_dev"] == again["student_dev"]
    with pytest.raises(UserError, match="exists and is not empty"):
        _compress(setup, out)
