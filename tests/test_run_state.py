"""``RunState``, what a compress checkpoint holds besides tensors: a round trip through the checkpoint's
``torch.save`` / ``torch.load(weights_only=True)``, checkpoints of fewer fields, and refusals."""
import io
import math

import pytest
import torch

from ddk_fast.runs.run_state import DISTILL, SEARCH, RunState


def test_a_run_state_survives_the_checkpoint_file():
    state = RunState(epoch=1, batch=3, global_step=11, stage_start_step=0, teacher_dev={"f1": 0.8},
                     history=[{"stage": SEARCH, "epoch": 1, "heads": (2, 3), "loss": torch.tensor(0.5)}],
                     oneshot={"dev": {"f1": 0.7}, "heads": [2, 3]})
    state.times_s["search"] += 4.0
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    back = RunState.from_dict(torch.load(buffer, weights_only=True))
    assert back.best_score == -math.inf and back.global_step == 11 and back.times_s["search"] == 4.0
    assert back.history == [{"stage": SEARCH, "epoch": 1, "heads": [2, 3], "loss": 0.5}]  # plain values only
    assert back.to_dict() == state.to_dict()


def test_entering_distillation_restarts_the_position_at_the_current_step():
    state = RunState(epoch=2, batch=4, global_step=9)
    state.enter_distill({"heads": [[0]], "ffn": [[1]]})
    assert (state.stage, state.epoch, state.batch, state.stage_start_step) == (DISTILL, 0, 0, 9)
    assert state.structure == {"heads": [[0]], "ffn": [[1]]} and state.global_step == 9


def test_fields_missing_from_a_checkpoint_keep_their_defaults_and_unknown_ones_are_refused():
    data = RunState(global_step=5).to_dict()
    del data["times_s"]
    assert RunState.from_dict(data).times_s == RunState().times_s
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['step'\]"):
        RunState.from_dict(dict(data, step=3))
    with pytest.raises(ValueError, match="stage='prune'"):
        RunState.from_dict(dict(data, stage="prune"))
