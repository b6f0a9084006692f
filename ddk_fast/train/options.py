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
for values from a file or the API, by ``check_choices``.
"""
from __future__ import annotations

import dataclasses
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

HELP, GROUP, CHOICES, FLAG, METAVAR, REQUIRED, POSITIONAL, API_ONLY = (
    "help", "group", "choices", "flag", "metavar", "required", "positional", "api_only")


def option(default: Any = dataclasses.MISSING, *, help: str, group: str, choices: Optional[Sequence] = None,
           flag: Optional[str] = None, metavar: Optional[str] = None, required: bool = False,
           positional: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that is also a command-line flag (see the module docstring)."""
    if group not in GROUPS:
        raise ValueError(f"option group {group!r}: expected one of {', '.join(GROUPS)}")
    metadata = {HELP: help, GROUP: group, CHOICES: tuple(choices) if choices is not None else None, FLAG: flag,
                METAVAR: metavar, REQUIRED: required, POSITIONAL: positional}
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
        allowed = fld.metadata.get(CHOICES)
        value = getattr(cfg, fld.name)
        if allowed is not None and value is not None and value not in allowed:
            raise UserError(invalid_choice(flag_of(fld), value, allowed))


__all__ = ["GROUPS", "api_only", "check_choices", "flag_of", "invalid_choice", "is_flag", "like", "option"]
