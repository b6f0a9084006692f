"""Token classification (NER): the CoNLL and JSON readers, word-piece label alignment, seqeval entity
scores, the per-token head against stock BertForTokenClassification, per-token task loss and KD, and
tests/data/ner_sample.conll through finetune -> compress -> evaluate with the export read back by stock
AutoModelForTokenClassification."""
import json
import os
import random

import datasets
import pytest
import torch
import torch.nn.functional as F
from seqeval import metrics as seqeval_metrics
from transformers import (AutoModelForTokenClassification, AutoTokenizer, BertConfig, BertForTokenClassification)

from train_support import make_tiny_bert, padded_batch, write_text

from ddk_fast.cli import main
from ddk_fast.data import DataError, collate, compute_metrics, encode, load_task
from ddk_fast.data.conll import parse_conll
from ddk_fast.data.custom import CustomTask, DataSource, build_task, read_task_file
from ddk_fast.data.encoding import align_labels
from ddk_fast.distill.objectives import KDObjective, PredictionTerm, TaskTerm
from ddk_fast.export import load_pruned
from ddk_fast.model import MaskedTransformer, TransformerConfig
from ddk_fast.search.calibration import task_loss

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "ner_sample.conll")
TAGS = ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O")


# ------------------------------------------------------------------------------------------ readers
def test_the_sample_reads_as_300_sentences_with_docstarts_skipped():
    tokens, tags, rows = parse_conll(SAMPLE)
    with open(SAMPLE, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(tokens) == 300 == len(tags) == len(rows)
    assert all(len(t) == len(g) > 0 for t, g in zip(tokens, tags))
    assert not any("-DOCSTART-" in t for t in tokens)
    word_lines = [line for line in lines if line.strip() and not line.startswith("-DOCSTART-")]
    assert sum(map(len, tokens)) == len(word_lines)
    # each row remembers the line its sentence starts on
    assert all(lines[r.line - 1].split()[0] == t[0] for r, t in zip(rows, tokens))
    task = build_task(DataSource(SAMPLE))
    assert task.kind == "token_classification" and task.label_names == TAGS
    assert task.text_columns == ("tokens",) and task.label_column == "ner_tags"
    assert task.metric_names == ("entity_f1",) and task.main_metric == "entity_f1"


def test_conll_2003_columns_take_the_first_and_the_last_and_bad_lines_name_the_line(tmp_path):
    path = write_text(tmp_path / "four.conll", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                                               "Peter NNP B-NP B-PER\tBlackburn NNP I-NP I-PER\n")
    tokens, tags, _ = parse_conll(path)
    assert tokens == [["EU", "rejects"], ["Peter"]] and tags == [["B-ORG", "O"], ["I-PER"]]
    bad = write_text(tmp_path / "bad.conll", "EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"bad.conll, line 2: expected 'token \.\.\. tag'"):
        parse_conll(bad)


def test_json_rows_with_tags_and_a_saved_dataset_keep_their_labels(tmp_path):
    rows = [{"tokens": ["Anna", "met", "Tom"], "tags": ["B-PER", "O", "B-PER"]},
            {"tokens": ["in", "Oslo"], "tags": ["O", "B-LOC"]}]
    path = write_text(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(DataSource(path, path))
    assert task.kind == "token_classification" and task.label_column == "tags"
    assert task.label_names == ("B-LOC", "B-PER", "O")
    examples = load_task(task, "validation")
    assert [e.text_a for e in examples] == [("Anna", "met", "Tom"), ("in", "Oslo")]
    assert [e.label for e in examples] == [[1, 2, 1], [2, 0]]
    # a hub-style dataset: ner_tags as ClassLabel ids keep the ClassLabel order
    names = ["O", "B-PER", "I-PER"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    ds = datasets.Dataset.from_dict({"tokens": [["Jo", "Ann", "ran"]] * 4, "ner_tags": [[1, 2, 0]] * 4},
                                    features=features)
    folder = str(tmp_path / "saved")
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(folder)
    saved = build_task(DataSource(dataset=folder))
    assert saved.label_names == tuple(names)
    assert load_task(saved, "validation")[0].label == [1, 2, 0]


def test_bad_rows_name_the_file_row_and_column(tmp_path):
    train = write_text(tmp_path / "train.conll", "Anna B-PER\nran O\n\nTom B-PER\n")
    dev = write_text(tmp_path / "dev.conll", "Tom B-PER\n\nin O\nOslo B-LOC\n")
    task = build_task(DataSource(train, dev))
    with pytest.raises(DataError, match=r"dev.conll, row 2 \(line 3\), column 'ner_tags': label 'B-LOC' is not"):
        load_task(task, "validation")
    rows = [{"tokens": ["a", "b"], "ner_tags": ["O", "O"]}, {"tokens": ["a", "b", "c"], "ner_tags": ["O", "O"]},
            {"tokens": [], "ner_tags": []}]
    unaligned = write_text(tmp_path / "unaligned.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:2]))
    with pytest.raises(DataError, match=r"unaligned.jsonl, row 2, column 'ner_tags': 2 tags for 3 words"):
        load_task(build_task(DataSource(unaligned, unaligned)), "validation")
    empty = write_text(tmp_path / "empty.jsonl", "".join(json.dumps(r) + "\n" for r in (rows[0], rows[2])))
    with pytest.raises(DataError, match=r"empty.jsonl, row 2, column 'tokens': empty sentence"):
        load_task(build_task(DataSource(empty, empty)), "validation")


# -------------------------------------------------------------------------------------------- alignment
def test_alignment_labels_the_first_piece_of_each_word_only(tokenizer):
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [5, 6, 7]) == [-100, 5, -100, 6, 7, -100, -100, -100]
    words = ("Valparaíso", "and", "Tromsø", "welcomed", "Okafor", ".")
    ids = [3, 8, 0, 8, 7, 8]
    enc = encode([load_example(words, ids)], tokenizer, max_length=64)
    labels, pieces = enc.labels[0], enc.input_ids[0]
    assert len(labels) == len(pieces)
    # independent count: each word's own piece count, the special tokens around them
    counts = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]
    assert any(c > 1 for c in counts), "the test needs a word split into several pieces"
    expected = [-100]
    for tag, n in zip(ids, counts):
        expected += [tag] + [-100] * (n - 1)
    assert labels == expected + [-100]
    # truncation drops the words that do not fit; collate pads labels with -100
    short = encode([load_example(words, ids), load_example(("Oslo",), (0,))], tokenizer, max_length=4)
    assert len(short.input_ids[0]) == 4 and short.labels[0][-1] == -100
    batch = collate([short[0], short[1]])
    assert batch["labels"].tolist()[1] == [-100, 0, -100, -100] and batch["labels"].dtype == torch.long


def load_example(words, tags):
    from ddk_fast.data.examples import Example

    return Example(tuple(words), None, list(tags))


# ----------------------------------------------------------------------------------------------- metric
def test_entity_scores_agree_with_seqeval_on_the_words_it_sees():
    rng = random.Random(0)
    task = CustomTask("ner", "token_classification", ("tokens",), "ner_tags", TAGS)
    n, t = 40, 12
    labels = torch.full((n, t), -100)
    preds = torch.zeros(n, t, len(TAGS))
    gold_lists, pred_lists = [], []
    for i in range(n):
        g, p = [], []
        for j in range(t):
            if rng.random() < 0.3:  # later word pieces / padding: not scored
                continue
            gold = rng.randrange(len(TAGS))
            guess = gold if rng.random() < 0.7 else rng.randrange(len(TAGS))
            labels[i, j] = gold
            preds[i, j, guess] = 1.0
            g.append(TAGS[gold])
            p.append(TAGS[guess])
        gold_lists.append(g)
        pred_lists.append(p)
    got = compute_metrics(task, preds, labels)
    assert got["entity_f1"] == pytest.approx(seqeval_metrics.f1_score(gold_lists, pred_lists))
    assert got["entity_precision"] == pytest.approx(seqeval_metrics.precision_score(gold_lists, pred_lists))
    assert got["entity_recall"] == pytest.approx(seqeval_metrics.recall_score(gold_lists, pred_lists))
    assert got["tag_accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(gold_lists, pred_lists))
    assert 0.0 < got["entity_f1"] < 1.0 and got["score"] == got["entity_f1"]
    # tag ids [N, T] score the same as logits
    assert compute_metrics(task, preds.argmax(-1), labels) == got
    with pytest.raises(DataError, match="token predictions have shape"):
        compute_metrics(task, preds[:, :5], labels)


# ------------------------------------------------------------------------------------ head, loss, KD
@pytest.fixture(scope="module")
def stock():
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=len(TAGS))
    torch.manual_seed(0)
    return BertForTokenClassification(cfg).eval()


def _batch(seed=1):
    ids, mask, g = padded_batch(seed)
    labels = torch.randint(0, len(TAGS), (3, 10), generator=g).masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    return ids, mask, labels


def test_the_token_head_equals_stock_bert_for_token_classification(stock):
    model = MaskedTransformer.from_pretrained(stock).eval()
    assert model.config.task_type == "token_classification" and model.config.num_labels == len(TAGS)
    ids, mask, labels = _batch()
    with torch.no_grad():
        ref = stock(input_ids=ids, attention_mask=mask, labels=labels)
        hg, fg = model.full_gates()
        gated = model(ids, mask, head_gates=hg, ffn_gates=fg).logits
        plain = model(ids, mask).logits
    real = mask.bool()
    assert gated.shape == ref.logits.shape == (3, 10, len(TAGS))
    torch.testing.assert_close(gated[real], ref.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(plain[real], ref.logits[real], atol=1e-5, rtol=0)
    # the task loss (Fisher importance, training) is the stock model's loss: -100 labels skipped
    torch.testing.assert_close(task_loss(gated, labels), ref.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(TaskTerm(1.0, "token_classification")(ref, ref, {"labels": labels}), ref.loss,
                               atol=1e-5, rtol=0)


def test_token_level_kd_is_the_soft_cross_entropy_of_the_real_tokens():
    g = torch.Generator().manual_seed(2)
    s, t = (torch.randn(3, 10, len(TAGS), generator=g) for _ in range(2))
    _, mask, labels = _batch()
    temperature = 2.0
    rows = [(b, i) for b in range(3) for i in range(10) if mask[b, i]]
    expected = torch.stack([
        -(torch.softmax(t[b, i] / temperature, -1) * torch.log_softmax(s[b, i] / temperature, -1)).sum()
        for b, i in rows]).mean() * temperature ** 2
    out = lambda logits: type("Out", (), {"logits": logits})()  # noqa: E731
    term = PredictionTerm(1.0, temperature, "token_classification")
    torch.testing.assert_close(term(out(s), out(t), {"attention_mask": mask}), expected, atol=1e-5, rtol=0)
    # compress's objective (the ddk preset) takes the same per-token rows, and the per-token hard-label loss
    shape = TransformerConfig(vocab_size=10, hidden_size=8, head_dim=4, num_heads=[2], intermediate_sizes=[8],
                              num_labels=len(TAGS), task_type="token_classification")
    objective = KDObjective.from_config({"ddk_hidden_weight": 0.0, "task_weight": 1.0, "temperature": temperature},
                                        shape, shape, "token_classification", preset="ddk")
    assert [term.name for term in objective.terms] == ["pred", "task"]
    _, parts = objective(out(s), out(t), {"labels": labels, "attention_mask": mask})
    torch.testing.assert_close(parts["pred"], expected, atol=1e-5, rtol=0)
    keep = labels != -100
    torch.testing.assert_close(parts["task"], F.cross_entropy(s[keep], labels[keep]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- end to end
SMALL = ["--batch-size", "8", "--eval-batch-size", "16", "--max-seq-len", "32", "--no-progress"]
BUDGET = ["--target", "params=0.5", "--seq-len", "32", "--latency-batch-size", "2", "--latency-seq-len", "16",
          "--calibration-examples", "16", "--search-epochs", "1", "--distill-epochs", "1",
          "--channel-granularity", "8", "--save-steps", "100"]


@pytest.mark.slow
def test_a_conll_file_goes_through_finetune_compress_prune_distill_and_evaluate(tmp_path, capsys):
    base = make_tiny_bert(tmp_path / "tiny", num_labels=len(TAGS), layers=2, heads=4, hidden=32, intermediate=64)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["finetune", "--model", base, "--train-file", SAMPLE, "--task", "ner", "--epochs", "2",
                 "--output", str(teacher), *SMALL, "--lr", "5e-3"]) == 0
    config = json.loads((teacher / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert tuple(config["id2label"][str(i)] for i in range(len(TAGS))) == TAGS
    teacher_f1 = json.loads((teacher / "metrics.json").read_text())["dev"]["entity_f1"]
    assert teacher_f1 > 0.5, "the teacher learnt the sample's entities"
    assert main(["compress", "--teacher", str(teacher), "--output", str(student), *SMALL, "--lr", "3e-3",
                 *BUDGET]) == 0
    report = json.loads((student / "report.json").read_text())
    assert report["task"] == "ner" and report["params"]["ratio"] <= 0.5 + 1e-9
    assert report["main_metric"] == "entity_f1" and report["majority_dev"]["entity_f1"] == 0.0
    assert report["student_dev"]["entity_f1"] > 0.5
    exported = json.loads((student / "config.json").read_text())
    assert exported["architectures"] == ["DdkBertForTokenClassification"]
    assert exported["auto_map"]["AutoModelForTokenClassification"].endswith("DdkBertForTokenClassification")
    assert read_task_file(str(student)).kind == "token_classification"
    # one-shot pruning (Fisher importance on the per-token loss) and layer-dropping distillation too
    pruned, distilled = tmp_path / "pruned", tmp_path / "distilled"
    assert main(["prune", "--teacher", str(teacher), "--output", str(pruned), *SMALL, *BUDGET[:10]]) == 0
    assert json.loads((pruned / "report.json").read_text())["student_dev"]["entity_f1"] > 0.5
    assert main(["distill", "--teacher", str(teacher), "--output", str(distilled), "--student-layers", "1",
                 "--steps", "10", *SMALL]) == 0
    assert json.loads((distilled / "config.json").read_text())["architectures"] == ["DdkBertForTokenClassification"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(student)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 30 and evaluated["main_metric"] == "entity_f1"
    assert evaluated["metrics"]["entity_f1"] == pytest.approx(report["student_dev"]["entity_f1"], abs=1e-6)
    # stock transformers: the same logits as the engine, and seqeval on them gives evaluate's score
    stock_model = AutoModelForTokenClassification.from_pretrained(str(student), trust_remote_code=True).eval()
    assert type(stock_model).__name__ == "DdkBertForTokenClassification"
    examples = load_task(read_task_file(str(student)), "validation")
    tok = AutoTokenizer.from_pretrained(str(student))
    enc = tok([list(e.text_a) for e in examples], is_split_into_words=True, truncation=True, max_length=32,
              padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = stock_model(**enc).logits
        engine = load_pruned(str(student)).eval()(enc["input_ids"], enc["attention_mask"],
                                                  enc["token_type_ids"]).logits
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(logits[real], engine[real], atol=1e-5, rtol=0)
    gold, guess = [], []
    for i, ex in enumerate(examples):
        seen, g, p = set(), [], []
        for piece, word in enumerate(enc.word_ids(i)):
            if word is None or word in seen:
                continue
            seen.add(word)
            g.append(TAGS[ex.label[word]])
            p.append(stock_model.config.id2label[int(logits[i, piece].argmax())])
        gold.append(g)
        guess.append(p)
    assert evaluated["metrics"]["entity_f1"] == pytest.approx(seqeval_metrics.f1_score(gold, guess), abs=1e-6)
