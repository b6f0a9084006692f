"""Active units of many gates at once: for each gate, the sorted indices of its non-zero entries.

Why: the fused ops size their work by the number of active units (the grid of a Triton launch, the
width of a compact GEMM), so that number has to reach the host. One ``torch.nonzero`` per gate is one
device sync per layer and block -- 2L per forward pass. Here the counts of all the gates come back in
a single transfer and the indices are found on the device (a stable sort puts the non-zero positions
first, in ascending order), so a structure costs one sync however many layers it has; gates that are
None (every unit on) cost none.
"""
from __future__ import annotations

from typing import Sequence

import torch


def active_units(gates: Sequence[torch.Tensor | None], sizes: Sequence[int],
                 device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Sorted int64 indices of the non-zero entries of each gate (``arange(size)`` for a None gate).

    ``gates[i]``: a 1-D tensor of ``sizes[i]`` entries, or None. ``device``: where the indices of None
    gates go (default: the first gate's device, else the CPU). The result is what ``torch.nonzero``
    gives per gate, with one host read for all of them.
    """
    given = [g.detach() for g in gates if g is not None]
    if device is None:
        device = given[0].device if given else torch.device("cpu")
    counts = iter(torch.stack([(g != 0).sum() for g in given]).tolist() if given else [])
    out = []
    for gate, size in zip(gates, sizes):
        if gate is None:
            out.append(torch.arange(size, device=device))
            continue
        count = next(counts)
        if count == gate.numel():
            out.append(torch.arange(count, device=gate.device))
        else:
            order = torch.sort((gate.detach() == 0).to(torch.uint8), stable=True).indices
            out.append(order[:count])
    return out
