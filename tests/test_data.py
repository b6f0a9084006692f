"""GLUE loading: the real release TSVs, validation errors on malformed files, and the hub path."""
import csv
import os

import datasets
import pytest

from ddk_fast.data import GLUE_TASKS, DataError, Example, find_task_file, get_task, load_task

# Official GLUE row counts (train, dev), as published with the benchmark.
OFFICIAL_ROWS = {("CoLA", "train"): 8551, ("CoLA", "dev"): 1043, ("SST-2", "train"): 67349, ("SST-2", "dev"): 872,
                 ("MRPC", "train"): 3668, ("MRPC", "dev"): 408, ("STS-B", "train"): 5749, ("STS-B", "dev"): 1500,
                 ("QNLI", "dev"): 5463}
FOLDER_TO_TASK = {"CoLA": "cola", "SST-2": "sst2", "MRPC": "mrpc", "STS-B": "stsb", "QNLI": "qnli"}


def reference_rows(path, has_header):
    """An independent parse with the csv module, quoting off: list of field lists, header dropped."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    return rows[1:] if has_header else rows


@pytest.mark.parametrize("folder,split", sorted(OFFICIAL_ROWS))
def test_real_glue_files_parse_like_the_reference(glue_dir, folder, split):
    task = FOLDER_TO_TASK[folder]
    spec = get_task(task)
    path = os.path.join(glue_dir, folder, f"{split}.tsv")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not present")
    examples = load_task(task, "train" if split == "train" else "validation", data_dir=glue_dir)
    with open(path, "rb") as f:
        non_empty_lines = sum(1 for line in f.read().split(b"\n") if line.strip())
    header_lines = 0 if folder == "CoLA" else 1
    assert len(examples) == non_empty_lines - header_lines == OFFICIAL_ROWS[(folder, split)]

    ref = reference_rows(path, has_header=header_lines == 1)
    positions = {"cola": (3, None, 1), "sst2": (0, None, 1), "mrpc": (3, 4, 0), "stsb": (7, 8, 9),
                 "qnli": (1, 2, 3)}[task]
    for ex, row in zip(examples, ref):
        assert ex.text_a == row[positions[0]]
        assert ex.text_b == (None if positions[1] is None else row[positions[1]])
        if spec.is_regression:
            assert ex.label == float(row[positions[2]]) and 0.0 <= ex.label <= 5.0
        else:
            assert spec.tsv_labels[ex.label] == row[positions[2]]
            assert 0 <= ex.label < spec.num_labels


def test_real_files_keep_lone_quotes_and_strip_the_bom(glue_dir):
    mrpc = load_task("mrpc", "validation", data_dir=glue_dir)
    assert mrpc[0].text_b.startswith('" The foodservice')  # a lone quote must not start a quoted field
    qnli = load_task("qnli", "validation", data_dir=glue_dir)
    assert any(ex.text_b.startswith('" ') for ex in qnli)
    assert not any(ex.text_a.startswith("\ufeff") for ex in mrpc)


def test_sst2_label_counts_match_sources(glue_dir):
    labels = [ex.label for ex in load_task("sst2", "validation", data_dir=glue_dir)]
    assert (labels.count(0), labels.count(1)) == (428, 444)


def test_data_dir_may_be_the_task_folder(glue_dir):
    direct = load_task("mrpc", "validation", data_dir=os.path.join(glue_dir, "MRPC"))
    assert direct == load_task("mrpc", "validation", data_dir=glue_dir)


def test_max_examples_is_a_seeded_subset_in_file_order(glue_dir):
    full = load_task("cola", "validation", data_dir=glue_dir)
    a = load_task("cola", "validation", data_dir=glue_dir, max_examples=50, seed=3)
    b = load_task("cola", "validation", data_dir=glue_dir, max_examples=50, seed=3)
    c = load_task("cola", "validation", data_dir=glue_dir, max_examples=50, seed=4)
    assert a == b and a != c and len(a) == 50
    positions = [full.index(ex) for ex in a]
    assert positions == sorted(positions)
    assert load_task("cola", "validation", data_dir=glue_dir, max_examples=10**6) == full
    with pytest.raises(DataError, match="max_examples"):
        load_task("cola", "validation", data_dir=glue_dir, max_examples=0)


# ---------------------------------------------------------------- registry


def test_registry_describes_all_nine_tasks():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
    assert get_task("stsb").num_labels == 1 and get_task("stsb").is_regression
    assert get_task("mnli").num_labels == 3
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("SST-2") is get_task("sst2")
    assert all(spec.num_labels == len(spec.label_names) for spec in GLUE_TASKS.values() if not spec.is_regression)
    assert all(spec.main_metric in spec.metric_names for spec in GLUE_TASKS.values())


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown task 'imdb'.*cola.*wnli"):
        load_task("imdb", data_dir=".")


def test_unknown_split_is_rejected():
    with pytest.raises(DataError, match="split='test'.*expected one of"):
        load_task("sst2", "test", data_dir=".")


# ---------------------------------------------------------------- malformed files


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def load_error(task, split, data_dir, **kwargs):
    with pytest.raises(DataError) as info:
        load_task(task, split, data_dir=data_dir, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_paths_name_what_was_looked_for(tmp_path):
    assert "is not a folder" in load_error("sst2", "train", tmp_path / "nowhere")
    message = load_error("sst2", "train", tmp_path)
    assert os.path.join(str(tmp_path), "SST-2", "train.tsv") in message
    (tmp_path / "SST-2").mkdir()
    message = load_error("sst2", "validation", tmp_path)
    assert os.path.join(str(tmp_path), "SST-2", "dev.tsv") in message and "file not found" in message


@pytest.mark.parametrize("content,problem", [
    ("", "file is empty"),
    ("\n\n", "file is empty"),
    ("sentence\tlabel\n", "no data rows after the header"),
])
def test_empty_files(tmp_path, content, problem):
    path = write(tmp_path / "SST-2" / "train.tsv", content)
    message = load_error("sst2", "train", tmp_path)
    assert str(path) in message and problem in message


def test_wrong_column_count_names_the_line(tmp_path):
    path = write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n")
    message = load_error("sst2", "train", tmp_path)
    assert f"{path}, line 3" in message and "expected 2" in message and "found 3" in message
    kept = load_task("sst2", "train", data_dir=tmp_path, skip_bad_rows=True)
    assert kept == [Example("good movie", None, 1)]


def test_cola_without_header_checks_four_columns(tmp_path):
    write(tmp_path / "CoLA" / "dev.tsv", "gj04\t1\t\tFine.\ngj04\t0\t*\n")
    message = load_error("cola", "validation", tmp_path)
    assert "line 2" in message and "expected 4" in message


def test_missing_header_column(tmp_path):
    write(tmp_path / "QNLI" / "dev.tsv", "index\tquestion\tsentense\tlabel\n0\tq\ts\tentailment\n")
    message = load_error("qnli", "validation", tmp_path)
    assert "line 1" in message and "'sentence'" in message and "missing" in message


@pytest.mark.parametrize("task,folder,text,bad", [
    ("sst2", "SST-2", "sentence\tlabel\nok\t1\nnot ok\t2\n", "'2'"),
    ("qnli", "QNLI", "index\tquestion\tsentence\tlabel\n0\tq\ts\tentailment\n1\tq\ts\tmaybe\n", "'maybe'"),
])
def test_label_not_in_label_set(tmp_path, task, folder, text, bad):
    write(tmp_path / folder / "train.tsv", text)
    message = load_error(task, "train", tmp_path)
    assert "line 3" in message and bad in message and "label set" in message


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


@pytest.mark.parametrize("score,problem", [("high", "is not a number"), ("5.5", "out of range"),
                                           ("nan", "out of range")])
def test_bad_regression_scores(tmp_path, score, problem):
    row = "0\tg\tf\t2012\t0001\tnone\tnone\tA\tB\t{}\n"
    write(tmp_path / "STS-B" / "train.tsv", STSB_HEADER + row.format("4.2") + row.format(score))
    message = load_error("stsb", "train", tmp_path)
    assert "line 3" in message and problem in message


def test_trailing_empty_lines_crlf_and_no_final_newline_are_fine(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\r\na \" quote\t1\r\nb\t0\n\n\n")
    assert load_task("sst2", "train", data_dir=tmp_path) == [Example('a " quote', None, 1), Example("b", None, 0)]
    write(tmp_path / "SST-2" / "dev.tsv", "\ufeffsentence\tlabel\nc\t1")
    assert load_task("sst2", "validation", data_dir=tmp_path) == [Example("c", None, 1)]


def test_empty_line_inside_the_data_is_an_error(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\na\t1\n\nb\t0\n")
    assert "line 3: empty line" in load_error("sst2", "train", tmp_path)


def test_invalid_utf8(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", b"sentence\tlabel\n\xff\xfe bad\t1\n")
    assert "not valid UTF-8" in load_error("sst2", "train", tmp_path)


def test_mnli_splits_and_layouts(tmp_path):
    train_header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    dev_header = train_header.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
    parses = "\t".join(["x"] * 4)
    write(tmp_path / "MNLI" / "train.tsv", train_header + f"0\t1\t1e\tfiction\t{parses}\tP\tH\tneutral\tneutral\n")
    write(tmp_path / "MNLI" / "dev_matched.tsv",
          dev_header + f"0\t1\t1e\tfiction\t{parses}\tP\tH\t" + "contradiction\t" * 5 + "contradiction\n")
    write(tmp_path / "MNLI" / "dev_mismatched.tsv",
          dev_header + f"0\t1\t1e\tfiction\t{parses}\tP2\tH2\t" + "entailment\t" * 5 + "entailment\n")
    assert load_task("mnli", "train", data_dir=tmp_path) == [Example("P", "H", 1)]
    assert load_task("mnli", "validation_matched", data_dir=tmp_path) == [Example("P", "H", 2)]
    assert load_task("mnli", "validation", data_dir=tmp_path) == [Example("P", "H", 2)]
    assert load_task("mnli", "validation_mismatched", data_dir=tmp_path) == [Example("P2", "H2", 0)]
    assert find_task_file("mnli", "validation_mismatched", tmp_path).endswith("dev_mismatched.tsv")


# ---------------------------------------------------------------- hub path (no network: load_dataset is faked)


def fake_glue(monkeypatch, table, features=None, calls=None):
    def load_dataset(path, name=None, split=None, **kwargs):
        if calls is not None:
            calls.append((path, name, split))
        return datasets.Dataset.from_dict(table, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_hub_pairs_with_class_labels(monkeypatch):
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    calls = []
    fake_glue(monkeypatch, {"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "label": [1, 0, 1],
                            "idx": [0, 1, 2]}, features, calls)
    assert load_task("mrpc", "validation") == [Example("a", "x", 1), Example("b", "y", 0), Example("c", "z", 1)]
    assert calls == [("nyu-mll/glue", "mrpc", "validation")]
    subset = load_task("mrpc", "train", max_examples=2, seed=0)
    assert len(subset) == 2 and set(subset) <= {Example("a", "x", 1), Example("b", "y", 0), Example("c", "z", 1)}


def test_hub_single_sentence_and_regression(monkeypatch):
    fake_glue(monkeypatch, {"sentence": ["fine", "bad"], "label": [1, 0], "idx": [0, 1]})
    assert load_task("sst2") == [Example("fine", None, 1), Example("bad", None, 0)]
    fake_glue(monkeypatch, {"sentence1": ["a"], "sentence2": ["b"], "label": [3.25], "idx": [0]})
    [example] = load_task("stsb", "validation")
    assert example == Example("a", "b", 3.25) and isinstance(example.label, float)


def test_hub_mnli_validation_means_matched(monkeypatch):
    calls = []
    fake_glue(monkeypatch, {"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]}, calls=calls)
    assert load_task("mnli", "validation") == [Example("p", "h", 2)]
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]


def test_hub_errors(monkeypatch):
    fake_glue(monkeypatch, {"sentence": ["hidden"], "label": [-1], "idx": [0]})
    with pytest.raises(DataError, match="row 0: label is -1"):
        load_task("sst2")
    fake_glue(monkeypatch, {"text": ["wrong column"], "label": [0]})
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence'\]"):
        load_task("sst2")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative"])})
    fake_glue(monkeypatch, {"sentence": ["s"], "label": [0]}, features)
    with pytest.raises(DataError, match="label names"):
        load_task("sst2")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="ConnectionError: Couldn't reach the hub; pass data_dir=") as info:
        load_task("cola")
    assert "\n" not in str(info.value)
