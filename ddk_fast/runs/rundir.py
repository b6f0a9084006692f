"""Where a run writes, and the rules that keep an existing result safe.

A run named ``--output OUT`` works in the sibling ``OUT.inprogress/`` (checkpoints, the best model so
far, log.jsonl, TensorBoard events). When it finishes, the final folder is assembled in a temporary
sibling and swapped onto ``OUT`` in one rename, then the in-progress folder is removed. So:
- ``OUT`` is never half-written: it is either the previous complete result or the new one;
- an existing non-empty ``OUT`` is refused unless ``--overwrite``;
- an unfinished run (``OUT.inprogress`` exists) is refused unless ``--resume`` (continue it) or
  ``--overwrite`` (start again); a failed run keeps it for inspection and ``--resume``;
- two processes cannot write the same ``OUT``: the writer holds an exclusive ``flock`` on ``OUT.lock``
  (which names its pid); the kernel drops it when the process dies (kill -9, a crash), so a left-over
  lock file is taken over, saying so.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass

from ddk_fast.errors import UserError
from ddk_fast.runs.config import resume_mismatches
from ddk_fast._io import make_temp_sibling, output_dir_state, read_json, replace_directory

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


def lock_path(dirs: RunDirs) -> str:
    return dirs.output.rstrip(os.sep) + ".lock"


_HELD: dict[str, int] = {}  # lock path -> open descriptor holding the flock, for this process


def _holder_pid(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def acquire_lock(dirs: RunDirs) -> None:
    """Hold ``OUT.lock`` (an exclusive ``flock``) for this process; idempotent within it. Another live
    process holding it is refused; a lock left by a process that is gone is not held by the kernel any
    more, so it is simply taken over (with a note). Released by ``release_lock`` or at exit."""
    path = lock_path(dirs)
    if path in _HELD:
        return
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"--output {dirs.output!r}: cannot write there ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = _holder_pid(path)
            raise UserError(f"--output {dirs.output!r} is being written by process {pid} (lock {path}); wait for it "
                            "to finish, or choose another --output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by a releasing holder meanwhile
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _holder_pid(path)
        if previous not in (None, os.getpid()):
            print(f"note: taking over the stale lock {path} (process {previous} is gone)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        _HELD[path] = fd
        atexit.register(release_lock, dirs)
        return
    raise UserError(f"--output {dirs.output!r}: cannot take the lock {path}")


def release_lock(dirs: RunDirs) -> None:
    """Remove and unlock ``OUT.lock`` if this process holds it."""
    path = lock_path(dirs)
    fd = _HELD.pop(path, None)
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    os.close(fd)


def prepare(dirs: RunDirs, overwrite: bool, resume: bool, disposable_work: bool = False) -> str:
    """Decide how the run starts: 'fresh', 'resume' (an unfinished run exists) or 'done'
    (``--resume`` of a run that already finished), holding the output's lock. Raises UserError when the
    output must be kept (the lock is then released). Call on the writing rank only."""
    try:
        os.makedirs(os.path.dirname(dirs.output) or ".", exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {dirs.output!r}: cannot create its parent folder ({exc.strerror or exc})") from None
    acquire_lock(dirs)
    try:
        if disposable_work and os.path.isdir(dirs.work) and not os.path.isdir(dirs.checkpoints):
            shutil.rmtree(dirs.work)  # an interrupted run without checkpoints (prune): nothing to resume
        return _prepare(dirs, overwrite, resume)
    except BaseException:
        release_lock(dirs)
        raise


def _prepare(dirs: RunDirs, overwrite: bool, resume: bool) -> str:
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
        release_lock(dirs)
        raise UserError(f"--resume: {dirs.output!r} holds no readable {record}; pass --overwrite to redo the run "
                        "or choose another --output") from None
    mism = resume_mismatches(saved.get("config") or {}, config)
    if mism:
        release_lock(dirs)
        raise UserError(f"--resume: {dirs.output!r} already holds a finished run with other settings "
                        f"({'; '.join(mism)}); pass --overwrite to replace it or choose another --output")
    if announce:
        print(f"nothing to resume: {dirs.output} is already complete", flush=True)
    release_lock(dirs)
    return dict(saved, output=dirs.output)


def finalize(dirs: RunDirs, staged: str, keep_work: bool = False) -> None:
    """Swap the completed folder ``staged`` onto the output, drop the in-progress folder, release the lock."""
    replace_directory(staged, dirs.output)
    if keep_work:
        with open(os.path.join(dirs.work, COMPLETE), "w", encoding="utf-8") as fh:
            fh.write(dirs.output + "\n")
    else:
        shutil.rmtree(dirs.work, ignore_errors=True)
    release_lock(dirs)


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
