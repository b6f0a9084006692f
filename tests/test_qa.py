"""Extractive QA: the SQuAD readers, windows with a doc stride and the answer's token positions, SQuAD's
exact match / F1, n-best span decoding with the v2.0 null answer, the span head against stock
BertForQuestionAnswering, span KD, tests/data/qa_sample.json through finetune -> compress / prune /
distill -> evaluate with the export read back by stock AutoModelForQuestionAnswering, and bad input."""
import json
import os

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertConfig, BertForQuestionAnswering

from train_support import make_tiny_bert, padded_batch, write_text

from ddk_fast.cli import main
from ddk_fast.data import DataError, collate, compute_metrics, load_task
from ddk_fast.data.custom import CustomTask, DataSource, build_task, read_task_file
from ddk_fast.data.examples import QAExample
from ddk_fast.data.qa_answers import answer_candidates, best_answers, span_scores
from ddk_fast.data.qa_encoding import answer_text, encode_qa
from ddk_fast.data.qa_metrics import normalize_answer, question_scores, squad_scores, token_f1
from ddk_fast.distill.objectives import KDObjective, PredictionTerm, TaskTerm
from ddk_fast.export import load_pruned
from ddk_fast.model import MaskedTransformer
from ddk_fast.search.calibration import task_loss

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "qa_sample.json")


def squad_file(path, qas, context="Ravenholt was founded in 1873 by Ilse Maren.", version="1.1"):
    return write_text(path, json.dumps({"version": version, "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))


@pytest.fixture(scope="module")
def sample():
    task = build_task(DataSource(SAMPLE))
    return task, load_task(task, "train"), load_task(task, "validation")


# ------------------------------------------------------------------------------------------ readers
def test_the_sample_reads_as_300_questions_of_the_qa_kind(sample):
    task, train, dev = sample
    with open(SAMPLE, encoding="utf-8") as fh:
        raw = json.load(fh)
    questions = {qa["id"]: (qa, p["context"]) for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert len(questions) == 300 and len(train) + len(dev) == 300 and len(dev) == 30
    assert {e.id for e in train}.isdisjoint(e.id for e in dev)
    assert task.kind == "qa" and task.is_qa and not task.allow_no_answer
    assert task.text_columns == ("question", "context") and task.label_column == "answers"
    assert task.label_names == ("start", "end") and task.num_labels == 2
    assert task.metric_names == ("exact_match", "f1") and task.main_metric == "f1"
    for ex in train + dev:
        qa, context = questions[ex.id]
        assert ex.question == qa["question"] and ex.context == context
        assert ex.answers == tuple((a["text"], a["answer_start"]) for a in qa["answers"])
    assert any(len(ex.answers) > 1 for ex in dev), "the sample has questions with several gold answers"
    assert os.path.getsize(SAMPLE) < 300_000


def test_flat_rows_a_saved_dataset_and_the_v2_layout_read_the_same_way(tmp_path, sample):
    _, train, _ = sample
    rows = [{"id": e.id, "question": e.question, "context": e.context,
             "answers": {"text": list(e.answer_texts), "answer_start": [s for _, s in e.answers]}} for e in train[:20]]
    flat = write_text(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(DataSource(flat, flat))
    assert task.kind == "qa" and load_task(task, "validation") == train[:20]
    folder = str(tmp_path / "saved")
    table = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(folder)
    assert load_task(build_task(DataSource(dataset=folder)), "validation") == train[:20]
    # SQuAD 2.0: is_impossible questions have no answers, and "no answer" becomes a prediction
    v2 = squad_file(tmp_path / "v2.json", [
        {"id": "a", "question": "Who founded Ravenholt?", "answers": [{"text": "Ilse Maren", "answer_start": 33}]},
        {"id": "b", "question": "Who is the mayor?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Ilse Maren", "answer_start": 33}]}], version="v2.0")
    task2 = build_task(DataSource(v2, v2))
    assert task2.allow_no_answer and [e.answers for e in load_task(task2, "validation")] == [(("Ilse Maren", 33),), ()]
    assert CustomTask.from_dict(task2.to_dict()) == task2


# -------------------------------------------------------------------------------------------- windows
def test_windows_overlap_by_the_stride_and_their_positions_recover_the_answer(tokenizer, sample):
    _, train, _ = sample
    examples = train[:60]
    feats = encode_qa(examples, tokenizer, max_length=48, doc_stride=12)
    assert feats.doc_stride == 12 and len(feats) > len(examples), "long contexts become several windows"
    answered = set()
    for i, (start, end) in enumerate(feats.labels):
        ex, spans = feats.examples[feats.example_index[i]], feats.offsets[i]
        assert len(feats.input_ids[i]) <= 48 and len(spans) == len(feats.input_ids[i])
        assert tokenizer.decode(feats.input_ids[i][1:1 + 3]).lower() in ex.question.lower()  # question first
        context_tokens = np.flatnonzero(spans[:, 0] >= 0)
        text, at = ex.answers[0]
        inside = spans[context_tokens[0], 0] <= at and spans[context_tokens[-1], 1] >= at + len(text)
        if inside:
            assert answer_text(ex, spans, start, end) == text  # the answers are whole words
            answered.add(ex.id)
        else:
            assert start == end == feats.cls_index[i] == 0
    assert answered == {e.id for e in examples}, "every answer lies wholly inside some window"
    # consecutive windows of one question share exactly doc_stride context tokens, and cover the context
    for i in range(len(feats) - 1):
        if feats.example_index[i] == feats.example_index[i + 1]:
            a, b = (feats.offsets[j][feats.offsets[j][:, 0] >= 0] for j in (i, i + 1))
            np.testing.assert_array_equal(a[-12:], b[:12])
    whole = encode_qa(examples[:1], tokenizer, max_length=512)
    pieces = np.concatenate([s[s[:, 0] >= 0] for s, o in zip(feats.offsets, feats.example_index) if o == 0])
    assert {tuple(p) for p in pieces} == {tuple(p) for p in whole.offsets[0][whole.offsets[0][:, 0] >= 0]}
    batch = collate([feats[0], feats[1]])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [list(feats.labels[0]),
                                                                              list(feats.labels[1])]


def test_a_long_question_is_cut_and_a_stride_that_does_not_fit_is_refused(tokenizer):
    ex = QAExample("x", "why " * 60 + "?", "Ravenholt was founded in 1873 by Ilse Maren. " * 6,
                   (("1873", 25),))
    feats = encode_qa([ex], tokenizer, max_length=40)
    assert all(len(ids) <= 40 for ids in feats.input_ids)
    assert all(ids.index(tokenizer.sep_token_id) == 1 + 20 for ids in feats.input_ids)  # half the window
    with pytest.raises(DataError, match="doc_stride=30"):
        encode_qa([ex], tokenizer, max_length=40, doc_stride=30)


# ---------------------------------------------------------------------------------------------- metric
def test_exact_match_and_f1_follow_the_official_definition():
    assert normalize_answer("The  Quick, brown Fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    # gold "the big red barn" -> [big, red, barn]; prediction [red, barn, door]: 2 shared, P = R = 2/3
    assert token_f1("the big red barn", "Red barn door.") == pytest.approx(2 / 3)
    # repeated tokens count as a multiset: gold [a1, a1, b] vs [a1]: P = 1, R = 1/3 -> F1 = 1/2
    assert token_f1("x x y", "x") == pytest.approx(0.5)
    assert question_scores(["in 1873", "1873"], "1873.") == (1.0, 1.0)  # best over the gold answers
    assert question_scores(["Ilse Maren"], "by Ilse") == (0.0, pytest.approx(0.5))
    # no gold answer (SQuAD 2.0): only "no answer" scores
    assert question_scores([], "") == (1.0, 1.0) and question_scores([], "Ilse") == (0.0, 0.0)
    assert question_scores(["Ilse"], "") == (0.0, 0.0)
    got = squad_scores({"a": "1873", "b": "", "c": "Maren"}, {"a": ["1873"], "b": [], "c": ["Ilse Maren"]})
    assert got["exact_match"] == pytest.approx(2 / 3) and got["f1"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert got["has_answer_exact_match"] == 0.5 and got["no_answer_f1"] == 1.0
    assert "has_answer_f1" not in squad_scores({"a": "1873"}, {"a": ["1873"]})
    task = CustomTask("qa", "qa", ("question", "context"), "answers", ("start", "end"))
    metrics = compute_metrics(task, {"a": "the 1873", "b": "x"}, {"a": ["1873"], "b": ["y"]})
    assert metrics["exact_match"] == 0.5 and metrics["score"] == pytest.approx((0.5 + 0.5) / 2)
    with pytest.raises(DataError, match="no prediction"):
        squad_scores({}, {"a": ["1873"]})


# ------------------------------------------------------------------------------------- post-processing
def _scored(feats, marks, tokens=None):
    """Logits [W, T, 2] of -5 everywhere except ``marks``: (window, token, 0 start | 1 end, value)."""
    logits = torch.full((len(feats), tokens or max(len(i) for i in feats.input_ids), 2), -5.0)
    for w, t, which, value in marks:
        logits[w, t, which] = value
    return logits


def test_the_best_span_is_inside_the_context_ordered_and_short_enough(tokenizer):
    ctx = "Ravenholt was founded in 1873 by Ilse Maren, a miller from Quillmoor."
    ex = QAExample("q", "Who founded Ravenholt?", ctx, (("Ilse Maren", ctx.index("Ilse")),))
    feats = encode_qa([ex], tokenizer, max_length=64)
    assert len(feats) == 1
    spans = feats.offsets[0]
    start, end = feats.labels[0]
    question_token = 2
    answer = [(0, start, 0, 3.0), (0, end, 1, 3.0)]
    marks = answer + [(0, question_token, 0, 9.0), (0, question_token, 1, 9.0),  # not context: never an answer
                      (0, end + 1, 0, 8.0), (0, start - 1, 1, 8.0)]  # an end before its start: not a span
    assert best_answers(feats, _scored(feats, marks)) == {"q": "Ilse Maren"}
    # a longer span scoring higher loses when it exceeds max_answer_tokens
    last = int(np.flatnonzero(spans[:, 0] >= 0)[-1])
    long_marks = answer + [(0, last, 1, 4.0)]
    assert best_answers(feats, _scored(feats, long_marks))["q"] == ctx[spans[start, 0]:spans[last, 1]]
    assert best_answers(feats, _scored(feats, long_marks), max_answer_tokens=last - start)["q"] == "Ilse Maren"
    # n-best: best first, at most n, each candidate's score the sum of its two logits
    found = answer_candidates(feats, _scored(feats, marks), n_best=5)["q"]
    assert len(found.candidates) == 5 and found.candidates[0].score == pytest.approx(6.0)
    assert [c.score for c in found.candidates] == sorted((c.score for c in found.candidates), reverse=True)
    assert found.null_score == pytest.approx(-10.0)


def test_spans_are_scored_exhaustively_and_the_null_answer_decides_for_v2(tokenizer):
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(3, 12, generator=g), torch.randn(3, 12, generator=g)
    context = torch.rand(3, 12, generator=g) > 0.3
    scores = span_scores(start, end, context, max_answer_tokens=4)
    for w in range(3):
        for i in range(12):
            for d in range(4):
                j = i + d
                valid = j < 12 and bool(context[w, i]) and bool(context[w, j])
                expected = float(start[w, i] + end[w, j]) if valid else float("-inf")
                assert float(scores[w, d, i]) == pytest.approx(expected)
    # the best span over several windows; "no answer" wins when [CLS] scores higher and it is allowed
    ctx = "Ravenholt was founded in 1873 by Ilse Maren. " * 4
    ex = QAExample("q", "When was it founded?", ctx, (("1873", 25),))
    feats = encode_qa([ex], tokenizer, max_length=32, doc_stride=8)
    assert len(feats) >= 3
    w = len(feats) - 1
    year = [t for t, (a, b) in enumerate(feats.offsets[w]) if ctx[a:b] == "1873" and a >= 0][-1]
    first = int(np.flatnonzero(feats.offsets[0][:, 0] >= 0)[0])
    marks = [(0, first, 0, 1.0), (0, first, 1, 1.0), (w, year, 0, 2.5), (w, year, 1, 2.5)]
    chosen = answer_candidates(feats, _scored(feats, marks))["q"].candidates[0]
    assert (chosen.window, chosen.start, chosen.end, chosen.text) == (w, year, year, "1873")
    null = marks + [(i, 0, which, 3.0) for i in range(len(feats)) for which in (0, 1)]
    assert best_answers(feats, _scored(feats, null), allow_no_answer=True) == {"q": ""}
    assert best_answers(feats, _scored(feats, null), allow_no_answer=False) == {"q": "1873"}
    weaker_null = null[:-2] + [(len(feats) - 1, 0, 0, 1.0), (len(feats) - 1, 0, 1, 1.0)]  # lowest over windows
    assert best_answers(feats, _scored(feats, weaker_null), allow_no_answer=True) == {"q": "1873"}


# ------------------------------------------------------------------------------------ head, loss, KD
@pytest.fixture(scope="module")
def stock():
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64)
    torch.manual_seed(0)
    return BertForQuestionAnswering(cfg).eval()


def _batch(seed=1):
    ids, mask, _ = padded_batch(seed)
    positions = torch.tensor([[3, 5], [0, 0], [2, 3]])
    return ids, mask, positions


def test_the_span_head_equals_stock_bert_for_question_answering(stock):
    model = MaskedTransformer.from_pretrained(stock).eval()
    assert model.config.task_type == "qa" and model.config.num_labels == 2
    ids, mask, positions = _batch()
    with torch.no_grad():
        ref = stock(input_ids=ids, attention_mask=mask, start_positions=positions[:, 0], end_positions=positions[:, 1])
        hg, fg = model.full_gates()
        gated = model(ids, mask, head_gates=hg, ffn_gates=fg).logits
        plain = model(ids, mask).logits
    assert gated.shape == (3, 10, 2)
    for logits in (gated, plain):
        torch.testing.assert_close(logits[..., 0], ref.start_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[..., 1], ref.end_logits, atol=1e-5, rtol=0)
    # the task loss (training, Fisher importance) is the stock model's: the mean of start and end CE
    torch.testing.assert_close(task_loss(gated, positions), ref.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(TaskTerm(1.0, "qa")(type("O", (), {"logits": gated})(), None, {"labels": positions}),
                               ref.loss, atol=1e-5, rtol=0)


def test_span_kd_is_the_soft_cross_entropy_of_start_and_end_over_real_tokens():
    g = torch.Generator().manual_seed(2)
    s, t = (torch.randn(3, 10, 2, generator=g) for _ in range(2))
    _, mask, positions = _batch()
    temperature = 2.0
    terms = []
    for b in range(3):
        real = mask[b].bool()
        for which in (0, 1):
            p = torch.softmax(t[b, real, which] / temperature, -1)
            terms.append(-(p * torch.log_softmax(s[b, real, which] / temperature, -1)).sum())
    expected = torch.stack(terms).mean() * temperature ** 2
    out = lambda logits: type("Out", (), {"logits": logits})()  # noqa: E731
    term = PredictionTerm(1.0, temperature, "qa")
    torch.testing.assert_close(term(out(s), out(t), {"attention_mask": mask}), expected, atol=1e-5, rtol=0)
    objective = KDObjective([PredictionTerm(1.0, temperature, "qa"), TaskTerm(1.0, "qa")])
    _, parts = objective(out(s), out(t), {"attention_mask": mask, "labels": positions})
    torch.testing.assert_close(parts["pred"], expected, atol=1e-5, rtol=0)
    ce = (F.cross_entropy(s[..., 0], positions[:, 0]) + F.cross_entropy(s[..., 1], positions[:, 1])) / 2
    torch.testing.assert_close(parts["task"], ce, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- end to end
SMALL = ["--batch-size", "16", "--eval-batch-size", "32", "--max-seq-len", "64", "--no-progress"]
BUDGET = ["--target", "params=0.5", "--seq-len", "64", "--latency-batch-size", "2", "--latency-seq-len", "16",
          "--calibration-examples", "16"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    base = make_tiny_bert(root / "tiny", layers=2, heads=4, hidden=32, intermediate=64, max_positions=64)
    out = root / "teacher"
    assert main(["finetune", "--model", base, "--train-file", SAMPLE, "--task", "squadlike", "--epochs", "3",
                 "--output", str(out), *SMALL, "--lr", "3e-3"]) == 0
    return out


def test_the_sample_goes_through_finetune_compress_prune_distill_and_evaluate(teacher, tmp_path, capsys, tokenizer):
    config = json.loads((teacher / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    history = json.loads((teacher / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"], "the teacher learnt something"
    student = tmp_path / "student"
    assert main(["compress", "--teacher", str(teacher), "--output", str(student), *SMALL, "--lr", "3e-3", *BUDGET,
                 "--search-epochs", "1", "--distill-epochs", "1", "--channel-granularity", "8"]) == 0
    report = json.loads((student / "report.json").read_text())
    assert report["task"] == "squadlike" and report["params"]["ratio"] <= 0.5 + 1e-9
    assert report["main_metric"] == "f1" and report["majority_dev"] == {"exact_match": 0.0, "f1": 0.0, "score": 0.0}
    assert report["teacher_dev"]["f1"] > 0.0
    exported = json.loads((student / "config.json").read_text())
    assert exported["architectures"] == ["DdkBertForQuestionAnswering"]
    assert exported["auto_map"]["AutoModelForQuestionAnswering"].endswith("DdkBertForQuestionAnswering")
    assert read_task_file(str(student)).kind == "qa"
    # one-shot pruning (Fisher importance on the span loss) and layer-dropping distillation too
    pruned, distilled = tmp_path / "pruned", tmp_path / "distilled"
    assert main(["prune", "--teacher", str(teacher), "--output", str(pruned), *SMALL, *BUDGET]) == 0
    assert json.loads((pruned / "report.json").read_text())["params"]["ratio"] <= 0.5 + 1e-9
    assert main(["distill", "--teacher", str(teacher), "--output", str(distilled), "--student-layers", "1",
                 "--steps", "6", *SMALL]) == 0
    assert json.loads((distilled / "config.json").read_text())["architectures"] == ["DdkBertForQuestionAnswering"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(student)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 30 and evaluated["main_metric"] == "f1"
    for key in ("exact_match", "f1"):
        assert evaluated["metrics"][key] == pytest.approx(report["student_dev"][key], abs=1e-9)
    # stock transformers: the engine's start/end logits, and the same answers and scores from them
    stock_model = AutoModelForQuestionAnswering.from_pretrained(str(student), trust_remote_code=True).eval()
    assert type(stock_model).__name__ == "DdkBertForQuestionAnswering"
    examples = load_task(read_task_file(str(student)), "validation")
    feats = encode_qa(examples, AutoTokenizer.from_pretrained(str(student)), max_length=64)
    batch = collate([feats[i] for i in range(len(feats))], pad_token_id=feats.pad_token_id)
    with torch.no_grad():
        out = stock_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"])
        engine = load_pruned(str(student)).eval()(batch["input_ids"], batch["attention_mask"],
                                                  batch["token_type_ids"]).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.start_logits[real], engine[..., 0][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.end_logits[real], engine[..., 1][real], atol=1e-5, rtol=0)
    answers = best_answers(feats, torch.stack([out.start_logits, out.end_logits], -1))
    scores = squad_scores(answers, feats.references)
    assert scores["exact_match"] == pytest.approx(evaluated["metrics"]["exact_match"], abs=1e-9)
    assert scores["f1"] == pytest.approx(evaluated["metrics"]["f1"], abs=1e-9)
    # the export's own loss is BertForQuestionAnswering's (on unpadded windows: padding logits are not compared)
    full = real.all(1)
    assert full.sum() >= 2
    with torch.no_grad():
        lossed = stock_model(input_ids=batch["input_ids"][full], attention_mask=batch["attention_mask"][full],
                             token_type_ids=batch["token_type_ids"][full], start_positions=batch["labels"][full, 0],
                             end_positions=batch["labels"][full, 1])
    torch.testing.assert_close(lossed.loss, task_loss(engine[full], batch["labels"][full]), atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------------------- bad input
def _bad_files(root):
    good = [{"id": "a", "question": "Who founded Ravenholt?", "answers": [{"text": "Ilse Maren", "answer_start": 33}]}]
    files = {
        "missing_context": write_text(root / "missing_context.json", json.dumps({"data": [{"title": "T", "paragraphs": [
            {"qas": good}]}]})),
        "moved_answer": squad_file(root / "moved_answer.json", [
            {"id": "q7", "question": "Who founded it?", "answers": [{"text": "Ilse Maren", "answer_start": 30}]}]),
        "outside": squad_file(root / "outside.json", [
            {"id": "q8", "question": "Who founded it?", "answers": [{"text": "Ilse Maren", "answer_start": 400}]}]),
        "empty_answers": squad_file(root / "empty_answers.json", [
            {"id": "q9", "question": "Who founded it?", "answers": []}]),
        "unknown_layout": write_text(root / "unknown_layout.json", json.dumps({"version": "1.1", "articles": 3})),
        "no_question": write_text(root / "no_question.jsonl", json.dumps(
            {"id": "r1", "question": " ", "context": "Ravenholt.", "answers": {"text": [], "answer_start": []}}) + "\n"),
    }
    (root / "latin1.json").write_bytes(json.dumps({"data": []}).encode()[:-2] + b' "caf\xe9"}\n')
    files["not_utf8"] = str(root / "latin1.json")
    return files


BAD = [
    ("missing_context", "missing_context.json, data[0].paragraphs[0], field 'context': missing"),
    ("moved_answer", "moved_answer.json, row 1 (id 'q7'), column 'answers': answer 1 'Ilse Maren' is not at its "
                     "answer_start 30"),
    ("outside", "outside.json, row 1 (id 'q8'), column 'answers': answer 1 'Ilse Maren' is not at its answer_start "
                "400 in the context (outside the context of 44 characters)"),
    ("empty_answers", "empty_answers.json, question id 'q9' (data[0].paragraphs[0].qas[0]), field 'answers': empty"),
    ("unknown_layout", "unknown_layout.json: unknown layout"),
    ("no_question", "no_question.jsonl, row 1 (id 'r1'), column 'question': empty question"),
    ("not_utf8", "latin1.json, line 1: not valid UTF-8"),
]


@pytest.mark.parametrize("name, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_qa_input_exits_2_with_one_line_naming_file_question_and_field(tmp_path, capsys, name, expected):
    path = _bad_files(tmp_path)[name]
    argv = ["data", "check", "--train-file", path, "--validation-file", path]
    if name != "unknown_layout":
        argv += ["--task-kind", "qa"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("ddk-fast data: error:"), err
    assert expected in lines[0], lines[0]


def test_onnx_and_a_sequence_teacher_are_refused_for_qa(teacher, tmp_path, capsys):
    classifier = make_tiny_bert(tmp_path / "classifier", layers=1, heads=2, hidden=16, intermediate=32)
    capsys.readouterr()
    for argv, expected in (
            (["prune", "--teacher", str(teacher), "--onnx", "--output", str(tmp_path / "o")],
             "--onnx: ONNX export does not cover question answering (task squadlike)"),
            (["compress", "--teacher", classifier, "--train-file", SAMPLE, "--output", str(tmp_path / "o")],
             "has a sequence-classification head")):
        assert main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not os.path.exists(tmp_path / "o")
