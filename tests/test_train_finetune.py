"""Teacher fine-tuning: outputs, exact resume, refusal rules, NaN handling, bad input."""
import json
import os

import pytest

from train_support import make_tiny_bert, safetensors_equal

from ddk_fast.errors import UserError
from ddk_fast.api import finetune
from ddk_fast.errors import RunInterrupted, TrainingDiverged

FAST = dict(max_train_examples=40, max_eval_examples=24, batch_size=8, eval_batch_size=16, max_seq_len=32,
            epochs=2, lr=1e-3, progress=False, save_steps=2)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def test_finetune_writes_standard_folder(tiny_base, glue_dir, tmp_path):
    out = tmp_path / "teacher"
    result = finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, **FAST)
    assert set(result["dev"]) >= {"f1", "accuracy", "score"}
    assert len(result["history"]) == 2
    for name in ("config.json", "model.safetensors", "metrics.json", "log.jsonl", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not os.path.exists(str(out) + ".inprogress")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev"]["f1"] == pytest.approx(max(h["f1"] for h in metrics["history"]))
    # loads with stock transformers
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.num_labels == 2 and model.config.finetuning_task == "mrpc"
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and "eval" in events and events[-1] in ("done", "info")


@pytest.mark.slow
def test_resume_reaches_the_same_weights(tiny_base, glue_dir, tmp_path):
    full = tmp_path / "full"
    finetune(task="mrpc", output=str(full), model=tiny_base, data_dir=glue_dir, **FAST)
    part = tmp_path / "part"
    # 40 examples / 8 = 5 steps per epoch; stop inside epoch 2, one step after the checkpoint at step 6
    with pytest.raises(RunInterrupted):
        finetune(task="mrpc", output=str(part), model=tiny_base, data_dir=glue_dir, stop_after_steps=7, **FAST)
    assert not part.exists() and os.path.isdir(str(part) + ".inprogress")
    with pytest.raises(UserError, match="--resume"):
        finetune(task="mrpc", output=str(part), model=tiny_base, data_dir=glue_dir, **FAST)
    finetune(task="mrpc", output=str(part), model=tiny_base, data_dir=glue_dir, resume=True, **FAST)
    same, why = safetensors_equal(str(full / "model.safetensors"), str(part / "model.safetensors"))
    assert same, why
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert a["history"] == b["history"]


def test_resume_with_changed_settings_is_refused(tiny_base, glue_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, stop_after_steps=3, **FAST)
    with pytest.raises(UserError, match="lr"):
        finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, resume=True,
                 **dict(FAST, lr=5e-4))


def test_existing_output_is_refused_then_overwritten(tiny_base, glue_dir, tmp_path):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="--overwrite"):
        finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, **FAST)
    assert (out / "keep.txt").read_text() == "precious"
    finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, overwrite=True,
             **dict(FAST, epochs=1))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_nan_loss_names_step_and_keeps_checkpoint(tiny_base, glue_dir, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"loss is nan .*step 5 .*step-00000004"):
        finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=glue_dir, fault_nan_at_step=5, **FAST)
    ckpts = os.listdir(os.path.join(str(out) + ".inprogress", "checkpoints"))
    assert "step-00000004" in ckpts and not out.exists()


def test_wrong_label_count_is_refused(tmp_path, glue_dir):
    three = make_tiny_bert(tmp_path / "three", num_labels=3)
    with pytest.raises(UserError, match="3-label classifier but task mrpc needs 2"):
        finetune(task="mrpc", output=str(tmp_path / "o"), model=three, data_dir=glue_dir, **FAST)


@pytest.mark.parametrize("overrides, message", [
    (dict(task="nope"), "unknown task 'nope'"),
    (dict(max_seq_len=512), "above the model's maximum of 64"),
    (dict(epochs=0), "--epochs 0"),
    (dict(data_dir="/nonexistent/glue"), "not a folder"),
])
def test_bad_input_is_one_clear_error(tiny_base, glue_dir, tmp_path, overrides, message):
    kwargs = dict(FAST, task="mrpc", output=str(tmp_path / "o"), model=tiny_base, data_dir=glue_dir)
    kwargs.update(overrides)
    with pytest.raises(UserError, match=message):
        finetune(**kwargs)


def test_malformed_tsv_is_one_clear_error(tiny_base, glue_dir, tmp_path):
    bad = tmp_path / "glue" / "MRPC"
    bad.mkdir(parents=True)
    lines = open(os.path.join(glue_dir, "MRPC", "train.tsv"), encoding="utf-8-sig").read().splitlines()[:30]
    lines[7] = lines[7].replace("\t", " ", 2)  # a row with too few columns
    (bad / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (bad / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="train.tsv"):
        finetune(task="mrpc", output=str(tmp_path / "o"), model=tiny_base, data_dir=str(tmp_path / "glue"), **FAST)


def test_failed_start_leaves_no_unfinished_run(tiny_base, glue_dir, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UserError):
        finetune(task="mrpc", output=str(out), model=tiny_base, data_dir=str(tmp_path / "nodata"), **FAST)
    assert not os.path.exists(str(out) + ".inprogress") and not out.exists()
    with pytest.raises(UserError, match="not a folder"):
        finetune(task="mrpc", output=str(out), model="./no/such/model", data_dir=glue_dir, **FAST)
    assert not os.path.exists(str(out) + ".inprogress")
