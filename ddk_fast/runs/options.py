"""How a run option is declared, once: ``option(...)`` puts its default, help text, help group and allowed
values on the config dataclass field, so the ``ddk-fast`` parser and its ``--help`` (``ddk_fast.cli``),
the checks of a ``--config`` file and of the Python API all read the same definition (TRL builds its
parsers from dataclass fields the same way). A field that is no flag says why with ``api_only(...)``.

    @dataclass
    class FinetuneConfig:
        epochs: int = option(3, help="training epochs", group="train")
        path: str = option("auto", help="kernel path", group="run", choices=PATHS)
        progress: bool = option(True, help="no progress bars", group="run", flag="--no-progress")
        stop_after_steps: Optional[int] = api_only(None, why="testing hook: stop as if killed")

The flag is ``--field-name`` unless ``flag`` names it; a bool field is a switch that sets the opposite of
its default (so a ``True`` default needs a ``--no-...`` flag). ``choices`` are checked by the parser and,
for values from a file or the API, by ``check_choices``; ``minimum`` (``POSITIVE`` or ``NON_NEGATIVE``:
an integer >= 1 or >= 0, a finite float > 0 or >= 0, by the field's type) with them by ``check_fields``,
which every pipeline's ``validate`` calls, so a bound is declared once, beside its flag.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from ddk_fast.errors import UserError

# help groups, in the order ``--help`` lists them: key -> title
GROUPS = {
    "task": "model and task",
    "data": "your own data (instead of a GLUE task)",
    "budget": "budget",
    "oneshot": "one-shot pruning (calibration, importance, least squares)",
    "search": "structure search",
    "shape": "model shape",
    "distill": "distillation",
    "train": "training",
    "lm": "--task lm (a GPT-2 teacher on plain text)",
    "deploy": "latency and deployment",
    "run": "run and output",
}

HELP, GROUP, CHOICES, MINIMUM, FLAG, METAVAR, REQUIRED, POSITIONAL, API_ONLY = (
    "help", "group", "choices", "minimum", "flag", "metavar", "required", "positional", "api_only")
# the lower bounds an option may declare: above 0, or 0 and above
POSITIVE, NON_NEGATIVE = "positive", "non_negative"


def option(default: Any = dataclasses.MISSING, *, help: str, group: str, choices: Optional[Sequence] = None,
           minimum: Optional[str] = None, flag: Optional[str] = None, metavar: Optional[str] = None,
           required: bool = False, positional: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is also a command-line flag (see the module docstring)."""
    if group not in GROUPS:
        raise ValueError(f"option group {group!r}: expected one of {', '.join(GROUPS)}")
    if minimum not in (None, POSITIVE, NON_NEGATIVE):
        raise ValueError(f"option minimum {minimum!r}: expected POSITIVE or NON_NEGATIVE")
    metadata = {HELP: help, GROUP: group, CHOICES: tuple(choices) if choices is not None else None,
                MINIMUM: minimum, FLAG: flag, METAVAR: metavar, REQUIRED: required, POSITIONAL: positional}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def api_only(default: Any = dataclasses.MISSING, *, why: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with no flag (a testing hook, a setting another command passes): ``why`` says so."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={API_ONLY: why})


def like(cls, name: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """The option ``cls.name`` (its help, group, flag and choices) for another command, with that command's
    own default: one flag, two pipelines (``compress --task lm`` and the GLUE ``compress``)."""
    fld = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=default, default_factory=default_factory, metadata=fld.metadata)


def is_flag(fld: dataclasses.Field) -> bool:
    return HELP in fld.metadata


def flag_of(fld: dataclasses.Field) -> str:
    """The option string of a field (``--max-seq-len``), or its name for a positional argument."""
    if fld.metadata.get(POSITIONAL):
        return fld.name
    return fld.metadata.get(FLAG) or "--" + fld.name.replace("_", "-")


def invalid_choice(flag: str, value: Any, choices: Sequence) -> str:
    """The one-line message for a value outside its option's choices (the parser's and the checks')."""
    return f"{flag} {value!r}: invalid choice; expected one of {', '.join(map(str, choices))}"


def check_choices(cfg) -> None:
    """Refuse a value outside its field's choices, naming the flag (values from a file or the API)."""
    for fld in dataclasses.fields(cfg):
        _check_choice(fld, getattr(cfg, fld.name))


def check_fields(cfg) -> None:
    """Refuse a value outside its field's choices or under its minimum, naming the flag: the checks of
    one field alone, read from its declaration (a ``None`` value means "not given" and is left alone)."""
    for fld in dataclasses.fields(cfg):
        _check_field(fld, getattr(cfg, fld.name))


def check_value(cfg_cls, name: str, value: Any) -> None:
    """``check_fields`` for one option of ``cfg_cls`` given on its own (a function argument, not a config)."""
    _check_field({f.name: f for f in dataclasses.fields(cfg_cls)}[name], value)


def _check_field(fld: dataclasses.Field, value: Any) -> None:
    _check_choice(fld, value)
    _check_minimum(fld, value)


def _check_choice(fld: dataclasses.Field, value: Any) -> None:
    allowed = fld.metadata.get(CHOICES)
    if allowed is not None and value is not None and value not in allowed:
        raise UserError(invalid_choice(flag_of(fld), value, allowed))


def _check_minimum(fld: dataclasses.Field, value: Any) -> None:
    minimum = fld.metadata.get(MINIMUM)
    if minimum is None or value is None:
        return
    is_float = "float" in (fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", ""))
    problem = _below_minimum(flag_of(fld), value, minimum, is_float)
    if problem:
        raise UserError(problem)


def _below_minimum(flag: str, value: Any, minimum: str, is_float: bool) -> Optional[str]:
    """The one-line message for a number under its bound, None when it is within it. An integer option
    takes no bool or float; a float option no infinity or NaN."""
    if is_float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > 0 if minimum == POSITIVE else value >= 0))
        expected = "a positive finite number" if minimum == POSITIVE else "a finite number >= 0"
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= (1 if minimum == POSITIVE else 0)
        expected = "a positive integer" if minimum == POSITIVE else "an integer >= 0"
    return None if ok else f"{flag} {value!r}: expected {expected}"


__all__ = ["GROUPS", "NON_NEGATIVE", "POSITIVE", "api_only", "check_choices", "check_fields",
           "check_value", "flag_of", "invalid_choice", "is_flag", "like", "option"]
