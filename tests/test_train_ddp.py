"""The same training entry points under `torchrun --nproc_per_node 2` on CPU (gloo): both finish,
rank 0 alone writes, and both ranks end with identical weights."""
import json
import os
import socket
import subprocess
import sys

import pytest

from train_support import make_tiny_bert

WORKER = r'''
import json, os, sys
from ddk_fast.api import finetune, compress
kind, model, glue, out, result_dir = sys.argv[1:6]
extra = {}
if kind == "compress-uneven":
    # rank 1 finds another one-shot structure (a smaller budget): both must continue from rank 0's
    import ddk_fast.pipelines.oneshot as oneshot
    real = oneshot.one_shot
    def uneven(teacher, batches, cost_model, metric, ratio, **kw):
        return real(teacher, batches, cost_model, metric, ratio * (0.7 if os.environ["RANK"] == "1" else 1.0), **kw)
    oneshot.one_shot = uneven
    extra = dict(fixed_structure="oneshot")
common = dict(max_train_examples=24, max_eval_examples=16, batch_size=4, eval_batch_size=16, max_seq_len=32,
              lr=1e-3, progress=False, save_steps=2, device="cpu")
if kind == "finetune":
    res = finetune(task="mrpc", output=out, model=model, data_dir=glue, epochs=1, **common)
else:
    res = compress(teacher=model, task="mrpc", output=out, data_dir=glue, target="params=0.5", seq_len=32,
                   search_epochs=1, distill_epochs=1, channel_granularity=8, latency_batch_size=2,
                   latency_seq_len=16, latency_repeats=1, **common, **extra)
rank = int(os.environ["RANK"])
with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "digest": res["final_weights_sha256"], "world_size": res["world_size"]}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, kind, model, glue_dir, out):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    results = tmp_path / f"results_{kind}"
    results.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), kind, model, glue_dir, str(out), str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tmp_path, glue_dir):
    base = make_tiny_bert(tmp_path / "base")
    teacher = tmp_path / "teacher"
    ranks = _torchrun(tmp_path, "finetune", base, glue_dir, teacher)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (teacher / "model.safetensors").is_file() and not os.path.exists(str(teacher) + ".inprogress")
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 24 examples over 2 ranks at batch 4: 3 steps per epoch on each rank
    assert metrics["history"][0]["step"] == 3

    student = tmp_path / "student"
    ranks = _torchrun(tmp_path, "compress", str(teacher), glue_dir, student)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    report = json.loads((student / "report.json").read_text())
    assert report["world_size"] == 2 and report["params"]["ratio"] <= 0.5 + 1e-9


@pytest.mark.slow
def test_ddp_ranks_continue_from_rank_zeros_one_shot_result(tmp_path, glue_dir):
    """A rank whose one-shot pass found another structure (GPU reductions can differ) takes rank 0's:
    otherwise its fixed-structure student would have other shapes and the ranks would disagree."""
    base = make_tiny_bert(tmp_path / "base")
    student = tmp_path / "student"
    ranks = _torchrun(tmp_path, "compress-uneven", base, glue_dir, student)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    report = json.loads((student / "report.json").read_text())
    assert report["world_size"] == 2 and report["params"]["ratio"] <= 0.5 + 1e-9
