"""Checks on user-given values that are shared by several commands; each names the flag and value."""
from __future__ import annotations

from ddk_fast.errors import UserError


def check_seq_len(seq_len: int, hf_config, flag: str = "--seq-len") -> None:
    """A sequence length the model can embed (``max_position_embeddings``)."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is None and isinstance(hf_config, dict):
        limit = hf_config.get("max_position_embeddings")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise UserError(f"{flag} {seq_len!r}: expected a positive integer")
    if limit is not None and seq_len > int(limit):
        raise UserError(f"{flag} {seq_len} is above the model's maximum of {limit} positions "
                        "(max_position_embeddings)")


def parse_target(text: str) -> tuple[str, float]:
    """``params=0.5`` / ``flops=0.4`` / ``latency=0.5`` -> (metric, ratio); ratio must be in (0, 1]."""
    if text is None or "=" not in str(text):
        raise UserError(f"--target {text!r}: expected params=RATIO, flops=RATIO or latency=RATIO, e.g. params=0.5")
    metric, _, value = str(text).partition("=")
    metric = metric.strip().lower()
    if metric not in ("params", "flops", "latency"):
        raise UserError(f"--target {text!r}: the cost must be 'params', 'flops' or 'latency', got {metric!r}")
    try:
        ratio = float(value)
    except ValueError:
        raise UserError(f"--target {text!r}: {value!r} is not a number") from None
    if not (0.0 < ratio <= 1.0):
        raise UserError(f"--target {text!r}: the ratio must be in (0, 1], got {ratio}")
    return metric, ratio
