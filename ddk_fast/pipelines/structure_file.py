"""Read a user's structure for ``compress --fixed-structure FILE.json``.

Accepted forms (per layer, in layer order):
- the ``structure.json`` of an export (``{"format": "ddk_fast.structure/1", "layers": [...]}``);
- ``{"heads": [[kept head indices], ...], "ffn": [[kept channel indices], ...]}``;
- ``{"heads": [count, ...], "ffn": [count, ...]}``: counts, filled with each layer's most important
  units by Fisher importance on calibration data (what another tool's per-layer widths give).
Mixed forms (indices for heads, counts for the FFN) are fine. Every problem is a one-line error.
"""
from __future__ import annotations

import json

from ddk_fast.errors import UserError
from ddk_fast.model import Structure
from ddk_fast.pipelines.baseline import keep_top
from ddk_fast.pipelines.oneshot import unit_scores


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--fixed-structure {path!r}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"--fixed-structure {path!r}: expected a JSON object, got {type(data).__name__}")
    return data


def _per_layer(path: str, name: str, values, sizes: list[int]):
    """Kept indices (list of lists) or counts (list of ints) for one kind of unit; None if counts."""
    if not isinstance(values, list) or len(values) != len(sizes):
        raise UserError(f"--fixed-structure {path!r}: {name!r} must list one entry per layer ({len(sizes)})")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        for l, (v, n) in enumerate(zip(values, sizes)):
            if not 0 <= v <= n:
                raise UserError(f"--fixed-structure {path!r}: {name}[{l}] = {v} is outside 0..{n}")
        return None, values
    if all(isinstance(v, list) for v in values):
        for l, (v, n) in enumerate(zip(values, sizes)):
            if any(not isinstance(i, int) or not 0 <= i < n for i in v) or len(set(v)) != len(v):
                raise UserError(f"--fixed-structure {path!r}: {name}[{l}] must hold distinct indices in 0..{n - 1}")
        return values, None
    raise UserError(f"--fixed-structure {path!r}: {name!r} must be a list of per-layer counts or of index lists")


def read_structure_file(path: str, teacher, calibration_batches, model_path: str = "auto") -> Structure:
    """The Structure that ``path`` describes for ``teacher``; ``calibration_batches()`` is called only
    when counts need a ranking."""
    data = _load(path)
    if "format" in data:
        try:
            structure = Structure.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--fixed-structure {path!r}: {exc}") from None
        if list(structure.total_heads) != teacher.num_heads or list(structure.total_channels) != teacher.intermediate_sizes:
            raise UserError(f"--fixed-structure {path!r} was made for heads {list(structure.total_heads)} / channels "
                            f"{list(structure.total_channels)}; the teacher has {teacher.num_heads} / "
                            f"{teacher.intermediate_sizes}")
        return structure
    missing = [k for k in ("heads", "ffn") if k not in data]
    if missing:
        raise UserError(f"--fixed-structure {path!r}: missing {', '.join(missing)} (expected 'heads' and 'ffn')")
    heads, head_counts = _per_layer(path, "heads", data["heads"], teacher.num_heads)
    ffn, ffn_counts = _per_layer(path, "ffn", data["ffn"], teacher.intermediate_sizes)
    if head_counts is not None or ffn_counts is not None:
        head_scores, ffn_scores, _ = unit_scores(teacher, calibration_batches(), "fisher", model_path)
        if head_counts is not None:
            heads = keep_top(head_scores, head_counts, teacher.num_heads)
        if ffn_counts is not None:
            ffn = keep_top(ffn_scores, ffn_counts, teacher.intermediate_sizes)
    return Structure.from_indices(heads, ffn, teacher)


__all__ = ["read_structure_file"]
