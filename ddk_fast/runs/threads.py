"""Intra-op CPU threads of a run: chosen once at its start, recorded in its log and report.

Why a default of our own: torch picks its thread count from the cores of the whole machine, not from
the cores this process may use. In a container or under ``taskset`` that oversubscribes the CPUs
granted to the run, and hyper-threads add threads that compete for the same execution units; both
make steps slower and timings noisy. The default is the number of physical cores in the process's
CPU affinity (``os.sched_getaffinity``), lowered to a cgroup CPU quota when one is set, shared between
the processes ``torchrun`` starts on this host (``LOCAL_WORLD_SIZE``), at most ``MAX_DEFAULT_THREADS``.

Precedence: ``--threads N`` (``threads`` in a config), else ``OMP_NUM_THREADS`` when set (the user's
or the launcher's choice, e.g. torchrun sets 1 per process), else the default.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Optional

import torch

from ddk_fast.errors import UserError

# BERT-sized matrix products stop getting faster well before this many threads; more only adds
# synchronisation. ``--threads`` goes beyond it when a user has measured that it helps.
MAX_DEFAULT_THREADS = 32
THREADS_HELP = ("intra-op CPU threads (default: OMP_NUM_THREADS if set, else the physical cores this process may "
                f"use, at most {MAX_DEFAULT_THREADS}; README: CPU threads)")
_CPU_SYS = "/sys/devices/system/cpu"


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity; every CPU where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int], sys_root: str = _CPU_SYS) -> int:
    """How many physical cores ``cpus`` cover: hyper-thread siblings count once (Linux topology files;
    each CPU counts as a core where they cannot be read)."""
    cores = set()
    for cpu in cpus:
        try:
            with open(os.path.join(sys_root, f"cpu{cpu}", "topology", "thread_siblings_list"), encoding="ascii") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(f"cpu{cpu}")
    return len(cores)


def cgroup_cpu_limit(cgroup_root: str = "/sys/fs/cgroup") -> Optional[float]:
    """CPUs granted by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None without one."""
    try:
        with open(os.path.join(cgroup_root, "cpu.max"), encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as fh:
            quota = int(fh.read())
        with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as fh:
            period = int(fh.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def default_threads(environ=os.environ) -> int:
    """Physical cores available to this process, within any cgroup quota, shared by the local ranks."""
    cores = physical_cores(usable_cpus())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    local_ranks = _positive_int(environ.get("LOCAL_WORLD_SIZE", "1")) or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores // local_ranks))


def resolve_threads(requested: Optional[int] = None, environ=os.environ) -> tuple[int, str]:
    """(threads, where the number came from: "--threads", "OMP_NUM_THREADS" or "default")."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise UserError(f"--threads {requested!r}: expected a positive integer")
        return requested, "--threads"
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        threads = _positive_int(value.split(",")[0])  # "4,2" (nested levels): the outer level
        if threads is None:
            raise UserError(f"OMP_NUM_THREADS={value!r}: expected a positive integer (or unset it)")
        return threads, "OMP_NUM_THREADS"
    return default_threads(environ), "default"


def apply_threads(requested: Optional[int] = None) -> dict:
    """Set torch's intra-op threads for this run; returns what the run log and report record."""
    threads, source = resolve_threads(requested)
    torch.set_num_threads(threads)
    return {"intra_op": threads, "source": source}


def _positive_int(text: str) -> Optional[int]:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value >= 1 else None


__all__ = ["MAX_DEFAULT_THREADS", "THREADS_HELP", "apply_threads", "cgroup_cpu_limit", "default_threads",
           "physical_cores", "resolve_threads", "usable_cpus"]
