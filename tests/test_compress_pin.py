"""`compress` pinned: tiny deterministic runs must keep producing the recorded losses and weights.

Why: the objective, the checkpointed run state and the report are reorganised from time to time;
this guards that the numbers a default run produces do not move. The recorded values
(``tests/data/compress_pin.json``) come from the runs below on CPU; ``python tests/test_compress_pin.py``
records them again (only when a change of the numbers is intended).

What is compared, per step of both stages: the total loss, the KD total (hidden-state term included:
it is ``kd_total`` less the prediction and task terms), the prediction and task terms, the budget
loss, the expected ratio and the gradient norm; then the dev scores per epoch, the kept structure and
a fingerprint (sum and sum of squares) of every tensor of the exported student. (On these tiny teachers
the export is the one-shot student, the best dev candidate; the distillation's updates are pinned
through the losses of the steps after them.)
"""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from train_support import make_tiny_bert

from ddk_fast.api import compress

PIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "compress_pin.json")
FAST = dict(max_train_examples=32, max_eval_examples=16, batch_size=8, eval_batch_size=16, max_seq_len=32, seq_len=32,
            search_epochs=1, distill_epochs=1, channel_granularity=8, latency_batch_size=2, latency_seq_len=16,
            latency_repeats=1, progress=False, save_steps=2, lr=1e-3, log_steps=1, device="cpu",
            threads=1)  # the run sets its own thread count; GEMM rounding depends on it
# name -> (task, teacher labels, extra compress options): the default run, then the learned fusion gate
# (a trained objective parameter) and the parameter-free fusion with uniform layer weights on regression
RUNS = {
    "default": ("mrpc", 2, {}),
    "learned_fusion": ("mrpc", 2, {"fusion": "learned"}),
    "param_free_uniform_regression": ("stsb", 1, {"fusion": "param_free", "layer_weighting": "uniform"}),
}
STEP_KEYS = ("loss", "kd_total", "pred", "task", "budget", "ratio", "grad_norm")
REL = 1e-5


def observe(name: str, root: str, glue_dir: str) -> dict:
    """Run the pinned configuration ``name`` in ``root`` and return what is pinned."""
    task, labels, extra = RUNS[name]
    teacher = make_tiny_bert(os.path.join(root, "teacher"), num_labels=labels,
                             problem_type="regression" if labels == 1 else None)
    out = os.path.join(root, "student")
    report = compress(**dict(FAST, **extra, teacher=teacher, task=task, data_dir=glue_dir, target="params=0.5",
                             output=out))
    steps = []
    with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["event"] in ("search", "distill"):
                steps.append({"event": row["event"], "step": row["step"],
                              **{k: row[k] for k in STEP_KEYS if k in row}})
    history = [{k: v for k, v in h.items() if isinstance(v, (int, float, str, list))} for h in report["history"]]
    tensors = load_file(os.path.join(out, "model.safetensors"))
    weights = {k: [float(t.double().sum()), float(t.double().pow(2).sum())] for k, t in sorted(tensors.items())}
    return {"steps": steps, "history": history, "structure": report["structure"]["heads"] + report["structure"]["ffn"],
            "weights": weights}


def _close(got, want, where: str):
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} entries, pinned {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=REL, abs=1e-7), f"{where}: {got!r}, pinned {want!r}"
    else:
        assert got == want, f"{where}: {got!r}, pinned {want!r}"


@pytest.fixture(scope="module")
def pinned():
    with open(PIN_FILE, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_compress_matches_the_pinned_run(name, pinned, glue_dir, tmp_path, one_thread):
    torch.manual_seed(0)
    got = observe(name, str(tmp_path), glue_dir)
    want = pinned[name]
    assert len(got["steps"]) == 8  # 4 search steps, 4 distillation steps: every step is compared
    _close(got, want, name)


if __name__ == "__main__":  # record the pins again: python tests/test_compress_pin.py [GLUE folder]
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest import GLUE_PATH

    torch.set_num_threads(1)
    pins = {}
    for run_name in sorted(RUNS):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            pins[run_name] = observe(run_name, tmp, sys.argv[1] if len(sys.argv) > 1 else GLUE_PATH)
    with open(PIN_FILE, "w", encoding="utf-8") as fh:
        json.dump(pins, fh, indent=1, sort_keys=True)
        fh.write("\n")
