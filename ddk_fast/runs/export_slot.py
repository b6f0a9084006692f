"""``ExportSlot``: the best-so-far model of a run that picks its export among several candidates, kept
consistent with the run state its checkpoints record.

Why two folders: ``compress`` keeps the best dev-scoring candidate (the one-shot student, the pruned
student, each distillation epoch) in ``best/``, and its checkpoints record which candidate that is
(the metrics the report shows). Writing a new candidate straight over ``best/`` and checkpointing
afterwards leaves a window: killed in between, the run resumes from a checkpoint that names the
previous candidate while ``best/`` already holds the new one, and a replay that scores differently
(GPU kernels need not be bitwise deterministic) would report one model's score with another's
weights. So a candidate is written to ``best.pending/`` with its identity, the checkpoint recording
that identity is written, and only then ``commit`` swaps it onto ``best/``. On resume, ``recover``
gets the identity the checkpoint recorded: a pending candidate with that identity is promoted (the
kill came after the checkpoint), any other pending candidate is dropped (it came before). ``finetune``
keeps its best epoch the same way.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Optional

from ddk_fast._io import atomic_directory, atomic_write_json, replace_directory

IDENTITY_FILE = "candidate.json"


class ExportSlot:
    """``folder``: the committed export (``RunDirs.best``); the pending candidate lives beside it."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.pending = self.folder + ".pending"

    def stage(self, write: Callable[[str], None], identity: str) -> None:
        """Make the pending candidate named ``identity`` (replacing any earlier pending one): ``write(folder)``
        fills an empty folder with the model (``compress``: ``save_pruned``; ``finetune``: the transformers
        classifier), the identity file is added, and the folder appears whole or not at all."""
        with atomic_directory(self.pending) as folder:
            write(folder)
            atomic_write_json(os.path.join(folder, IDENTITY_FILE), {"identity": identity})

    def pending_identity(self) -> Optional[str]:
        """The identity of the pending candidate, or None (none pending, or a folder without one)."""
        return _identity(self.pending)

    def commit(self) -> bool:
        """Promote the pending candidate onto the export (call after the checkpoint that records it).
        Returns whether there was one."""
        if not os.path.isdir(self.pending):
            return False
        replace_directory(self.pending, self.folder)
        return True

    def recover(self, identity: Optional[str]) -> Optional[str]:
        """At the start of a run: keep the pending candidate only if the checkpoint resumed recorded it
        (``identity``; None when no checkpoint resumed, so anything pending is dropped). Returns a warning
        when the committed export is not the recorded one (the newest checkpoint was unreadable and an
        older one resumed), else None."""
        if os.path.lexists(self.pending):
            if identity is not None and self.pending_identity() == identity:
                self.commit()
            else:
                shutil.rmtree(self.pending, ignore_errors=True)
        committed = self.committed_identity()
        if committed not in (None, identity):
            return (f"warning: the export so far ({committed}) is newer than the checkpoint resumed ({identity}); "
                    "the next better candidate replaces it")
        return None

    def files(self) -> list[str]:
        """The committed export's file names, without the identity file (what an output folder copies)."""
        return sorted(name for name in os.listdir(self.folder) if name != IDENTITY_FILE)

    def committed_identity(self) -> Optional[str]:
        """The identity of the committed export (None before the first commit)."""
        return _identity(self.folder)


def _identity(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, IDENTITY_FILE), encoding="utf-8") as fh:
            return json.load(fh).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = ["ExportSlot"]
