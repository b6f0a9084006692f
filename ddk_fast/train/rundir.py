"""Where a run writes, and the rules that keep an existing result safe.

A run named ``--output OUT`` works in the sibling ``OUT.inprogress/`` (checkpoints, the best model so
far, log.jsonl, TensorBoard events). When it finishes, the final folder is assembled in a temporary
sibling and swapped onto ``OUT`` in one rename, then the in-progress folder is removed. So:
- ``OUT`` is never half-written: it is either the previous complete result or the new one;
- an existing non-empty ``OUT`` is refused unless ``--overwrite``;
- an unfinished run (``OUT.inprogress`` exists) is refused unless ``--resume`` (continue it) or
  ``--overwrite`` (start again); a failed run keeps it for inspection and ``--resume``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ddk_fast.cli import UserError
from ddk_fast.train.config import resume_mismatches
from ddk_fast.train.io import make_temp_sibling, output_dir_state, read_json, replace_directory

SUFFIX = ".inprogress"
COMPLETE = "COMPLETE"  # written into a kept work folder (--keep-checkpoints) once the run has finished


@dataclass
class RunDirs:
    output: str
    work: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.work, "checkpoints")

    @property
    def best(self) -> str:
        return os.path.join(self.work, "best")

    @property
    def logs(self) -> str:
        return self.work


def run_dirs(output: str) -> RunDirs:
    if not output:
        raise UserError("--output is required")
    out = os.path.abspath(output)
    return RunDirs(out, out.rstrip(os.sep) + SUFFIX)


def prepare(dirs: RunDirs, overwrite: bool, resume: bool) -> str:
    """Decide how the run starts: 'fresh', 'resume' (an unfinished run exists) or 'done'
    (``--resume`` of a run that already finished). Raises UserError when the output must be kept.
    Call on the writing rank only."""
    out_state = output_dir_state(dirs.output)
    if out_state == "nonempty" and not os.path.isdir(dirs.output):
        raise UserError(f"--output {dirs.output!r} exists and is not a folder")
    has_work = os.path.isdir(dirs.work)
    if has_work and os.path.isfile(os.path.join(dirs.work, COMPLETE)):
        # checkpoints kept from a finished run: not an unfinished run
        if resume and out_state == "nonempty":
            return "done"
        if out_state == "nonempty" and not overwrite:
            raise UserError(f"--output {dirs.output!r} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(dirs.work)
        has_work = False
    if resume and has_work:
        if out_state == "nonempty" and not overwrite:
            raise UserError(f"--output {dirs.output!r} already holds a result; add --overwrite to replace it "
                            "when the resumed run finishes")
        return "resume"
    if resume and not has_work and out_state == "nonempty":
        return "done"
    if has_work and not overwrite:
        raise UserError(f"an unfinished run exists in {dirs.work!r}; pass --resume to continue it or --overwrite "
                        "to start again")
    if out_state == "nonempty" and not overwrite:
        raise UserError(f"--output {dirs.output!r} exists and is not empty; pass --overwrite to replace it")
    if has_work:
        shutil.rmtree(dirs.work)
    try:
        os.makedirs(dirs.work, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {dirs.output!r}: cannot create the run folder {dirs.work!r} "
                        f"({exc.strerror or exc})") from None
    return "fresh"


def finished_result(dirs: RunDirs, record: str, config: dict, announce: bool = True) -> dict:
    """The recorded result of a finished run (``--resume`` of a complete output), refused when the run
    was made with other settings: a rerun with an edited flag must not silently return the old result."""
    path = os.path.join(dirs.output, record)
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        raise UserError(f"--resume: {dirs.output!r} holds no readable {record}; pass --overwrite to redo the run "
                        "or choose another --output") from None
    mism = resume_mismatches(saved.get("config") or {}, config)
    if mism:
        raise UserError(f"--resume: {dirs.output!r} already holds a finished run with other settings "
                        f"({'; '.join(mism)}); pass --overwrite to replace it or choose another --output")
    if announce:
        print(f"nothing to resume: {dirs.output} is already complete", flush=True)
    return dict(saved, output=dirs.output)


def finalize(dirs: RunDirs, staged: str, keep_work: bool = False) -> None:
    """Swap the completed folder ``staged`` onto the output and drop the in-progress folder."""
    replace_directory(staged, dirs.output)
    if keep_work:
        with open(os.path.join(dirs.work, COMPLETE), "w", encoding="utf-8") as fh:
            fh.write(dirs.output + "\n")
    else:
        shutil.rmtree(dirs.work, ignore_errors=True)


def stage_dir(dirs: RunDirs) -> str:
    """An empty temporary sibling of the output in which to assemble the final result."""
    return make_temp_sibling(dirs.output)


def copy_logs(dirs: RunDirs, staged: str) -> None:
    """log.jsonl and TensorBoard events travel with the result."""
    log = os.path.join(dirs.logs, "log.jsonl")
    if os.path.isfile(log):
        shutil.copy2(log, os.path.join(staged, "log.jsonl"))
    tb = os.path.join(dirs.logs, "tensorboard")
    if os.path.isdir(tb):
        shutil.copytree(tb, os.path.join(staged, "tensorboard"), dirs_exist_ok=True)
