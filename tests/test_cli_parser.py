"""The generated `ddk-fast` parser: every config field is a flag or says why not, `--help` groups the flags
and shows defaults, preset values and choices, the KD catalog is listed and checked, and every refusal is
one line."""
import dataclasses
import subprocess
import sys
from dataclasses import dataclass

import pytest
from test_cli_pin import _subparsers  # {"compress": parser, "data check": parser, ...}

from ddk_fast.cli import build_parser, main
from ddk_fast.cli.parser import Options, Parser, add_command
from ddk_fast.distill.mappings import MAPPINGS
from ddk_fast.distill.objectives import DEFAULTS as KD_DEFAULTS
from ddk_fast.distill.objectives import kd_choices
from ddk_fast.errors import UserError
from ddk_fast.search.registry import SEARCHES
from ddk_fast.pipelines.configs import CompressConfig, EvaluateConfig, FinetuneConfig, PruneConfig
from ddk_fast.runs.config import parse_kd
from ddk_fast.pipelines.data_check import DataCheckConfig
from ddk_fast.pipelines.deploy import ExportOnnxConfig, LatencyConfig
from ddk_fast.pipelines.lm import LMCompressConfig
from ddk_fast.pipelines.lm_teacher import PretrainLMConfig
from ddk_fast.runs.options import GROUPS, api_only, option
from ddk_fast.runs.presets import PRESETS
from ddk_fast.pipelines.distill import DistillConfig
from ddk_fast.pipelines.sweep import SweepConfig

# command -> the config dataclasses whose fields are its options
CONFIGS = {
    "finetune": (FinetuneConfig,), "compress": (CompressConfig, LMCompressConfig), "prune": (PruneConfig,),
    "distill": (DistillConfig,), "sweep": (SweepConfig,), "evaluate": (EvaluateConfig,),
    "data check": (DataCheckConfig,), "pretrain-lm": (PretrainLMConfig,), "export-onnx": (ExportOnnxConfig,),
    "latency": (LatencyConfig,),
}
KD_KEYS = [k for k in KD_DEFAULTS if k != "path"]


def _dests(parser) -> set:
    return {a.dest for a in parser._actions}


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _refusal(argv, capsys) -> str:
    """Run a command line that must be refused: exit 2 and exactly one line on stderr."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_config_field_is_a_flag_or_api_only(command):
    parser = _subparsers(build_parser())[command]
    for cls in CONFIGS[command]:
        for fld in dataclasses.fields(cls):
            why = fld.metadata.get("api_only")
            if why is not None:
                assert why.strip() and fld.name not in _dests(parser), f"{cls.__name__}.{fld.name}"
            else:
                assert "help" in fld.metadata and fld.name in _dests(parser), f"{cls.__name__}.{fld.name}"


def test_a_field_declared_without_option_metadata_is_refused():
    @dataclass
    class Forgotten:
        declared: int = option(1, help="a flag", group="train")
        hook: int = api_only(0, why="testing hook")
        forgotten: int = 3

    sub = Parser(prog="x").add_subparsers()
    with pytest.raises(TypeError, match="Forgotten.forgotten"):
        add_command(sub, "x", help="", description="", options=[Options(Forgotten)], func=print)
    parser = add_command(sub, "y", help="", description="", options=[Options(Forgotten, names=("declared", "hook"))],
                         func=print)
    assert "declared" in _dests(parser) and "hook" not in _dests(parser)


def test_compress_help_groups_the_flags_and_shows_defaults_choices_and_the_kd_catalog(capsys):
    text = _help(["compress"], capsys)
    used = {fld.metadata["group"] for cls in CONFIGS["compress"] for fld in dataclasses.fields(cls)
            if "group" in fld.metadata}
    for key, title in GROUPS.items():
        assert (f"\n{title}:\n" in text) == (key in used), title
    assert text.index(GROUPS["budget"]) < text.index(GROUPS["search"]) < text.index(GROUPS["run"])
    assert f"(default: {CompressConfig.target})" in text
    assert "--search {" + ",".join(SEARCHES) + "}" in text
    quick = PRESETS["compress"]["quick"]["search_epochs"]
    assert f"--preset quick: {quick}" in " ".join(text.split())
    assert f"--task lm: {LMCompressConfig.lr}" in " ".join(text.split())
    flat = "".join(text.split())  # the help is wrapped at any space
    assert all(f"{key}=" in flat for key in KD_KEYS)
    assert all(name in flat for values in kd_choices().values() for name in values)
    assert all(name in flat for name in MAPPINGS)


@pytest.mark.parametrize("command", ["distill", "sweep"])
def test_the_kd_catalog_is_in_every_help_that_takes_kd(command, capsys):
    flat = "".join(_help([command], capsys).split())
    assert all(f"{key}=" in flat for key in KD_KEYS) and all(name in flat for name in MAPPINGS)


def test_kd_refuses_an_unknown_key_or_value_listing_what_is_allowed():
    with pytest.raises(UserError) as exc:
        parse_kd("attention_weight=1,no_such_term=2")
    assert "no_such_term" in str(exc.value) and all(key in str(exc.value) for key in KD_KEYS)
    with pytest.raises(UserError) as exc:
        parse_kd({"mapping": "nearest"})
    assert "nearest" in str(exc.value) and all(name in str(exc.value) for name in MAPPINGS)
    for bad in ("temperature=hot", "ffn_rank=1.5", "hidden_embeddings=maybe", "path=reference"):
        with pytest.raises(UserError, match="--kd"):
            parse_kd(bad)
    assert parse_kd("hidden_embeddings=true,ffn_rank=8,mapping=skip") == {"hidden_embeddings": True, "ffn_rank": 8,
                                                                          "mapping": "skip"}


@pytest.mark.parametrize("argv", [
    ["distill", "--teacher", "t", "--task", "mrpc", "--output", "o", "--kd", "mapping=nearest"],
    ["compress", "--teacher", "t", "--task", "mrpc", "--output", "o", "--kd", "mapping=nearest"],
    ["sweep", "--teacher", "t", "--task", "mrpc", "--output", "o", "--grid", "T=1", "--kd", "mapping=nearest"],
])
def test_a_bad_kd_value_is_one_line_naming_the_allowed_mappings(argv, capsys):
    line = _refusal(argv, capsys)
    assert line.startswith(f"ddk-fast {argv[0]}: error: --kd") and all(name in line for name in MAPPINGS)


def test_a_value_outside_its_choices_is_one_line_naming_flag_value_and_choices(capsys):
    line = _refusal(["compress", "--teacher", "t", "--task", "mrpc", "--output", "o", "--search", "annealing"], capsys)
    assert line.startswith("ddk-fast compress: error: --search 'annealing': invalid choice")
    assert all(name in line for name in SEARCHES)


def test_a_config_file_value_outside_its_choices_is_refused_like_the_flag(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task_kind: ner\n")
    line = _refusal(["finetune", "--train-file", "t.csv", "--output", "o", "--config", str(cfg)], capsys)
    assert "--task-kind 'ner': invalid choice" in line


def test_a_missing_required_flag_is_one_line(capsys):
    line = _refusal(["export-onnx", "model"], capsys)
    assert line.startswith("ddk-fast export-onnx: error:") and "--output" in line


def test_lm_only_and_glue_only_flags_are_refused_by_the_other_pipeline(capsys):
    line = _refusal(["compress", "--teacher", "t", "--task", "mrpc", "--output", "o", "--search-steps", "3"], capsys)
    assert "--search-steps is an option of --task lm only" in line
    line = _refusal(["compress", "--task", "lm", "--teacher", "t", "--train-file", "a", "--eval-file", "b", "--output",
                     "o", "--onnx"], capsys)
    assert "--onnx is not an option of --task lm" in line


def test_python_dash_m_runs_the_package_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddk_fast.cli", "evaluate", "--model", str(tmp_path / "missing"),
                           "--task", "mrpc"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ddk-fast evaluate: error:")
