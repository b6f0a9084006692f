"""The latency protocol: pinned threads, alternated pairs, spread and load recorded, and a warning
instead of a wrong number when the machine is too busy to measure."""
import subprocess
import sys

import pytest
import torch

from ddk_fast.model import MaskedTransformer, Structure, prune
from ddk_fast.model.config import TransformerConfig
from ddk_fast.runs import latency


def _pair():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=3000, hidden_size=128, head_dim=32, num_heads=[4] * 4,
                               intermediate_sizes=[512] * 4, max_position_embeddings=128)
    teacher = MaskedTransformer(config).eval()
    half = Structure.from_indices([[0, 1]] * 4, [list(range(256))] * 4, teacher)  # half of every block
    return teacher, prune(teacher, half)


def test_report_fields_and_threads_restored():
    teacher, student = _pair()
    before = torch.get_num_threads()
    out = latency.compare(teacher, student, 4, 64, 3000, repeats=5, threads=1)
    assert torch.get_num_threads() == before
    assert out["threads"] == 1 and out["repeats"] >= 5 and out["teacher_ms"] > 0 and out["student_ms"] > 0
    q1, q3 = out["ratio_iqr"]
    assert q1 <= out["ratio_student_over_teacher"] <= q3
    assert out["speedup"] == pytest.approx(1 / out["ratio_student_over_teacher"], rel=1e-3)
    assert len(out["load_avg_1m"]) == 2 and isinstance(out["reliable"], bool)
    assert (out["warning"] is None) == out["reliable"]


def test_unstable_timings_are_flagged_not_reported_as_fact(monkeypatch):
    teacher, student = _pair()
    ticks = iter(range(10_000))

    def erratic_timer(model, inputs, path):  # every other teacher call takes 10x longer
        def once():
            return 10.0 * (1 + 9 * (next(ticks) % 4 == 0)) * (1 if model is teacher else 0.5)
        return once

    monkeypatch.setattr(latency, "_timer", erratic_timer)
    out = latency.compare(teacher, student, 2, 16, 3000, repeats=4, threads=1, max_pairs=12)
    assert out["repeats"] == 12  # it re-measured up to the limit before giving up
    assert not out["reliable"] and "spread" in out["warning"]


def test_a_busy_machine_keeps_the_ratio_or_says_it_could_not():
    teacher, student = _pair()
    quiet = latency.compare(teacher, student, 8, 64, 3000, repeats=7, threads=1)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core fully busy
    try:
        busy = latency.compare(teacher, student, 8, 64, 3000, repeats=7, threads=1)
    finally:
        hog.kill()
        hog.wait()
    # the student does about half the teacher's encoder work; embeddings and classifier are shared
    for out in (quiet, busy):
        if out["reliable"]:
            assert 0.3 <= out["ratio_student_over_teacher"] <= 0.8, out
        else:
            assert out["warning"]
    if quiet["reliable"] and busy["reliable"]:
        assert busy["ratio_student_over_teacher"] == pytest.approx(quiet["ratio_student_over_teacher"], rel=0.25)
