"""ONNX export: every compressed layout (uneven heads/widths, 0-unit blocks, BERT, RoBERTa, GPT-2) and a
stock teacher export with dynamic axes and reproduce PyTorch in ONNX Runtime on padded batches; int8
export, evaluation and the latency command work end to end; bad input is one line, exit 2."""
import json
import os

import numpy as np
import pytest
import torch
import transformers
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from ddk_fast.cli import main
from ddk_fast.data.custom import DataSource, build_task, write_task_file
from ddk_fast.export import save_pruned
from ddk_fast.export.gpt2 import save_causal_lm
from ddk_fast.export.onnx import (INT8_FILE, ONNX_FILE, REPORT_FILE, OnnxExportError, OnnxModel, example_inputs,
                                  export_onnx, load_for_export)
from ddk_fast.model import MaskedTransformer, Structure, prune
from ddk_fast.model.gpt2 import MaskedGPT2, prune_gpt2
from ddk_fast.pipelines.deploy import parse_shapes, run_latency, torch_int8
from train_support import make_tiny_bert, packaged_dir

VOCAB = 96
NER_SAMPLE = os.path.join(os.path.dirname(__file__), "data", "ner_sample.conll")


pytestmark = pytest.mark.usefixtures("one_thread")


def _noisy(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def _pruned_encoder(tmp_path, family="bert"):
    """Three layers: 3 heads + 5 channels, 0 heads + 1 channel (attention block removed), 1 head + 0 channels."""
    common = dict(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=20,
                  max_position_embeddings=48, num_labels=3, initializer_range=0.3)
    torch.manual_seed(0)
    if family == "roberta":
        stock = RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **common))
    else:
        stock = BertForSequenceClassification(BertConfig(**common))
    model = _noisy(MaskedTransformer.from_pretrained(stock)).eval()
    structure = Structure(heads=((0, 2, 3), (), (1,)), channels=((1, 2, 3, 10, 19), (6,), ()),
                          total_heads=(4, 4, 4), total_channels=(20, 20, 20))
    return save_pruned(prune(model, structure), tmp_path / f"pruned-{family}", tokenizer=packaged_dir())


def _padded_case(names, batch=4, seq=19):
    return example_inputs(names, VOCAB, batch, seq, pad_lengths=(19, 7, 1, 12), seed=5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_pruned_encoder_matches_pytorch_on_padded_batches(tmp_path, family):
    folder = _pruned_encoder(tmp_path, family)
    report = export_onnx(folder, tmp_path / "onnx")
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["check"]) and any(c["padded"] for c in report["check"])
    module, names = load_for_export(folder)
    session = OnnxModel(str(tmp_path / "onnx" / ONNX_FILE))
    for case in (_padded_case(names), example_inputs(names, VOCAB, 2, 33, seed=9)):  # shapes never exported
        with torch.inference_mode():
            expected = module(**case)
        torch.testing.assert_close(session(**case), expected, atol=1e-4, rtol=0)
    assert os.path.isfile(tmp_path / "onnx" / "tokenizer.json")


def test_padding_changes_the_onnx_output_the_way_it_changes_pytorch(tmp_path):
    """The exported graph must not have frozen the example's mask: the same ids with and without
    padding give different logits in both runtimes, equal across runtimes."""
    folder = _pruned_encoder(tmp_path)
    # the folder's own modeling file is never run (an older copy may branch on the mask's values)
    (tmp_path / "pruned-bert" / "modeling_ddk_bert.py").write_text("raise RuntimeError('folder code ran')\n")
    export_onnx(folder, tmp_path / "onnx")
    module, names = load_for_export(folder)
    session = OnnxModel(str(tmp_path / "onnx" / ONNX_FILE))
    full = example_inputs(names, VOCAB, 2, 12, seed=3)
    padded = dict(full, attention_mask=full["attention_mask"].clone())
    padded["attention_mask"][:, 6:] = 0
    with torch.inference_mode():
        a, b = module(**full), module(**padded)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(session(**full), a, atol=1e-4, rtol=0)
    torch.testing.assert_close(session(**padded), b, atol=1e-4, rtol=0)


def test_stock_teacher_exports_and_int8_is_close(tmp_path):
    teacher = make_tiny_bert(tmp_path / "teacher", num_labels=2)
    report = export_onnx(teacher, tmp_path / "onnx", int8=True)
    assert report["model_type"] == "bert" and set(report["files"]) == {ONNX_FILE, INT8_FILE}
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["check"])
    # int8 moves the logits, but not by more than they vary between inputs
    module, names = load_for_export(teacher)
    case = _padded_case(names)
    with torch.inference_mode():
        ref = module(**case)
    got = OnnxModel(str(tmp_path / "onnx" / INT8_FILE))(**case)
    assert 0 < (got - ref).abs().max() < 0.5 * ref.abs().max() + 0.05
    saved = json.loads((tmp_path / "onnx" / REPORT_FILE).read_text())
    assert saved["int8_check"] and saved["opset"] == 18


def test_pruned_gpt2_exports_with_padding(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=40,
                                  bos_token_id=1, eos_token_id=2)
    stock = _noisy(transformers.GPT2LMHeadModel(cfg).eval())
    ours = MaskedGPT2.from_pretrained(stock).eval()
    st = Structure.from_indices([(1, 3), (), (0, 1, 2, 3)], [tuple(range(0, 128, 2)), (3,), ()], ours)
    folder = save_causal_lm(prune_gpt2(ours, st), tmp_path / "lm")
    report = export_onnx(folder, tmp_path / "onnx")
    assert report["inputs"] == ["input_ids", "attention_mask"]
    module, names = load_for_export(folder)
    case = example_inputs(names, VOCAB, 3, 17, pad_lengths=(17, 9, 4), seed=4)
    with torch.inference_mode():
        expected = module(**case)
    got = OnnxModel(str(tmp_path / "onnx" / ONNX_FILE))(**case)
    real = case["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_torch_int8_keeps_zero_unit_blocks_float(tmp_path):
    module, names = load_for_export(_pruned_encoder(tmp_path))
    quantised = torch_int8(module)
    case = _padded_case(names)
    with torch.inference_mode():
        ref, got = module(**case), quantised(**case)
    assert torch.isfinite(got).all() and (got - ref).abs().max() < 0.5 * ref.abs().max() + 0.05
    kinds = {type(m).__module__ for m in quantised.modules() if type(m).__name__ == "Linear"}
    assert kinds == {"torch.nn.modules.linear", "torch.ao.nn.quantized.dynamic.modules.linear"}
    float_linears = [m for m in quantised.modules() if type(m) is torch.nn.Linear]
    assert float_linears and all(m.weight.numel() == 0 for m in float_linears)  # only the 0-unit projections


def test_export_refuses_bad_input(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    folder = _pruned_encoder(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    assert main(["export-onnx", folder, "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "earlier output"
    assert main(["export-onnx", folder, "--output", str(tmp_path / "o2"), "--opset", "9"]) == 2
    assert "--opset 9" in capsys.readouterr().err
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert main(["export-onnx", str(tmp_path / "notmodel"), "--output", str(tmp_path / "o3")]) == 2
    assert "'t5'" in capsys.readouterr().err
    with pytest.raises(OnnxExportError, match="must differ"):
        export_onnx(folder, folder)


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    import ddk_fast.export.onnx as onnx_mod

    folder = _pruned_encoder(tmp_path)
    monkeypatch.setattr(onnx_mod, "_max_diff", lambda *a: 1.0)
    with pytest.raises(OnnxExportError, match="differs from PyTorch"):
        export_onnx(folder, tmp_path / "onnx")
    assert not os.path.exists(tmp_path / "onnx")


def test_parse_shapes():
    assert parse_shapes("1x128, 32X64") == [(1, 128), (32, 64)]
    for bad in ("", "0x128", "32", "ax3"):
        with pytest.raises(Exception, match="BATCHxSEQ"):
            parse_shapes(bad)


def test_latency_command_rows(tmp_path, capsys):
    teacher = make_tiny_bert(tmp_path / "teacher", num_labels=3)
    base = MaskedTransformer.from_pretrained(teacher)
    st = Structure.from_indices([(0, 2), (1,)], [tuple(range(0, 64, 2)), (3, 5)], base)
    student = save_pruned(prune(base, st), tmp_path / "student", tokenizer=teacher)
    result = run_latency(student, teacher=teacher, shapes="2x16", runtimes="torch,onnx-int8", repeats=2,
                         output=str(tmp_path / "lat.json"))
    names = [r["runtime"] for r in result["rows"]]
    assert names == ["torch", "onnx-int8", "onnx-int8 student vs onnx teacher"]
    for row in result["rows"]:
        assert row["teacher_ms"] > 0 and row["student_ms"] > 0 and row["batch_size"] == 2 and row["seq_len"] == 16
    assert json.loads((tmp_path / "lat.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    # the report names the teacher: --teacher may be left out
    (tmp_path / "student" / "report.json").write_text(json.dumps({"teacher": teacher}))
    assert main(["latency", student, "--latency-shapes", "1x8", "--runtimes", "onnx", "--latency-repeats", "1"]) == 0
    assert "onnx" in capsys.readouterr().out
    assert main(["latency", student, "--runtimes", "tensorrt"]) == 2
    assert "--runtimes" in capsys.readouterr().err


def test_evaluate_onnx_export_equals_pytorch(tmp_path, capsys):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = ["sentence\tlabel"] + [f"{w} movie {i}\t{i % 2}" for i, w in enumerate(["good", "bad", "fine", "dull"] * 5)]
    (glue / "train.tsv").write_text("\n".join(rows) + "\n")
    (glue / "dev.tsv").write_text("\n".join(rows) + "\n")
    teacher = make_tiny_bert(tmp_path / "teacher", num_labels=2)
    export_onnx(teacher, tmp_path / "onnx", int8=True, task="sst2")
    args = ["evaluate", "--task", "sst2", "--data-dir", str(tmp_path / "glue"), "--max-seq-len", "32"]
    assert main(args + ["--model", teacher]) == 0
    torch_metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert main(args + ["--model", str(tmp_path / "onnx")]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert onnx["kind"] == "onnx" and np.isclose(onnx["metrics"]["accuracy"], torch_metrics["accuracy"])
    assert main(args + ["--model", str(tmp_path / "onnx"), "--int8"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "onnx-int8"
    assert main(args + ["--model", teacher, "--int8"]) == 0  # a PyTorch folder: torch.ao dynamic int8
    torch_int8_result = json.loads(capsys.readouterr().out)
    assert torch_int8_result["kind"] == "torch-int8" and 0 <= torch_int8_result["metrics"]["accuracy"] <= 1
    assert main(["evaluate", "--task", "mrpc", "--data-dir", str(tmp_path / "glue"), "--max-seq-len", "32",
                 "--model", str(tmp_path / "onnx")]) == 2
    assert "trained for sst2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ token classification
def _token_teacher(folder, vocab_size=VOCAB, num_labels=5):
    """A stock BertForTokenClassification folder with noisy norms and biases (logits far from zero)."""
    torch.manual_seed(0)
    stock = BertForTokenClassification(BertConfig(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=3,
                                                  num_attention_heads=4, intermediate_size=20,
                                                  max_position_embeddings=48, num_labels=num_labels,
                                                  initializer_range=0.3))
    _noisy(stock).save_pretrained(folder)
    return stock


def _per_token_shapes_and_values(module, names, session, labels):
    """ONNX Runtime against PyTorch at shapes never exported: [batch, sequence, labels], atol 1e-4 at the
    real positions (the padded ones carry no prediction anyone reads)."""
    for case in (_padded_case(names), example_inputs(names, VOCAB, 1, 5, seed=7),
                 example_inputs(names, VOCAB, 2, 33, seed=9)):
        with torch.inference_mode():
            expected = module(**case)
        got = session(**case)
        batch, seq = case["input_ids"].shape
        assert tuple(got.shape) == tuple(expected.shape) == (batch, seq, labels)
        real = case["attention_mask"].bool()
        torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_pruned_token_classifier_exports_per_token_logits_with_dynamic_axes(tmp_path):
    model = _noisy(MaskedTransformer.from_pretrained(_token_teacher(tmp_path / "stock"))).eval()
    assert model.config.task_type == "token_classification"
    structure = Structure(heads=((0, 2, 3), (), (1,)), channels=((1, 2, 3, 10, 19), (6,), ()),
                          total_heads=(4, 4, 4), total_channels=(20, 20, 20))
    folder = save_pruned(prune(model, structure), tmp_path / "pruned", tokenizer=packaged_dir())
    report = export_onnx(folder, tmp_path / "onnx", int8=True)
    assert report["head"] == "token_classification" and report["outputs"] == ["logits"]
    assert report["output_axes"] == {"logits": ["batch", "sequence", "labels"]}
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["check"]) and any(c["padded"] for c in report["check"])
    module, names = load_for_export(folder)
    assert type(module.model).__name__ == "DdkBertForTokenClassification"
    session = OnnxModel(str(tmp_path / "onnx" / ONNX_FILE))
    (output,) = session.session.get_outputs()
    assert output.name == "logits" and isinstance(output.shape[0], str) and isinstance(output.shape[1], str)
    assert output.shape[2] == 5  # symbolic batch and sequence axes, a fixed label axis
    _per_token_shapes_and_values(module, names, session, labels=5)
    assert report["int8_check"] and set(report["files"]) == {ONNX_FILE, INT8_FILE}


def test_token_teacher_onnx_export_scores_like_pytorch_in_evaluate(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    task = build_task(DataSource(NER_SAMPLE))
    tokenizer = AutoTokenizer.from_pretrained(packaged_dir())
    _token_teacher(teacher, vocab_size=len(tokenizer), num_labels=task.num_labels)
    tokenizer.save_pretrained(teacher)
    write_task_file(task, str(teacher))
    assert main(["export-onnx", str(teacher), "--output", str(tmp_path / "onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["check"][0]["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "onnx" / REPORT_FILE).read_text())["head"] == "token_classification"
    scores = {}
    for name in ("teacher", "onnx"):
        assert main(["evaluate", "--model", str(tmp_path / name), "--max-seq-len", "32", "--batch-size", "8"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["onnx"]["kind"] == "onnx" and scores["onnx"]["main_metric"] == "entity_f1"
    assert scores["onnx"]["examples"] == scores["teacher"]["examples"] > 0
    assert scores["onnx"]["metrics"] == pytest.approx(scores["teacher"]["metrics"], abs=1e-6)


def test_heads_without_an_export_are_refused_by_name(tmp_path):
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "config.json").write_text(json.dumps({"model_type": "bert",
                                                             "architectures": ["BertForQuestionAnswering"]}))
    with pytest.raises(OnnxExportError, match="BertForQuestionAnswering model; ONNX export supports sequence "
                                              "classification, token classification, causal lm"):
        export_onnx(tmp_path / "qa", tmp_path / "onnx")
    assert not os.path.exists(tmp_path / "onnx")
