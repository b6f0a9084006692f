"""`--target latency=R`: the measured latency cost model (fit, cost arithmetic, budgets) and `prune` with it
end to end, with the ONNX deployment section (`--onnx`) in the same run."""
import json

import pytest
import torch

from train_support import make_tiny_bert

from ddk_fast.cli import main
from ddk_fast.model import MaskedTransformer
from ddk_fast.search import CostModel, LatencyFit
from ddk_fast.search.oneshot import fisher_mask_search
from ddk_fast.runs.latency_table import fit_latency, grid, measure_latency_fit


def _fit(fixed=10.0, head=2.0, channel=0.01):
    return LatencyFit(fixed_ms=fixed, head_ms=head, channel_ms=channel, batch_size=4, seq_len=32, threads=1)


def test_latency_cost_is_the_affine_fit_of_the_whole_model():
    cm = CostModel(64, 16, [4, 4, 4], [128, 128, 128], metric="latency", latency=_fit())
    heads, chans = [4, 0, 2], [128, 64, 0]
    assert cm.structure_cost(heads, chans) == pytest.approx(10.0 + 2.0 * 6 + 0.01 * 192)
    assert cm.full_cost() == pytest.approx(10.0 + 2.0 * 12 + 0.01 * 384)
    assert cm.min_ratio() == pytest.approx(10.0 / cm.full_cost())
    # other metrics are unchanged by carrying a fit
    assert cm.full_cost("params") == CostModel(64, 16, [4] * 3, [128] * 3).full_cost("params")
    with pytest.raises(ValueError, match="LatencyFit"):
        CostModel(64, 16, [4], [128], metric="latency")


def test_fit_recovers_known_coefficients_and_reports_residual():
    model = MaskedTransformer.from_pretrained(make_tiny_bert_in_memory())
    points = grid(model)
    assert len(points) == 9 and (max(model.num_heads), max(model.intermediate_sizes)) in points
    L = model.num_layers
    exact = [5.0 + 0.5 * L * h + 0.02 * L * c for h, c in points]
    fit = fit_latency(model, points, exact, 4, 32, 1)
    assert fit.fixed_ms == pytest.approx(5.0) and fit.head_ms == pytest.approx(0.5)
    assert fit.channel_ms == pytest.approx(0.02) and fit.max_rel_error < 1e-9
    bent = list(exact)
    bent[0] *= 1.3  # one point off the line: the residual must say so
    assert fit_latency(model, points, bent, 4, 32, 1).max_rel_error > 0.05


def make_tiny_bert_in_memory():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=64))


def test_mask_search_meets_a_latency_budget():
    cm = CostModel(64, 16, [4, 4], [128, 128], metric="latency", latency=_fit(fixed=4.0, head=1.0, channel=0.05))
    g = torch.Generator().manual_seed(0)
    head_scores, chan_scores = torch.rand(2, 4, generator=g), torch.rand(2, 128, generator=g)
    derived = fisher_mask_search(cm, head_scores, chan_scores, 0.5, "latency", granularity=8)
    kept = cm.structure_cost(derived.head_counts, derived.ffn_counts)
    assert kept <= 0.5 * cm.full_cost() * (1 + 1e-9)
    assert kept >= 0.4 * cm.full_cost()  # the search spends the budget rather than stopping early


def test_measured_fit_is_positive_and_monotone():
    model = MaskedTransformer.from_pretrained(make_tiny_bert_in_memory()).eval()
    fit = measure_latency_fit(model, batch_size=2, seq_len=16, threads=1, rounds=1)
    assert fit.fixed_ms > -1e9 and fit.head_ms >= 0 and fit.channel_ms >= 0
    assert len(fit.points) == 9 and all(p["ms"] > 0 for p in fit.points)


# The latency shape is large enough for the matrix products to dominate the tiny model's fixed costs
# (Python, embeddings): otherwise the fitted constant alone can exceed the budget on a busy machine.
FLAGS = ["--max-eval-examples", "16", "--batch-size", "8", "--eval-batch-size", "16", "--max-seq-len", "32",
         "--seq-len", "32", "--latency-batch-size", "16", "--latency-seq-len", "64",
         "--calibration-examples", "32", "--no-progress"]


def test_prune_to_a_latency_target_with_onnx_report(tmp_path, glue_dir, capsys):
    teacher = make_tiny_bert(tmp_path / "teacher", layers=2, heads=4, hidden=128, intermediate=512)
    out = tmp_path / "student"
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "latency=0.7",
               "--output", str(out), "--onnx", "--latency-shapes", "1x16", *FLAGS])
    assert rc == 0, capsys.readouterr().err[-3000:]
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]
    assert report["target_metric"] == "latency" and lat["target_ratio"] == 0.7
    assert lat["predicted_ratio"] <= 0.7 + 1e-6 and isinstance(lat["target_met"], bool)
    assert lat["fit"]["batch_size"] == 16 and lat["fit"]["seq_len"] == 64 and len(lat["fit"]["points"]) == 9
    onnx = report["onnx"]
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "model.int8.onnx").is_file()
    assert set(onnx["dev"]) == {"fp32", "int8", "torch-int8"}
    # ONNX Runtime scores the fp32 export like PyTorch does
    assert onnx["dev"]["fp32"]["accuracy"] == pytest.approx(report["student_dev"]["accuracy"], abs=1e-9)
    shapes = {(r["batch_size"], r["seq_len"]) for r in onnx["latency"]}
    assert shapes == {(1, 16), (16, 64)}  # the asked shape and the budget's shape
    assert {r["runtime"] for r in onnx["latency"]} == {"torch", "onnx", "onnx-int8",
                                                       "onnx-int8 student vs onnx teacher"}
    onnx_report = json.loads((out / "onnx" / "onnx_report.json").read_text())
    assert onnx_report["task"] == "mrpc" and onnx_report["source"] == ".."


def test_prune_to_an_onnx_runtime_latency_target(tmp_path, glue_dir, capsys):
    """--latency-runtime onnx: the table is timed in ONNX Runtime and the check uses the ONNX export."""
    teacher = make_tiny_bert(tmp_path / "teacher", layers=2, heads=4, hidden=128, intermediate=512)
    out = tmp_path / "student"
    rc = main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--target", "latency=0.7",
               "--latency-runtime", "onnx", "--output", str(out), *FLAGS])
    assert rc == 0, capsys.readouterr().err[-3000:]
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]
    assert lat["fit"]["runtime"] == "onnx" and lat["runtime"] == "onnx"
    onnx_row = next(r for r in report["onnx"]["latency"] if r["runtime"] == "onnx" and r["batch_size"] == 16)
    assert lat["ratio"] == onnx_row["ratio_student_over_teacher"] and "engine_ratio" in lat
    assert lat["target_met"] == (lat["ratio"] <= 0.7 + 0.05)


def test_bad_latency_flags_are_one_line_errors(tmp_path, glue_dir, capsys):
    teacher = make_tiny_bert(tmp_path / "teacher", layers=1, heads=2, hidden=16, intermediate=32)
    base = ["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output", str(tmp_path / "o")]
    assert main(base + ["--target", "latency=0.5", "--latency-shapes", "32by128"]) == 2
    assert "--latency-shapes" in capsys.readouterr().err
    assert main(base + ["--target", "speed=0.5"]) == 2
    assert "'latency'" in capsys.readouterr().err
    assert main(base + ["--target", "params=0.5", "--latency-runtime", "onnx"]) == 2
    assert "--target latency" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("search", ["gumbel", "hard_concrete", "progressive"])
def test_every_search_method_meets_a_latency_budget(tmp_path, glue_dir, search):
    from ddk_fast.api import compress

    teacher = make_tiny_bert(tmp_path / "teacher", layers=2, heads=4, hidden=128, intermediate=512)
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, target="latency=0.7", search=search,
                      output=str(tmp_path / "s"), max_train_examples=32, max_eval_examples=16, batch_size=8,
                      eval_batch_size=16, max_seq_len=32, seq_len=32, search_epochs=1, distill_epochs=1,
                      channel_granularity=8, latency_batch_size=16, latency_seq_len=64, latency_repeats=2,
                      progress=False, lr=1e-3)
    lat = report["latency"]
    assert report["target_metric"] == "latency" and lat["fit"]["runtime"] == "torch"
    assert lat["predicted_ratio"] <= 0.7 + 1e-6
    saved = json.loads((tmp_path / "s" / "report.json").read_text())
    assert saved["latency"]["predicted_ratio"] == lat["predicted_ratio"]
