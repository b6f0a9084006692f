"""Bad input, table-driven: every mistake a user can make ends in exit code 2 and one line naming the
problem, with no traceback, and leaves an earlier finished output byte for byte as it was.

The earlier output is a finished `prune` run; every case that writes somewhere writes to a fresh
folder, except the cases that target the earlier output on purpose (reuse without --overwrite,
--resume with other settings).
"""
import hashlib
import json
import os
import shutil

import pytest

from train_support import make_tiny_bert

from ddk_fast.cli import main

SMALL = ["--max-seq-len", "32", "--batch-size", "8", "--eval-batch-size", "16", "--no-progress"]
LATENCY = ["--latency-batch-size", "2", "--latency-seq-len", "16"]


def _tsv_rows(path, n):
    with open(path, encoding="utf-8-sig") as fh:
        return fh.read().splitlines()[:n]


@pytest.fixture(scope="module")
def env(tmp_path_factory, glue_dir):
    """Tiny teacher, small GLUE folders (good and broken ones), a finished earlier output, broken models."""
    root = tmp_path_factory.mktemp("bad")
    teacher = make_tiny_bert(root / "teacher", layers=2, heads=4, hidden=32, intermediate=64, max_positions=512)
    stsb_teacher = make_tiny_bert(root / "teacher_stsb", num_labels=1, layers=2, heads=4, hidden=32, intermediate=64,
                                  max_positions=512, problem_type="regression")
    glue = root / "glue"
    for task, n in (("MRPC", 41), ("STS-B", 41), ("CoLA", 40)):
        (glue / task).mkdir(parents=True)
        for split in ("train", "dev"):
            (glue / task / f"{split}.tsv").write_text(
                "\n".join(_tsv_rows(os.path.join(glue_dir, task, f"{split}.tsv"), n)) + "\n", encoding="utf-8")

    def broken(name, task, edit):
        folder = root / name
        shutil.copytree(glue, folder)
        path = folder / task / "train.tsv"
        edit(path)
        return str(folder)

    rows = _tsv_rows(os.path.join(glue_dir, "MRPC", "train.tsv"), 41)
    data = {
        "good": str(glue),
        "missing": str(root / "no_such_glue"),
        "wrong_columns": broken("wrong_columns", "MRPC", lambda p: p.write_text(
            "a\tb\n" + "\n".join("x\ty" for _ in range(10)) + "\n", encoding="utf-8")),
        "label_range": broken("label_range", "MRPC", lambda p: p.write_text(
            "\n".join(rows[:5] + ["7" + rows[5][1:]] + rows[6:]) + "\n", encoding="utf-8")),
        "not_utf8": broken("not_utf8", "MRPC", lambda p: p.write_bytes(b"\xff\xfe\x00bad\tbytes\n" * 5)),
        "empty": broken("empty", "MRPC", lambda p: p.write_text(rows[0] + "\n", encoding="utf-8")),
        "nan_score": broken("nan_score", "STS-B", lambda p: p.write_text(
            "\n".join(line if i != 3 else "\t".join(line.split("\t")[:-1] + ["nan"])
                      for i, line in enumerate(_tsv_rows(os.path.join(glue_dir, "STS-B", "train.tsv"), 41))) + "\n",
            encoding="utf-8")),
        "missing_split": broken("missing_split", "MRPC", lambda p: p.unlink()),
    }
    earlier = root / "earlier"
    assert main(["prune", "--teacher", teacher, "--task", "mrpc", "--data-dir", str(glue), "--output", str(earlier),
                 "--calibration-examples", "16", *SMALL, *LATENCY, "--seq-len", "32"]) == 0
    truncated = root / "truncated_teacher"
    shutil.copytree(teacher, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    headless = root / "headless"
    shutil.copytree(teacher, headless)
    cfg = json.loads((headless / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (headless / "config.json").write_text(json.dumps(cfg))
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    yaml_bad = root / "bad.yaml"
    yaml_bad.write_text("lr: [1, 2\n")
    yaml_unknown = root / "unknown.yaml"
    yaml_unknown.write_text("no_such_option: 3\n")
    structure_bad = root / "structure.json"
    structure_bad.write_text('{"heads": [1]}')
    own = root / "own"
    own.mkdir()
    good = "text,label\n" + "".join(f"row number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    files = {"good.csv": good, "dev_bad_label.csv": "text,label\nfine,pos\nwhat,maybe\n",
             "empty_text.csv": "text,label\nfine,pos\n  ,neg\nok,neg\n", "data.txt": good,
             "multi.jsonl": "".join(json.dumps({"text": f"t{i}", "label": ["a", "b"][: 1 + i % 2]}) + "\n"
                                    for i in range(12)),
             "multi_dev.jsonl": json.dumps({"text": "x", "label": ["a"]}) + "\n" + json.dumps({"text": "y", "label": "b"})
             + "\n",
             # token classification with two tags (B-PER, O): the 2-label tiny teacher's row count
             "ner.conll": "".join(f"Anna B-PER\nmet O\nTom{i} B-PER\n\n" for i in range(12)),
             "ner_dev_unknown.conll": "Tom B-PER\nran O\n\nin O\nOslo B-LOC\n",
             "ner_bad_line.conll": "Anna B-PER\nmet O\nTom\n",
             "ner_unaligned.jsonl": "".join(json.dumps({"tokens": ["Anna", "met", "Tom"],
                                                       "ner_tags": ["B-PER", "O", "B-PER"][: 3 - (i == 1)]}) + "\n"
                                            for i in range(6)),
             "ner_empty.jsonl": "".join(json.dumps({"tokens": [] if i == 2 else ["Anna", "ran"],
                                                   "ner_tags": [] if i == 2 else ["B-PER", "O"]}) + "\n"
                                        for i in range(6))}
    for name, text in files.items():
        (own / name).write_text(text, encoding="utf-8")
    (own / "latin1.csv").write_bytes("text,label\ncaf\u00e9,pos\nthe,neg\n".encode("latin-1"))
    ner_teacher = str(root / "ner_teacher")  # a token classifier trained on ner.conll (its task.json says so)
    assert main(["finetune", "--model", teacher, "--train-file", str(own / "ner.conll"), "--epochs", "1",
                 "--max-train-examples", "8", "--output", ner_teacher, *SMALL]) == 0
    return {"own": {name: str(own / name) for name in [*files, "latin1.csv"]},"root": root, "ner_teacher": ner_teacher, "teacher": teacher, "stsb_teacher": stsb_teacher, "data": data, "earlier": str(earlier),
            "truncated": str(truncated), "headless": str(headless), "a_file": str(a_file),
            "yaml_bad": str(yaml_bad), "yaml_unknown": str(yaml_unknown), "structure_bad": str(structure_bad)}


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


T, D, O = "{teacher}", "{data}", "{out}"
FT = ["finetune", "--task", "mrpc", "--model", T, "--data-dir", D, "--output", O]
CP = ["compress", "--teacher", T, "--task", "mrpc", "--data-dir", D, "--output", O, "--seq-len", "32", *LATENCY]
PR = ["prune", "--teacher", T, "--task", "mrpc", "--data-dir", D, "--output", O, "--seq-len", "32", *LATENCY]
DI = ["distill", "--teacher", T, "--task", "mrpc", "--data-dir", D, "--output", O]
SW = ["sweep", "--teacher", T, "--task", "mrpc", "--data-dir", D, "--output", O]
EV = ["evaluate", "--model", T, "--task", "mrpc", "--data-dir", D]

# (case id, argv template, expected text in the one-line message); {data:NAME} picks a data folder
CASES = [
    # --- finetune
    ("ft-unknown-task", ["finetune", "--task", "nosuch", "--model", T, "--data-dir", D, "--output", O], "nosuch"),
    ("ft-no-output", ["finetune", "--task", "mrpc", "--model", T, "--data-dir", D], "--output"),
    ("ft-missing-data-dir", [*FT[:5], "--data-dir", "{data:missing}", *FT[7:]], "no_such_glue"),
    ("ft-missing-split", [*FT[:5], "--data-dir", "{data:missing_split}", *FT[7:]], "train"),
    ("ft-wrong-columns", [*FT[:5], "--data-dir", "{data:wrong_columns}", *FT[7:]], "train.tsv"),
    ("ft-label-out-of-range", [*FT[:5], "--data-dir", "{data:label_range}", *FT[7:]], "label"),
    ("ft-not-utf8", [*FT[:5], "--data-dir", "{data:not_utf8}", *FT[7:]], "UTF-8"),
    ("ft-empty-train", [*FT[:5], "--data-dir", "{data:empty}", *FT[7:]], "empty"),
    ("ft-epochs-0", [*FT, "--epochs", "0"], "--epochs"),
    ("ft-negative-lr", [*FT, "--lr", "-1"], "--lr"),
    ("ft-batch-size-0", [*FT, "--batch-size", "0"], "--batch-size"),
    ("ft-max-seq-len-1", [*FT, "--max-seq-len", "1"], "--max-seq-len"),
    ("ft-max-seq-len-too-long", [*FT, "--max-seq-len", "4096"], "--max-seq-len"),
    ("ft-model-not-a-folder", ["finetune", "--task", "mrpc", "--model", "{a_file}", "--data-dir", D, "--output", O],
     "a_file"),
    ("ft-config-missing", [*FT, "--config", "{root}/none.yaml"], "--config"),
    ("ft-config-not-yaml", [*FT, "--config", "{yaml_bad}"], "not valid YAML"),
    ("ft-config-unknown-key", [*FT, "--config", "{yaml_unknown}"], "no_such_option"),
    ("ft-output-exists", [*FT[:-1], "{earlier}"], "--overwrite"),
    ("ft-output-parent-is-file", [*FT[:-1], "{a_file}/out"], "--output"),
    ("ft-output-under-proc", [*FT[:-1], "/proc/ddk_fast_out"], "--output"),
    # --- compress
    ("cp-target-zero", [*CP, "--target", "params=0"], "--target"),
    ("cp-target-above-one", [*CP, "--target", "params=1.5"], "--target"),
    ("cp-target-unknown-cost", [*CP, "--target", "energy=0.5"], "--target"),
    ("cp-target-not-a-number", [*CP, "--target", "flops=abc"], "--target"),
    ("cp-target-impossible", [*CP, "--target", "params=0.0001"], "minimum achievable"),
    ("cp-teacher-missing", ["compress", "--teacher", "{root}/none", "--task", "mrpc", "--data-dir", D, "--output", O],
     "--teacher"),
    ("cp-teacher-truncated", ["compress", "--teacher", "{truncated}", "--task", "mrpc", "--data-dir", D, "--output", O,
                              "--seq-len", "32", *LATENCY], "--teacher"),
    ("cp-teacher-headless", ["compress", "--teacher", "{headless}", "--task", "mrpc", "--data-dir", D, "--output", O],
     "classification head"),
    ("cp-teacher-pruned-export", ["compress", "--teacher", "{earlier}", "--task", "mrpc", "--data-dir", D,
                                  "--output", O, "--seq-len", "32", *LATENCY], "pruned export"),
    ("cp-output-is-teacher", [*CP[:7], "--output", T, *CP[9:]], "--output must differ"),
    ("cp-output-exists", [*CP[:8], "{earlier}", *CP[9:]], "--overwrite"),
    ("cp-calibration-0", [*CP, "--calibration-examples", "0"], "--calibration-examples"),
    ("cp-iterations-0", [*CP, "--importance-iterations", "0"], "--importance-iterations"),
    ("cp-iterations-no-oneshot", [*CP, "--importance-iterations", "2", "--init", "weights"], "no one-shot step"),
    ("cp-budget-warmup", [*CP, "--budget-warmup", "2"], "--budget-warmup"),
    ("cp-fixed-structure-missing", [*CP, "--fixed-structure", "{root}/none.json"], "--fixed-structure"),
    ("cp-fixed-structure-bad", [*CP, "--fixed-structure", "{structure_bad}", "--max-train-examples", "16"],
     "--fixed-structure"),
    ("cp-kd-unknown", [*CP, "--kd", "no_such_term=1"], "--kd"),
    ("cp-seq-len-0", [*CP[:-6], *LATENCY, "--seq-len", "0"], "--seq-len"),
    ("cp-search-epochs-0", [*CP, "--search-epochs", "0"], "--search-epochs"),
    ("cp-temperature-0", [*CP, "--temperature", "0"], "--temperature"),
    ("cp-nan-score", ["compress", "--teacher", "{stsb_teacher}", "--task", "stsb", "--data-dir", "{data:nan_score}",
                      "--output", O, "--seq-len", "32", *LATENCY], "score"),
    ("cp-output-under-proc", [*CP[:8], "/proc/ddk_fast_out", *CP[9:]], "--output"),
    ("cp-lm-flag-on-glue", [*CP, "--block-size", "8"], "--block-size"),
    ("cp-max-train-examples-0", [*CP, "--max-train-examples", "0"], "--max-train-examples 0"),
    # --- prune
    ("pr-calibration-0", [*PR, "--calibration-examples", "0"], "--calibration-examples"),
    ("pr-iterations-0", [*PR, "--importance-iterations", "0"], "--importance-iterations"),
    ("pr-iterations-activation", [*PR, "--importance-iterations", "2", "--importance", "activation"],
     "--importance-iterations 2 needs --importance fisher"),
    ("pr-target-impossible", [*PR, "--target", "params=0.0001"], "minimum achievable"),
    ("pr-ridge-negative", [*PR, "--ridge", "-1"], "--ridge"),
    ("pr-granularity-0", [*PR, "--channel-granularity", "0"], "--channel-granularity"),
    ("pr-teacher-truncated", ["prune", "--teacher", "{truncated}", "--task", "mrpc", "--data-dir", D, "--output", O,
                              "--seq-len", "32", *LATENCY], "--teacher"),
    ("pr-output-exists", [*PR[:8], "{earlier}", *PR[9:]], "--overwrite"),
    ("pr-max-seq-len-1", [*PR, "--max-seq-len", "1"], "--max-seq-len"),
    ("pr-wrong-task-labels", ["prune", "--teacher", T, "--task", "stsb", "--data-dir", D, "--output", O], "label"),
    # --- distill
    ("di-student-layers-0", [*DI, "--student-layers", "0"], "--student-layers"),
    ("di-student-layers-too-many", [*DI, "--student-layers", "9"], "--student-layers"),
    ("di-unknown-recipe", [*DI, "--recipe", "magic"], "magic"),
    ("di-steps-0", [*DI, "--steps", "0"], "--steps"),
    ("di-teacher-missing", ["distill", "--teacher", "{root}/none", "--task", "mrpc", "--data-dir", D, "--output", O],
     "none"),
    # --- sweep
    ("sw-grid-malformed", [*SW, "--grid", "temperature"], "--grid"),
    ("sw-grid-unknown-key", [*SW, "--grid", "no_such_key=1,2"], "no_such_key"),
    ("sw-no-grid", SW, "--grid"),
    # --- evaluate
    ("ev-model-missing", ["evaluate", "--model", "{root}/none", "--task", "mrpc", "--data-dir", D], "--model"),
    ("ev-task-mismatch", ["evaluate", "--model", "{earlier}", "--task", "sst2", "--data-dir", D], "--force"),
    ("ev-batch-size-0", [*EV, "--batch-size", "0"], "--batch-size"),
    ("ev-max-eval-examples-0", [*EV, "--max-eval-examples", "0"], "--max-eval-examples 0"),
    ("ev-unknown-split", [*EV, "--split", "nosuch"], "nosuch"),
    ("ev-label-count", ["evaluate", "--model", T, "--task", "stsb", "--data-dir", D, "--force"], "label"),
    # --- the user's own data: one line naming the file, row and column
    ("ft-own-missing-column", ["finetune", "--model", T, "--train-file", "{own:good.csv}", "--text-columns", "body",
                               "--output", O], "good.csv: no column 'body'"),
    ("ft-own-empty-text", ["finetune", "--model", T, "--train-file", "{own:empty_text.csv}",
                           "--validation-file", "{own:empty_text.csv}", "--output", O], "row 2, column 'text': empty text"),
    ("ft-own-label-not-in-train", ["finetune", "--model", T, "--train-file", "{own:good.csv}", "--validation-file",
                                   "{own:dev_bad_label.csv}", "--output", O],
     "dev_bad_label.csv, row 2, column 'label': label 'maybe' is not in the training label set"),
    ("cp-own-not-utf8", ["compress", "--teacher", T, "--train-file", "{own:latin1.csv}", "--output", O],
     "latin1.csv, line 2: not valid UTF-8"),
    ("cp-own-unknown-extension", ["compress", "--teacher", T, "--train-file", "{own:data.txt}", "--output", O],
     "unknown extension '.txt'"),
    ("cp-own-multilabel-not-a-list", ["compress", "--teacher", T, "--train-file", "{own:multi.jsonl}",
                                      "--validation-file", "{own:multi_dev.jsonl}", "--output", O],
     "multi_dev.jsonl, row 2, column 'label': expected a list of labels"),
    ("pr-own-missing-label-column", ["prune", "--teacher", T, "--train-file", "{own:good.csv}", "--label-column",
                                     "nosuch", "--output", O], "no column 'nosuch' (--label-column)"),
    ("pr-own-not-a-number", ["prune", "--teacher", "{stsb_teacher}", "--train-file", "{own:good.csv}",
                             "--task-kind", "regression", "--output", O], "column 'label': label 'neg' is not a number"),
    ("di-own-glue-name", ["distill", "--teacher", T, "--task", "mrpc", "--train-file", "{own:good.csv}", "--output", O],
     "GLUE preset"),
    ("di-own-missing-file", ["distill", "--teacher", T, "--train-file", "{root}/none.csv", "--output", O],
     "none.csv: file not found"),
    ("sw-own-bad-kind", ["sweep", "--teacher", T, "--train-file", "{own:good.csv}", "--task-kind", "ner", "--grid",
                         "temperature=1,2", "--output", O], "--task-kind 'ner'"),
    ("ev-own-columns-without-data", ["evaluate", "--model", T, "--text-columns", "body"], "--text-columns needs"),
    ("ev-own-no-task", ["evaluate", "--model", T], "--task is required"),
    ("ev-own-label-not-in-train", ["evaluate", "--model", T, "--train-file", "{own:good.csv}", "--validation-file",
                                   "{own:dev_bad_label.csv}"], "row 2, column 'label'"),
    ("data-check-not-utf8", ["data", "check", "--train-file", "{own:latin1.csv}"], "not valid UTF-8"),
    ("data-check-label-not-in-train", ["data", "check", "--train-file", "{own:good.csv}", "--validation-file",
                                       "{own:dev_bad_label.csv}"], "label 'maybe'"),
    ("data-check-dataset-missing", ["data", "check", "--dataset", "{root}/no_such_dataset"], "--dataset"),
    # --- token classification (NER) files
    ("ft-ner-unaligned", ["finetune", "--model", T, "--train-file", "{own:ner_unaligned.jsonl}", "--validation-file",
                          "{own:ner_unaligned.jsonl}", "--output", O],
     "ner_unaligned.jsonl, row 2, column 'ner_tags': 2 tags for 3 words"),
    ("ft-ner-bad-line", ["finetune", "--model", T, "--train-file", "{own:ner_bad_line.conll}", "--output", O],
     "ner_bad_line.conll, line 3: expected 'token ... tag'"),
    ("ev-ner-unknown-tag", ["evaluate", "--model", "{ner_teacher}", "--validation-file",
                            "{own:ner_dev_unknown.conll}"],
     "ner_dev_unknown.conll, row 2 (line 4), column 'ner_tags': label 'B-LOC' is not in the training label set"),
    ("data-check-ner-empty-sentence", ["data", "check", "--train-file", "{own:ner_empty.jsonl}", "--validation-file",
                                       "{own:ner_empty.jsonl}"], "ner_empty.jsonl, row 3, column 'tokens': empty sentence"),
    ("cp-ner-sequence-teacher", ["compress", "--teacher", T, "--train-file", "{own:ner.conll}", "--output", O],
     "has a sequence-classification head"),
    ("pr-threads-zero", [*PR, "--threads", "0"], "--threads 0: expected a positive integer"),
    # --- reuse of a finished result with other settings
    ("pr-resume-other-settings", ["compress", "--teacher", T, "--task", "mrpc", "--data-dir", D, "--output",
                                  "{earlier}", "--resume", "--target", "params=0.3", "--seq-len", "32", *LATENCY],
     "other settings"),
]


def _fill(argv, env, out):
    values = {"teacher": env["teacher"], "stsb_teacher": env["stsb_teacher"], "ner_teacher": env["ner_teacher"], "out": out, "earlier": env["earlier"],
              "truncated": env["truncated"], "headless": env["headless"], "a_file": env["a_file"],
              "yaml_bad": env["yaml_bad"], "yaml_unknown": env["yaml_unknown"], "structure_bad": env["structure_bad"],
              "root": str(env["root"]), "data": env["data"]["good"]}
    filled = []
    for arg in argv:
        if arg.startswith("{data:"):
            filled.append(env["data"][arg[6:-1]])
        elif arg.startswith("{own:"):
            filled.append(env["own"][arg[5:-1]])
        else:
            filled.append(arg.format(**values))
    return filled


def test_the_table_is_large_enough():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} == {"finetune", "compress", "prune", "distill", "sweep", "evaluate", "data"}


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(env, tmp_path, capsys, case, argv, expected):
    before = _digest(env["earlier"])
    out = str(tmp_path / "out")
    full = _fill(argv, env, out)
    if full[0] not in ("evaluate", "sweep", "data") and "--no-progress" not in full:
        full += ["--no-progress"]
    try:
        rc = main(full)
    except SystemExit as exc:  # argparse refusals exit 2 themselves
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith(("note:", "WARNING"))]
    assert rc == 2, f"{case}: exit {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"ddk-fast {full[0]}: error:"), err
    assert expected in lines[0], lines[0]
    assert _digest(env["earlier"]) == before, "the earlier output changed"
    assert not os.path.exists(out) and not os.path.exists(out + ".inprogress"), "a refused run left an output"
