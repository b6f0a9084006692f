"""Load a GLUE split as a list of ``Example`` from the HF hub or from a local folder of release TSVs.

The TSV reader validates every row before anything is trained on it: a malformed file fails here with
its path and line number instead of as a shape error deep inside a training step.
"""
import math
import os
from typing import List, Optional, Union

from ddk_fast.data.custom import load_examples
from ddk_fast.data.examples import Example, subsample_indices
from ddk_fast.data.tasks import DataError, TaskSpec, TsvLayout, get_task

HUB_DATASET = "nyu-mll/glue"


def load_task(task: str, split: str = "train", data_dir: Optional[str] = None, max_examples: Optional[int] = None,
              seed: int = 0, *, skip_bad_rows: bool = False) -> List[Example]:
    """Examples of one GLUE split.

    ``data_dir=None`` loads ``nyu-mll/glue`` through ``datasets`` (needs the hub or its cache); otherwise
    ``data_dir`` is a GLUE release folder (``data_dir/MRPC/dev.tsv``) or the task folder itself.
    ``split``: "train", "validation" (dev.tsv; for mnli the matched dev set), or for mnli
    "validation_matched" / "validation_mismatched". ``max_examples`` keeps a random subset drawn with
    ``seed``, in the original order. ``skip_bad_rows`` drops rows with the wrong number of columns
    instead of raising (other problems always raise).
    """
    spec = get_task(task)
    split = spec.resolve_split(split)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise DataError(f"max_examples={max_examples!r}; expected a positive int or None")
    if getattr(spec, "is_custom", False):  # the user's own files or dataset: the task knows where they are
        return load_examples(spec, split, max_examples, seed)
    if data_dir is None:
        return _load_from_hub(spec, split, max_examples, seed)
    path = find_task_file(spec, split, data_dir)
    examples = read_glue_tsv(path, spec, split, skip_bad_rows=skip_bad_rows)
    keep = subsample_indices(len(examples), max_examples, seed)
    return examples if keep is None else [examples[i] for i in keep]


def find_task_file(task: Union[str, TaskSpec], split: str, data_dir: str) -> str:
    """Path of the split's TSV: ``data_dir/<GLUE folder>/<file>``, or ``data_dir/<file>`` for a task folder."""
    spec = get_task(task)
    split = spec.resolve_split(split)
    file_name = spec.split_files[split]
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir {data_dir!r} is not a folder (looking for {spec.glue_dir}/{file_name})")
    for folder in (spec.glue_dir, spec.name, spec.glue_dir.lower()):
        task_dir = os.path.join(data_dir, folder)
        if os.path.isdir(task_dir):
            path = os.path.join(task_dir, file_name)
            if not os.path.isfile(path):
                raise DataError(f"{path}: file not found (task {spec.name}, split {split})")
            return path
    direct = os.path.join(data_dir, file_name)
    if os.path.isfile(direct):
        return direct
    raise DataError(f"no data for task {spec.name} split {split}: looked for "
                    f"{os.path.join(data_dir, spec.glue_dir, file_name)} and {direct}")


def read_glue_tsv(path: str, task: Union[str, TaskSpec], split: str = "train", *,
                  skip_bad_rows: bool = False) -> List[Example]:
    """Parse one GLUE release TSV (quoting off, UTF-8 BOM stripped, trailing empty lines ignored)."""
    spec = get_task(task)
    layout = spec.layout_for(spec.resolve_split(split))
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    rows = _tsv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    if layout.header is None:
        n_columns, columns = layout.n_columns, (layout.text_a, layout.text_b, layout.label)
        data_rows = _chain_first(first, rows)
    else:
        n_columns, columns = _check_header(path, first[1], layout)
        data_rows = rows
    text_a_col, text_b_col, label_col = columns
    parse_label = _label_parser(spec, path)
    examples = []
    for lineno, fields in data_rows:
        if len(fields) != n_columns:
            if skip_bad_rows:
                continue
            raise DataError(f"{path}, line {lineno}: expected {n_columns} tab-separated columns, found {len(fields)}")
        text_b = None if text_b_col is None else fields[text_b_col]
        examples.append(Example(fields[text_a_col], text_b, parse_label(fields[label_col], lineno)))
    if not examples:
        raise DataError(f"{path}: no data rows" + ("" if layout.header is None else " after the header"))
    return examples


def _tsv_rows(path):
    """Yield (line number, fields) for each non-empty line; empty lines are allowed only at the end."""
    blank_line = None
    try:
        # newline="\n": only LF ends a line, so a stray CR inside a field cannot split a row.
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    blank_line = blank_line or lineno
                    continue
                if blank_line is not None:
                    raise DataError(f"{path}, line {blank_line}: empty line inside the data")
                yield lineno, line.split("\t")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _chain_first(first, rest):
    yield first
    yield from rest


def _check_header(path, header, layout: TsvLayout):
    """Column positions of text_a, text_b and label by name; raise if any is missing."""
    wanted = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: header is missing column(s) {missing}; found {header} "
                        f"(expected the GLUE header {list(layout.header)})")
    positions = tuple(None if c is None else header.index(c) for c in (layout.text_a, layout.text_b, layout.label))
    return len(header), positions


def _label_parser(spec: TaskSpec, path):
    if spec.is_regression:
        low, high = spec.score_range

        def parse_score(value, lineno):
            try:
                score = float(value)
            except ValueError:
                raise DataError(f"{path}, line {lineno}: score {value!r} is not a number") from None
            if not math.isfinite(score) or not low <= score <= high:
                raise DataError(f"{path}, line {lineno}: score {value!r} out of range [{low}, {high}]")
            return score

        return parse_score

    label_ids = {name: i for i, name in enumerate(spec.tsv_labels)}

    def parse_class(value, lineno):
        label = label_ids.get(value.strip())
        if label is None:
            raise DataError(f"{path}, line {lineno}: label {value!r} not in the label set {list(spec.tsv_labels)}")
        return label

    return parse_class


def _load_from_hub(spec: TaskSpec, split: str, max_examples, seed) -> List[Example]:
    import datasets

    source = f"{HUB_DATASET} ({spec.name}, split {split})"
    try:
        ds = datasets.load_dataset(HUB_DATASET, spec.name, split=split)
    except Exception as e:  # offline, unknown config, cache corruption: all need the same advice
        reason = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not load {source} with datasets.load_dataset: {type(e).__name__}: {reason}; "
                        f"pass data_dir= to read a local GLUE folder instead") from e
    col_a, col_b = spec.hub_columns
    needed = [c for c in (col_a, col_b, "label") if c is not None]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {ds.column_names}")
    names = getattr(ds.features["label"], "names", None)
    if names is not None and not spec.is_regression and tuple(names) != spec.label_names:
        raise DataError(f"{source}: label names {list(names)} differ from the expected {list(spec.label_names)}")
    keep = subsample_indices(len(ds), max_examples, seed)
    if keep is not None:
        ds = ds.select(keep)
    columns = ds.select_columns(needed).to_dict()
    texts_b = columns[col_b] if col_b is not None else [None] * len(columns[col_a])
    examples = []
    for row, (text_a, text_b, label) in enumerate(zip(columns[col_a], texts_b, columns["label"])):
        examples.append(Example(text_a, text_b, _check_hub_label(spec, label, source, row)))
    if not examples:
        raise DataError(f"{source}: the split is empty")
    return examples


def _check_hub_label(spec: TaskSpec, label, source, row):
    if spec.is_regression:
        score = float(label)
        low, high = spec.score_range
        if not math.isfinite(score) or not low <= score <= high:
            raise DataError(f"{source}, row {row}: score {label!r} out of range [{low}, {high}]")
        return score
    if label == -1:
        raise DataError(f"{source}, row {row}: label is -1 (hidden test labels cannot be trained or scored)")
    if not isinstance(label, int) or not 0 <= label < spec.num_labels:
        raise DataError(f"{source}, row {row}: label {label!r} out of range 0..{spec.num_labels - 1}")
    return label
