"""The nine GLUE tasks: names, columns, labels, splits and the TSV layout of the official release.

One table drives the hub loader, the TSV reader and the metrics, so a task is described in one place.
Label ids follow the ``datasets`` (nyu-mll/glue) convention, so a model trained from TSVs and one
trained from the hub agree on what class 1 means.
"""
from dataclasses import dataclass, field
from typing import Optional, Tuple


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the file, line number and problem."""


@dataclass(frozen=True)
class TsvLayout:
    """Where text and label live in one TSV of the GLUE release.

    ``header`` is the exact expected header, or None for header-less files (CoLA); then ``n_columns``
    fixes the row width and the column fields are positions. With a header the column fields are
    names, looked up in the file's actual header (MNLI train and dev differ in width).
    """

    text_a: object
    text_b: object
    label: object
    header: Optional[Tuple[str, ...]] = None
    n_columns: Optional[int] = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    glue_dir: str
    hub_columns: Tuple[str, Optional[str]]
    label_names: Tuple[str, ...]
    metric_names: Tuple[str, ...]
    main_metric: str
    train_layout: TsvLayout
    dev_layout: TsvLayout
    # TSV label strings in label-id order (row i of the file's label column -> id i); None for regression.
    tsv_labels: Optional[Tuple[str, ...]] = None
    # regression targets must fall in this closed range (STS-B: 0..5)
    score_range: Optional[Tuple[float, float]] = None
    # split name -> TSV file name in the task folder
    split_files: dict = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})

    @property
    def is_regression(self) -> bool:
        return self.tsv_labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.hub_columns[1] is not None

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.split_files)

    @property
    def eval_splits(self) -> Tuple[str, ...]:
        return tuple(s for s in self.split_files if s != "train")

    def resolve_split(self, split: str) -> str:
        """Canonical split name; mnli accepts "validation" for "validation_matched"."""
        if split == "validation" and "validation" not in self.split_files and "validation_matched" in self.split_files:
            return "validation_matched"
        if split not in self.split_files:
            raise DataError(f"split={split!r} is not a split of {self.name}; expected one of {list(self.split_files)}")
        return split

    def layout_for(self, split: str) -> TsvLayout:
        return self.train_layout if split == "train" else self.dev_layout


def _same(layout: TsvLayout) -> Tuple[TsvLayout, TsvLayout]:
    return layout, layout


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

_MNLI_TRAIN_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                      "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label")
_MNLI_DEV_HEADER = _MNLI_TRAIN_HEADER[:-1] + ("label2", "label3", "label4", "label5", "gold_label")


def _spec(name, glue_dir, hub_columns, label_names, metric_names, main_metric, layouts, tsv_labels, **kwargs):
    train_layout, dev_layout = layouts
    return TaskSpec(name, glue_dir, hub_columns, label_names, metric_names, main_metric,
                    train_layout, dev_layout, tsv_labels, **kwargs)


GLUE_TASKS = {
    spec.name: spec
    for spec in (
        _spec("cola", "CoLA", ("sentence", None), ("unacceptable", "acceptable"), ("mcc",), "mcc",
              _same(TsvLayout(text_a=3, text_b=None, label=1, header=None, n_columns=4)), _BINARY),
        _spec("sst2", "SST-2", ("sentence", None), ("negative", "positive"), ("accuracy",), "accuracy",
              _same(TsvLayout("sentence", None, "label", header=("sentence", "label"))), _BINARY),
        _spec("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
              _same(TsvLayout("#1 String", "#2 String", "Quality",
                              header=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"))), _BINARY),
        _spec("stsb", "STS-B", ("sentence1", "sentence2"), ("score",), ("pearson", "spearman"), "pearson",
              _same(TsvLayout("sentence1", "sentence2", "score",
                              header=("index", "genre", "filename", "year", "old_index", "source1", "source2",
                                      "sentence1", "sentence2", "score"))), None, score_range=(0.0, 5.0)),
        _spec("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"), "f1",
              _same(TsvLayout("question1", "question2", "is_duplicate",
                              header=("id", "qid1", "qid2", "question1", "question2", "is_duplicate"))), _BINARY),
        _spec("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              ("accuracy",), "accuracy",
              (TsvLayout("sentence1", "sentence2", "gold_label", header=_MNLI_TRAIN_HEADER),
               TsvLayout("sentence1", "sentence2", "gold_label", header=_MNLI_DEV_HEADER)),
              ("entailment", "neutral", "contradiction"),
              split_files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                           "validation_mismatched": "dev_mismatched.tsv"}),
        _spec("qnli", "QNLI", ("question", "sentence"), _ENTAILMENT, ("accuracy",), "accuracy",
              _same(TsvLayout("question", "sentence", "label", header=("index", "question", "sentence", "label"))),
              _ENTAILMENT),
        _spec("rte", "RTE", ("sentence1", "sentence2"), _ENTAILMENT, ("accuracy",), "accuracy",
              _same(TsvLayout("sentence1", "sentence2", "label", header=("index", "sentence1", "sentence2", "label"))),
              _ENTAILMENT),
        # WNLI's TSV uses 1 for entailment, which is label id 1 ("entailment") in nyu-mll/glue.
        _spec("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "accuracy",
              _same(TsvLayout("sentence1", "sentence2", "label", header=("index", "sentence1", "sentence2", "label"))),
              _BINARY),
    )
}

# GLUE folder names ("SST-2", "STS-B", ...) accepted as spellings of the registry names.
_ALIASES = {spec.glue_dir.lower(): name for name, spec in GLUE_TASKS.items()}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec for a task name (``sst2``; the GLUE folder name ``SST-2`` is accepted too)."""
    if isinstance(name, TaskSpec) or getattr(name, "is_custom", False):  # a task object: GLUE or the user's
        return name
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise DataError(f"unknown task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
