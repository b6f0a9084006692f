"""Sub-command parsers generated from the config dataclasses.

Every flag of a training command is a config field declared with ``ddk_fast.runs.options.option``: its
name, type (the annotation), default, choices and help live there, and this module only turns them into
argparse arguments, grouped as ``options.GROUPS`` orders them, with the default (and each preset's
value where it differs) appended to the help. A field that is no flag is ``api_only``; a field with
neither is refused here, so no option can be forgotten.

Every flag parses to None when it is not given: the config builders then fill it from the preset and
a ``--config`` file (defaults < preset < file < flags).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from ddk_fast.runs.options import (API_ONLY, CHOICES, GROUP, GROUPS, HELP, METAVAR, POSITIONAL, REQUIRED, flag_of,
                                    invalid_choice, is_flag)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line ``PROG: error: ...`` and exit code 2, and a
    value outside its choices named with its flag (``--search 'x': invalid choice; expected one of ...``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            raise argparse.ArgumentError(None, invalid_choice(name, value, list(action.choices)))


@dataclass(frozen=True)
class Options:
    """The flags one config dataclass gives a command.

    ``names``: only these fields (default: every flag field). ``presets``: the command's schedules
    (name -> values), shown beside each default. ``note``: for a field an earlier ``Options`` of the same
    command already made a flag, append ``(NOTE: its default here)`` when this class's default differs
    (``compress``'s flags mean the same for ``--task lm``, with the LM run's defaults)."""

    cls: type
    names: Optional[Sequence[str]] = None
    presets: Optional[Mapping[str, Mapping[str, Any]]] = None
    note: Optional[str] = None


def add_command(sub, name: str, *, help: str, description: str, options: Sequence[Options],
                func: Callable, config_help: Optional[str] = None) -> argparse.ArgumentParser:
    """A sub-command whose flags are the fields of ``options``' dataclasses, grouped in ``--help``.

    ``config_help``: the command also reads ``--config FILE.yaml`` (the key names are the flag names)."""
    specs: dict[str, _Spec] = {}
    for source in options:
        for fld in _fields(source):
            if fld.name in specs:
                specs[fld.name].also(source, fld)
            else:
                specs[fld.name] = _Spec(fld, source)
    must = [s.usage() for s in specs.values() if s.fld.metadata[POSITIONAL] or s.fld.metadata[REQUIRED]]
    parser = sub.add_parser(name, help=help, description=description,
                            usage=" ".join(["%(prog)s", *must, "[options]"]))
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()
              if any(s.group == key for s in specs.values()) or (key == "run" and config_help)}
    for spec in specs.values():
        spec.add_to(groups[spec.group])
    if config_help:
        groups["run"].add_argument("--config", default=None, metavar="FILE.yaml", help=config_help)
    parser.set_defaults(func=func)
    return parser


def _fields(source: Options) -> list:
    fields = {f.name: f for f in dataclasses.fields(source.cls)}
    unknown = sorted(set(source.names or ()) - set(fields))
    if unknown:
        raise TypeError(f"{source.cls.__name__} has no option(s) {', '.join(unknown)}")
    chosen = [fields[n] for n in source.names] if source.names is not None else list(fields.values())
    for fld in chosen:
        if not is_flag(fld) and API_ONLY not in fld.metadata:
            raise TypeError(f"{source.cls.__name__}.{fld.name}: declare it with option(...) (a flag) or "
                            "api_only(...) (no flag)")
    return [f for f in chosen if is_flag(f)]


def _default(fld: dataclasses.Field) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    return fld.default_factory() if fld.default_factory is not dataclasses.MISSING else None


def _value_type(cls, fld: dataclasses.Field) -> type:
    """The annotation without Optional: what the flag's text is converted to."""
    hint = typing.get_type_hints(cls)[fld.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return args[0] if union and len(args) == 1 else hint


def _shown(value: Any) -> Optional[str]:
    """A default as ``--help`` shows it (None: nothing worth showing)."""
    if value is None or value == "" or isinstance(value, (bool, dict, list)):
        return None
    return str(value)


_METAVARS = {int: "N", float: "X"}


class _Spec:
    """One flag: its field, the ``Options`` it came from, and notes from later ones."""

    def __init__(self, fld: dataclasses.Field, source: Options):
        self.fld, self.source, self.notes = fld, source, []
        self.group = fld.metadata[GROUP]

    def also(self, source: Options, fld: dataclasses.Field) -> None:
        """The same flag for another pipeline of the command: note its default there when it differs."""
        default = _default(fld)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if source.note and numeric and _shown(default) != _shown(self._effective_default()):
            self.notes.append(f"{source.note}: {_shown(default)}")

    def _effective_default(self) -> Any:
        """The default a run gets when neither a file nor the flag sets it: the default preset's value."""
        default = _default(self.fld)
        presets = self.source.presets or {}
        first = _default_preset(self.source.cls)
        return presets.get(first, {}).get(self.fld.name, default)

    def _help(self) -> str:
        meta = self.fld.metadata
        parts = []
        if not meta[REQUIRED] and not meta[POSITIONAL]:
            shown = _shown(self._effective_default())
            if shown is not None:
                parts.append(f"default: {shown}")
            first = _default_preset(self.source.cls)
            for preset, values in (self.source.presets or {}).items():
                value = _shown(values.get(self.fld.name))
                if preset != first and self.fld.name in values and value != _shown(self._effective_default()):
                    parts.append(f"--preset {preset}: {value}")
        parts += self.notes
        text = meta[HELP] + (f" ({'; '.join(parts)})" if parts else "")
        return text.replace("%", "%%")  # argparse formats help strings with %

    def _metavar(self) -> str:
        kind = _value_type(self.source.cls, self.fld)
        return self.fld.metadata[METAVAR] or _METAVARS.get(kind) or self.fld.name.upper()

    def usage(self) -> str:
        """How the usage line shows a positional argument or a required flag."""
        if self.fld.metadata[POSITIONAL]:
            return self.fld.name.upper()
        return f"{flag_of(self.fld)} {self._metavar()}"

    def add_to(self, group) -> None:
        fld, meta = self.fld, self.fld.metadata
        kind = _value_type(self.source.cls, fld)
        kwargs: dict[str, Any] = {"help": self._help()}
        if meta[POSITIONAL]:
            group.add_argument(fld.name, metavar=fld.name.upper(), **kwargs)
            return
        kwargs.update(dest=fld.name, default=None)
        if kind is bool:
            kwargs.update(action="store_const", const=not _default(fld))
        else:
            kwargs.update(type=kind if kind in (int, float) else None, choices=meta[CHOICES],
                          metavar=None if meta[CHOICES] else self._metavar(), required=meta[REQUIRED])
        group.add_argument(flag_of(fld), **kwargs)


def _default_preset(cls) -> Optional[str]:
    """The schedule a run gets without ``--preset`` (the config's ``preset`` default), if it has presets."""
    fld = {f.name: f for f in dataclasses.fields(cls)}.get("preset")
    return _default(fld) if fld is not None else None


__all__ = ["Options", "Parser", "add_command"]
