"""Atomic file and folder writes.

Why: a run can be killed at any instant (kill -9, OOM, a pre-empted node). A reader must then see
either the previous complete file/folder or the new complete one, never a half-written mix. Files are
written to a temporary sibling, flushed, fsynced and renamed (rename is atomic on POSIX); folders are
built in a temporary sibling and swapped in with two renames.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: str, is_dir: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give results the usual umask permissions."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse to open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` to produce the file, then rename it onto ``path``.

    ``writer`` receives a path in the same folder (so the rename never crosses filesystems).
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        _chmod_default(tmp, is_dir=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, _write)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Tensors, numpy scalars and tuples become plain JSON values; NaN stays NaN (json allows it)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    import torch

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def json_value(path: str, key: str) -> Any:
    """``read_json(path)[key]``, or None when the file is missing, unreadable or not an object: for
    optional facts recorded beside a model (its teacher, task, training length)."""
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def output_dir_state(path: str) -> str:
    """'absent', 'empty' or 'nonempty'."""
    if not os.path.exists(path):
        return "absent"
    if not os.path.isdir(path):
        return "nonempty"
    return "empty" if not os.listdir(path) else "nonempty"


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Build a folder in a temporary sibling and swap it in on success.

    The previous folder at ``path`` (if any) stays complete until the very end: it is renamed aside,
    the new one renamed in, then the old one deleted. On an exception the temporary folder is removed
    and ``path`` is untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    _chmod_default(tmp, is_dir=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, path)


def write_directory(path: str | os.PathLike, fill: Callable[[str], None], overwrite: bool = False) -> str:
    """Build the folder ``path`` with ``fill(tmp)`` and swap it in (``atomic_directory``); returns the
    absolute path. An existing non-empty folder is refused unless ``overwrite`` (then replaced whole),
    and an existing file always: what every exported model folder needs."""
    path = os.path.abspath(os.fspath(path))
    if output_dir_state(path) == "nonempty":
        if not os.path.isdir(path):
            raise FileExistsError(f"out_dir {path!r} exists and is not a folder")
        if not overwrite:
            raise FileExistsError(f"out_dir {path!r} exists and is not empty; pass overwrite=True to replace it")
    with atomic_directory(path) as tmp:
        fill(tmp)
    return path


def make_temp_sibling(path: str) -> str:
    """An empty folder beside ``path`` (same filesystem, so it can be renamed onto it)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    _chmod_default(tmp, is_dir=True)
    return tmp


def replace_directory(src: str, dst: str) -> None:
    """Move the complete folder ``src`` onto ``dst`` (which may exist), keeping one complete copy at
    every instant."""
    for root, dirnames, filenames in os.walk(src):
        for d in dirnames:
            _chmod_default(os.path.join(root, d), is_dir=True)
        for f in filenames:
            _chmod_default(os.path.join(root, f), is_dir=False)
    _chmod_default(src, is_dir=True)
    old = None
    if os.path.lexists(dst):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", suffix=".old", dir=os.path.dirname(dst))
        os.rmdir(old)
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(os.path.dirname(dst))
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(old)
