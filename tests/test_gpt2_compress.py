"""GPT-2 end to end: a small GPT-2 trained briefly on real text (SST-2 sentences) is compressed through
the CLI (search + prune + distill with token-level KD); the export reloads with AutoModelForCausalLM and
generates; its perplexity beats an untrained model of the same shape."""
import json
import os

import pytest
import torch

from conftest import GLUE_PATH
from train_support import run_cli, write_sst2_text

SST2 = os.path.join(GLUE_PATH, "SST-2", "train.tsv")
pytestmark = [pytest.mark.skipif(not os.path.isfile(SST2), reason="SST-2 train.tsv not present"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    return write_sst2_text(SST2, tmp_path_factory.mktemp("text"), 3000, 400)


def test_compress_gpt2_end_to_end(text_files, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from ddk_fast.export.gpt2 import load_causal_lm

    train, dev = text_files
    teacher = str(tmp_path / "teacher")
    pretrain = ["pretrain-lm", "--train-file", train, "--eval-file", dev, "--output", teacher, "--vocab-size", "320",
                "--n-layer", "3", "--n-embd", "64", "--n-head", "4", "--block-size", "32", "--steps", "80",
                "--batch-size", "16", "--lr", "3e-3"]
    assert run_cli(pretrain) == 0
    pre = json.load(open(os.path.join(teacher, "pretrain.json")))
    assert pre["eval"]["perplexity"] < 0.5 * pre["vocab_size"]  # it learned something from the text

    out = str(tmp_path / "small")
    capsys.readouterr()
    argv = ["compress", "--task", "lm", "--teacher", teacher, "--train-file", train, "--eval-file", dev,
            "--target", "params=0.5", "--output", out, "--preset", "quick", "--search-steps", "20",
            "--distill-steps", "40", "--block-size", "32", "--max-eval-examples", "40", "--channel-granularity", "16",
            "--temperature", "2", "--kd", "query_relation_weight=0.5,relation_heads=4", "--no-progress"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert '"student_dev"' in printed
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["kd"]["query_relation_weight"] == 0.5 and report["kd"]["temperature"] == 2.0
    assert report["params"]["ratio"] <= 0.5 + 1e-9
    student_ppl = report["student_dev"]["perplexity"]
    assert student_ppl < report["untrained_same_shape_dev"]["perplexity"]
    assert student_ppl < 1.5 * report["teacher_dev"]["perplexity"]
    assert report["num_parameters"]["student"] < report["num_parameters"]["teacher"]

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ours = load_causal_lm(out).eval()
    assert ours.pruned_from is not None and ours.num_heads == report["structure"]["heads"]
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 11) and torch.equal(generated[:, :6], ids)


def test_sweep_of_lm_compressions(text_files, tmp_path):
    """--mode ddk --task lm: each point a GPT-2 compression, ranked by perplexity (lower first)."""
    import csv

    from ddk_fast.pipelines.lm_teacher import pretrain_gpt2

    train, dev = text_files
    teacher = pretrain_gpt2(train, str(tmp_path / "t"), vocab_size=300, n_layer=2, n_embd=32, n_head=2,
                            block_size=16, steps=10, batch_size=8, log=None)["output"]
    out = str(tmp_path / "sweep")
    assert run_cli(["sweep", "--mode", "ddk", "--task", "lm", "--teacher", teacher, "--train-file", train,
                    "--eval-file", dev, "--grid", "temperature=1,4", "--output", out, "--target", "params=0.6",
                    "--search-steps", "3", "--distill-steps", "3", "--block-size", "16", "--max-train-examples", "64",
                    "--max-eval-examples", "8", "--batch-size", "8"]) == 0
    with open(os.path.join(out, "results.csv")) as fh:
        rows = list(csv.DictReader(fh))
    ppl = [float(r["perplexity"]) for r in rows]
    assert len(rows) == 2 and ppl == sorted(ppl)
    assert "perplexity (lower is better)" in open(os.path.join(out, "results.md")).read()
