"""DistilBERT, ELECTRA (discriminator) and XLM-RoBERTa through the adapter layer: each equals its stock
transformers model with all gates 1 (fp32, atol 1e-5) on a padded batch, prunes, exports and loads
like BERT (stock transformers with trust_remote_code, and load_pruned), and other families are refused
with one line that names the model_type, the reason and the supported types."""
import json
import logging
import os

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM,
                          DistilBertForSequenceClassification, DistilBertModel, ElectraConfig,
                          ElectraForPreTraining, ElectraForSequenceClassification, ElectraModel, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification, XLMRobertaModel)

from ddk_fast.cli import main
from ddk_fast.export import load_pruned, save_pruned
from ddk_fast.export.onnx import export_onnx
from ddk_fast.model import MaskedTransformer, Structure, prune, supported_model_types
from ddk_fast.model.adapters import adapter_for
from ddk_fast.model.adapters.base import REFUSED
from train_support import packaged_dir

ATOL = 1e-5
VOCAB = 64
HIDDEN, HEADS, LAYERS, WIDTH = 32, 4, 2, 48
NEW_FAMILIES = ["distilbert", "electra", "electra-same-width", "xlm-roberta"]

pytestmark = pytest.mark.usefixtures("one_thread")


def stock_config(family, num_labels=3):
    common = dict(vocab_size=VOCAB, max_position_embeddings=40, num_labels=num_labels, initializer_range=0.3)
    if family == "distilbert":
        return DistilBertConfig(dim=HIDDEN, n_heads=HEADS, n_layers=LAYERS, hidden_dim=WIDTH, **common)
    bert_like = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
                     intermediate_size=WIDTH, **common)
    if family == "electra":  # ELECTRA-small's shape: embeddings narrower than the encoder
        return ElectraConfig(embedding_size=16, **bert_like)
    if family == "electra-same-width":
        return ElectraConfig(embedding_size=HIDDEN, **bert_like)
    return XLMRobertaConfig(pad_token_id=1, type_vocab_size=1, **bert_like)


CLASSIFIERS = {"distilbert": DistilBertForSequenceClassification, "electra": ElectraForSequenceClassification,
               "electra-same-width": ElectraForSequenceClassification,
               "xlm-roberta": XLMRobertaForSequenceClassification}


def noisy(model, seed=1):
    """Stock init leaves LayerNorms at 1/0 and biases at 0; random ones make a wrong wiring visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def stock_model(family, cls=None, num_labels=3):
    torch.manual_seed(0)
    return noisy((cls or CLASSIFIERS[family])(stock_config(family, num_labels))).eval()


def padded_batch(pad_id, lengths=(10, 6, 3)):
    """Right-padded rows of the given lengths, pad ids where the mask is 0."""
    ids = torch.randint(2, VOCAB, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad_id), mask


def token_types(family, ids):
    """Mixed segments where the family has token types (ELECTRA), zeros otherwise."""
    types = torch.zeros_like(ids)
    if family.startswith("electra"):
        types[:, 5:] = 1
    return types


def stock_logits(family, stock, ids, mask, types):
    kwargs = {} if family == "distilbert" else {"token_type_ids": types}
    return stock(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)


def assert_close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


@pytest.mark.parametrize("path", ["reference", "compact"])
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_all_gates_one_reproduce_stock(family, path):
    stock = stock_model(family)
    model = MaskedTransformer.from_pretrained(stock).eval()
    ids, mask = padded_batch(stock.config.pad_token_id)
    types = token_types(family, ids)
    with torch.no_grad():
        ref = stock_logits(family, stock, ids, mask, types)
        out = model(ids, mask, types, path=path, output_hidden_states=True)
        other = model(ids, torch.ones_like(mask), types, path=path).logits
    assert_close(out.logits, ref.logits)
    assert len(out.hidden_states) == len(ref.hidden_states) == LAYERS + 1
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert_close(ours, theirs)
    assert not torch.allclose(other, out.logits, atol=1e-3)  # the padding mask really matters here


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_train_mode_dropout_sits_where_the_stock_model_puts_it(family, tmp_path):
    """With attention-probability dropout off, the same seed draws the same dropout masks in the stock
    model, the masked model and the exported model: embeddings, block outputs, head."""
    config = stock_config(family)
    if family == "distilbert":
        config.dropout, config.attention_dropout = 0.2, 0.0
    else:
        config.hidden_dropout_prob, config.attention_probs_dropout_prob = 0.2, 0.0
    torch.manual_seed(0)
    stock = noisy(CLASSIFIERS[family](config)).train()
    model = MaskedTransformer.from_pretrained(stock).train()
    hf = AutoModelForSequenceClassification.from_pretrained(save_pruned(model, tmp_path / "x"),
                                                            trust_remote_code=True).train()
    ids, mask = padded_batch(stock.config.pad_token_id)
    types = token_types(family, ids)
    with torch.no_grad():
        torch.manual_seed(7)
        ref = stock_logits(family, stock, ids, mask, types).logits
        torch.manual_seed(7)
        out = model(ids, mask, types, path="reference").logits
        torch.manual_seed(7)
        exported = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.manual_seed(8)
        other = model(ids, mask, types, path="reference").logits
    assert_close(out, ref)
    assert_close(exported, ref)
    assert not torch.allclose(out, other, atol=1e-3)  # dropout really is on


def test_configs_translate_each_familys_keys():
    distil = MaskedTransformer.from_pretrained(stock_model("distilbert")).config
    assert (distil.family, distil.head_style, distil.type_vocab_size) == ("distilbert", "distilbert", 0)
    assert distil.num_heads == [HEADS] * LAYERS and distil.intermediate_sizes == [WIDTH] * LAYERS
    assert distil.head_dim == HIDDEN // HEADS and distil.classifier_dropout == 0.2  # seq_classif_dropout
    assert (distil.head_activation, distil.head_dropout_first) == ("relu", False)
    assert not distil.attention_output_dropout
    electra = MaskedTransformer.from_pretrained(stock_model("electra")).config
    assert (electra.family, electra.head_style, electra.embedding_size) == ("electra", "electra", 16)
    assert (electra.head_activation, electra.head_dropout_first) == ("gelu", True)
    assert MaskedTransformer.from_pretrained(stock_model("electra-same-width")).config.embedding_size is None
    xlmr = MaskedTransformer.from_pretrained(stock_model("xlm-roberta")).config
    assert (xlmr.family, xlmr.position_style, xlmr.head_style) == ("xlm-roberta", "padding_offset", "roberta")
    assert {"distilbert", "electra", "xlm-roberta", "bert", "roberta"} <= set(supported_model_types())


STRUCTURE = Structure(heads=((0, 2, 3), (1,)), channels=((1, 2, 5, 30), (0, 7, 9, 40, 47)),
                      total_heads=(HEADS, HEADS), total_channels=(WIDTH, WIDTH))


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_pruned_export_loads_with_stock_transformers_and_load_pruned(family, tmp_path):
    stock = stock_model(family)
    model = MaskedTransformer.from_pretrained(stock).eval()
    small = prune(model, STRUCTURE).eval()
    out = save_pruned(small, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["family"] == model.config.family and config["head_style"] == model.config.head_style
    assert config["embedding_size"] == model.config.embedding_size
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    loaded = load_pruned(out).eval()
    assert loaded.config == small.config and loaded.pruned_from == STRUCTURE
    ids, mask = padded_batch(stock.config.pad_token_id)
    types = token_types(family, ids)
    hg, fg = STRUCTURE.to_gates()
    with torch.no_grad():
        full = model(ids, mask, types).logits
        gated = model(ids, mask, types, head_gates=hg, ffn_gates=fg, path="reference").logits
        got_small = small(ids, mask, types, path="compact").logits
        got_hf = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got_loaded = loaded(ids, mask, types).logits
    assert not torch.allclose(gated, full, atol=1e-3)  # pruning changed the function
    for got in (got_small, got_hf, got_loaded):
        assert_close(got, gated)


@pytest.mark.parametrize("family, cls, base_cls, leftovers", [
    ("distilbert", DistilBertForMaskedLM, DistilBertModel, "vocab_projector"),
    ("electra", ElectraForPreTraining, ElectraModel, "discriminator_predictions"),
    ("xlm-roberta", XLMRobertaModel, XLMRobertaModel, None),
])
def test_checkpoints_without_a_classifier_load_the_encoder_and_a_fresh_head(family, cls, base_cls, leftovers,
                                                                            caplog):
    stock = stock_model(family, cls)
    keys = stock.state_dict().keys()
    assert leftovers is None or any(leftovers in k for k in keys)  # the pre-training head is really there
    with caplog.at_level(logging.WARNING, logger="ddk_fast"):
        model = MaskedTransformer.from_pretrained(stock, num_labels=2).eval()
    assert "ignoring" not in caplog.text  # pre-training heads are dropped silently, nothing else is left over
    encoder = base_cls(stock.config).eval()
    encoder.load_state_dict({k.split(".", 1)[1] if k.startswith(encoder.base_model_prefix + ".") else k: v
                             for k, v in stock.state_dict().items()}, strict=False)
    ids, mask = padded_batch(stock.config.pad_token_id)
    with torch.no_grad():
        want = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask)
    assert got.logits.shape == (3, 2)
    real = mask.bool()
    assert_close(got.last_hidden_state[real], want[real])


def test_onnx_export_of_pruned_distilbert_and_electra_and_a_stock_teacher(tmp_path):
    stock_teacher = tmp_path / "teacher-distilbert"
    stock_model("distilbert").save_pretrained(str(stock_teacher))
    folders = [str(stock_teacher)]
    for family in ("distilbert", "electra"):
        model = MaskedTransformer.from_pretrained(stock_model(family)).eval()
        folders.append(save_pruned(prune(model, STRUCTURE), tmp_path / f"pruned-{family}"))
    for i, folder in enumerate(folders):
        report = export_onnx(folder, tmp_path / f"onnx-{i}")
        assert any(c["padded"] for c in report["check"])
        assert all(c["max_abs_diff"] <= 1e-4 for c in report["check"]), (folder, report["check"])


def test_docs_list_every_supported_and_refused_family():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "models.md"), encoding="utf-8") as f:
        text = f.read()
    for model_type in list(supported_model_types()) + sorted(REFUSED):
        assert f"| `{model_type}`" in text or f"`{model_type}` |" in text or f", `{model_type}`" in text, model_type


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_families_get_one_line_with_the_reason(model_type):
    with pytest.raises(ValueError) as info:
        adapter_for(model_type)
    message = str(info.value)
    assert "\n" not in message and f"model_type {model_type!r}" in message and REFUSED[model_type] in message
    assert message.endswith("supported: " + ", ".join(supported_model_types()))
    assert "distilbert" in message and "electra" in message and "xlm-roberta" in message


def test_cli_refuses_an_albert_teacher_with_one_line_and_exit_2(tmp_path, capsys):
    teacher = tmp_path / "albert"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "albert",
                                                     "architectures": ["AlbertForSequenceClassification"]}))
    rc = main(["compress", "--teacher", str(teacher), "--task", "mrpc", "--target", "params=0.5",
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "'albert'" in err[0] and "shares one set of layer weights" in err[0] and "supported: bert" in err[0]
    assert not (tmp_path / "out").exists()


SMALL_RUN = ["--max-eval-examples", "16", "--max-seq-len", "32", "--seq-len", "32", "--latency-batch-size", "2",
             "--latency-seq-len", "16", "--no-progress"]


def _cli_teacher(family, folder):
    """A random stock classifier with the packaged BERT tokenizer, saved as a transformers folder."""
    tok = AutoTokenizer.from_pretrained(packaged_dir())
    config = stock_config(family, num_labels=2)
    config.vocab_size, config.max_position_embeddings = tok.vocab_size, 64
    torch.manual_seed(0)
    CLASSIFIERS[family](config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder), tok


@pytest.mark.parametrize("family, steps", [("distilbert", ("finetune", "compress")), ("electra", ("prune",))])
def test_cli_finetune_compress_prune_work_as_with_bert(family, steps, tmp_path, glue_dir):
    teacher, tok = _cli_teacher(family, tmp_path / "teacher")
    task = ["--task", "mrpc", "--data-dir", glue_dir]
    if "finetune" in steps:
        assert main(["finetune", "--model", teacher, *task, "--output", str(tmp_path / "ft"), "--epochs", "1",
                     "--max-train-examples", "16", "--max-eval-examples", "8", "--batch-size", "8",
                     "--max-seq-len", "32", "--no-progress"]) == 0
        teacher = str(tmp_path / "ft")
    out = tmp_path / "student"
    if "compress" in steps:
        rc = main(["compress", "--teacher", teacher, *task, "--target", "params=0.5", "--output", str(out),
                   "--max-train-examples", "32", "--batch-size", "8", "--search-epochs", "1", "--distill-epochs", "1",
                   "--lr", "0.001", *SMALL_RUN])
    else:
        rc = main(["prune", "--teacher", teacher, *task, "--target", "params=0.5", "--output", str(out),
                   "--calibration-examples", "32", *SMALL_RUN])
    assert rc == 0
    student = load_pruned(out).eval()
    assert student.config.family == family and student.pruned_from is not None
    assert sum(student.num_heads) < HEADS * LAYERS or sum(student.intermediate_sizes) < WIDTH * LAYERS
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    enc = tok(["a short one", "a somewhat longer sentence than the other one"], padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0
    with torch.no_grad():
        want = student(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits
        got = hf(**enc).logits
    assert_close(got, want)
