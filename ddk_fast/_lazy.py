"""Lazy package attributes: ``from ddk_fast.model import MaskedTransformer`` without importing every
submodule of ``ddk_fast.model`` (and torch extensions, transformers, ...) when the package is imported.

Each package lists where its public names live and takes its module ``__getattr__`` (PEP 562) from
:func:`lazy_attributes`, so the lookup is written once.
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``package``: ``name`` is imported from ``where[name]`` on first
    access; any other name is an AttributeError, as for an ordinary module."""

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["lazy_attributes"]
