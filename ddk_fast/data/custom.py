"""Users' own labelled data: CSV/TSV/JSON/JSONL/parquet files, a hub dataset or a saved dataset folder.

A ``CustomTask`` is built from the TRAIN split: which columns hold the text, which the label, the task
kind (inferred from the label column, overridable) and the label set. It answers the same questions a
GLUE ``TaskSpec`` does (``name``, ``num_labels``, ``is_regression``, ``label_names``, ``metric_names``,
``main_metric``...), so every command loads, scores and exports a user's data through the path GLUE
takes; a GLUE name is a preset of the same idea with its columns, labels and metrics fixed.

Every row is checked before anything trains on it. Errors are one line naming the file (or dataset
and split), the 1-based data row (the header is not a row) and the column.

Task kinds: ``classification`` (string, integer or boolean labels), ``regression`` (float labels),
``multilabel`` (a list of labels per row) and ``token_classification`` (NER: a list of words and a
list of tags of the same length per row, from JSON/JSONL/parquet/``datasets`` rows or a CoNLL file,
see ``ddk_fast.data.conll``) and ``qa`` (extractive question answering: a question, a context and the
gold answers as ``{"text": [...], "answer_start": [...]}`` per row, from a SQuAD v1.1/v2.0 file -- see
``ddk_fast.data.squad`` -- or rows in the hub's SQuAD layout). For CoNLL files a row is a sentence, and
errors name its first line too; for QA a row is a question, and errors name its id too.
"""
from __future__ import annotations

import codecs
import math
import os
import random
from dataclasses import dataclass, field, replace
from typing import ClassVar, List, Optional, Tuple

from ddk_fast._io import atomic_write_json, read_json
from ddk_fast.data import conll, squad
from ddk_fast.data.examples import Example, QAExample, subsample_indices
from ddk_fast.data.tasks import DataError

TOKEN_KIND = "token_classification"
QA_KIND = "qa"
KINDS = ("classification", "regression", "multilabel", TOKEN_KIND, QA_KIND)
# a QA model's two output rows per token: the start and the end logit of the answer span
QA_LABELS = ("start", "end")
# file extension -> datasets packaged builder ("conll": ddk_fast.data.conll's reader)
EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
              **{ext: "conll" for ext in conll.EXTENSIONS}}
# text columns tried in order when --text-columns is not given
DEFAULT_TEXT_COLUMNS = (("text",), ("sentence",), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                        ("question1", "question2"), ("question", "sentence"), ("text_a", "text_b"), ("tokens",),
                        (squad.QUESTION, squad.CONTEXT))
DEFAULT_LABEL_COLUMNS = ("label", "labels", "score", "ner_tags", "tags", squad.ANSWERS)
# a validation split held out of the train file when none is given: this share, seeded
HOLDOUT_SHARE, HOLDOUT_SEED = 0.1, 0
TASK_FILE = "task.json"

_METRICS = {"classification": (("accuracy", "f1_macro"), "accuracy"),
            "regression": (("pearson", "spearman"), "pearson"),
            "multilabel": (("f1_micro",), "f1_micro"),
            TOKEN_KIND: (("entity_f1",), "entity_f1"),
            QA_KIND: (("exact_match", "f1"), "f1")}


@dataclass(frozen=True)
class DataSource:
    """Where the rows come from: files per split, or one dataset (hub ``NAME[:CONFIG]`` or a folder)."""

    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    dataset: Optional[str] = None

    def absolute(self) -> "DataSource":
        """File paths made absolute, so a saved task still finds them from another working folder."""
        fix = (lambda p: None if p is None else os.path.abspath(p))
        dataset = self.dataset
        if dataset is not None and os.path.isdir(dataset):
            dataset = os.path.abspath(dataset)
        return DataSource(fix(self.train_file), fix(self.validation_file), dataset)


@dataclass(frozen=True)
class CustomTask:
    """A task described by a user's data; the label set comes from the train split."""

    name: str
    kind: str
    text_columns: Tuple[str, ...]
    label_column: str
    label_names: Tuple[str, ...]
    source: DataSource = field(default_factory=DataSource)
    # QA: the train split has unanswerable questions (SQuAD 2.0), so "no answer" may be predicted
    allow_no_answer: bool = False

    is_custom: ClassVar[bool] = True

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def is_token_classification(self) -> bool:
        return self.kind == TOKEN_KIND

    @property
    def is_qa(self) -> bool:
        return self.kind == QA_KIND

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def hub_columns(self) -> Tuple[str, Optional[str]]:
        return self.text_columns[0], (self.text_columns[1] if self.is_pair else None)

    @property
    def metric_names(self) -> Tuple[str, ...]:
        return _METRICS[self.kind][0]

    @property
    def main_metric(self) -> str:
        return _METRICS[self.kind][1]

    @property
    def splits(self) -> Tuple[str, ...]:
        return ("train", "validation")

    @property
    def eval_splits(self) -> Tuple[str, ...]:
        return ("validation",)

    def resolve_split(self, split: str) -> str:
        if split not in self.splits:
            raise DataError(f"split={split!r} is not a split of {self.name}; expected one of {list(self.splits)}")
        return split

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "text_columns": list(self.text_columns),
                "label_column": self.label_column, "label_names": list(self.label_names),
                "source": {"train_file": self.source.train_file, "validation_file": self.source.validation_file,
                           "dataset": self.source.dataset},
                "allow_no_answer": self.allow_no_answer}

    @classmethod
    def from_dict(cls, data: dict, where: str = "task description") -> "CustomTask":
        try:
            kind = data["kind"]
            if kind not in KINDS:
                raise ValueError(kind)
            return cls(str(data["name"]), kind, tuple(data["text_columns"]), str(data["label_column"]),
                       tuple(str(n) for n in data["label_names"]), DataSource(**(data.get("source") or {})),
                       bool(data.get("allow_no_answer", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a valid task description ({type(exc).__name__}: {exc})") from None


def model_task_type(spec) -> str:
    """The engine's ``task_type`` (head and losses) for a GLUE or custom task: regression, multilabel,
    token_classification, qa (the model config's names for these kinds) or classification."""
    if spec.is_regression:
        return "regression"
    if getattr(spec, "is_multilabel", False):
        return "multilabel"
    if getattr(spec, "is_qa", False):
        return QA_KIND
    return TOKEN_KIND if getattr(spec, "is_token_classification", False) else "classification"


# ------------------------------------------------------------------------------------------ reading
def _check_utf8(path: str) -> None:
    """Refuse a text file that is not UTF-8 with the line of the first bad byte (datasets' own error
    for this is a long chained traceback)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line += chunk[:max(exc.start, 0)].count(b"\n")
                raise DataError(f"{path}, line {line}: not valid UTF-8 (byte 0x{chunk[exc.start]:02x} at offset "
                                f"{bad}); save the file as UTF-8") from None
            if not chunk:
                return
            offset += len(chunk)
            line += chunk.count(b"\n")


def read_file(path: str, flag: str = "--train-file"):
    """One data file as a ``datasets.Dataset``; the format comes from the extension."""
    import datasets

    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{flag} {path}: unknown extension {ext or '(none)'!r}; expected one of "
                        f"{', '.join(EXTENSIONS)}")
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    builder = EXTENSIONS[ext]
    if builder == "conll":
        _check_utf8(path)
        return conll.read_conll(path)[0]
    if ext == ".json":
        _check_utf8(path)
        parsed = squad.nested_layout(path)
        if parsed is not None:
            return squad.read_squad(path, parsed)
    kwargs = {}
    if ext == ".tsv":
        kwargs = {"delimiter": "\t", "quoting": 3}  # csv.QUOTE_NONE: quotes are text in TSVs
    if builder != "parquet":
        _check_utf8(path)
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=os.path.abspath(path), split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow parse errors arrive wrapped; the cause says most
        raise DataError(f"{path}: cannot be read as {ext[1:]}: {_root_cause(exc)}") from None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text}"


class _quiet_datasets:
    """No progress bars or info logs from datasets while reading small user files."""

    def __enter__(self):
        from datasets.utils import logging as ds_logging

        self._level = ds_logging.get_verbosity()
        self._bars = ds_logging.is_progress_bar_enabled()
        ds_logging.set_verbosity_error()
        ds_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from datasets.utils import logging as ds_logging

        ds_logging.set_verbosity(self._level)
        if self._bars:
            ds_logging.enable_progress_bar()


def _read_dataset(spec: str):
    """``--dataset``: a ``save_to_disk`` folder, a folder of data files, or a hub ``NAME[:CONFIG]``.
    Returns a dict split -> Dataset."""
    import datasets

    try:
        with _quiet_datasets():
            if os.path.isdir(spec):
                saved = any(os.path.isfile(os.path.join(spec, f)) for f in ("dataset_dict.json", "state.json"))
                loaded = datasets.load_from_disk(spec) if saved else datasets.load_dataset(spec)
            else:
                name, _, config = spec.partition(":")
                loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad folder: all the user's to fix
        raise DataError(f"--dataset {spec}: cannot load it with datasets: {_root_cause(exc)}") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


@dataclass
class _Split:
    """Rows of one split: the table, what to call it in errors, and each row's 1-based number there."""

    table: object
    where: str
    rows: List[int]
    held_out: bool = False  # validation rows drawn from the train split


def open_split(source: DataSource, split: str) -> _Split:
    """The train or validation rows of ``source``. Without a validation file or split, a seeded
    ``HOLDOUT_SHARE`` of the train rows is the validation split (the rest is train)."""
    if source.dataset is None and source.train_file is None and source.validation_file is None:
        raise DataError("no data given; pass --train-file (and --validation-file) or --dataset")
    if source.dataset is not None:
        splits = _read_dataset(source.dataset)
        if split == "train" and "validation" not in splits and "train" in splits:
            # the validation rows are held out of train: train on the rest only
            return _holdout(splits["train"], f"--dataset {source.dataset} (split train)", split)
        if split in splits:
            table = splits[split]
            return _Split(table, f"--dataset {source.dataset} (split {split})", list(range(1, len(table) + 1)))
        if "train" not in splits:
            raise DataError(f"--dataset {source.dataset}: no {split!r} split; it has {list(splits)}")
        return _holdout(splits["train"], f"--dataset {source.dataset} (split train)", split)
    if split == "validation" and source.validation_file is not None:
        table, rows = _read_rows(source.validation_file, "--validation-file")
        return _Split(table, source.validation_file, rows)
    if source.train_file is None:
        raise DataError("--validation-file needs --train-file (the label set comes from the train file)")
    table, rows = _read_rows(source.train_file, "--train-file")
    if source.validation_file is not None:
        return _Split(table, source.train_file, rows)
    return _holdout(table, source.train_file, split, rows)


def _read_rows(path: str, flag: str):
    """(table, each row's number in errors): data rows 1..N, or a CoNLL file's sentences (with their line)."""
    table = read_file(path, flag)
    if EXTENSIONS.get(os.path.splitext(path)[1].lower()) == "conll":
        return table, conll.parse_conll(path)[2]
    return table, list(range(1, len(table) + 1))


def _holdout(table, where: str, split: str, numbers: Optional[List[int]] = None) -> _Split:
    n = len(table)
    order = list(range(n))
    random.Random(HOLDOUT_SEED).shuffle(order)
    n_val = max(1, int(round(n * HOLDOUT_SHARE))) if n > 1 else 0
    chosen = sorted(order[:n_val] if split == "validation" else order[n_val:])
    if not chosen:
        raise DataError(f"{where}: too few rows ({n}) to hold out a validation split; pass --validation-file")
    numbers = numbers or list(range(1, n + 1))
    return _Split(table.select(chosen), where, [numbers[i] for i in chosen], held_out=split == "validation")


# ------------------------------------------------------------------------------------ task building
def build_task(source: DataSource, text_columns=None, label_column: Optional[str] = None,
               kind: Optional[str] = None, name: Optional[str] = None) -> CustomTask:
    """Describe the task from the train split: columns (given or found), kind (given or inferred),
    label set (sorted; a ClassLabel column keeps its own order)."""
    source = source.absolute()
    train = open_split(source, "train")
    columns = list(train.table.column_names)
    texts = _text_columns(text_columns, columns, train.where)
    label = _label_column(label_column, columns, train.where, texts)
    feature = train.table.features[label]
    if kind is not None and kind not in KINDS:
        raise DataError(f"--task-kind {kind!r}: expected one of {', '.join(KINDS)}")
    kind = kind or (TOKEN_KIND if _is_list(train.table.features[texts[0]]) else infer_kind(feature))
    if kind == TOKEN_KIND and len(texts) != 1:
        raise DataError(f"--text-columns {','.join(texts)}: token classification takes one column of word lists")
    if kind == QA_KIND:
        return _qa_task(train, source, texts, label, name)
    names = _class_names(feature)
    if kind == "regression":
        label_names: Tuple[str, ...] = (label,)
    elif names is not None:
        label_names = tuple(names)
    else:
        label_names = _label_set(train, label, kind)
    task = CustomTask(name or "custom", kind, tuple(texts), label, label_names, source)
    if kind == "classification" and task.num_labels < 2:
        raise DataError(f"{train.where}, column {label!r}: only one label ({label_names[0]!r}) in the train rows; "
                        f"classification needs at least two")
    if kind == "multilabel" and task.num_labels < 2:
        raise DataError(f"{train.where}, column {label!r}: only one label ({label_names[0]!r}) in the train rows' "
                        f"lists; multi-label needs at least two (for one yes/no label use a classification column)")
    return task


def _qa_task(train: _Split, source: DataSource, texts, label: str, name: Optional[str]) -> CustomTask:
    """Extractive QA: a question and a context column, gold answers in ``label``; "no answer" is a
    prediction when some train question has no answer."""
    if len(texts) != 2:
        raise DataError(f"{train.where}: QA takes two text columns, the question and the context "
                        f"(--text-columns question,context); got {','.join(texts)}")
    answers = [_answer_list(value, train.where, row, label) for row, value in zip(train.rows, train.table[label])]
    return CustomTask(name or "custom", QA_KIND, tuple(texts), label, QA_LABELS, source,
                      allow_no_answer=any(not a for a in answers))


def _text_columns(given, columns, where) -> List[str]:
    if given:
        wanted = [c.strip() for c in (given.split(",") if isinstance(given, str) else given)]
        if not 1 <= len(wanted) <= 2 or not all(wanted):
            raise DataError(f"--text-columns {given!r}: expected one column or two separated by a comma")
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(f"{where}: no column {missing[0]!r} (--text-columns); columns are {columns}")
        return wanted
    for candidate in DEFAULT_TEXT_COLUMNS:
        if all(c in columns for c in candidate):
            return list(candidate)
    raise DataError(f"{where}: no text column found (tried {', '.join(c[0] for c in DEFAULT_TEXT_COLUMNS)}); "
                    f"pass --text-columns, columns are {columns}")


def _label_column(given, columns, where, texts) -> str:
    if given:
        if given not in columns:
            raise DataError(f"{where}: no column {given!r} (--label-column); columns are {columns}")
        label = given
    else:
        found = [c for c in DEFAULT_LABEL_COLUMNS if c in columns]
        if not found:
            raise DataError(f"{where}: no label column found (tried {', '.join(DEFAULT_LABEL_COLUMNS)}); "
                            f"pass --label-column, columns are {columns}")
        label = found[0]
    if label in texts:
        raise DataError(f"{where}: column {label!r} is both a text column and the label column")
    return label


def infer_kind(feature) -> str:
    """qa for SQuAD answer columns (``{"text", "answer_start"}``), multilabel for list columns, regression
    for float columns, classification otherwise."""
    import datasets

    if _is_answers(feature):
        return QA_KIND
    if _is_list(feature):
        return "multilabel"
    dtype = getattr(feature, "dtype", "")
    if isinstance(feature, datasets.Value) and dtype.startswith(("float", "double")):
        return "regression"
    return "classification"


def _is_list(feature) -> bool:
    import datasets

    return isinstance(feature, (list, datasets.Sequence)) or type(feature).__name__ in ("List", "LargeList")


def _is_answers(feature) -> bool:
    """A SQuAD answers column: a ``{"text", "answer_start"}`` struct of lists (or a list of such structs)."""
    inner = getattr(feature, "feature", feature) if _is_list(feature) else feature
    return isinstance(inner, dict) and {"text", "answer_start"} <= set(inner)


def _class_names(feature) -> Optional[List[str]]:
    """Names of a ClassLabel column (also inside a list column), else None."""
    inner = getattr(feature, "feature", feature)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _key(value) -> Optional[str]:
    """A label value as the string it is known by; None for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _label_set(split: _Split, column: str, kind: str) -> Tuple[str, ...]:
    keys = set()
    for row, value in zip(split.rows, split.table[column]):
        values = _listed(value, split.where, row, column) if kind in ("multilabel", TOKEN_KIND) else [value]
        for item in values:
            key = _key(item)
            if key is None:
                raise DataError(f"{split.where}, row {row}, column {column!r}: empty label")
            keys.add(key)
    numeric = all(_is_int(k) for k in keys)
    return tuple(sorted(keys, key=(lambda k: (int(k), k)) if numeric else None))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _listed(value, where, row, column) -> list:
    """A list-valued label cell (multilabel: the row's labels; token classification: a tag per word)."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}, row {row}, column {column!r}: expected a list of labels (multilabel, or one "
                        f"tag per word for token classification), found {value!r}")
    return list(value)


# ----------------------------------------------------------------------------------------- examples
def load_examples(task: CustomTask, split: str, max_examples: Optional[int] = None, seed: int = 0):
    """The split's rows as ``Example``s, every text and label checked (label ids from the train set)."""
    split = task.resolve_split(split)
    part = open_split(task.source, split)
    columns = list(part.table.column_names)
    for column in (*task.text_columns, task.label_column):
        if column not in columns:
            raise DataError(f"{part.where}: no column {column!r}; columns are {columns}")
    if len(part.table) == 0:
        raise DataError(f"{part.where}: no data rows")
    keep = subsample_indices(len(part.table), max_examples, seed)
    table = part.table if keep is None else part.table.select(keep)
    rows = part.rows if keep is None else [part.rows[i] for i in keep]
    if task.is_qa:
        return _qa_examples(task, table, rows, part.where)
    data = table.select_columns([*task.text_columns, task.label_column]).to_dict()
    names = _class_names(part.table.features[task.label_column])
    parse = _label_parser(task, part.where, names)
    if task.is_token_classification:
        return _token_examples(task, data, rows, part.where, parse)
    texts_a = _texts(data[task.text_columns[0]], rows, part.where, task.text_columns[0])
    texts_b = (_texts(data[task.text_columns[1]], rows, part.where, task.text_columns[1]) if task.is_pair
               else [None] * len(rows))
    return [Example(a, b, parse(value, row))
            for a, b, value, row in zip(texts_a, texts_b, data[task.label_column], rows)]


def _token_examples(task: CustomTask, data: dict, rows, where: str, parse) -> List[Example]:
    """One ``Example`` per sentence: ``text_a`` the words (a tuple), ``label`` one tag id per word (a list)."""
    words_column, tags_column = task.text_columns[0], task.label_column
    out = []
    for words, tags, row in zip(data[words_column], data[tags_column], rows):
        if not isinstance(words, (list, tuple)):
            raise DataError(f"{where}, row {row}, column {words_column!r}: expected a list of words, found {words!r}")
        if not words:
            raise DataError(f"{where}, row {row}, column {words_column!r}: empty sentence (no words)")
        for i, word in enumerate(words, 1):
            if not isinstance(word, str) or not word.strip():
                raise DataError(f"{where}, row {row}, column {words_column!r}: word {i} is empty")
        ids = parse(tags, row)
        if len(ids) != len(words):
            raise DataError(f"{where}, row {row}, column {tags_column!r}: {len(ids)} tags for {len(words)} words "
                            f"(column {words_column!r}); every word needs exactly one tag")
        out.append(Example(tuple(words), None, ids))
    return out


def _qa_examples(task: CustomTask, table, rows, where: str) -> List[QAExample]:
    """One ``QAExample`` per question: texts present, every answer found at its ``answer_start`` in the
    context, ids unique (the row number when the table has no ``id`` column)."""
    question_column, context_column = task.text_columns
    answers_column = task.label_column
    has_ids = squad.ID in table.column_names
    data = table.select_columns([question_column, context_column, answers_column]
                                + ([squad.ID] if has_ids else [])).to_dict()
    ids = [str(i) for i in data[squad.ID]] if has_ids else [str(r) for r in rows]
    out, seen = [], {}
    for qid, row, question, context, value in zip(ids, rows, data[question_column], data[context_column],
                                                   data[answers_column]):
        at = f"{where}, row {row} (id {qid!r})"
        if qid in seen:
            raise DataError(f"{at}, column {squad.ID!r}: the id of row {seen[qid]} too; question ids must be unique")
        seen[qid] = row
        for text, column in ((question, question_column), (context, context_column)):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{at}, column {column!r}: empty {'question' if column == question_column else 'context'}")
        answers = _answer_list(value, where, f"{row} (id {qid!r})", answers_column)
        for i, (text, start) in enumerate(answers, 1):
            found = context[start:start + len(text)] if 0 <= start < len(context) else None
            if found != text:
                where_found = (f"found {found!r} there" if found is not None
                               else f"outside the context of {len(context)} characters")
                raise DataError(f"{at}, column {answers_column!r}: answer {i} {text!r} is not at its answer_start "
                                f"{start} in the context ({where_found})")
        out.append(QAExample(qid, question, context, tuple(answers)))
    return out


def _answer_list(value, where, row, column) -> List[Tuple[str, int]]:
    """``(text, answer_start)`` pairs of an answers cell: ``{"text": [...], "answer_start": [...]}`` (the
    hub's SQuAD layout) or a list of ``{"text", "answer_start"}`` objects; empty: no answer."""
    expected = '{"text": [...], "answer_start": [...]}'
    if isinstance(value, dict) and {"text", "answer_start"} <= set(value):
        texts, starts = value["text"], value["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}, row {row}, column {column!r}: expected {expected} with one answer_start "
                            f"per text, found {value!r}")
        pairs = list(zip(texts, starts))
    elif isinstance(value, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in value):
        pairs = [(a["text"], a["answer_start"]) for a in value]
    else:
        raise DataError(f"{where}, row {row}, column {column!r}: expected answers as {expected}, found {value!r}")
    for i, (text, start) in enumerate(pairs, 1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}, row {row}, column {column!r}: answer {i} has an empty text")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where}, row {row}, column {column!r}: answer {i} has answer_start {start!r}; "
                            f"expected a character offset (an integer)")
    return [(text, int(start)) for text, start in pairs]


def _texts(values, rows, where, column) -> List[str]:
    out = []
    for value, row in zip(values, rows):
        text = None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        if text is None or not text.strip():
            raise DataError(f"{where}, row {row}, column {column!r}: empty text")
        out.append(text)
    return out


def _label_parser(task: CustomTask, where: str, class_names):
    column = task.label_column
    if task.is_regression:
        def parse_score(value, row):
            if _key(value) is None:  # None, NaN (pandas' empty cell) or blank text
                raise DataError(f"{where}, row {row}, column {column!r}: empty label")
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{where}, row {row}, column {column!r}: label {value!r} is not a number "
                                f"(regression)") from None
            if not math.isfinite(score):
                raise DataError(f"{where}, row {row}, column {column!r}: label {value!r} is not finite")
            return score

        return parse_score
    ids = {name: i for i, name in enumerate(task.label_names)}

    def one(value, row):
        if class_names is not None and isinstance(value, int) and 0 <= value < len(class_names):
            value = class_names[value]
        key = _key(value)
        if key is None:
            raise DataError(f"{where}, row {row}, column {column!r}: empty label")
        if key not in ids:
            shown = list(task.label_names[:20]) + (["..."] if len(task.label_names) > 20 else [])
            raise DataError(f"{where}, row {row}, column {column!r}: label {key!r} is not in the training label "
                            f"set {shown}")
        return ids[key]

    if task.is_token_classification:
        return lambda value, row: [one(item, row) for item in _listed(value, where, row, column)]
    if not task.is_multilabel:
        return one

    def parse_many(value, row):
        hot = [0.0] * len(ids)
        for item in _listed(value, where, row, column):
            hot[one(item, row)] = 1.0
        return tuple(hot)

    return parse_many


# --------------------------------------------------------------------------------- saved description
def write_task_file(task, folder: str) -> None:
    """``folder/task.json`` for a custom task (nothing for GLUE: its name says everything)."""
    if getattr(task, "is_custom", False):
        atomic_write_json(os.path.join(folder, TASK_FILE), task.to_dict())


def task_files(task) -> dict:
    """``extra_files`` of an export: ``task.json`` for a user's own task (labels, columns, files), so
    ``evaluate`` and later stages need no data flags; nothing for GLUE (its name says everything)."""
    return {TASK_FILE: task.to_dict()} if getattr(task, "is_custom", False) else {}


def read_task_file(folder: str) -> Optional[CustomTask]:
    """The custom task a run folder was trained on, or None when it has no ``task.json``."""
    path = os.path.join(folder, TASK_FILE)
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return CustomTask.from_dict(data if isinstance(data, dict) else {}, path)


def with_source(task: CustomTask, source: DataSource) -> CustomTask:
    """The same task (columns, kind, label set) read from other files, e.g. a new evaluation file."""
    return replace(task, source=source.absolute())
