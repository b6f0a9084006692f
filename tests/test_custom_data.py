"""Users' own datasets: files (csv/tsv/json/jsonl/parquet), saved dataset folders, inferred task kinds,
label sets from the train split, task.json + id2label in outputs, `data check`, and two end-to-end runs
(a CSV of labelled texts, a JSONL of scored pairs) through compress and evaluate, the export read back
with stock transformers."""
import json
import math
import os

import datasets
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from train_support import make_tiny_bert, packaged_dir, write_text

from ddk_fast.cli import main
from ddk_fast.data import DataError, compute_metrics, load_task
from ddk_fast.data.custom import CustomTask, DataSource, build_task, read_task_file
from ddk_fast.runs.evaluation import resolve_task

TOPICS = {"billing": ["invoice", "refund", "charge", "payment"], "login": ["password", "account", "locked", "reset"],
          "bug": ["crash", "error", "broken", "freeze"]}
WORDS = ["cat", "dog", "car", "tree", "sun", "moon"]


def tickets_csv(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = ["id,body,category"]
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        a, b = rng.choice(TOPICS[topic], 2, replace=False)
        lines.append(f'{i},"my {a} is {b}, please help",{topic}')
    return write_text(path, "\n".join(lines) + "\n")


def pairs_jsonl(path, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(WORDS, 3, replace=False), rng.choice(WORDS, 3, replace=False)
        rows.append({"left": " ".join(a), "right": " ".join(b), "score": round(len(set(a) & set(b)) * 5 / 3, 3)})
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------ loading, kinds
def test_string_labels_give_a_sorted_label_set_and_ids_in_that_order(tmp_path):
    train = tickets_csv(tmp_path / "t.csv", 12, 0)
    task = build_task(DataSource(train, train), text_columns="body", label_column="category")
    assert task.kind == "classification" and task.label_names == ("billing", "bug", "login")
    examples = load_task(task, "validation")
    assert [task.label_names[e.label] for e in examples] == [list(TOPICS)[i % 3] for i in range(12)]
    assert examples[0].text_a.startswith("my ") and examples[0].text_b is None


def test_kind_is_inferred_from_the_label_column_and_can_be_overridden(tmp_path):
    ints = write_text(tmp_path / "i.jsonl",
                      "".join(json.dumps({"text": f"t {i}", "label": i % 3}) + "\n" for i in range(9)))
    floats = write_text(tmp_path / "f.jsonl", "".join(json.dumps({"text": f"t {i}", "label": i / 2}) + "\n"
                                                      for i in range(9)))
    lists = write_text(tmp_path / "l.jsonl",
                       "".join(json.dumps({"text": f"t {i}", "label": ["x", "y"][: 1 + i % 2]}) + "\n"
                               for i in range(9)))
    by_int = build_task(DataSource(ints, ints))
    assert by_int.kind == "classification" and by_int.label_names == ("0", "1", "2")
    assert [e.label for e in load_task(by_int, "train")] == [i % 3 for i in range(9)]
    assert build_task(DataSource(floats, floats)).kind == "regression"
    as_scores = build_task(DataSource(ints, ints), kind="regression")
    assert as_scores.num_labels == 1 and [e.label for e in load_task(as_scores, "train")][:3] == [0.0, 1.0, 2.0]
    multi = build_task(DataSource(lists, lists))
    assert multi.kind == "multilabel" and multi.label_names == ("x", "y")
    assert [e.label for e in load_task(multi, "train")][:2] == [(1.0, 0.0), (1.0, 1.0)]


def test_tsv_keeps_quotes_and_parquet_and_json_arrays_read_the_same_rows(tmp_path):
    tsv = write_text(tmp_path / "d.tsv", 'text\tlabel\nsaid "hi\tpos\n"quoted" word\tneg\n')
    assert [e.text_a for e in load_task(build_task(DataSource(tsv, tsv)), "train")] == ['said "hi', '"quoted" word']
    rows = {"text": ["a b", "c d", "e f"], "label": ["x", "y", "x"]}
    parquet = str(tmp_path / "d.parquet")
    datasets.Dataset.from_dict(rows).to_parquet(parquet)
    array = write_text(tmp_path / "d.json", json.dumps([{"text": t, "label": y} for t, y in zip(*rows.values())]))
    for path in (parquet, array):
        examples = load_task(build_task(DataSource(path, path)), "train")
        assert [(e.text_a, e.label) for e in examples] == [("a b", 0), ("c d", 1), ("e f", 0)]


def test_without_a_validation_file_a_seeded_tenth_is_held_out(tmp_path):
    train = tickets_csv(tmp_path / "t.csv", 40, 1)
    task = build_task(DataSource(train), text_columns="body", label_column="category")
    tr, dev = load_task(task, "train"), load_task(task, "validation")
    assert len(dev) == 4 and len(tr) == 36
    assert sorted(e.text_a for e in tr + dev) == sorted(e.text_a for e in load_task(
        build_task(DataSource(train, train), text_columns="body", label_column="category"), "train"))
    assert [e.text_a for e in load_task(task, "validation")] == [e.text_a for e in dev]  # deterministic


def test_a_saved_dataset_folder_keeps_its_class_label_order(tmp_path):
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})
    data = datasets.Dataset.from_dict({"sentence": [f"s {i}" for i in range(10)], "label": [i % 2 for i in range(10)]},
                                      features=features)
    datasets.DatasetDict({"train": data, "validation": data.select(range(4))}).save_to_disk(str(tmp_path / "saved"))
    task = build_task(DataSource(dataset=str(tmp_path / "saved")))
    assert task.text_columns == ("sentence",) and task.label_names == ("pos", "neg")
    assert [e.label for e in load_task(task, "validation")] == [0, 1, 0, 1]


def test_a_dataset_without_validation_split_holds_out_rows_that_do_not_train(tmp_path):
    data = datasets.Dataset.from_dict({"text": [f"s {i}" for i in range(20)], "label": [i % 2 for i in range(20)]})
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "only-train"))
    task = build_task(DataSource(dataset=str(tmp_path / "only-train")))
    train = {e.text_a for e in load_task(task, "train")}
    dev = {e.text_a for e in load_task(task, "validation")}
    assert len(dev) == 2 and len(train) == 18 and not train & dev


def test_errors_name_the_file_row_and_column(tmp_path):
    train = write_text(tmp_path / "t.csv", "text,label\na,x\nb,y\n")
    dev = write_text(tmp_path / "v.csv", "text,label\nc,x\nd,z\n")
    with pytest.raises(DataError, match=r"v\.csv, row 2, column 'label': label 'z' is not in the training label set"):
        load_task(build_task(DataSource(train, dev)), "validation")
    blank = write_text(tmp_path / "b.csv", "text,label\na,x\n,y\n")
    with pytest.raises(DataError, match=r"b\.csv, row 2, column 'text': empty text"):
        load_task(build_task(DataSource(blank, blank)), "train")
    one_tag = tmp_path / "one.jsonl"
    one_tag.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in (("a", []), ("b", ["spam"]))))
    with pytest.raises(DataError, match="multi-label needs at least two"):
        build_task(DataSource(str(one_tag), str(one_tag)))
    one_class = write_text(tmp_path / "o.csv", "text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match="only one label"):
        build_task(DataSource(one_class, one_class))


# ------------------------------------------------------------------------------------------ metrics
def test_custom_metrics_agree_with_scikit_learn_and_scipy(tmp_path):
    rng = np.random.default_rng(0)
    cls = CustomTask("c", "classification", ("text",), "label", ("a", "b", "c"))
    logits, gold = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    got = compute_metrics(cls, logits, gold)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(gold, logits.argmax(1), average="macro"))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(gold, logits.argmax(1)))
    reg = CustomTask("r", "regression", ("text",), "y", ("y",))
    pred, y = rng.normal(size=30), rng.normal(size=30)
    assert compute_metrics(reg, pred, y)["spearman"] == pytest.approx(stats.spearmanr(pred, y)[0])
    multi = CustomTask("m", "multilabel", ("text",), "tags", ("a", "b", "c", "d"))
    logits, hot = rng.normal(size=(40, 4)), rng.integers(0, 2, (40, 4))
    assert compute_metrics(multi, logits, hot)["f1_micro"] == pytest.approx(
        skm.f1_score(hot, logits > 0, average="micro"))


# ------------------------------------------------------------------------------- saved task, reuse
def test_a_saved_task_fixes_the_label_order_for_later_files(tmp_path):
    train = write_text(tmp_path / "t.csv", "text,label\na,x\nb,y\nc,z\n")
    saved = CustomTask("tickets", "classification", ("text",), "label", ("z", "x", "y"),
                       DataSource(train, train))
    model = tmp_path / "model"
    model.mkdir()
    (model / "task.json").write_text(json.dumps(saved.to_dict()))
    assert read_task_file(str(model)) == saved
    assert resolve_task(None, None, str(model)) == saved
    new = write_text(tmp_path / "n.csv", "body,label\nq,y\nr,z\n")
    again = resolve_task(None, {"validation_file": new, "text_columns": "body"}, str(model))
    assert again.label_names == ("z", "x", "y") and [e.label for e in load_task(again, "validation")] == [2, 0]


def test_a_model_config_naming_the_labels_orders_them(tmp_path):
    train = write_text(tmp_path / "t.csv", "text,label\na,neg\nb,pos\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "pos", "1": "neg"}}))
    assert resolve_task(None, {"train_file": train, "validation_file": train}, str(model)).label_names == ("pos", "neg")


def test_model_label_names_match_case_insensitively_or_are_reported(tmp_path, capsys):
    train = write_text(tmp_path / "t.csv", "text,label\na,neg\nb,pos\n")
    data = {"train_file": train, "validation_file": train}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "POS", "1": "NEG"}}))
    assert resolve_task(None, data, str(model)).label_names == ("pos", "neg")
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "POSITIVE", "1": "NEGATIVE"}}))
    assert resolve_task(None, data, str(model)).label_names == ("neg", "pos")
    assert "are not the data's labels" in capsys.readouterr().err
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    resolve_task(None, data, str(model))
    assert capsys.readouterr().err == ""  # unnamed rows: nothing to warn about


def test_a_yaml_list_of_text_columns_means_the_comma_form(tmp_path):
    from ddk_fast.pipelines.configs import CompressConfig
    from ddk_fast.runs.config import build_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("train-file: t.csv\ntext_columns: [question, answer]\nlabel_column: y\n")
    built = build_config(CompressConfig, "compress", {}, str(cfg))
    assert (built.train_file, built.text_columns, built.label_column) == ("t.csv", "question,answer", "y")


# ------------------------------------------------------------------------------------- data check
def test_data_check_reports_rows_labels_lengths_and_truncation(tmp_path, capsys):
    from transformers import AutoTokenizer

    long_text = " ".join(["word"] * 40)
    train = write_text(tmp_path / "t.csv", "text,label\n" + "".join(
        f"{long_text if i % 4 == 0 else 'short text'},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    assert main(["data", "check", "--train-file", train, "--validation-file", train, "--max-seq-len", "16",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "classification" and report["labels"] == ["a", "b"]
    train_part = report["splits"]["train"]
    assert train_part["rows"] == 20 and train_part["label_counts"] == {"a": 10, "b": 10}
    tok = AutoTokenizer.from_pretrained(packaged_dir())
    lengths = [len(tok(long_text if i % 4 == 0 else "short text")["input_ids"]) for i in range(20)]
    assert train_part["tokens"]["max"] == max(lengths) and train_part["tokens"]["p50"] == int(np.percentile(lengths, 50))
    assert train_part["truncated_share"] == pytest.approx(np.mean(np.array(lengths) > 16))
    assert train_part["truncated_rows"] == sum(n > 16 for n in lengths) > 0
    assert any("longer than --max-seq-len" in w for w in report["warnings"])
    assert main(["data", "check", "--train-file", train]) == 0
    text = capsys.readouterr().out
    assert "train: 18 rows" in text and "held out of train" in text and text.strip().endswith(
        "every row has its text and a label the task knows")


# ------------------------------------------------------------------------------------- end to end
SMALL = ["--batch-size", "8", "--eval-batch-size", "16", "--max-seq-len", "32", "--no-progress"]
FAST = [*SMALL, "--lr", "1e-3"]
ONESHOT = ["--target", "params=0.5", "--seq-len", "32", "--latency-batch-size", "2", "--latency-seq-len", "16",
           "--calibration-examples", "16"]
BUDGET = [*ONESHOT, "--search-epochs", "1", "--distill-epochs", "1", "--channel-granularity", "8", "--save-steps", "100"]


def stock_predictions(folder, examples):
    """Logits of an export loaded the way a user without ddk_fast would load it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    pairs = examples[0].text_b is not None
    enc = tok([e.text_a for e in examples], [e.text_b for e in examples] if pairs else None, padding=True,
              truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model, model(**enc).logits.numpy()


@pytest.mark.slow
def test_a_csv_of_labelled_texts_goes_through_finetune_compress_and_evaluate(tmp_path, capsys):
    train, dev = tickets_csv(tmp_path / "train.csv", 48, 0), tickets_csv(tmp_path / "dev.csv", 15, 1)
    tiny = make_tiny_bert(tmp_path / "tiny", num_labels=3, layers=2, heads=4, hidden=32, intermediate=64)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["finetune", "--model", tiny, "--train-file", train, "--validation-file", dev, "--text-columns", "body",
                 "--label-column", "category", "--task", "tickets", "--epochs", "1", "--output", str(teacher),
                 *FAST]) == 0
    assert json.loads((teacher / "config.json").read_text())["id2label"] == {"0": "billing", "1": "bug", "2": "login"}
    assert read_task_file(str(teacher)).name == "tickets"
    # the teacher knows its task: compress takes no data flags
    assert main(["compress", "--teacher", str(teacher), "--output", str(student), *FAST, *BUDGET]) == 0
    capsys.readouterr()
    report = json.loads((student / "report.json").read_text())
    assert report["task"] == "tickets" and report["params"]["ratio"] <= 0.5 + 1e-9
    assert set(report["student_dev"]) >= {"accuracy", "f1_macro", "score"}
    assert read_task_file(str(student)).label_names == ("billing", "bug", "login")
    assert main(["evaluate", "--model", str(student)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 15
    import ddk_fast

    assert ddk_fast.evaluate(str(student))["metrics"] == evaluated["metrics"]  # the Python API: the same
    assert evaluated["metrics"]["accuracy"] == pytest.approx(report["student_dev"]["accuracy"], abs=1e-6)
    examples = load_task(read_task_file(str(student)), "validation")
    model, logits = stock_predictions(str(student), examples)
    assert model.config.id2label == {0: "billing", 1: "bug", 2: "login"}
    gold = [e.label for e in examples]
    assert skm.accuracy_score(gold, logits.argmax(1)) == pytest.approx(evaluated["metrics"]["accuracy"], abs=1e-6)
    assert skm.f1_score(gold, logits.argmax(1), average="macro") == pytest.approx(
        evaluated["metrics"]["f1_macro"], abs=1e-6)
    # --resume of the finished teacher: the same files give the recorded result; an edited train file
    # (same name) is refused, naming it, instead of silently returning the old result
    again = ["finetune", "--model", tiny, "--train-file", train, "--validation-file", dev, "--text-columns", "body",
             "--label-column", "category", "--task", "tickets", "--epochs", "1", "--output", str(teacher), "--resume",
             *FAST]
    assert main(again) == 0
    with open(train, "a", encoding="utf-8") as f:
        f.write("99,one more ticket,billing\n")
    capsys.readouterr()
    assert main(again) == 2
    assert "data_files_sha256" in capsys.readouterr().err


@pytest.mark.slow
def test_a_jsonl_of_scored_pairs_goes_through_compress_prune_and_evaluate(tmp_path, capsys):
    train, dev = pairs_jsonl(tmp_path / "train.jsonl", 48, 0), pairs_jsonl(tmp_path / "dev.jsonl", 16, 1)
    other = pairs_jsonl(tmp_path / "other.jsonl", 12, 2)
    teacher = make_tiny_bert(tmp_path / "tiny", num_labels=1, layers=2, heads=4, hidden=32, intermediate=64,
                             problem_type="regression")
    student, pruned = tmp_path / "student", tmp_path / "pruned"
    data = ["--train-file", train, "--validation-file", dev, "--text-columns", "left,right"]
    assert main(["compress", "--teacher", teacher, *data, "--output", str(student), *FAST, *BUDGET]) == 0
    report = json.loads((student / "report.json").read_text())
    assert set(report["student_dev"]) >= {"pearson", "spearman", "score"}
    task = read_task_file(str(student))
    assert task.kind == "regression" and task.text_columns == ("left", "right") and task.label_column == "score"
    assert main(["prune", "--teacher", teacher, *data, "--output", str(pruned), *SMALL, *ONESHOT]) == 0
    assert read_task_file(str(pruned)).kind == "regression"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(student), "--validation-file", other]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 12
    examples = load_task(resolve_task(None, {"validation_file": other}, str(student)), "validation")
    model, logits = stock_predictions(str(student), examples)
    assert model.config.problem_type == "regression" and logits.shape == (12, 1)
    gold = [e.label for e in examples]
    expected = stats.pearsonr(logits[:, 0], gold)[0]
    assert math.isfinite(expected)
    # a logit moved by d moves Pearson's r by about d / std(logits): the tiny student's predictions can
    # spread by only ~1e-4, so fp32 rounding differences (~1e-6) between the stock model and the engine
    # allow that much
    tolerance = 1e-5 + 2e-6 / max(float(logits[:, 0].std()), 1e-12)
    assert evaluated["metrics"]["pearson"] == pytest.approx(expected, abs=tolerance)


def test_sigmoid_prediction_kd_is_stationary_at_the_teacher_and_scaled_by_t_squared():
    from ddk_fast.distill.objectives import sigmoid_kd_loss

    t_logits = torch.randn(6, 4)
    s_logits = t_logits.clone().requires_grad_(True)
    sigmoid_kd_loss(s_logits, t_logits, 2.0).backward()
    assert s_logits.grad.abs().max() < 1e-6
    other = torch.randn(6, 4)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(other / 3.0), torch.sigmoid(t_logits / 3.0)) * 9
    assert sigmoid_kd_loss(other, t_logits, 3.0).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_a_multilabel_jsonl_goes_through_finetune_and_compress_with_bce(tmp_path, capsys):
    rows = "".join(json.dumps({"text": f"{' '.join(TOPICS[t][:2])} {i}", "tags": [t, "any"][: 1 + i % 2]}) + "\n"
                   for i, t in enumerate(list(TOPICS) * 6))
    train = write_text(tmp_path / "tags.jsonl", rows)
    tiny = make_tiny_bert(tmp_path / "tiny", num_labels=4, layers=1, heads=2, hidden=16, intermediate=32)
    out = tmp_path / "teacher"
    assert main(["finetune", "--model", tiny, "--train-file", train, "--validation-file", train,
                 "--label-column", "tags", "--epochs", "1", "--output", str(out), *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["any", "billing", "bug", "login"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dev"]["f1_micro"] <= 1.0 and metrics["main_metric"] == "f1_micro"
    student = tmp_path / "student"
    assert main(["compress", "--teacher", str(out), "--output", str(student), *FAST, *BUDGET]) == 0
    capsys.readouterr()
    report = json.loads((student / "report.json").read_text())
    assert set(report["student_dev"]) >= {"f1_micro", "score"} and set(report["majority_dev"]) == {"f1_micro", "score"}
    assert json.loads((student / "config.json").read_text())["problem_type"] == "multi_label_classification"
    assert main(["evaluate", "--model", str(student)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    examples = load_task(read_task_file(str(student)), "validation")
    _, logits = stock_predictions(str(student), examples)
    gold = np.array([e.label for e in examples])
    assert skm.f1_score(gold, logits > 0, average="micro") == pytest.approx(evaluated["metrics"]["f1_micro"], abs=1e-6)


def test_a_folder_of_data_files_is_a_dataset_with_its_splits(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    write_text(folder / "train.csv", "text,label\na,x\nb,y\nc,x\n")
    write_text(folder / "validation.csv", "text,label\nd,y\n")
    task = build_task(DataSource(dataset=str(folder)))
    assert task.label_names == ("x", "y") and [(e.text_a, e.label) for e in load_task(task, "validation")] == [("d", 1)]


def test_a_hub_name_with_a_config_goes_to_load_dataset(monkeypatch):
    """Offline here: ``datasets.load_dataset`` is replaced by a stand-in that records its arguments."""
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        rows = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})
        return datasets.DatasetDict({"train": rows, "validation": rows.select([1])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = build_task(DataSource(dataset="some-org/pairs:v2"))
    assert calls[0] == ("some-org/pairs", "v2") and task.text_columns == ("sentence1", "sentence2")
    assert [(e.text_a, e.text_b, e.label) for e in load_task(task, "validation")] == [("b", "d", 1)]


@pytest.mark.slow
def test_distill_and_sweep_take_a_csv_too(tmp_path):
    train = tickets_csv(tmp_path / "train.csv", 24, 0)
    teacher = make_tiny_bert(tmp_path / "tiny", num_labels=3, layers=2, heads=4, hidden=32, intermediate=64)
    data = ["--train-file", train, "--text-columns", "body", "--label-column", "category"]
    out = tmp_path / "student"
    assert main(["distill", "--teacher", teacher, *data, "--student-layers", "1", "--steps", "2", "--output", str(out),
                 *SMALL]) == 0
    assert read_task_file(str(out)).label_names == ("billing", "bug", "login")
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "billing", "1": "bug", "2": "login"}
    assert main(["sweep", "--teacher", teacher, *data, "--student-layers", "1", "--steps", "2", "--grid",
                 "temperature=1,4", "--output", str(tmp_path / "sweep"), "--batch-size", "8", "--max-seq-len", "32"]) == 0
    points = sorted((tmp_path / "sweep" / "points").glob("*.json"))
    assert len(points) == 2
    for path in points:
        assert set(json.loads(path.read_text())["dev"]) >= {"accuracy", "f1_macro", "score"}
