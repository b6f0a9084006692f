"""SQuAD layout files: ``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``.

SQuAD v1.1 and v2.0 nest questions inside paragraphs inside articles; each question has an ``id``, a
``question``, ``answers`` (``{"text", "answer_start"}``, a character offset into the context) and, in
v2.0, ``is_impossible`` (then ``answers`` is empty). The file becomes a ``datasets`` table with one
row per question and the columns the hub's SQuAD datasets have (``id``, ``title``, ``context``,
``question``, ``answers`` as ``{"text": [...], "answer_start": [...]}``), so a SQuAD file and flat
JSON/JSONL rows in the hub's layout are read through the same path afterwards.

The structure is checked here (errors name the file, the question id or the JSON path, and the field);
what the values say (an empty question, an answer that is not at its ``answer_start``) is checked
with the other rows in ``ddk_fast.data.custom``.
"""
from __future__ import annotations

import json
from typing import Optional

from ddk_fast.data.tasks import DataError

ID, TITLE, CONTEXT, QUESTION, ANSWERS = "id", "title", "context", "question", "answers"
COLUMNS = (ID, TITLE, CONTEXT, QUESTION, ANSWERS)


def nested_layout(path: str) -> Optional[dict]:
    """The parsed file when it is one JSON object with a ``data`` key (the SQuAD layout), else None
    (JSON rows, JSON lines or a dict of columns: read as a table); any other JSON object is an
    unknown layout."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1 << 12).lstrip()
        if not head.startswith("{"):
            return None
        fh.seek(0)
        try:
            parsed = json.load(fh)
        except json.JSONDecodeError:
            return None  # JSON lines, or broken JSON: the table reader says what is wrong
    if not isinstance(parsed, dict) or "data" in parsed:
        return parsed if isinstance(parsed, dict) else None
    if not all(isinstance(v, list) for v in parsed.values()):  # neither SQuAD nor one list per column
        raise DataError(f"{path}: unknown layout: a JSON object with keys {sorted(parsed)[:8]}; expected SQuAD's "
                        f"{{\"data\": [{{\"title\", \"paragraphs\": [...]}}]}}, a list of rows, JSON lines or one "
                        f"list per column")
    return None


def read_squad(path: str, parsed: dict):
    """The SQuAD-layout file as a ``datasets.Dataset`` (one row per question, hub SQuAD columns)."""
    import datasets

    articles = parsed["data"]
    if not isinstance(articles, list):
        raise DataError(f"{path}: unknown layout: 'data' is a {type(articles).__name__}; expected SQuAD's list of "
                        f"articles {{\"title\", \"paragraphs\": [{{\"context\", \"qas\": [...]}}]}}")
    columns = {name: [] for name in COLUMNS}
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        paragraphs = _field(article, "paragraphs", list, path, where)
        title = article.get("title") if isinstance(article.get("title"), str) else ""
        for p, paragraph in enumerate(paragraphs):
            at = f"{where}.paragraphs[{p}]"
            context = _field(paragraph, CONTEXT, str, path, at)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, at)):
                qa_at = f"{at}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{path}, {qa_at}: expected a question object, found {type(qa).__name__}")
                qid = qa.get(ID)
                if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid).strip() == "":
                    raise DataError(f"{path}, {qa_at}, field 'id': missing (every question needs an id)")
                named = f"question id {str(qid)!r} ({qa_at})"
                question = _field(qa, QUESTION, str, path, named)
                texts, starts = _answers(qa, path, named)
                columns[ID].append(str(qid))
                columns[TITLE].append(title)
                columns[CONTEXT].append(context)
                columns[QUESTION].append(question)
                columns[ANSWERS].append({"text": texts, "answer_start": starts})
    if not columns[ID]:
        raise DataError(f"{path}: no questions (SQuAD layout: data[].paragraphs[].qas[] is empty)")
    features = datasets.Features({ID: datasets.Value("string"), TITLE: datasets.Value("string"),
                                  CONTEXT: datasets.Value("string"), QUESTION: datasets.Value("string"),
                                  ANSWERS: {"text": datasets.Sequence(datasets.Value("string")),
                                            "answer_start": datasets.Sequence(datasets.Value("int64"))}})
    return datasets.Dataset.from_dict(columns, features=features)


def _field(obj, name: str, kind: type, path: str, where: str):
    if not isinstance(obj, dict):
        raise DataError(f"{path}, {where}: expected an object, found {type(obj).__name__}")
    if name not in obj:
        raise DataError(f"{path}, {where}, field {name!r}: missing")
    value = obj[name]
    if not isinstance(value, kind):
        raise DataError(f"{path}, {where}, field {name!r}: expected a {kind.__name__}, found {type(value).__name__}")
    return value


def _answers(qa: dict, path: str, where: str):
    """(texts, answer_starts) of a question; v2.0's ``is_impossible`` questions have none, and a question
    without answers must say so (in the v1.1 layout every question has at least one)."""
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataError(f"{path}, {where}, field 'is_impossible': expected true or false, found {impossible!r}")
    if impossible:
        return [], []
    answers = _field(qa, ANSWERS, list, path, where)
    if not answers:
        raise DataError(f"{path}, {where}, field 'answers': empty (SQuAD v1.1 layout: every question needs an "
                        f"answer; mark an unanswerable one with \"is_impossible\": true as SQuAD v2.0 does)")
    texts, starts = [], []
    for i, answer in enumerate(answers):
        text = _field(answer, "text", str, path, f"{where}, answer {i + 1}")
        start = _field(answer, "answer_start", int, path, f"{where}, answer {i + 1}")
        texts.append(text)
        starts.append(start)
    return texts, starts
