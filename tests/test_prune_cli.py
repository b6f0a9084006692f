"""`ddk-fast prune`: one-shot pruning end to end on a tiny random BERT teacher and real MRPC rows."""
import json
import os

import pytest

from train_support import make_tiny_bert

from ddk_fast.cli import main
from ddk_fast.export import load_pruned
from ddk_fast.search import CostModel

FLAGS = ["--max-eval-examples", "16", "--batch-size", "8", "--eval-batch-size", "16", "--max-seq-len", "32",
         "--seq-len", "32", "--latency-batch-size", "2", "--latency-seq-len", "16", "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", layers=2, heads=4, hidden=32, intermediate=64)


@pytest.fixture(scope="module")
def pruned(teacher, glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "student"
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "params=0.4",
               "--output", str(out), "--calibration-examples", "48", *FLAGS])
    return rc, out


def test_prune_exports_a_model_within_the_budget_with_a_staged_report(pruned):
    rc, out = pruned
    assert rc == 0
    for name in ("config.json", "model.safetensors", "modeling_ddk_bert.py", "report.json", "structure.png",
                 "log.jsonl", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not os.path.exists(str(out) + ".inprogress")
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "oneshot-fisher"
    assert set(report["majority_dev"]) == {"f1", "accuracy", "score"}
    assert report["params"]["ratio"] <= 0.4 + 1e-9
    assert report["train_examples"] == 48
    stages = [h["stage"] for h in report["history"]]
    assert stages == ["mask_search", "rearranged", "tuned"]
    summary = report["search"]
    assert set(summary["timings_s"]) == {"importance_s", "mask_search_s", "tuning_s", "evaluation_s"}
    assert set(report["times_s"]) == {"importance", "mask_search", "tuning", "evaluation"}
    assert summary["tuning"]["error_after"] <= summary["tuning"]["error_before"]
    assert summary["rearrangement"]["heads_after"] <= summary["rearrangement"]["heads_before"] + 1e-12
    model = load_pruned(str(out))
    cm = CostModel(32, 8, [4, 4], [64, 64], seq_len=32)
    assert cm.structure_cost(model.num_heads, model.intermediate_sizes) <= 0.4 * cm.full_cost() * (1 + 1e-9)
    assert all(n % 8 == 0 or n == 64 for n in model.intermediate_sizes)


def test_existing_output_is_kept_without_overwrite(pruned, teacher, glue_dir, capsys):
    rc, out = pruned
    before = (out / "model.safetensors").read_bytes()
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output", str(out),
               "--calibration-examples", "16", *FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert (out / "model.safetensors").read_bytes() == before


def test_more_calibration_examples_than_the_train_split_uses_all(teacher, tmp_path, glue_dir, capsys):
    data = tmp_path / "glue" / "MRPC"
    data.mkdir(parents=True)
    rows = open(os.path.join(glue_dir, "MRPC", "train.tsv"), encoding="utf-8-sig").read().splitlines()
    (data / "train.tsv").write_text("\n".join(rows[:25]) + "\n", encoding="utf-8")
    (data / "dev.tsv").write_text(open(os.path.join(glue_dir, "MRPC", "dev.tsv"), encoding="utf-8-sig").read(),
                                  encoding="utf-8")
    out = tmp_path / "student"
    flags = [f for f in FLAGS if f != "--no-progress"]
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", str(tmp_path / "glue"),
               "--output", str(out), "--calibration-examples", "5000", "--no-tune", "--importance", "activation",
               *flags])
    assert rc == 0
    assert "more than the 24 train examples: using all 24" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["train_examples"] == 24 and report["method"] == "oneshot-activation"
    assert [h["stage"] for h in report["history"]] == ["mask_search", "pruned"]  # no gradients: no rearrangement


@pytest.mark.parametrize("flags, message", [
    (["--calibration-examples", "0"], "--calibration-examples 0"),
    (["--target", "params=0.0001"], "minimum achievable"),
    (["--target", "params=2"], "--target"),
    (["--importance", "magic"], "invalid choice"),
    (["--ridge", "-1"], "--ridge"),
    (["--tuning-check-examples", "-1"], "--tuning-check-examples -1"),
    (["--max-seq-len", "1"], "--max-seq-len 1"),
])
def test_bad_options_exit_2_with_one_line(teacher, glue_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "student"
    try:
        rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output", str(out),
                   *FLAGS, *flags])
    except SystemExit as exc:  # argparse choices
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and message in err[-1]
    assert not out.exists() and not os.path.exists(str(out) + ".inprogress")


def test_python_api_matches_the_cli(teacher, glue_dir, tmp_path):
    import ddk_fast

    report = ddk_fast.prune(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "s"),
                            target="flops=0.5", calibration_examples=16, max_eval_examples=16, batch_size=8,
                            max_seq_len=32, seq_len=32, latency_batch_size=2, latency_seq_len=16, latency_repeats=1,
                            progress=False)
    assert report["target_metric"] == "flops" and report["flops"]["ratio"] <= 0.5 + 1e-9


def test_majority_baseline_is_the_constant_predictor():
    from ddk_fast.runs.evaluation import majority_baseline

    got = majority_baseline("mrpc", [1, 1, 0], [1, 0, 1, 1])
    assert got["accuracy"] == pytest.approx(0.75) and got["f1"] == pytest.approx(6 / 7)
    assert majority_baseline("cola", [0, 0, 1], [1, 0])["mcc"] == 0.0
    stsb = majority_baseline("stsb", [1.0, 2.0, 3.0], [1.0, 4.0, 2.0])
    assert stsb["pearson"] == 0.0 and stsb["spearman"] == 0.0  # a constant has no correlation


def test_iterative_importance_from_the_cli(teacher, tmp_path, glue_dir):
    out = tmp_path / "student"
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "params=0.4",
               "--output", str(out), "--importance-iterations", "3", "--no-tune", *FLAGS])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["importance_iterations"] == 3
    assert report["params"]["ratio"] <= 0.4 + 1e-9


def test_held_out_check_decides_the_tuning_and_is_reported(teacher, glue_dir, tmp_path):
    out = tmp_path / "checked"
    assert main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "params=0.4",
                 "--output", str(out), "--calibration-examples", "48", "--tuning-examples", "16",
                 "--tuning-check-examples", "32", *FLAGS]) == 0
    report = json.loads((out / "report.json").read_text())
    tuning = report["search"]["tuning"]
    # the task's held-out score decides (MRPC: mean of F1 and accuracy), the loss breaking a tie
    untuned, tuned = tuning["held_out_score_untuned"], tuning["held_out_score_tuned"]
    assert untuned is not None and tuned is not None
    assert tuning["kept"] == (tuned > untuned or (tuned == untuned
                                                  and tuning["held_out_loss_tuned"] < tuning["held_out_loss_untuned"]))
    assert report["history"][-1]["stage"] == ("tuned" if tuning["kept"] else "pruned")
