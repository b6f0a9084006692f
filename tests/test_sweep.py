"""`ddk-fast sweep` on a tiny grid: every point runs, results sorted by dev score, heat map, resume skips
finished points, a different grid is refused; grid parsing; `ddk-fast distill` end to end."""
import csv
import json
import os

import pytest
import torch

from conftest import GLUE_PATH as GLUE
from train_support import make_tiny_bert, run_cli

pytestmark = [pytest.mark.skipif(not os.path.isdir(os.path.join(GLUE, "MRPC")),
                                 reason="GLUE MRPC files not present"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "mrpc", layers=6, intermediate=48, max_positions=128)


SMALL = ["--data-dir", GLUE, "--steps", "4", "--max-train-examples", "32", "--max-eval-examples", "24",
         "--max-seq-len", "24", "--batch-size", "8", "--lr", "1e-3"]


def test_parse_grid_and_aliases(tmp_path):
    from ddk_fast.errors import UserError
    from ddk_fast.pipelines.sweep import grid_points, parse_grid

    grid = parse_grid("attn_weight=0.5,1;hidden_weight=1,2;temperature=1,4;mapping=uniform,last")
    assert grid == {"attention_weight": [0.5, 1], "hidden_weight": [1, 2], "temperature": [1, 4],
                    "mapping": ["uniform", "last"]}
    assert len(grid_points(grid)) == 16 and grid_points(grid)[1]["mapping"] == "last"
    f = tmp_path / "grid.yaml"
    f.write_text("attn_weight: [0.5, 1]\nrecipe: joint\n")
    assert parse_grid(grid_file=str(f)) == {"attention_weight": [0.5, 1], "recipe": ["joint"]}
    for bad in ("attn_weight", "=1,2", "a=1;a=2", ""):
        with pytest.raises(UserError):
            parse_grid(bad)
    with pytest.raises(UserError, match="exactly one"):
        parse_grid("a=1", str(f))


def test_sweep_cli_runs_resumes_and_summarises(tiny_teacher, tmp_path, capsys):
    out = str(tmp_path / "sweep")
    grid = "attn_weight=0.5,2;temperature=1,4"
    assert run_cli(["sweep", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", grid, "--output", out,
                    "--preset", "quick", *SMALL]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{\n"):])
    assert summary["points"] == 4 and summary["heatmap"].endswith("heatmap.png")
    points = sorted(os.listdir(os.path.join(out, "points")))
    assert points == ["000.json", "001.json", "002.json", "003.json"]
    with open(os.path.join(out, "results.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {(r["attention_weight"], r["temperature"]) for r in rows} == {("0.5", "1"), ("0.5", "4"), ("2", "1"),
                                                                         ("2", "4")}
    with open(os.path.join(out, "heatmap.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(out, "results.md")).read()
    assert "| rank | point | attention_weight | temperature |" in md and md.count("\n| ") == 5
    saved = json.load(open(os.path.join(out, "points", "002.json")))
    assert saved["point"] == {"attention_weight": 2, "temperature": 1} and "f1" in saved["dev"]

    # resume: finished points are skipped, a missing one is run again
    before = {p: os.path.getmtime(os.path.join(out, "points", p)) for p in points}
    os.remove(os.path.join(out, "points", "001.json"))
    capsys.readouterr()
    assert run_cli(["sweep", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", grid, "--output", out,
                    "--preset", "quick", "--resume", *SMALL]) == 0
    log = capsys.readouterr().out
    assert log.count("done already, skipped") == 3 and "[2/4] attention_weight=0.5, temperature=4: running" in log
    after = {p: os.path.getmtime(os.path.join(out, "points", p)) for p in points}
    assert all(after[p] == before[p] for p in points if p != "001.json") and os.path.isfile(
        os.path.join(out, "points", "001.json"))

    from ddk_fast.errors import UserError
    with pytest.raises(UserError, match="grid.json differs"):
        run_cli(["sweep", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", "attn_weight=1", "--output", out,
                 "--preset", "quick", "--resume", *SMALL])
    with pytest.raises(UserError, match="--resume"):
        run_cli(["sweep", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", grid, "--output", out, *SMALL])
    with pytest.raises(UserError, match="not options of a student run"):
        run_cli(["sweep", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", "atention_weight=1",
                 "--output", str(tmp_path / "other"), *SMALL])


def test_distill_cli_exports_a_loadable_student(tiny_teacher, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from ddk_fast.export import load_pruned

    out = str(tmp_path / "student")
    assert run_cli(["distill", "--teacher", tiny_teacher, "--task", "mrpc", "--output", out, "--recipe", "makd",
                    "--student-layers", "2", "--student-heads", "2", "--kd",
                    "relation_heads=4,ffn_rank=8,attention_weight=0",
                    "--no-progress", *SMALL]) == 0
    report = json.load(open(os.path.join(out, "metrics.json")))
    assert report["student"]["layers"] == 2 and report["student"]["heads"] == [2, 2]
    assert report["student"]["teacher_layers"] == [2, 5]
    assert report["stages"][0]["options"]["query_relation_weight"] == 1.0
    student = load_pruned(out).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, student(ids).logits, atol=1e-5, rtol=1e-5)


def test_sweep_ddk_mode_runs_the_compression_per_point(tiny_teacher, tmp_path):
    out = str(tmp_path / "ddk")
    assert run_cli(["sweep", "--mode", "ddk", "--teacher", tiny_teacher, "--task", "mrpc", "--data-dir", GLUE,
                    "--grid", "hidden_weight=0.5,1", "--output", out, "--preset", "quick", "--target", "params=0.5",
                    "--max-train-examples", "16", "--max-eval-examples", "16", "--max-seq-len", "16",
                    "--batch-size", "8"]) == 0
    for index in ("000", "001"):
        result = json.load(open(os.path.join(out, "points", index + ".json")))
        assert result["params"]["ratio"] <= 0.5 + 1e-9 and "f1" in result["dev"]
        assert os.path.isfile(os.path.join(out, "points", index, "model", "report.json"))
    with open(os.path.join(out, "results.csv")) as fh:
        header = next(csv.reader(fh))
    assert "hidden_weight" in header and "epoch" not in header
    from ddk_fast.errors import UserError
    with pytest.raises(UserError, match="--steps is not an option of --mode ddk"):
        run_cli(["sweep", "--mode", "ddk", "--teacher", tiny_teacher, "--task", "mrpc", "--grid", "hidden_weight=1",
                 "--output", str(tmp_path / "x"), "--steps", "3"])


def test_distill_stopped_in_each_stage_resumes_to_the_uninterrupted_student(tiny_teacher, tmp_path):
    """tinybert = two stages (intermediate, then prediction) of 4 steps; checkpoints every 2 steps. A run
    stopped in stage 1 and again in stage 2, then resumed, ends with the same weights and history."""
    from train_support import safetensors_equal

    from ddk_fast.errors import UserError
    from ddk_fast.errors import RunInterrupted
    from ddk_fast.pipelines.distill import build_distill_config, run_distill

    def distill(out, **extra):
        flags = dict(teacher=tiny_teacher, task="mrpc", data_dir=GLUE, output=str(out), recipe="tinybert",
                     steps=8, max_train_examples=32, max_eval_examples=24, max_seq_len=24, batch_size=8, lr=1e-3,
                     save_steps=2, log_steps=1, progress=False, device="cpu")
        flags.update(extra)
        return run_distill(build_distill_config(flags))

    reference = distill(tmp_path / "ref")
    out = tmp_path / "student"
    with pytest.raises(RunInterrupted):
        distill(out, stop_after_steps=3)
    with pytest.raises(UserError, match="unfinished run"):
        distill(out)
    with pytest.raises(RunInterrupted):
        distill(out, resume=True, stop_after_steps=7)
    with pytest.raises(UserError, match="different settings"):
        distill(out, resume=True, recipe="joint")
    report = distill(out, resume=True)
    same, why = safetensors_equal(str(tmp_path / "ref" / "model.safetensors"), str(out / "model.safetensors"))
    assert same, why
    assert report["resumed"] and report["history"] == reference["history"] and len(report["history"]) == 8
    assert [h["stage"] for h in report["history"]] == ["intermediate"] * 4 + ["prediction"] * 4
    assert report["student_dev"] == reference["student_dev"]
    assert (out / "log.jsonl").read_text().count('"event": "resume"') == 2
