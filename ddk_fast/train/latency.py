"""CPU inference latency of teacher and student on the same engine, same inputs, same threads.

Why the same engine: the ratio should measure the structure, not two different implementations.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch


@torch.inference_mode()
def measure(model: torch.nn.Module, batch_size: int, seq_len: int, vocab_size: int, repeats: int = 10,
            warmup: int = 2, seed: int = 0, path: str = "auto") -> dict:
    """Median / min wall time (ms) of one forward pass on CPU with a full [B, S] batch."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low=1000 if vocab_size > 2000 else 1, high=vocab_size, size=(batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    kwargs = {} if path == "auto" else {"path": path}
    try:
        for _ in range(max(0, warmup)):
            cpu_model(ids, attention_mask=mask, token_type_ids=types, **kwargs)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            cpu_model(ids, attention_mask=mask, token_type_ids=types, **kwargs)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        cpu_model.train(was_training)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": len(times),
            "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads()}


def compare(teacher, student, batch_size: int, seq_len: int, vocab_size: int, repeats: int, path: str = "auto") -> dict:
    """Interleaved teacher/student measurements (so load changes on a shared machine hit both)."""
    t_runs, s_runs = [], []
    rounds = max(1, min(3, repeats))
    per = max(1, repeats // rounds)
    for r in range(rounds):
        t_runs.append(measure(teacher, batch_size, seq_len, vocab_size, per, warmup=1 if r else 2, path=path))
        s_runs.append(measure(student, batch_size, seq_len, vocab_size, per, warmup=1 if r else 2, path=path))
    t_ms = statistics.median(x["median_ms"] for x in t_runs)
    s_ms = statistics.median(x["median_ms"] for x in s_runs)
    return {"device": "cpu", "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads(),
            "repeats": rounds * per, "teacher_ms": round(t_ms, 3), "student_ms": round(s_ms, 3),
            "ratio_student_over_teacher": round(s_ms / t_ms, 4) if t_ms > 0 else None,
            "speedup": round(t_ms / s_ms, 3) if s_ms > 0 else None}
