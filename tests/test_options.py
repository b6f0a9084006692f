"""One field check for every pipeline: the choices and lower bounds declared with ``option()`` are what
each ``validate`` refuses (naming the flag), and ``compress`` picks the LM pipeline from the task wherever
it is given (flag, keyword or ``--config`` file), refusing a file key the LM run does not know."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest

import ddk_fast
from ddk_fast.cli import main
from ddk_fast.errors import UserError
from ddk_fast.pipelines import compress
from ddk_fast.pipelines import data_check
from ddk_fast.pipelines import finetune
from ddk_fast.pipelines import lm
from ddk_fast.pipelines import prune
from ddk_fast.pipelines import distill as student_kd
from ddk_fast.pipelines import sweep
from ddk_fast.pipelines.configs import CompressConfig, FinetuneConfig, PruneConfig
from ddk_fast.pipelines.lm import LMCompressConfig, build_lm_config
from ddk_fast.runs.options import NON_NEGATIVE, POSITIVE, check_fields, check_value, option
from ddk_fast.pipelines.distill import DistillConfig


@dataclass
class _Toy:
    steps: int = option(3, group="train", minimum=POSITIVE, help="steps")
    skip: int = option(0, group="train", minimum=NON_NEGATIVE, help="skipped")
    rate: float = option(0.1, group="train", minimum=POSITIVE, help="rate")
    ridge: float = option(0.0, group="train", minimum=NON_NEGATIVE, help="ridge")
    limit: Optional[int] = option(None, group="train", minimum=POSITIVE, help="limit")
    kind: str = option("a", group="train", choices=("a", "b"), help="kind")


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "--steps 0: expected a positive integer"),
    (dict(steps=True), "--steps True: expected a positive integer"),
    (dict(steps=2.5), "--steps 2.5: expected a positive integer"),
    (dict(skip=-1), "--skip -1: expected an integer >= 0"),
    (dict(rate=0.0), "--rate 0.0: expected a positive finite number"),
    (dict(rate=float("inf")), "--rate inf: expected a positive finite number"),
    (dict(ridge=-1e-3), "--ridge -0.001: expected a finite number >= 0"),
    (dict(ridge=float("nan")), "--ridge nan: expected a finite number >= 0"),
    (dict(limit=0), "--limit 0: expected a positive integer"),
    (dict(kind="c"), "--kind 'c': invalid choice; expected one of a, b"),
])
def test_check_fields_refuses_a_value_outside_its_declaration(change, message):
    with pytest.raises(UserError) as exc:
        check_fields(_Toy(**change))
    assert str(exc.value) == message


def test_check_fields_takes_the_bounds_themselves_and_leaves_none_alone():
    check_fields(_Toy(steps=1, skip=0, rate=1e-9, ridge=0.0, limit=None, kind="b"))


def test_an_unknown_minimum_is_refused_where_the_option_is_declared():
    with pytest.raises(ValueError, match="option minimum"):
        option(1, group="train", minimum="even", help="x")


def test_check_value_checks_one_option_given_on_its_own():
    with pytest.raises(UserError, match=r"^--steps 0: expected a positive integer$"):
        check_value(_Toy, "steps", 0)
    with pytest.raises(UserError, match=r"^--mode 'best': invalid choice; expected one of student, ddk$"):
        sweep.run_sweep("t", "mrpc", "o", {"temperature": [1]}, mode="best")
    with pytest.raises(UserError, match=r"^--max-seq-len 0: expected a positive integer$"):
        data_check.check_data("mrpc", max_seq_len=0)


# every pipeline's validate, on a config built directly (the Python API path that no parser checked)
_REQUIRED = {CompressConfig: dict(teacher="t", output="o"), PruneConfig: dict(teacher="t", output="o"),
             FinetuneConfig: dict(output="o"), DistillConfig: dict(teacher="t", output="o"),
             LMCompressConfig: dict(teacher="t", output="o", train_file="a.txt", eval_file="b.txt")}
_VALIDATE = {CompressConfig: compress.validate, PruneConfig: prune.validate, FinetuneConfig: finetune.validate,
             DistillConfig: student_kd.validate, LMCompressConfig: lm.validate}


@pytest.mark.parametrize("cls, change, message", [
    (CompressConfig, dict(batch_size=0), "--batch-size 0: expected a positive integer"),
    (CompressConfig, dict(distill_epochs=-1), "--distill-epochs -1: expected an integer >= 0"),
    (CompressConfig, dict(temperature=0.0), "--temperature 0.0: expected a positive finite number"),
    (CompressConfig, dict(search="nope"), "--search 'nope': invalid choice"),
    (CompressConfig, dict(hidden_loss="l1"), "--hidden-loss 'l1': invalid choice; expected one of mse, cosine"),
    (CompressConfig, dict(teacher_cache="ram"), "--teacher-cache 'ram': invalid choice"),
    (CompressConfig, dict(latency_runtime="tvm"), "--latency-runtime 'tvm': invalid choice"),
    (CompressConfig, dict(max_train_examples=0), "--max-train-examples 0: expected a positive integer"),
    (PruneConfig, dict(ridge=-1.0), "--ridge -1.0: expected a finite number >= 0"),
    (PruneConfig, dict(calibration_examples=0), "--calibration-examples 0: expected a positive integer"),
    (PruneConfig, dict(importance="magic"), "--importance 'magic': invalid choice"),
    (PruneConfig, dict(path="fast"), "--path 'fast': invalid choice"),
    (FinetuneConfig, dict(epochs=0), "--epochs 0: expected a positive integer"),
    (FinetuneConfig, dict(lr=-1.0), "--lr -1.0: expected a positive finite number"),
    (DistillConfig, dict(student_layers=0), "--student-layers 0: expected a positive integer"),
    (DistillConfig, dict(recipe="bert"), "--recipe 'bert': invalid choice"),
    (LMCompressConfig, dict(block_size=0), "--block-size 0: expected a positive integer"),
    (LMCompressConfig, dict(distill_steps=-1), "--distill-steps -1: expected an integer >= 0"),
    (LMCompressConfig, dict(tau_end=0.0), "--tau-end 0.0: expected a positive finite number"),
])
def test_every_pipeline_validates_the_declared_fields(cls, change, message):
    cfg = cls(**_REQUIRED[cls], **change)
    with pytest.raises(UserError) as exc:
        _VALIDATE[cls](cfg)
    assert str(exc.value).startswith(message)


def test_defaults_pass_every_pipelines_field_checks():
    for cls in _VALIDATE:
        check_fields(cls(**_REQUIRED[cls]))


def test_a_bound_is_declared_once_for_both_compress_pipelines():
    """``compress --task lm`` takes the GLUE option's declaration (``like``), bound included."""
    glue = {f.name: f for f in dataclasses.fields(CompressConfig)}
    for fld in dataclasses.fields(LMCompressConfig):
        if fld.name in glue:
            assert fld.metadata.get("minimum") == glue[fld.name].metadata.get("minimum"), fld.name


# ------------------------------------------------------------------------------------ compress --task lm
def _yaml(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_lm_config_file_refuses_unknown_keys_like_the_other_configs(tmp_path):
    path = _yaml(tmp_path, "task: lm\nblock_size: 32\nbogus: 1\nsearch_epochs: 2\n")
    with pytest.raises(UserError) as exc:
        build_lm_config({}, path)
    assert str(exc.value) == f"--config {path!r}: unknown option(s) bogus, search_epochs"


def test_lm_config_file_takes_compress_kd_options_as_kd_keys(tmp_path):
    path = _yaml(tmp_path, "block_size: 32\ntemperature: 4\nkd: {attention_weight: 1}\n")
    cfg = build_lm_config({}, path)
    assert cfg.block_size == 32
    assert cfg.kd["temperature"] == 4 and cfg.kd["attention_weight"] == 1
    assert cfg.kd["mapping"] == "fusion"  # the LM defaults stay under what the file adds


@pytest.fixture
def pipelines(monkeypatch):
    """Both compress pipelines replaced by recorders: which one ran, with which config."""
    calls = []
    monkeypatch.setattr(lm, "run_compress_lm", lambda cfg: calls.append(("lm", cfg)) or {})
    monkeypatch.setattr(compress, "run_compress", lambda cfg: calls.append(("glue", cfg)) or {})
    return calls


def test_cli_compress_with_task_lm_in_the_config_file_runs_the_lm_pipeline(tmp_path, pipelines, capsys):
    path = _yaml(tmp_path, "task: lm\nteacher: g\ntrain_file: a.txt\neval_file: b.txt\nblock_size: 32\n")
    assert main(["compress", "--output", "o", "--config", path]) == 0
    assert main(["compress", "--teacher", "g", "--task", "lm", "--train-file", "a.txt", "--eval-file", "b.txt",
                 "--output", "o", "--block-size", "32"]) == 0
    (kind_file, from_file), (kind_flag, from_flags) = pipelines
    assert kind_file == kind_flag == "lm"
    assert dataclasses.asdict(from_file) == dataclasses.asdict(from_flags)


def test_cli_task_flag_wins_over_the_config_files_task(tmp_path, pipelines, capsys):
    path = _yaml(tmp_path, "task: lm\n")
    assert main(["compress", "--teacher", "t", "--task", "mrpc", "--output", "o", "--config", path]) == 0
    assert [kind for kind, _ in pipelines] == ["glue"]


def test_api_compress_routes_task_lm_like_the_cli(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(lm, "run_compress_lm", lambda cfg: calls.append(cfg) or {"via": "lm"})
    path = _yaml(tmp_path, "task: lm\ntrain_file: a.txt\neval_file: b.txt\n")
    assert ddk_fast.compress(teacher="g", task=None, output="o", config=path) == {"via": "lm"}
    assert ddk_fast.compress(teacher="g", task="lm", output="o", train_file="a.txt", eval_file="b.txt",
                             temperature=3.0) == {"via": "lm"}
    assert [c.task for c in calls] == ["lm", "lm"] and calls[1].kd["temperature"] == 3.0
    with pytest.raises(UserError, match="--data-dir is not an option of --task lm"):
        ddk_fast.compress(teacher="g", task="lm", output="o", data_dir="glue")


def test_api_distill_and_sweep_merge_like_their_commands(tmp_path, monkeypatch):
    """``ddk_fast.distill`` / ``ddk_fast.sweep`` take the flags' names and the same --config layering."""
    from ddk_fast import api

    runs, points = [], []
    monkeypatch.setattr(api, "run_distill", lambda cfg: runs.append(cfg) or {"via": "distill"})
    path = _yaml(tmp_path, "student_layers: 2\nkd: temperature=3\n")
    assert api.distill(teacher="t", task="mrpc", output="o", config=path, steps=7) == {"via": "distill"}
    cli = student_kd.build_distill_config({"teacher": "t", "task": "mrpc", "output": "o", "steps": 7}, path)
    assert runs[0] == cli and runs[0].student_layers == 2 and runs[0].kd["temperature"] == 3

    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kw: points.append((args, kw)) or {"via": "sweep"})
    assert ddk_fast.sweep(teacher="t", task="mrpc", output="s", grid="temperature=1,2", steps=5) == {"via": "sweep"}
    (teacher, task, output, grid), kw = points[0]
    assert (teacher, task, output) == ("t", "mrpc", "s") and grid == {"temperature": [1, 2]}
    assert kw["base"]["steps"] == 5 and kw["mode"] == "student"
    with pytest.raises(UserError, match="exactly one of --grid or --grid-file"):
        ddk_fast.sweep(teacher="t", task="mrpc", output="s")


def test_the_full_finetune_schedule_takes_a_tasks_own_values():
    """CoLA's teacher trains at lr 5e-5 for 5 epochs (the sweep of docs/results.md); flags, the config
    file and the quick preset are not overridden by it, and other tasks keep the full schedule."""
    from ddk_fast.runs.config import build_config

    def cfg(**flags):
        return build_config(FinetuneConfig, "finetune", dict(output="o", **flags))

    assert (cfg(task="cola").lr, cfg(task="cola").epochs) == (5e-5, 5)
    assert (cfg(task="CoLA").lr, cfg(task="mrpc").lr, cfg(task="mrpc").epochs) == (5e-5, 1e-4, 3)
    assert cfg(task="cola", lr=2e-4).lr == 2e-4 and cfg(task="cola", preset="quick").lr == 1e-4
    assert cfg(task="cola", preset="quick").epochs == 2
