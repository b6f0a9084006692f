"""Training checkpoints for ``--resume``: everything that decides the rest of a run.

A checkpoint is a folder ``step-<N>/`` holding ``model.safetensors`` (weights and buffers of the
trained module, arch parameters included), ``state.pt`` (optimizers, schedulers, loop state, the
RNG states of every rank) and ``meta.json`` (human-readable summary). It is built in a temporary
sibling and renamed into place, then ``LATEST`` is rewritten atomically: a kill at any instant leaves
the previous checkpoint usable. Only safetensors and ``torch.load(weights_only=True)`` are ever read.

``meta.json`` records the sha256 of both data files. A checkpoint damaged on disk afterwards (a
truncated copy, a bad sector, a half-synced network filesystem) fails that check, and
``latest_checkpoint`` falls back to the newest older checkpoint that passes it, saying so.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddk_fast.errors import CheckpointWriteError
from ddk_fast._io import atomic_directory, atomic_write_json, atomic_write_text, read_json

LATEST = "LATEST"


# ----------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """The RNG states that can influence training on this process (torch CPU/CUDA, python, numpy)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_state_to_plain(random.getstate())}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_plain(state["python"]))
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(st):
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _python_state_from_plain(st):
    version, internal, gauss = st
    return (version, tuple(internal), gauss)


# -------------------------------------------------------------------------------------- model tensors
def model_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict as standalone contiguous CPU tensors (shared storage is cloned: safetensors refuses it)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_tensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, path)


def load_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(ckpt_root: str, step: int, model: torch.nn.Module, state: dict, meta: Optional[dict] = None,
                    keep: int = 2) -> str:
    """Write ``ckpt_root/step-<step>`` atomically, point LATEST at it, prune all but the newest ``keep``."""
    name = f"step-{step:08d}"
    final = os.path.join(ckpt_root, name)
    try:
        os.makedirs(ckpt_root, exist_ok=True)
        with atomic_directory(final) as tmp:
            save_tensors(os.path.join(tmp, "model.safetensors"), model_tensors(model))
            torch.save(state, os.path.join(tmp, "state.pt"))
            files = {f: file_digest(os.path.join(tmp, f)) for f in DATA_FILES}
            atomic_write_json(os.path.join(tmp, "meta.json"), {"step": step, **(meta or {}), "files": files})
        atomic_write_text(os.path.join(ckpt_root, LATEST), name + "\n")
    except (OSError, RuntimeError, SafetensorError) as exc:  # disk full (torch and safetensors raise their own
        # error types for it), quota, a vanished mount: the previous checkpoint is untouched
        previous = latest_checkpoint(ckpt_root) if os.path.isdir(ckpt_root) else None
        after = (f"the previous one ({os.path.basename(previous)}) is intact; rerun with --resume once there is room"
                 if previous else "no earlier checkpoint exists")
        raise CheckpointWriteError(f"cannot write the checkpoint of step {step} in {ckpt_root!r} "
                                   f"({exc.strerror or exc}); {after}") from None
    existing = sorted(d for d in os.listdir(ckpt_root) if d.startswith("step-") and not d.endswith((".partial", ".old")))
    for old in existing[:-keep] if keep > 0 else []:
        if old != name:
            shutil.rmtree(os.path.join(ckpt_root, old), ignore_errors=True)
    return final


DATA_FILES = ("model.safetensors", "state.pt")


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint folder cannot be trusted, or None when its files match their recorded digests
    (checkpoints written before digests were recorded are trusted when complete)."""
    for name in (*DATA_FILES, "meta.json"):
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name} is missing"
    try:
        recorded = read_json(os.path.join(path, "meta.json")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return "meta.json is unreadable"
    for name, digest in recorded.items():
        if file_digest(os.path.join(path, name)) != digest:
            return f"{name} does not match its recorded sha256"
    return None


def latest_checkpoint(ckpt_root: str, warn: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """The newest intact checkpoint: the one LATEST points to, else (``warn`` is told why) the newest
    older one that passes ``checkpoint_problem``; None if there is none."""
    pointer = os.path.join(ckpt_root, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as fh:
        name = fh.read().strip()
    older = sorted((d for d in os.listdir(ckpt_root) if d.startswith("step-") and not d.endswith((".partial", ".old"))
                    and d != name), reverse=True)
    for candidate in [name, *[d for d in older if d < name]]:
        path = os.path.join(ckpt_root, candidate)
        if not os.path.isdir(path):
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if warn is not None:
            warn(f"checkpoint {path} is damaged ({problem}); trying the previous one")
    return None


def load_checkpoint(path: str, map_location="cpu") -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model tensors, state, meta) from a checkpoint folder; never unpickles arbitrary objects."""
    tensors = load_tensors(os.path.join(path, "model.safetensors"))
    state = torch.load(os.path.join(path, "state.pt"), map_location=map_location, weights_only=True)
    meta = read_json(os.path.join(path, "meta.json"))
    return tensors, state, meta


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a module's state (to compare runs and ranks)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
