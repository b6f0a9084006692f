"""ONNX export of a model folder (a compressed export or a fine-tuned teacher), checked against PyTorch.

Why ONNX: on CPUs users serve models with ONNX Runtime, usually int8-quantised; a pruned model has to
be faster there, not only in PyTorch. The folder is loaded exactly as a user loads it
(``AutoModelFor...from_pretrained(dir, trust_remote_code=True)``: the standalone modeling file of a
compressed export, stock transformers for a teacher), wrapped to return only what its head outputs, and
exported with the ``torch.export`` based exporter (``dynamo=True``) with dynamic batch and sequence axes.

Heads (``HEADS``): a sequence classifier returns ``logits`` [batch, labels], a token classifier
``logits`` [batch, sequence, labels], a causal LM ``logits`` [batch, sequence, vocab]; per-token outputs
are compared at real (non-padding) positions only, the values a user reads. Another head (an extractive
QA span head: ``start_logits`` and ``end_logits`` [batch, sequence]) is one more ``Head`` in the table
and one more branch in ``head_of``; export, check and report read the rest from it.
Before the folder is written, ONNX Runtime runs it on a padded batch and an unpadded one of other
shapes than the export example; outputs that differ from PyTorch by more than ``atol`` fail the
export (a traced graph that froze something of the example would be caught here).

``export_onnx(model_dir, out_dir, opset=18, int8=False, overwrite=False, atol=1e-4) -> dict``
    Writes ``model.onnx`` (+ ``model.int8.onnx``: dynamic int8 quantisation of the linear layers by
    ``onnxruntime.quantization``), the tokenizer files and ``onnx_report.json`` (inputs, the head and its
    outputs' axes, opset, file sizes, the check's shapes and max abs differences, the task and labels of
    the source). Atomic.
``OnnxModel(path, threads=1)``: an ONNX Runtime session called like the PyTorch model
    (``model(input_ids, attention_mask, token_type_ids) -> logits tensor``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

from ddk_fast._io import atomic_write_json, read_json, write_directory
from ddk_fast._version import __version__
from ddk_fast.errors import UserError
from ddk_fast.export.modeling_ddk_bert import DdkBertForSequenceClassification, DdkBertForTokenClassification
from ddk_fast.export.modeling_ddk_gpt2 import DdkGPT2ForCausalLM
from ddk_fast.export.save import TOKENIZER_FILES

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "onnx_report.json"
CAUSAL_TYPES = ("ddk_gpt2", "gpt2")
ENCODER_TYPES = ("ddk_bert", "bert", "roberta", "xlm-roberta", "distilbert", "electra")
DEFAULT_OPSET = 18


class OnnxExportError(UserError):
    """The model cannot be exported, or its ONNX graph does not reproduce PyTorch."""


@dataclass(frozen=True)
class Head:
    """What the exported graph of one kind of model returns, and how it is loaded and checked.

    ``output_axes``: each output's axes (named ones are dynamic); ``per_token``: outputs have a sequence
    axis, so only real positions are compared with PyTorch; ``causal``: a decoder (no segment ids, no
    KV cache in the graph); ``stock``/``own``: the loading class of a teacher folder / of this package's
    export (``ddk_*`` model types)."""

    name: str
    output_axes: dict
    per_token: bool
    causal: bool
    stock: type
    own: type

    @property
    def outputs(self) -> tuple:
        return tuple(self.output_axes)


HEADS = {head.name: head for head in (
    Head("sequence_classification", {"logits": ["batch", "labels"]}, per_token=False, causal=False,
         stock=AutoModelForSequenceClassification, own=DdkBertForSequenceClassification),
    Head("token_classification", {"logits": ["batch", "sequence", "labels"]}, per_token=True, causal=False,
         stock=AutoModelForTokenClassification, own=DdkBertForTokenClassification),
    Head("causal_lm", {"logits": ["batch", "sequence", "vocab"]}, per_token=True, causal=True,
         stock=AutoModelForCausalLM, own=DdkGPT2ForCausalLM),
)}


def head_of(folder: str, kind: str) -> Head:
    """The head of a model folder: causal LM by model type, token classification by architecture,
    sequence classification otherwise; other heads are refused by name."""
    if kind in CAUSAL_TYPES:
        return HEADS["causal_lm"]
    architectures = [str(a) for a in read_json(os.path.join(folder, "config.json")).get("architectures") or []]
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return HEADS["token_classification"]
    unsupported = [a for a in architectures if a.endswith(("ForQuestionAnswering", "ForMultipleChoice"))]
    if unsupported:
        raise OnnxExportError(f"{folder!r} holds a {unsupported[0]} model; ONNX export supports "
                              f"{', '.join(h.replace('_', ' ') for h in HEADS)}")
    return HEADS["sequence_classification"]


class _Logits(nn.Module):
    """The loaded model with positional inputs and its head's outputs only (what a server returns)."""

    def __init__(self, model: nn.Module, head: Head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if self.head.causal:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        outputs = tuple(getattr(out, name) for name in self.head.outputs)
        return outputs[0] if len(outputs) == 1 else outputs


def model_type(folder: str) -> str:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise OnnxExportError(f"{folder!r} has no config.json: not a model folder")
    try:
        kind = read_json(path).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise OnnxExportError(f"cannot read {path!r}: {exc}") from None
    if kind not in CAUSAL_TYPES + ENCODER_TYPES:
        raise OnnxExportError(f"{folder!r} holds a {kind!r} model; ONNX export supports "
                              f"{', '.join(ENCODER_TYPES + CAUSAL_TYPES)}")
    return kind


def load_for_export(folder: str) -> tuple[_Logits, list[str]]:
    """(logits-only module in eval mode, its input names) for a model folder.

    A compressed folder is read with this package's own copy of its modeling file, not the copy
    inside the folder: the same classes (the folder's copy is this file as of its export), without
    running code from the folder, and folders exported by earlier versions get today's trace-safe
    masking. A teacher loads with stock transformers."""
    kind = model_type(folder)
    head = head_of(folder, kind)
    loader = head.own if kind.startswith("ddk_") else head.stock
    try:
        model = loader.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxExportError(f"cannot load the model in {folder!r}: {first}") from None
    names = ["input_ids", "attention_mask"] + ([] if head.causal else ["token_type_ids"])
    return _Logits(model.eval(), head).eval(), names


def example_inputs(names, vocab_size: int, batch: int, seq: int, pad_lengths=(), seed: int = 0) -> dict:
    """Random token ids; row i is padded after ``pad_lengths[i]`` tokens (right padding)."""
    g = torch.Generator().manual_seed(seed)
    low = 1000 if vocab_size > 2000 else 1
    ids = torch.randint(low, vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate(pad_lengths):
        mask[row, length:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: inputs[n] for n in names}


def _session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported ``model.onnx`` (or int8) in ONNX Runtime, called like the PyTorch logits module: one
    tensor for a head with one output, a tuple in output order otherwise."""

    def __init__(self, path: str, threads: int = 1):
        self.path = path
        self.session = _session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {}
        for name in self.input_names:
            value = given[name]
            if value is None:
                value = torch.ones_like(input_ids) if name == "attention_mask" else torch.zeros_like(input_ids)
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        outputs = tuple(torch.from_numpy(a) for a in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _max_diff(reference, other, mask: torch.Tensor, per_token: bool) -> float:
    """Largest |difference| over the outputs a user reads: every logit of a sequence classifier, the
    outputs at real (non-padding) positions of a per-token head (token classifier, causal LM)."""
    worst = 0.0
    for ref, got in zip(_as_tuple(reference), _as_tuple(other)):
        diff = (ref.float() - got.float()).abs()
        if per_token:
            diff = diff[mask.bool()]
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def _check_cases(names, vocab_size: int) -> list[dict]:
    """Shapes other than the export example: a padded batch with an odd length, and batch 1 unpadded."""
    return [example_inputs(names, vocab_size, 3, 23, pad_lengths=(23, 11, 4), seed=1),
            example_inputs(names, vocab_size, 1, 9, seed=2)]


def check_against_torch(module: _Logits, onnx_path: str, names, vocab_size: int) -> list[dict]:
    """Max abs difference ONNX Runtime vs PyTorch on each check case."""
    session = OnnxModel(onnx_path)
    rows = []
    for case in _check_cases(names, vocab_size):
        with torch.inference_mode():
            reference = module(**case)
        got = session(**case)
        for name, ref, out in zip(module.head.outputs, _as_tuple(reference), _as_tuple(got)):
            if tuple(out.shape) != tuple(ref.shape):
                raise OnnxExportError(f"ONNX output {name} has shape {tuple(out.shape)}, PyTorch "
                                      f"{tuple(ref.shape)}, at input shape {tuple(case['input_ids'].shape)}")
        rows.append({"shape": list(case["input_ids"].shape), "padded": bool((case["attention_mask"] == 0).any()),
                     "max_abs_diff": _max_diff(reference, got, case["attention_mask"], module.head.per_token)})
    return rows


def _export_graph(module: _Logits, names, vocab_size: int, path: str, opset: int) -> None:
    example = example_inputs(names, vocab_size, 2, 16, pad_lengths=(16, 9))
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=8192)
    shapes = {n: {0: batch, 1: seq} for n in names}
    try:
        torch.onnx.export(module, (), path, kwargs=example, input_names=names, output_names=list(module.head.outputs),
                          opset_version=opset, dynamo=True, dynamic_shapes=shapes, external_data=False,
                          optimize=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; the user needs the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxExportError(f"torch.onnx.export failed: {first}") from None


def _source_info(folder: str) -> dict:
    """Task, labels and training length of the source folder, so evaluate can check and truncate."""
    cfg = read_json(os.path.join(folder, "config.json"))
    info = {"task": None, "max_seq_len": None, "id2label": cfg.get("id2label"),
            "num_labels": len(cfg["id2label"]) if isinstance(cfg.get("id2label"), dict) else None}
    for name in ("report.json", "metrics.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                data = read_json(path)
            except (OSError, ValueError):
                continue
            info["task"] = info["task"] or data.get("task")
            run_cfg = data.get("config") if isinstance(data.get("config"), dict) else {}
            info["max_seq_len"] = info["max_seq_len"] or run_cfg.get("max_seq_len")
    info["task"] = info["task"] or cfg.get("finetuning_task")
    return info


def _copy_tokenizer(src: str, dst: str) -> list[str]:
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    for name in found:
        shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    return found


def _size_mb(path: str) -> float:
    return round(os.path.getsize(path) / 2 ** 20, 3)


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET,
                int8: bool = False, overwrite: bool = False, atol: float = 1e-4, task: str | None = None,
                copy_files: tuple = ()) -> dict:
    """Export ``model_dir`` to ``out_dir`` (see the module docstring); returns onnx_report.json's content.
    ``task`` overrides the task read from the source folder's report.json / metrics.json / config.json;
    ``copy_files`` are copied into the export before it is published (e.g. the source's task.json)."""
    model_dir, out_dir = os.path.abspath(os.fspath(model_dir)), os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(model_dir):
        raise OnnxExportError(f"{model_dir!r} is not a folder")
    if out_dir == model_dir:
        raise OnnxExportError("--output must differ from the model folder")
    if not 14 <= int(opset) <= 23:
        raise OnnxExportError(f"--opset {opset}: expected 14..23 (scaled_dot_product_attention needs >= 14)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OnnxExportError(f"--output {out_dir!r} exists and is not empty; pass --overwrite to replace it")
    t0 = time.perf_counter()
    module, names = load_for_export(model_dir)
    vocab = int(module.model.config.vocab_size)
    inside = os.path.dirname(out_dir) == model_dir  # compress --onnx: OUT/onnx, and OUT is renamed afterwards
    report = {"source": ".." if inside else model_dir, "model_type": model_type(model_dir), "opset": int(opset), "inputs": names,
              "head": module.head.name, "outputs": list(module.head.outputs), "output_axes": module.head.output_axes,
              "dynamic_axes": {"0": "batch", "1": "sequence"}, **_source_info(model_dir),
              "ddk_fast_version": __version__, "onnxruntime_version": ort.__version__}
    if task:
        report["task"] = task

    def fill(tmp: str) -> None:
        fp32 = os.path.join(tmp, ONNX_FILE)
        _export_graph(module, names, vocab, fp32, opset)
        checks = check_against_torch(module, fp32, names, vocab)
        worst = max(c["max_abs_diff"] for c in checks)
        if not worst <= atol:
            raise OnnxExportError(f"the ONNX graph differs from PyTorch by {worst:.3g} (> atol {atol:g}) on "
                                  + ", ".join(f"{c['shape']} {c['max_abs_diff']:.3g}" for c in checks))
        report.update(check=checks, atol=atol, files={ONNX_FILE: _size_mb(fp32)})
        if int8:
            q8 = os.path.join(tmp, INT8_FILE)
            quantize_int8(fp32, q8)
            report["files"][INT8_FILE] = _size_mb(q8)
            report["int8_check"] = _int8_check(module, q8, names, vocab)
        report["tokenizer_files"] = _copy_tokenizer(model_dir, tmp)
        for path in copy_files:
            shutil.copy2(path, os.path.join(tmp, os.path.basename(path)))
        report["export_s"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(os.path.join(tmp, REPORT_FILE), report)

    write_directory(out_dir, fill, overwrite)
    return report


def quantize_int8(fp32_path: str, int8_path: str) -> None:
    """Dynamic int8 quantisation (weights int8 per channel, activations quantised at run time) of the
    MatMul/Gemm nodes: what ONNX Runtime recommends for transformer encoders on CPU."""
    with tempfile.TemporaryDirectory() as scratch:  # the quantiser writes temporary models beside its input
        src = os.path.join(scratch, "model.onnx")
        shutil.copy2(fp32_path, src)
        quantize_dynamic(src, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])


def _int8_check(module, int8_path, names, vocab) -> list[dict]:
    """How far int8 moves the logits (informative: quantisation error is expected; the dev score decides)."""
    session = OnnxModel(int8_path)
    rows = []
    for case in _check_cases(names, vocab):
        with torch.inference_mode():
            reference = module(**case)
        rows.append({"shape": list(case["input_ids"].shape),
                     "max_abs_diff": _max_diff(reference, session(**case), case["attention_mask"],
                                               module.head.per_token)})
    return rows


def is_onnx_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ONNX_FILE)) and os.path.isfile(os.path.join(folder, REPORT_FILE))


def read_onnx_report(folder: str) -> dict:
    try:
        return read_json(os.path.join(folder, REPORT_FILE))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {os.path.join(folder, REPORT_FILE)!r}: {exc}") from None


__all__ = ["export_onnx", "quantize_int8", "OnnxModel", "OnnxExportError", "load_for_export", "example_inputs", "HEADS",
           "Head", "head_of",
           "is_onnx_folder", "read_onnx_report", "ONNX_FILE", "INT8_FILE", "REPORT_FILE"]
