"""The one loop driver and the one Checkpointer, on toy objects: what every run relies on for exact resume.

Checkpointer: a save restores the module, optimizer, scheduler and RNG exactly; another command's run,
other settings and another process count are refused; checkpoints in the layouts earlier versions wrote
still resume. TrainLoop: log / checkpoint cadence, the stop hook after the stage-end work, and a shared
endless batch iterator that continues from one stage to the next.
"""
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from ddk_fast.errors import UserError
from ddk_fast.runs.checkpoint import rng_state, save_checkpoint
from ddk_fast.runs.checkpointer import Checkpointer
from ddk_fast.runs.config import config_dict
from ddk_fast.errors import RunInterrupted
from ddk_fast.runs.loop import RunHooks, TrainLoop


@dataclass
class ToyConfig:
    lr: float = 0.1
    save_steps: int = 2


class Log:
    def __init__(self):
        self.rows, self.messages = [], []

    def log(self, event, step=None, **values):
        self.rows.append({"event": event, "step": step, **values})

    def info(self, message):
        self.messages.append(message)

    def close(self):
        pass


def _dirs(tmp_path):
    return SimpleNamespace(checkpoints=str(tmp_path / "checkpoints"), work=str(tmp_path))


def _objects():
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return module, opt, sched


def _train_one_step(module, opt, sched):
    opt.zero_grad(set_to_none=True)
    module(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    sched.step()


def test_save_then_restore_continues_exactly(tmp_path):
    module, opt, sched = _objects()
    _train_one_step(module, opt, sched)
    ckpt = Checkpointer(_dirs(tmp_path), "toy", ToyConfig(), Log())
    ckpt.save(1, {"step": 1}, module, {"weights": opt}, {"weights": sched})
    _train_one_step(module, opt, sched)
    expected = module.weight.detach().clone()

    fresh, fresh_opt, fresh_sched = _objects()
    log = Log()
    again = Checkpointer(_dirs(tmp_path), "toy", ToyConfig(), log)
    resumed = again.load()
    # the loop gets back its own state; the earlier attempts' wall time stays with the Checkpointer
    assert resumed.state == {"step": 1} and again.wall_before_s > 0 and again.wall_time_s() >= again.wall_before_s
    again.restore(resumed, fresh, {"weights": fresh_opt}, {"weights": fresh_sched})
    _train_one_step(fresh, fresh_opt, fresh_sched)
    assert torch.equal(fresh.weight, expected)
    assert any(m.startswith("resumed from ") for m in log.messages)
    assert [r["event"] for r in log.rows] == ["resume"] and log.rows[0]["step"] == 1


def test_another_command_other_settings_and_process_count_are_refused(tmp_path):
    module, opt, sched = _objects()
    Checkpointer(_dirs(tmp_path), "toy", ToyConfig(), Log()).save(2, {}, module, {"weights": opt},
                                                                  {"weights": sched})
    with pytest.raises(UserError, match="holds a run of another command \\('toy', not 'finetune'\\)"):
        Checkpointer(_dirs(tmp_path), "finetune", ToyConfig(), Log()).load()
    with pytest.raises(UserError, match="started with different settings \\(lr: checkpoint has 0.1, now 0.5\\)"):
        Checkpointer(_dirs(tmp_path), "toy", ToyConfig(lr=0.5), Log()).load()
    two = SimpleNamespace(rank=0, world_size=2, is_main=True, distributed=False)
    with pytest.raises(UserError, match="written by 1 process\\(es\\), now 2"):
        Checkpointer(_dirs(tmp_path), "toy", ToyConfig(), Log(), ctx=two).load()
    assert Checkpointer(_dirs(tmp_path), "toy", ToyConfig(save_steps=5), Log()).load() is not None  # cadence only


def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    module, opt, sched = _objects()
    ckpt = Checkpointer(_dirs(tmp_path), "toy", ToyConfig(), Log())
    ckpt.save(2, {}, module, {"weights": opt}, {"weights": sched})
    other = torch.nn.Linear(3, 5)
    with pytest.raises(UserError, match="does not fit this run .*--overwrite"):
        ckpt.restore(ckpt.load(), other, {}, {})


@pytest.mark.parametrize("layout", ["finetune", "step"])
def test_checkpoints_of_earlier_layouts_resume(tmp_path, layout):
    """finetune wrote one ``optimizer`` / ``scheduler``; distill and LM runs kept their state in meta.json."""
    module, opt, sched = _objects()
    _train_one_step(module, opt, sched)
    cfg = ToyConfig()
    state = {"step": 1, "history": [{"loss": 0.5}], "wall_before_s": 3.0}
    if layout == "finetune":
        payload = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "loop": state, "rng": [rng_state()]}
        meta = {"kind": "toy", "config": config_dict(cfg), "epoch": 0, "batch": 1}
    else:
        payload = {"optimizers": {"weights": opt.state_dict()}, "schedulers": {"weights": sched.state_dict()},
                   "rng": [rng_state()]}
        meta = {"kind": "toy", "config": config_dict(cfg), "state_json": json.dumps(state)}
    save_checkpoint(_dirs(tmp_path).checkpoints, 1, module, payload, meta=meta)

    fresh, fresh_opt, fresh_sched = _objects()
    ckpt = Checkpointer(_dirs(tmp_path), "toy", cfg, Log())
    resumed = ckpt.load()
    loop_state = {k: v for k, v in state.items() if k != "wall_before_s"}  # the wall time is the Checkpointer's
    assert resumed.state == loop_state and ckpt.wall_time_s() >= 3.0
    ckpt.restore(resumed, fresh, {"weights": fresh_opt}, {"weights": fresh_sched})
    assert torch.equal(fresh.weight, module.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert fresh_sched.last_epoch == sched.last_epoch


class Watch:
    def __init__(self):
        self.checks = 0

    def check(self):
        self.checks += 1


def _counting():
    def batches():
        i = 0
        while True:
            yield i
            i += 1
    return batches()


def test_step_mode_cadence_and_a_shared_endless_iterator(tmp_path):
    log, saves, seen, history = Log(), [], [], []
    state = {"step": 0}
    batches = _counting()
    loop = TrainLoop(stage="s", step=lambda batch, step, epoch: seen.append((batch, step, epoch)) or
                     {"loss": torch.tensor(float(step))}, watch=Watch(), log=log, log_steps=2, save_steps=3,
                     save=lambda: saves.append(state["step"]), on_log=lambda step, values: history.append(values))
    loop.run_steps(batches, state, 6)
    assert [r["step"] for r in log.rows] == [2, 4, 6]  # every log_steps, and the last step
    assert history == [{"loss": 2.0}, {"loss": 4.0}, {"loss": 6.0}]  # read to the host at log steps
    assert saves == [3]  # not at the last step: the stage end is the pipeline's
    state["step"] = 0
    loop.run_steps(batches, state, 2)
    assert [b for b, _, _ in seen] == list(range(8))  # the second stage continues the same iterator
    assert all(epoch is None for _, _, epoch in seen)


def test_stop_hook_fires_after_the_stage_end_work():
    state, ended = {"step": 0}, []
    loop = TrainLoop(stage="s", step=lambda batch, step, epoch: {}, watch=Watch(), log=Log(), log_steps=10,
                     save_steps=10, hooks=RunHooks(stop_after_steps=7))
    with pytest.raises(RunInterrupted, match="after step 7"):
        loop.run_steps(_counting(), state, 3, offset=4, after_stage=lambda: ended.append(state["step"]))
    assert ended == [3]  # the stage's last step (global 7) stops once the boundary work is done
    loop.hooks = RunHooks(stop_after_steps=2)
    with pytest.raises(RunInterrupted, match="after step 2"):
        loop.run_steps(_counting(), {"step": 0}, 3, after_stage=lambda: ended.append("never"))
    assert ended == [3]


def test_fault_hook_poisons_one_step_only():
    hooks = RunHooks(fault_nan_at_step=3)
    assert torch.isnan(hooks.loss(3, torch.tensor(1.0)))
    assert hooks.loss(2, torch.tensor(1.0)) == 1.0
    RunHooks().stop(10**9)  # no hook: never stops
