"""`compress --init oneshot|weights`, `--fixed-structure oneshot|FILE.json`, and the pieces they use."""
import json

import pytest
import torch

from train_support import make_tiny_bert

from ddk_fast.cli import main
from ddk_fast.errors import UserError
from ddk_fast.export import load_pruned
from ddk_fast.model import MaskedTransformer, Structure, prune, write_back
from ddk_fast.search import build_search
from ddk_fast.api import compress

FAST = dict(max_train_examples=32, max_eval_examples=16, batch_size=8, eval_batch_size=16, max_seq_len=32, seq_len=32,
            search_epochs=1, distill_epochs=1, channel_granularity=8, latency_batch_size=2, latency_seq_len=16,
            latency_repeats=1, progress=False, save_steps=2, lr=1e-3, calibration_examples=16)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", layers=2, heads=4, hidden=32, intermediate=64)


def test_write_back_is_the_inverse_of_prune_on_kept_units(teacher):
    full = MaskedTransformer.from_pretrained(teacher)
    structure = Structure.from_indices([[1, 3], []], [list(range(0, 64, 3)), [5]], full)
    small = prune(full, structure)
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(1.5).add_(0.1)
    target = MaskedTransformer.from_pretrained(teacher)
    untouched = target.layers[0].attention.query.weight[0:8].clone()  # head 0 of layer 0 is not kept
    write_back(target, small)
    again = prune(target, structure)
    for (name, a), (_, b) in zip(small.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(target.layers[0].attention.query.weight[0:8], untouched)
    with pytest.raises(ValueError):
        write_back(small, target)


def test_centre_on_makes_the_given_counts_most_likely():
    search = build_search("gumbel", [4, 4], [64, 64], granularity=8)
    search.centre_on([1, 3], [24, 64])
    search.eval()
    derived = search.derive()
    assert derived.head_counts == [1, 3] and derived.ffn_counts == [24, 64]
    with pytest.raises(ValueError):
        search.centre_on([1, 3], [24, 64], sharpness=0)


def test_default_start_is_the_one_shot_structure_and_reports_three_scores(teacher, glue_dir, tmp_path):
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "s"), **FAST)
    assert report["init"] == "oneshot" and report["method"] == "ddk-gumbel"
    one = report["oneshot"]
    assert one["calibration_examples"] == 16 and one["ratio"] <= 0.5 + 1e-9
    assert set(one["dev"]) >= {"f1", "accuracy"} and set(one["timings_s"]) == {"importance_s", "mask_search_s",
                                                                               "tuning_s"}
    assert [h["stage"] for h in report["history"]] == ["oneshot", "search", "distill"]
    assert report["pruned_before_distillation_dev"] is not None and report["student_dev"] is not None
    times = report["times_s"]
    assert set(times) == {"oneshot", "search", "distill", "evaluation"} and all(v >= 0 for v in times.values())
    assert times["search"] > 0 and times["distill"] > 0


def test_init_weights_keeps_the_previous_behaviour(teacher, glue_dir, tmp_path):
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "w"), init="weights",
                      **FAST)
    assert report["init"] == "weights" and report["oneshot"] is None
    assert [h["stage"] for h in report["history"]] == ["search", "distill"]


def test_fixed_oneshot_distils_the_prune_result(teacher, glue_dir, tmp_path):
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "f"),
                      fixed_structure="oneshot", **FAST)
    assert report["method"] == "fixed-oneshot"
    assert [h["stage"] for h in report["history"]] == ["oneshot", "distill", "distill"]  # search epochs join KD
    # the distillation starts from the tuned one-shot student, not from a fresh cut of the teacher
    assert report["pruned_before_distillation_dev"] == report["oneshot"]["dev"]
    assert report["structure"]["heads"] == report["oneshot"]["heads"]


@pytest.mark.parametrize("layout", ["indices", "counts", "export"])
def test_fixed_structure_file_in_each_layout(teacher, glue_dir, tmp_path, layout):
    path = tmp_path / "structure.json"
    if layout == "indices":
        path.write_text(json.dumps({"heads": [[0, 2], [1]], "ffn": [list(range(16)), [3, 9, 40]]}))
    elif layout == "counts":
        path.write_text(json.dumps({"heads": [2, 1], "ffn": [16, 3]}))
    else:
        model = MaskedTransformer.from_pretrained(teacher)
        path.write_text(Structure.from_indices([[0, 2], [1]], [list(range(16)), [3, 9, 40]], model).to_json())
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "s"),
                      fixed_structure=str(path), **FAST)
    assert report["method"] == "fixed-file"
    assert report["structure"]["heads"] == [2, 1] and report["structure"]["ffn"] == [16, 3]
    if layout != "counts":
        assert [p["kept_heads"] for p in report["structure"]["per_layer"]] == [[0, 2], [1]]


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON file"),
    ('{"heads": [2, 1]}', "missing ffn"),
    ('{"heads": [2], "ffn": [16, 3]}', "one entry per layer"),
    ('{"heads": [9, 1], "ffn": [16, 3]}', "outside 0..4"),
    ('{"heads": [[0, 0], [1]], "ffn": [16, 3]}', "distinct indices"),
    ('{"heads": [4, 4], "ffn": [64, 64]}', "above --target"),
])
def test_bad_structure_files_exit_2(teacher, glue_dir, tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    out = tmp_path / "s"
    rc = main(["compress", "--teacher", teacher, "--task", "mrpc", "--data-dir", glue_dir, "--output", str(out),
               "--fixed-structure", str(path), "--max-train-examples", "16", "--max-eval-examples", "8",
               "--batch-size", "8", "--max-seq-len", "32", "--seq-len", "32", "--latency-seq-len", "16", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / "s.inprogress").exists()  # refused before any output


@pytest.mark.parametrize("options, message", [
    (dict(init="random"), "--init"),
    (dict(calibration_examples=0), "--calibration-examples"),
    (dict(budget_warmup=1.5), "--budget-warmup"),
    (dict(fixed_structure="missing.json"), "no such file"),
    (dict(fixed_structure="uniform", search_lr=1e-5), "--search-lr"),
])
def test_bad_init_options_are_refused(teacher, glue_dir, tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "s"),
                 **dict(FAST, **options))


def test_distillation_replaces_the_pruned_student_only_when_it_improves(teacher, glue_dir, tmp_path):
    # lr 1e-12 leaves the weights as they are: no distillation epoch can beat the pruned student (epoch 0);
    # --init weights: no one-shot student competes with it
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "z"),
                      **dict(FAST, lr=1e-12, init="weights"))
    pruned = report["pruned_before_distillation_dev"]
    assert all(h["score"] == pruned["score"] for h in report["history"] if h["stage"] == "distill")
    assert report["student_dev"]["epoch"] == 0 and report["student_dev"]["score"] == pruned["score"]
    assert report["exported_from"] == "pruned"


def test_the_export_is_the_best_candidate_the_run_saw(teacher, glue_dir, tmp_path):
    """Candidates in order: the one-shot student, the pruned student after the search, each distillation
    epoch; a later one replaces the export only with a higher dev score, and report.json says which it is."""
    report = compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "b"),
                      **dict(FAST, distill_epochs=2))
    candidates = [("oneshot", report["oneshot"]["dev"]), ("pruned", report["pruned_before_distillation_dev"])]
    candidates += [("distill", h) for h in report["history"] if h["stage"] == "distill"]
    main = report["main_metric"]
    best_source, best = candidates[0]
    for source, metrics in candidates[1:]:
        if metrics[main] > best[main]:
            best_source, best = source, metrics
    assert report["exported_from"] == best_source
    assert report["student_dev"][main] == best[main]
    exported = load_pruned(str(tmp_path / "b"))
    searched = next(h for h in report["history"] if h["stage"] == "search")
    kept = report["oneshot"] if best_source == "oneshot" else searched
    assert list(exported.num_heads) == list(kept["heads"])


def test_search_lr_sets_the_weights_learning_rate_of_the_search_only(teacher, glue_dir, tmp_path):
    compress(teacher=teacher, task="mrpc", data_dir=glue_dir, output=str(tmp_path / "l"),
             **dict(FAST, search_lr=1e-6, log_steps=1))
    with open(tmp_path / "l" / "log.jsonl", encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    search = [e["lr"] for e in events if e["event"] == "search"]
    distill = [e["lr"] for e in events if e["event"] == "distill"]
    assert search and distill
    assert max(search) <= 1e-6 < max(distill) <= FAST["lr"]
