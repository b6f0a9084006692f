"""Run logging: one JSON object per line (machine-readable), TensorBoard scalars, short console lines.

Only rank 0 writes; other ranks get a logger that does nothing, so loops never branch on rank.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

from ddk_fast._io import to_jsonable


class RunLogger:
    """JSONL log (+ TensorBoard scalars, + console lines) of one run.

    ``RunLogger.last`` is the most recently opened enabled logger of the process: the command line reads
    its ``last_step`` and ``jsonl_path`` to tell a user who pressed Ctrl-C, or hit a bug, where the
    run stood and where its log is."""

    last: "Optional[RunLogger]" = None

    def __init__(self, folder: Optional[str], enabled: bool = True, tensorboard: bool = True,
                 console: bool = True):
        self.last_step: Optional[int] = None
        self.jsonl_path: Optional[str] = None
        self.enabled = enabled and folder is not None
        self.console = console and enabled
        self.t0 = time.time()
        self._fh = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(folder, exist_ok=True)
        self.jsonl_path = os.path.join(folder, "log.jsonl")
        self._fh = open(self.jsonl_path, "a", encoding="utf-8")
        RunLogger.last = self
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=os.path.join(folder, "tensorboard"))
            except Exception as exc:  # noqa: BLE001 - tensorboard is optional at run time
                self.info(f"tensorboard disabled: {exc}")

    def log(self, event: str, step: Optional[int] = None, **values) -> None:
        if not self.enabled or self._fh is None:
            return
        rec = {"event": event, "time": round(time.time() - self.t0, 3)}
        if step is not None:
            rec["step"] = step
            self.last_step = step
        rec.update(to_jsonable(values))
        self._fh.write(json.dumps(rec, allow_nan=True) + "\n")
        self._fh.flush()
        if self._tb is not None and step is not None:
            for key, val in values.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(float(val)):
                    self._tb.add_scalar(f"{event}/{key}", float(val), step)

    def info(self, message: str) -> None:
        if self.console:
            try:
                from tqdm import tqdm

                tqdm.write(message, file=sys.stderr)
            except ImportError:  # pragma: no cover
                print(message, file=sys.stderr)
        self.log("info", message=message)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def progress(iterable=None, total=None, desc=None, enabled=True, initial=0):
    """A tqdm bar on stderr (only when enabled and on rank 0)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial, dynamic_ncols=True,
                leave=False, file=sys.stderr)


def read_log(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
