"""`ddk-fast data check`: read a dataset the way training will and say what is in it, before any training.

Every row goes through the same loader and checks as ``finetune``/``compress`` (so a bad row fails here
with the same one-line error), then the tokenizer of the model that will be trained measures lengths:
how long the inputs are (percentiles) and what share ``--max-seq-len`` would cut (for extractive QA:
which questions' contexts it splits into several windows, and how many windows there are).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ddk_fast.data.custom import HOLDOUT_SHARE, KINDS, open_split
from ddk_fast.data.qa_encoding import encode_qa
from ddk_fast.runs import shared_options as shared
from ddk_fast.pipelines.configs import DataOptions
from ddk_fast.runs.config import packaged_model_dir
from ddk_fast.runs.evaluation import load_split, resolve_task
from ddk_fast.runs.hf import load_tokenizer, quiet_transformers
from ddk_fast.runs.options import check_value, option

PERCENTILES = (50, 90, 95, 99)


@dataclass
class DataCheckConfig(DataOptions):
    """``ddk-fast data check``: a GLUE task or the user's data, the tokenizer that measures lengths."""

    task: Optional[str] = shared.task("GLUE task, or a name for your own data", None)
    data_dir: Optional[str] = shared.data_dir("folder of GLUE TSVs (with a GLUE --task)")
    model: Optional[str] = option(None, group="task", help="model whose tokenizer measures lengths (default: the "
                                                           "packaged MiniLM); a model trained on your data also "
                                                           "supplies its task")
    max_seq_len: int = shared.max_seq_len(128, help="length whose truncation share is reported")
    json: bool = option(False, group="run", help="print the findings as JSON")


def check_data(task=None, data: DataOptions | None = None, data_dir=None, model=None,
               max_seq_len: int = DataCheckConfig.max_seq_len) -> dict:
    """The check's findings as a dict (what ``data check --json`` prints)."""
    check_value(DataCheckConfig, "max_seq_len", max_seq_len)
    spec = resolve_task(task, data, model, kinds=KINDS)
    tokenizer = load_tokenizer(model or packaged_model_dir(), spec)
    splits = {}
    for split in ("train", spec.eval_splits[0]):
        examples = load_split(spec, split, data_dir)
        splits[split] = _split_summary(spec, split, examples, tokenizer, max_seq_len)
    report = {"task": spec.name, "kind": "regression" if spec.is_regression else getattr(spec, "kind", "classification"),
              "text_columns": list(spec.hub_columns[:2 if spec.is_pair else 1]),
              "label_column": getattr(spec, "label_column", "label"),
              "labels": None if spec.is_regression else list(spec.label_names), "max_seq_len": max_seq_len,
              "splits": splits, "warnings": _warnings(spec, splits)}
    if getattr(spec, "is_custom", False):
        opened = {split: open_split(spec.source, split) for split in splits}
        report["source"] = {split: part.where + (f" (a seeded {HOLDOUT_SHARE:.0%} held out of train)"
                                                 if part.held_out else "") for split, part in opened.items()}
        report["columns"] = list(open_split(spec.source, "train").table.column_names)
    return report


def _split_summary(spec, split, examples, tokenizer, max_seq_len) -> dict:
    if getattr(spec, "is_qa", False):
        return _qa_summary(examples, tokenizer, max_seq_len)
    labels = [ex.label for ex in examples]
    words = getattr(spec, "is_token_classification", False)  # rows are word lists, labels a tag per word
    out = {"rows": len(examples)}
    if spec.is_regression:
        values = np.asarray(labels, dtype=np.float64)
        out["label_stats"] = {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max()),
                              "std": float(values.std())}
    elif getattr(spec, "is_multilabel", False):
        hot = np.asarray(labels, dtype=np.float64)
        out["label_counts"] = {name: int(n) for name, n in zip(spec.label_names, hot.sum(axis=0))}
        out["labels_per_row"] = float(hot.sum(axis=1).mean())
    else:
        counts = Counter(tag for row in labels for tag in row) if words else Counter(labels)
        out["label_counts"] = {name: counts.get(i, 0) for i, name in enumerate(spec.label_names)}
    texts_b = [ex.text_b for ex in examples] if spec.is_pair else None
    with quiet_transformers():
        encoded = tokenizer([list(ex.text_a) if words else ex.text_a for ex in examples], texts_b, truncation=False,
                            padding=False, return_attention_mask=False, return_token_type_ids=False,
                            is_split_into_words=words)
    lengths = np.asarray([len(ids) for ids in encoded["input_ids"]])
    out["tokens"] = {f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES}
    out["tokens"]["max"] = int(lengths.max())
    out["truncated_rows"] = int(np.sum(lengths > max_seq_len))
    out["truncated_share"] = round(float(np.mean(lengths > max_seq_len)), 6)
    return out


def _qa_summary(examples, tokenizer, max_seq_len) -> dict:
    """Questions with and without answers, question + context lengths, and the windows ``max_seq_len``
    cuts the contexts into (a long context is split, not truncated)."""
    unanswerable = sum(not ex.answers for ex in examples)
    with quiet_transformers():
        encoded = tokenizer([ex.question for ex in examples], [ex.context for ex in examples], truncation=False,
                            padding=False, return_attention_mask=False, return_token_type_ids=False)
        windows = encode_qa(examples, tokenizer, max_seq_len)
    lengths = np.asarray([len(ids) for ids in encoded["input_ids"]])
    tokens = {f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES}
    tokens["max"] = int(lengths.max())
    return {"rows": len(examples), "answers": {"answerable": len(examples) - unanswerable, "unanswerable": unanswerable},
            "tokens": tokens, "split_rows": int(np.sum(lengths > max_seq_len)),
            "split_share": round(float(np.mean(lengths > max_seq_len)), 6), "windows": len(windows),
            "doc_stride": windows.doc_stride}


def _warnings(spec, splits) -> list:
    out = []
    train, dev = splits.get("train", {}), next((v for k, v in splits.items() if k != "train"), {})
    for name, n in (train.get("label_counts") or {}).items():
        if n == 0:
            out.append(f"label {name!r} has no train rows")
    missing = [name for name, n in (dev.get("label_counts") or {}).items() if n == 0]
    if missing and len(missing) < len(spec.label_names):
        out.append(f"validation has no rows of label(s) {missing}")
    for split, summary in splits.items():
        if summary.get("truncated_share", 0.0) > 0.05:
            out.append(f"{split}: {summary['truncated_share']:.0%} of rows are longer than --max-seq-len "
                       f"(p95 {summary['tokens']['p95']} tokens); raise --max-seq-len to keep them whole")
    return out


def format_check(report: dict) -> str:
    lines = [f"task {report['task']}: {report['kind']}, text {','.join(report['text_columns'])}, "
             f"label {report['label_column']}"]
    if report.get("columns"):
        lines.append(f"columns: {', '.join(report['columns'])}")
    if report["labels"] is not None:
        lines.append(f"labels ({len(report['labels'])}): {', '.join(report['labels'][:30])}"
                     + (" ..." if len(report["labels"]) > 30 else ""))
    for split, s in report["splits"].items():
        where = (report.get("source") or {}).get(split)
        lines.append(f"{split}: {s['rows']} rows" + (f" from {where}" if where else ""))
        if "label_counts" in s:
            lines.append("  label counts: " + ", ".join(f"{k} {v}" for k, v in list(s["label_counts"].items())[:30]))
        if "label_stats" in s:
            lines.append("  label " + ", ".join(f"{k} {v:.4g}" for k, v in s["label_stats"].items()))
        if "answers" in s:
            lines.append("  questions: " + ", ".join(f"{k} {v}" for k, v in s["answers"].items()))
        t = s["tokens"]
        size = f"  tokens: p50 {t['p50']}, p90 {t['p90']}, p95 {t['p95']}, p99 {t['p99']}, max {t['max']}; "
        if "windows" in s:
            lines.append(size + f"{s['split_rows']} questions ({s['split_share']:.2%}) longer than "
                                f"{report['max_seq_len']}: {s['windows']} windows in all (stride {s['doc_stride']})")
        else:
            lines.append(size + f"{s['truncated_rows']} rows ({s['truncated_share']:.2%}) truncated at "
                                f"{report['max_seq_len']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append("ok: every row has its text and a label the task knows")
    return "\n".join(lines)
