"""`compress`: DDK end to end on a tiny random BERT teacher and real MRPC/STS-B rows.

One CLI run is shared by several checks; resume, the baseline, the alternative search and the
refusals each have their own small run.
"""
import json
import os

import pytest
import torch

from train_support import make_tiny_bert, safetensors_equal

from ddk_fast.cli import main
from ddk_fast.errors import UserError
from ddk_fast.api import compress
from ddk_fast.errors import RunInterrupted, TrainingDiverged

FAST = dict(max_train_examples=32, max_eval_examples=16, batch_size=8, eval_batch_size=16, max_seq_len=32, seq_len=32,
            search_epochs=1, distill_epochs=1, channel_granularity=8, latency_batch_size=2, latency_seq_len=16,
            latency_repeats=1, progress=False, save_steps=2, lr=1e-3)
CLI_FLAGS = ["--max-train-examples", "32", "--max-eval-examples", "16", "--batch-size", "8", "--eval-batch-size", "16",
             "--max-seq-len", "32", "--seq-len", "32", "--search-epochs", "1", "--distill-epochs", "1",
             "--latency-batch-size", "2", "--latency-seq-len", "16", "--save-steps", "2", "--lr", "0.001",
             "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", layers=2, heads=4, hidden=32, intermediate=64)


@pytest.fixture(scope="module")
def cli_run(teacher, glue_dir, tmp_path_factory):
    """`ddk-fast compress` through the CLI, with a YAML file for the options without flags."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "compress.yaml"
    cfg.write_text("channel_granularity: 8\nlatency_repeats: 1\nsearch-epochs: 5\n")
    out = root / "student"
    rc = main(["compress", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "params=0.5",
               "--output", str(out), "--config", str(cfg), *CLI_FLAGS])
    return rc, out


def test_cli_compress_writes_export_and_report(cli_run, capsys):
    rc, out = cli_run
    assert rc == 0
    for name in ("config.json", "model.safetensors", "modeling_ddk_bert.py", "structure.json", "report.json",
                 "structure.png", "curves.png", "log.jsonl", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert os.listdir(out / "tensorboard")
    assert not os.path.exists(str(out) + ".inprogress")
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["search_epochs"] == 1  # the flag beats the YAML file
    assert report["config"]["channel_granularity"] == 8  # from the YAML file
    assert report["task"] == "mrpc" and report["metric_names"] == ["f1", "accuracy"]
    assert report["params"]["ratio"] <= 0.5 + 1e-9
    assert report["params"]["student"] < report["params"]["teacher"]
    assert 0 < report["flops"]["ratio"] <= 1 and report["flops"]["seq_len"] == 32
    assert report["latency"]["teacher_ms"] > 0 and report["latency"]["student_ms"] > 0
    assert set(report["teacher_dev"]) >= {"f1", "accuracy"} and set(report["student_dev"]) >= {"f1", "accuracy"}
    st = report["structure"]
    assert len(st["heads"]) == 2 and all(0 <= h <= 4 for h in st["heads"]) and all(f % 8 == 0 for f in st["ffn"])
    stages = [h["stage"] for h in report["history"]]
    assert stages == ["oneshot", "search", "distill"]  # the default start is the one-shot structure
    events = {json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()}
    assert {"start", "search", "pruned", "distill", "eval", "done"} <= events


def test_export_evaluates_to_the_reported_score(cli_run, glue_dir, capsys):
    _, out = cli_run
    report = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(out), "--task", "mrpc", "--data-dir", glue_dir, "--max-eval-examples", "16"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["kind"] == "pruned"
    assert printed["metrics"]["f1"] == pytest.approx(report["student_dev"]["f1"], abs=1e-9)
    from ddk_fast.export import load_pruned

    model = load_pruned(str(out))
    assert model.num_heads == report["structure"]["heads"]
    assert model.intermediate_sizes == report["structure"]["ffn"]


@pytest.mark.slow
def test_resume_across_both_stages_reaches_the_same_student(cli_run, teacher, glue_dir, tmp_path):
    _, reference = cli_run
    out = tmp_path / "student"
    kwargs = dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target="params=0.5", output=str(out))
    # 32 examples / 8 = 4 steps per stage; checkpoints at steps 2, 4 (stage boundary), 6, 8
    with pytest.raises(RunInterrupted):
        compress(**kwargs, stop_after_steps=3)           # killed during the search
    with pytest.raises(RunInterrupted):
        compress(**kwargs, resume=True, stop_after_steps=7)  # killed during distillation
    report = compress(**kwargs, resume=True)
    same, why = safetensors_equal(str(reference / "model.safetensors"), str(out / "model.safetensors"))
    assert same, why
    ref = json.loads((reference / "report.json").read_text())
    assert report["history"] == ref["history"] and report["structure"] == ref["structure"]


def _as_written_before_the_objective_record(checkpoint: str) -> None:
    """Rewrite a checkpoint in the layout of the DDK objective as a module of its own: its state at
    ``objective.X`` instead of ``objective.terms.0.X``, and no ``objective`` record in meta.json."""
    from safetensors.torch import load_file, save_file

    from ddk_fast.runs.checkpoint import file_digest

    weights = os.path.join(checkpoint, "model.safetensors")
    tensors = {k.replace("objective.terms.0.", "objective."): v for k, v in load_file(weights).items()}
    assert any(k.startswith("objective.fusion.gates.") for k in tensors)  # the learned gate is in the state
    save_file(tensors, weights)
    meta_path = os.path.join(checkpoint, "meta.json")
    meta = json.loads(open(meta_path).read())
    assert meta.pop("objective")[0] == "ddk_hidden"
    meta["files"]["model.safetensors"] = file_digest(weights)
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)


def _latest(out) -> str:
    root = os.path.join(str(out) + ".inprogress", "checkpoints")
    return os.path.join(root, open(os.path.join(root, "LATEST")).read().strip())


def test_checkpoint_of_the_former_objective_layout_resumes_to_the_same_student(teacher, glue_dir, tmp_path):
    kwargs = dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target="params=0.5", fusion="learned")
    whole = compress(**kwargs, output=str(tmp_path / "whole"))
    out = tmp_path / "resumed"
    with pytest.raises(RunInterrupted):
        compress(**kwargs, output=str(out), stop_after_steps=3)  # checkpoint of step 2, in the search
    _as_written_before_the_objective_record(_latest(out))
    resumed = compress(**kwargs, output=str(out), resume=True)
    same, why = safetensors_equal(str(tmp_path / "whole" / "model.safetensors"), str(out / "model.safetensors"))
    assert same, why
    # the export may be the one-shot student, made before any checkpoint: the final weights must agree
    assert resumed["final_weights_sha256"] == whole["final_weights_sha256"]
    # with catalog terms the former hidden term was another one: such a checkpoint is refused
    kd_out = tmp_path / "kd"
    with pytest.raises(RunInterrupted):
        compress(**kwargs, output=str(kd_out), kd="attention_weight=1", stop_after_steps=3)
    _as_written_before_the_objective_record(_latest(kd_out))
    with pytest.raises(UserError, match="earlier version whose --kd objective matched hidden states differently"):
        compress(**kwargs, output=str(kd_out), kd="attention_weight=1", resume=True)


def test_uniform_baseline_meets_budget_with_equal_widths(teacher, glue_dir, tmp_path):
    report = compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target="flops=0.6",
                             output=str(tmp_path / "u"), fixed_structure="uniform"))
    st = report["structure"]
    assert len(set(st["heads"])) == 1 and len(set(st["ffn"])) == 1
    assert report["flops"]["ratio"] <= 0.6 + 1e-9 and report["method"] == "uniform"
    assert [h["stage"] for h in report["history"]] == ["distill", "distill"]  # search + distill epochs


def test_hard_concrete_search_on_regression(tmp_path, glue_dir):
    teacher = make_tiny_bert(tmp_path / "stsb_teacher", num_labels=1, problem_type="regression")
    report = compress(**dict(FAST, teacher=teacher, task="stsb", data_dir=glue_dir, target="flops=0.5",
                             output=str(tmp_path / "s"), search="hard_concrete"))
    assert report["flops"]["ratio"] <= 0.5 + 1e-9
    assert set(report["student_dev"]) >= {"pearson", "spearman"} and report["method"] == "ddk-hard_concrete"


def test_nan_during_search_names_step_and_keeps_checkpoint(teacher, glue_dir, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"loss is nan .*step 3 .*step-00000002"):
        compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), fault_nan_at_step=3))
    assert not out.exists()
    assert "step-00000002" in os.listdir(os.path.join(str(out) + ".inprogress", "checkpoints"))


def _save_model(folder, model, tok_from):
    from transformers import AutoTokenizer

    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(tok_from).save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("target, message", [
    ("params=1.5", "in \\(0, 1\\]"),
    ("params=0", "in \\(0, 1\\]"),
    ("flops=abc", "not a number"),
    ("size=0.5", "'params', 'flops' or 'latency'"),
    ("params=0.0001", "below the minimum achievable params ratio"),
])
def test_bad_target_is_refused_before_any_work(teacher, glue_dir, tmp_path, target, message):
    out = tmp_path / "o"
    with pytest.raises(UserError, match=message):
        compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target=target, output=str(out)))
    assert not out.exists() and not os.path.exists(str(out) + ".inprogress")


def test_bad_teachers_are_refused(tmp_path, glue_dir, teacher):
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertConfig, BertModel

    tiny = dict(vocab_size=30522)
    no_head = _save_model(tmp_path / "nohead", BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                     num_attention_heads=2, intermediate_size=32,
                                                                     **tiny)), teacher)
    albert = _save_model(tmp_path / "albert", AlbertForSequenceClassification(
        AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, **tiny)), teacher)
    three = make_tiny_bert(tmp_path / "three", num_labels=3)
    cases = [(no_head, "no sequence-classification head"),
             (albert, r"architecture 'albert' is not supported \(ALBERT shares one set of layer weights"),
             (three, "3-label classifier but task mrpc needs 2"), (str(tmp_path / "missing"), "is not a folder")]
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            compress(**dict(FAST, teacher=path, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--seq-len 128 is above the model's maximum of 64"):
        compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "o"),
                        seq_len=128))
    with pytest.raises(UserError, match="unknown task"):
        compress(**dict(FAST, teacher=teacher, task="mnli2", data_dir=glue_dir, output=str(tmp_path / "o")))
    assert not os.path.exists(str(tmp_path / "o") + ".inprogress")


def test_cli_bad_target_exits_2(teacher, tmp_path, capsys):
    rc = main(["compress", "--teacher", teacher, "--task", "mrpc", "--target", "params=2", "--output",
               str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--target" in err[0]


def test_bad_data_leaves_no_unfinished_run(teacher, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UserError, match="not a folder"):
        compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=str(tmp_path / "nodata"), output=str(out)))
    assert not os.path.exists(str(out) + ".inprogress") and not out.exists()


def test_kd_catalog_terms_join_the_ddk_objective(teacher, glue_dir, tmp_path, capsys):
    out = tmp_path / "kd"
    rc = main(["compress", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "params=0.6",
               "--output", str(out), "--kd", "attention_weight=1,value_relation_weight=0.5", "--log-steps", "1",
               *CLI_FLAGS])
    assert rc == 0, capsys.readouterr().err
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    search_rows = [r for r in logged if r["event"] == "search"]
    assert search_rows and {"attention", "value_relation", "ddk_hidden", "pred", "task"} <= set(search_rows[0])
    assert json.loads((out / "report.json").read_text())["params"]["ratio"] <= 0.6 + 1e-9


def test_malformed_kd_is_refused_before_any_work(teacher, glue_dir, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UserError, match="unknown option"):
        compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(out), kd="atention_weight=1"))
    assert not os.path.exists(str(out) + ".inprogress")


def test_progressive_search_reaches_budget(teacher, glue_dir, tmp_path):
    report = compress(**dict(FAST, teacher=teacher, task="mrpc", data_dir=glue_dir, target="flops=0.5",
                             output=str(tmp_path / "p"), search="progressive", log_steps=1))
    assert report["flops"]["ratio"] <= 0.5 + 1e-9 and report["method"] == "ddk-progressive"
    ratios = [json.loads(line).get("ratio") for line in open(os.path.join(str(tmp_path / "p"), "log.jsonl"))
              if '"event": "search"' in line]
    assert ratios[0] > ratios[-1]  # the indicators fade over the search
