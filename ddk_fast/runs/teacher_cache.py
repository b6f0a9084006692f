"""Teacher outputs computed once per training example and reused in later epochs and stages.

Why: the teacher is frozen, in eval mode (no dropout), and the training examples repeat every epoch
(no augmentation, no random truncation: ``EncodedDataset`` holds fixed token lists), so its forward
gives the same rows every time; it was about a third of a search step. The first epoch fills the cache
as it goes (no extra pass); later epochs, and the distillation stage, read it.

Layout: one flat buffer (``torch`` memory, or an ``np.memmap`` file under the run folder) holding, per
example, every output the objective needs (hidden states, logits, pooled output; attention only when a
term asks for it) cut to that example's own token count, in the storage dtype (bf16 by default; fp16,
or fp32 for a cache equal to the forward it stored). Rows are found by the batch's ``example_ids`` and
re-padded (zeros) to the batch's length, so dynamic padding and any batching still work; the losses
mask padded positions, so the zeros there change nothing. The one loss that reads the teacher at padded
query positions, TinyBERT's attention MSE (``attention_loss=mse``), runs without the cache, as do DDP runs
(each rank is dealt other examples every epoch, so its cache would hold the whole data set and rarely hit).

Exactness: a batch with any example not yet cached runs the teacher and returns its own outputs (the
first epoch is the uncached run); a batch whose rows are all cached gets them back at storage precision.
A row is stored from the batch it first appeared in; a later batch pads it differently, which moves the
teacher's fp32 result only at the last bits (see tests/test_teacher_cache.py for the tolerances).

Device reads: rows are looked up by host-side example ids and token counts (no device read); on a
GPU the filling epoch copies each stored output to the host once per step, later epochs only copy
host rows to the device.

Resume: the cache is not persisted; ``rebuild`` replays the batches already trained on (their order is
a function of seed and epoch) through the same fill rule, so the resumed run sees the same hits, misses
and stored values as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from ddk_fast.errors import UserError
from ddk_fast.model.masked_transformer import MaskedTransformerOutput
from ddk_fast.runs.stages import teacher_outputs

MODES = ("auto", "memory", "disk", "off")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# auto: memory when the cache needs at most this share of the available RAM, else disk when it needs at
# most DISK_SHARE of the free disk under the run folder, else no cache (with a warning)
MEMORY_SHARE, DISK_SHARE = 0.25, 0.5
# an explicit --teacher-cache memory/disk is refused above these shares (the run would swap or fill the disk)
MEMORY_LIMIT, DISK_LIMIT = 0.8, 0.9
# per-layer outputs and the axes (after the batch axis) that run over tokens
PER_LAYER = {"hidden_states": (0,), "attention_scores": (1, 2), "attention_probs": (1, 2),
             "ffn_intermediate": (0,), "ffn_output": (0,)}
FLAGS = {"output_hidden_states": ("hidden_states",), "output_attention_scores": ("attention_scores",),
         "output_attention_probs": ("attention_probs",), "output_ffn": ("ffn_intermediate", "ffn_output")}


@dataclass(frozen=True)
class Entry:
    """One stored tensor per example: ``field`` (``layer`` of a per-layer field), its per-example shape
    with ``None`` on the token axes, and the dtype the teacher returned."""

    field: str
    layer: int | None
    shape: tuple
    dtype: torch.dtype

    def shape_for(self, n: int) -> tuple:
        return tuple(n if d is None else d for d in self.shape)

    def numel(self, n: int) -> int:
        return math.prod(self.shape_for(n))


def cacheable(kwargs: dict) -> str | None:
    """None when every output ``kwargs`` asks for can be cached, else the reason it cannot."""
    unknown = sorted(k for k, v in kwargs.items() if v and k not in FLAGS)
    return None if not unknown else f"the objective asks the teacher for {', '.join(unknown)}, which is not cached"


def layout(out: MaskedTransformerOutput, length: int, kwargs: dict) -> list[Entry]:
    """The entries of one example, read off a forward of a single example of ``length`` tokens."""
    def entry(field, layer, t, token_axes):
        shape = tuple(None if axis in token_axes else d for axis, d in enumerate(t.shape[1:]))
        if any(d is None for d in shape) and any(t.shape[1 + a] != length for a in token_axes):
            raise ValueError(f"teacher output {field} has shape {tuple(t.shape)}: no token axis of length {length}")
        return Entry(field, layer, shape, t.dtype)

    entries = [entry("logits", None, out.logits, (0,) if out.logits.dim() == 3 else ()),
               entry("pooled", None, out.pooled, ())]
    fields = [f for flag, names in FLAGS.items() if kwargs.get(flag) for f in names]
    if "hidden_states" not in fields:
        entries.append(entry("last_hidden_state", None, out.last_hidden_state, (0,)))
    for field in fields:
        entries += [entry(field, i, t, PER_LAYER[field]) for i, t in enumerate(getattr(out, field))]
    return entries


def estimate_bytes(entries: list[Entry], lengths, dtype: torch.dtype) -> int:
    """Bytes the cache of examples of these token counts takes in ``dtype``."""
    return sum(per_example_numel(entries, lengths)) * torch.empty((), dtype=dtype).element_size()


def per_example_numel(entries: list[Entry], lengths) -> list[int]:
    return [sum(e.numel(int(n)) for e in entries) for n in lengths]


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else free pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_mode(requested: str, nbytes: int, memory_bytes: int, disk_bytes: int) -> tuple[str, str]:
    """(mode, why) for a cache of ``nbytes``: "auto" picks memory, then disk, then off (with a warning);
    an explicit mode that would not fit is refused with a one-line error."""
    size = f"{nbytes / 2**20:.1f} MiB"
    if requested == "memory" and nbytes > MEMORY_LIMIT * memory_bytes:
        raise UserError(f"--teacher-cache memory: the cache needs {size}, more than {MEMORY_LIMIT:.0%} of the "
                        f"{memory_bytes / 2**20:.0f} MiB of available memory; use --teacher-cache disk or off")
    if requested == "disk" and nbytes > DISK_LIMIT * disk_bytes:
        raise UserError(f"--teacher-cache disk: the cache needs {size}, more than {DISK_LIMIT:.0%} of the "
                        f"{disk_bytes / 2**20:.0f} MiB free under the run folder; use --teacher-cache off")
    if requested != "auto":
        return requested, f"{size} ({requested} asked for)"
    if nbytes <= MEMORY_SHARE * memory_bytes:
        return "memory", f"{size}, at most {MEMORY_SHARE:.0%} of the available memory"
    if nbytes <= DISK_SHARE * disk_bytes:
        return "disk", f"{size}, more than {MEMORY_SHARE:.0%} of the available memory: memory-mapped file"
    return "off", (f"warning: no teacher cache: it would need {size}, more than {MEMORY_SHARE:.0%} of the "
                   f"available memory and {DISK_SHARE:.0%} of the free disk; the teacher runs every step")


class TeacherCache:
    """Per-example teacher outputs in one flat buffer; see the module docstring."""

    def __init__(self, entries: list[Entry], lengths, dtype: torch.dtype, kwargs: dict, mode: str = "memory",
                 file: str | None = None):
        if mode not in ("memory", "disk"):
            raise ValueError(f"mode={mode!r}: expected 'memory' or 'disk'")
        if mode == "disk" and not file:
            raise ValueError("a disk cache needs a file")
        self.entries, self.dtype, self.kwargs, self.mode, self.file = entries, dtype, dict(kwargs), mode, file
        self.lengths = [int(n) for n in lengths]
        sizes = per_example_numel(entries, self.lengths)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        total = self.offsets[-1]
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.nbytes = total * itemsize
        if mode == "memory":
            self._map = None
            self.storage = torch.empty(total, dtype=dtype)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
            self._map = np.memmap(file, dtype=np.uint8, mode="w+", shape=(max(1, self.nbytes),))
            self.storage = torch.from_numpy(self._map).view(dtype)[:total]
        self.filled = np.zeros(len(self.lengths), dtype=bool)
        self.stats = {"hit_batches": 0, "miss_batches": 0, "hit_examples": 0, "filled_examples": 0,
                      "rebuild_batches": 0}

    # ---- the training step's call --------------------------------------------------------------------
    def covers(self, kwargs: dict) -> bool:
        return all(self.kwargs.get(k) for k, v in kwargs.items() if v)

    def outputs(self, teacher, batch: dict, example_ids, path: str = "auto", kwargs: dict | None = None):
        """The teacher's outputs for ``batch`` (on its device): from the cache when every row is there,
        else from a teacher forward, whose rows not yet cached are stored. ``example_ids``: the batch's
        ids as a host tensor (the loader's, before the batch moved to the device) or sequence."""
        ids = np.asarray(example_ids.numpy() if isinstance(example_ids, torch.Tensor) else example_ids, dtype=np.int64)
        if self.filled[ids].all():
            self.stats["hit_batches"] += 1
            self.stats["hit_examples"] += len(ids)
            return self._gather(ids, batch["input_ids"].shape[1], batch["input_ids"].device)
        # the cache's outputs too (a stage may ask for fewer than a later one needs stored)
        out = teacher_outputs(teacher, batch, path, {**self.kwargs, **(kwargs or {})})
        self.stats["miss_batches"] += 1
        self._fill(ids, out)
        return out

    def rebuild(self, teacher, batches, path: str = "auto") -> None:
        """Replay ``batches`` (``(batch on its device, example_ids)`` pairs, in training order) through the
        fill rule: what the cache held at that point of an uninterrupted run, it holds now."""
        for batch, ids in batches:  # every batch is taken: the caller's iterator must end up past them
            ids = np.asarray(ids, dtype=np.int64)
            if not self.filled[ids].all():
                self._fill(ids, teacher_outputs(teacher, batch, path, self.kwargs))
                self.stats["rebuild_batches"] += 1

    # ---- storage -------------------------------------------------------------------------------------
    def _tensor(self, out, entry: Entry) -> torch.Tensor:
        value = getattr(out, entry.field)
        return value if entry.layer is None else value[entry.layer]

    def _fill(self, ids, out) -> None:
        todo = [(row, int(i)) for row, i in enumerate(ids) if not self.filled[i]]
        if not todo:
            return
        # one device-to-host copy per output tensor, cast to the storage dtype on the device
        host = [self._tensor(out, e).detach().to(self.dtype).to("cpu") for e in self.entries]
        seen = set()
        for row, i in todo:
            if i in seen:  # an example twice in one batch (world-size padding)
                continue
            seen.add(i)
            n, at = self.lengths[i], self.offsets[i]
            for entry, t in zip(self.entries, host):
                size = entry.numel(n)
                src = t[row][_token_slices(entry, n)]
                self.storage[at:at + size].copy_(src.reshape(-1))
                at += size
            self.filled[i] = True
            self.stats["filled_examples"] += 1

    def _gather(self, ids, seq: int, device) -> MaskedTransformerOutput:
        outs = [torch.zeros((len(ids),) + e.shape_for(seq), dtype=e.dtype) for e in self.entries]
        for row, i in enumerate(ids):
            n, at = self.lengths[i], self.offsets[i]
            for entry, t in zip(self.entries, outs):
                size = entry.numel(n)
                t[row][_token_slices(entry, n)] = self.storage[at:at + size].view(entry.shape_for(n))
                at += size
        values: dict[str, list] = {}
        for entry, t in zip(self.entries, outs):
            values.setdefault(entry.field, []).append(t.to(device, non_blocking=True))
        fields = {k: (v[0] if k in ("logits", "pooled", "last_hidden_state") else tuple(v)) for k, v in values.items()}
        if "last_hidden_state" not in fields:
            fields["last_hidden_state"] = fields["hidden_states"][-1]
        return MaskedTransformerOutput(**fields)

    # ---- reporting, clean-up -------------------------------------------------------------------------
    def summary(self) -> dict:
        looked_up = self.stats["hit_batches"] + self.stats["miss_batches"]
        return {"mode": self.mode, "dtype": str(self.dtype).replace("torch.", ""), "bytes": self.nbytes,
                "mib": round(self.nbytes / 2**20, 2), "examples": len(self.lengths),
                "cached_examples": int(self.filled.sum()), **self.stats,
                "hit_rate": round(self.stats["hit_batches"] / looked_up, 4) if looked_up else 0.0,
                "outputs": sorted({e.field for e in self.entries})}

    def close(self) -> None:
        """Drop the buffer; a disk cache's file is removed."""
        self.storage = None
        if self._map is not None:
            self._map._mmap.close()
            self._map = None
            if os.path.exists(self.file):
                os.remove(self.file)


def _token_slices(entry: Entry, n: int) -> tuple:
    return tuple(slice(0, n) if d is None else slice(None) for d in entry.shape)


def build(requested: str, dtype_name: str, teacher, dataset, collate_fn, kwargs: dict, folder: str, device,
          path: str = "auto", info=print, rank: int = 0, reads_padded_queries: bool = False,
          world_size: int = 1) -> TeacherCache | None:
    """The cache for training on ``dataset`` (an ``EncodedDataset``) with objective ``kwargs``, or None
    (off, or not cacheable). One probe forward on the first example reads the output shapes;
    ``collate_fn``: the train loader's (takes ``(index, features)`` items). Not used when the objective
    reads padded query rows (``reads_padded_queries``) or under DDP (``world_size`` > 1: the sampler
    deals each rank other examples every epoch, so a rank's cache would hold the whole data set and
    almost never hit)."""
    if requested not in MODES:
        raise UserError(f"--teacher-cache {requested!r}: expected one of {', '.join(MODES)}")
    if dtype_name not in DTYPES:
        raise UserError(f"--teacher-cache-dtype {dtype_name!r}: expected one of {', '.join(DTYPES)}")
    if requested == "off":
        return None
    if teacher.training:
        raise ValueError("the teacher cache needs the teacher in eval mode (dropout would make every forward differ)")
    reason = cacheable(kwargs)
    if reads_padded_queries:
        reason = ("the objective reads the teacher at padded query positions (attention_loss=mse), which the "
                  "cache does not store")
    elif world_size > 1:
        reason = f"{world_size} DDP ranks see other examples each epoch"
    if reason is not None:
        if requested != "auto":
            raise UserError(f"--teacher-cache {requested}: {reason}; use --teacher-cache off")
        info(f"teacher cache off: {reason}")
        return None
    probe = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in collate_fn([(0, dataset[0])]).items()}
    entries = layout(teacher_outputs(teacher, probe, path, kwargs), dataset.lengths[0], kwargs)
    dtype = DTYPES[dtype_name]
    nbytes = estimate_bytes(entries, dataset.lengths, dtype)
    os.makedirs(folder, exist_ok=True)
    mode, why = choose_mode(requested, nbytes, available_memory_bytes(), shutil.disk_usage(folder).free)
    info(f"teacher cache: {mode}, {dtype_name}, {why}")
    if mode == "off":
        return None
    file = os.path.join(folder, f"teacher_cache.rank{rank}.bin") if mode == "disk" else None
    return TeacherCache(entries, dataset.lengths, dtype, kwargs, mode, file)


__all__ = ["DTYPES", "MODES", "TeacherCache", "build", "cacheable", "choose_mode", "estimate_bytes", "layout"]
