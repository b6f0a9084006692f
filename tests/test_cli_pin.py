"""The `ddk-fast` command lines keep their meaning: every flag a command had, and what representative
command lines of every command hand to its pipeline (the config dataclass, or the call's arguments).

The expected values in tests/data/cli_pin.json were recorded from the hand-written parser that the
generated one replaced; the lines of options added since (``--threads``, ``--tuning-check-examples``)
were recorded from the generated one (``python tests/test_cli_pin.py --write`` records them all again). A flag may gain
aliases and choices it lacked; it may not lose its name, its destination, its type, its constant, its
choices or whether it takes a value, and every pinned command line must reach its pipeline with the
same values (defaults, presets, ``--config`` files and flags merged), or be refused as before.
"""
import argparse
import dataclasses
import importlib
import inspect
import json
import os
import sys

import pytest

from ddk_fast.cli import build_parser, main

PIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cli_pin.json")
CONFIG_YAML = "epochs: 5\nlr: 0.001\ntext_columns: [question, answer]\n"
COMPRESS_YAML = "search_epochs: 2\ntemperature: 3.0\nkd: {attention_weight: 1, mapping: skip}\n"
GRID_YAML = "temperature: [1, 2]\nhidden_weight: [0.5]\n"

# pipeline entry points the commands call; a stub records the call instead of running it
RUNS = {
    "ddk_fast.pipelines.finetune:run_finetune": {},
    "ddk_fast.pipelines.compress:run_compress": {},
    "ddk_fast.pipelines.prune:run_prune": {},
    "ddk_fast.pipelines.lm:run_compress_lm": {},
    "ddk_fast.pipelines.distill:run_distill": {},
    "ddk_fast.pipelines.sweep:run_sweep": {},
    "ddk_fast.pipelines.evaluate:run_evaluate": {},
    "ddk_fast.pipelines.lm_teacher:pretrain_gpt2": {},
    "ddk_fast.pipelines.data_check:check_data": {},
    "ddk_fast.pipelines.deploy:run_export_onnx": {},
    "ddk_fast.pipelines.deploy:run_latency": {"rows": []},
    "ddk_fast.bench.runner:run_suite": ("", ""),
    "ddk_fast.bench.environment:collect": {},
}
# helpers the commands call on a run's result (stubbed so an empty result prints)
PRINTERS = {"ddk_fast.pipelines.data_check:format_check": "", "ddk_fast.pipelines.deploy:format_table": "",
            "ddk_fast.doctor:format_report": ""}

TEACHER = ["--teacher", "t"]
LM = ["--task", "lm", "--teacher", "g", "--train-file", "a.txt", "--eval-file", "b.txt", "--output", "o"]
RUN_FLAGS = ["--seed", "7", "--batch-size", "8", "--eval-batch-size", "16", "--max-seq-len", "64",
             "--max-eval-examples", "100", "--device", "cpu", "--overwrite", "--no-progress"]
TRAIN_FLAGS = RUN_FLAGS + ["--max-train-examples", "500", "--lr", "3e-5", "--save-steps", "20", "--log-steps", "5",
                           "--resume", "--keep-checkpoints"]
OWN_DATA = ["--train-file", "t.csv", "--validation-file", "d.csv", "--text-columns", "q,a", "--label-column", "y",
            "--task-kind", "regression"]
BUDGET = ["--target", "flops=0.4", "--seq-len", "64", "--calibration-examples", "100", "--tuning-examples", "50",
          "--importance-iterations", "2", "--path", "reference", "--latency-batch-size", "4", "--latency-seq-len",
          "32", "--latency-threads", "2", "--onnx", "--latency-runtime", "onnx", "--latency-shapes", "1x32,4x32"]

# name -> argv; "{config}", "{compress_config}", "{grid}" become paths of the YAML files above
LINES = {
    "finetune-minimal": ["finetune", "--task", "sst2", "--output", "o"],
    "finetune-all": ["finetune", "--model", "m", "--task", "mrpc", "--data-dir", "glue", "--output", "o", "--preset",
                     "quick", "--epochs", "1", "--warmup-ratio", "0.2", "--weight-decay", "0.0"] + TRAIN_FLAGS,
    "finetune-own-data": ["finetune", "--output", "o"] + OWN_DATA,
    "finetune-config": ["finetune", "--dataset", "imdb:plain", "--output", "o", "--config", "{config}", "--lr", "2e-4"],
    "compress-minimal": ["compress", *TEACHER, "--task", "sst2", "--output", "o"],
    "compress-all": ["compress", *TEACHER, "--task", "mrpc", "--data-dir", "glue", "--output", "o", "--preset", "quick",
                     "--search", "hard_concrete", "--init", "weights", "--budget-warmup", "0.1", "--search-epochs",
                     "2", "--distill-epochs", "3", "--arch-lr", "0.1", "--temperature", "4", "--fusion", "learned",
                     "--hidden-loss", "cosine", "--teacher-cache", "memory", "--teacher-cache-dtype", "fp32", "--kd",
                     "attention_weight=1,mapping=skip", "--channel-granularity", "16"] + BUDGET + TRAIN_FLAGS,
    "compress-fixed": ["compress", *TEACHER, "--task", "rte", "--output", "o", "--fixed-structure", "uniform"],
    "compress-own-data": ["compress", *TEACHER, "--output", "o", "--target", "params=0.3"] + OWN_DATA,
    "compress-config": ["compress", *TEACHER, "--task", "cola", "--output", "o", "--config", "{compress_config}",
                        "--temperature", "5"],
    "compress-lm-minimal": ["compress", *LM],
    "compress-lm-all": ["compress", *LM, "--block-size", "32", "--search-steps", "10", "--distill-steps", "20", "--kd",
                        "mapping=uniform,attention_weight=0.5", "--temperature", "3", "--hidden-loss", "cosine",
                        "--fusion", "learned", "--preset", "quick", "--arch-lr", "0.1", "--channel-granularity", "8",
                        "--target", "flops=0.6", "--path", "reference"]
                       + [a for a in TRAIN_FLAGS if a not in ("--max-seq-len", "64")],
    "prune-minimal": ["prune", *TEACHER, "--task", "sst2", "--output", "o"],
    "prune-all": ["prune", *TEACHER, "--task", "stsb", "--data-dir", "glue", "--output", "o", "--preset", "quick",
                  "--importance", "activation", "--no-rearrange", "--no-tune", "--ridge", "0.01",
                  "--channel-granularity", "16"] + BUDGET + RUN_FLAGS,
    "prune-own-data": ["prune", *TEACHER, "--output", "o", "--dataset", "d"],
    "distill-minimal": ["distill", *TEACHER, "--task", "mrpc", "--output", "o"],
    "distill-all": ["distill", *TEACHER, "--task", "mrpc", "--data-dir", "glue", "--output", "o", "--preset", "quick",
                    "--recipe", "makd", "--student-layers", "2", "--layer-init", "first", "--student-heads", "2",
                    "--student-intermediate", "64", "--student-hidden", "128", "--steps", "10", "--kd",
                    "attention_weight=2,temperature=1", "--lr", "1e-4", "--batch-size", "4", "--eval-batch-size", "8",
                    "--max-seq-len", "32", "--max-train-examples", "40", "--max-eval-examples", "20", "--seed", "3",
                    "--device", "cpu", "--path", "compact", "--teacher-cache", "disk", "--teacher-cache-dtype", "fp16",
                    "--overwrite", "--save-steps", "5", "--resume", "--keep-checkpoints", "--no-progress"],
    "distill-lm": ["distill", *LM, "--block-size", "16", "--recipe", "joint"],
    "distill-own-data": ["distill", *TEACHER, "--output", "o"] + OWN_DATA,
    "sweep-minimal": ["sweep", *TEACHER, "--task", "mrpc", "--grid", "attn_weight=0.5,1;temperature=1,4", "--output",
                      "o"],
    "sweep-student": ["sweep", *TEACHER, "--task", "mrpc", "--data-dir", "glue", "--grid", "T=1,2", "--output", "o",
                      "--mode", "student", "--heatmap", "T,attn_weight", "--preset", "quick", "--recipe", "tinybert",
                      "--student-layers", "2", "--layer-init", "last", "--steps", "20", "--kd", "hidden_weight=2",
                      "--lr", "1e-4", "--batch-size", "4", "--eval-batch-size", "8", "--max-seq-len", "32",
                      "--max-train-examples", "40", "--max-eval-examples", "20", "--seed", "3", "--device", "cpu",
                      "--path", "compact", "--resume", "--overwrite"],
    "sweep-ddk": ["sweep", *TEACHER, "--task", "sst2", "--grid-file", "{grid}", "--output", "o", "--mode", "ddk",
                  "--target", "params=0.6", "--lr", "1e-4", "--max-seq-len", "32"],
    "sweep-ddk-lm": ["sweep", *LM, "--grid", "temperature=1,2", "--mode", "ddk", "--search-steps", "4",
                     "--distill-steps", "6", "--block-size", "16", "--kd", "hidden_weight=0.5"],
    "evaluate-minimal": ["evaluate", "--model", "m"],
    "evaluate-all": ["evaluate", "--model", "m", "--task", "sst2", "--data-dir", "g", "--output", "x.json", "--split",
                     "train", "--batch-size", "8", "--max-seq-len", "32", "--max-eval-examples", "10", "--device",
                     "cpu", "--path", "reference", "--force", "--int8"],
    "evaluate-own-data": ["evaluate", "--model", "m", "--validation-file", "new.csv"] + OWN_DATA[:2] + OWN_DATA[4:],
    "pretrain-lm-minimal": ["pretrain-lm", "--train-file", "a.txt", "--output", "o"],
    "pretrain-lm-all": ["pretrain-lm", "--train-file", "a.txt", "--eval-file", "b.txt", "--output", "o",
                        "--vocab-size", "300", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size",
                        "16", "--steps", "10", "--batch-size", "4", "--lr", "0.01", "--seed", "1", "--max-blocks", "9",
                        "--overwrite"],
    "compress-threads": ["compress", *TEACHER, "--task", "sst2", "--output", "o", "--threads", "3",
                         "--tuning-check-examples", "7"],
    "compress-lm-threads": ["compress", *LM, "--threads", "3"],
    "prune-threads": ["prune", *TEACHER, "--task", "sst2", "--output", "o", "--threads", "3",
                      "--tuning-check-examples", "0"],
    "distill-threads": ["distill", *TEACHER, "--task", "mrpc", "--output", "o", "--threads", "3"],
    "sweep-threads": ["sweep", *TEACHER, "--task", "mrpc", "--grid", "T=1,2", "--output", "o", "--threads", "3"],
    "evaluate-threads": ["evaluate", "--model", "m", "--threads", "3"],
    "finetune-threads": ["finetune", "--task", "sst2", "--output", "o", "--threads", "3"],
    "data-check-minimal": ["data", "check", "--task", "sst2"],
    "data-check-all": ["data", "check", "--data-dir", "g", "--model", "m", "--max-seq-len", "64", "--json"]
                      + OWN_DATA,
    "export-onnx-minimal": ["export-onnx", "m", "--output", "o"],
    "export-onnx-all": ["export-onnx", "m", "--output", "o", "--opset", "14", "--int8", "--overwrite"],
    "latency-minimal": ["latency", "m"],
    "latency-all": ["latency", "m", "--teacher", "t", "--latency-shapes", "1x16", "--runtimes", "torch,onnx",
                    "--latency-threads", "2", "--latency-repeats", "3", "--output", "l.json"],
    "benchmark-minimal": ["benchmark"],
    "doctor-minimal": ["doctor"],
    "doctor-json": ["doctor", "--json"],
    "benchmark-all": ["benchmark", "--quick", "-k", "attn", "--threads", "2", "--timer", "cpu", "--output", "o",
                      "--bench-dir", "b"],
}

# command lines refused before any work (exit 2: a one-line error, or argparse's usage error)
REFUSED = {
    "compress-lm-flag-without-lm": ["compress", *TEACHER, "--task", "sst2", "--output", "o", "--block-size", "8"],
    "compress-lm-glue-flag": ["compress", *LM, "--data-dir", "g"],
    "compress-lm-other-search": ["compress", *LM, "--search", "progressive"],
    "sweep-ddk-student-flag": ["sweep", *TEACHER, "--task", "mrpc", "--grid", "T=1", "--output", "o", "--mode", "ddk",
                               "--recipe", "makd"],
    "sweep-student-target": ["sweep", *TEACHER, "--task", "mrpc", "--grid", "T=1", "--output", "o", "--target",
                             "params=0.5"],
    "distill-unknown-preset": ["distill", *TEACHER, "--task", "mrpc", "--output", "o", "--preset", "nope"],
    "compress-bad-choice": ["compress", *TEACHER, "--task", "mrpc", "--output", "o", "--search", "nope"],
    "finetune-missing-config": ["finetune", "--task", "mrpc", "--output", "o", "--config", "no-such.yaml"],
    "evaluate-without-model": ["evaluate", "--task", "sst2"],
    "finetune-not-an-int": ["finetune", "--task", "mrpc", "--output", "o", "--epochs", "two"],
}


# ----------------------------------------------------------------------------------------------- recording
def _plain(value):
    """A call argument as JSON: dataclasses as their fields, tuples as lists, functions by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):  # e.g. a log=print parameter
        return f"<callable {value.__qualname__}>"
    return value


class _Result(dict):
    """A run's result with every key the printing reads (None when the stub did not set it)."""

    def __missing__(self, key):
        return None


def _install_stubs(patch, calls: list) -> None:
    """Replace the pipelines by stubs that record each call as the full set of the function's parameters
    (defaults filled in), so passing a default explicitly or leaving it to the signature reads the same."""
    for target, result in {**RUNS, **PRINTERS}.items():
        module_name, name = target.split(":")
        module = importlib.import_module(module_name)
        original = inspect.unwrap(getattr(module, name))  # a stub left by an earlier recording wraps it
        signature = inspect.signature(original)
        recording = target in RUNS

        def stub(*args, _target=target, _result=result, _record=recording, _sig=signature, **kwargs):
            if _record:
                bound = _sig.bind(*args, **kwargs)
                bound.apply_defaults()
                calls.append({"call": _target, "arguments": _plain(dict(bound.arguments))})
            return _Result(_result) if isinstance(_result, dict) else _result

        stub.__wrapped__ = original
        patch(module, name, stub)


def _argv(line: list, files: dict) -> list:
    return [files.get(a, a) for a in line]


def _files(folder) -> dict:
    out = {}
    for key, text in (("{config}", CONFIG_YAML), ("{compress_config}", COMPRESS_YAML), ("{grid}", GRID_YAML)):
        path = os.path.join(str(folder), key.strip("{}") + ".yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        out[key] = path
    return out


def _exit_code(argv: list) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return exc.code


def _record_line(argv: list, patch) -> dict:
    calls: list = []
    _install_stubs(patch, calls)
    rc = _exit_code(argv)
    assert rc == 0, f"{argv} exited {rc}"
    assert len(calls) == 1, f"{argv} called {len(calls)} pipelines"
    return calls[0]


def _subparsers(parser) -> dict:
    """{"compress": parser, "data check": parser, ...} for every command and sub-command."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


def _type_name(action) -> str:
    typ = action.type
    return "str" if typ in (None, str) else getattr(typ, "__name__", str(typ))


def flag_specs(parser) -> dict:
    """{command: {option or <positional>: what it parses to}} (help text and argparse defaults left out:
    the defaults a command line ends up with are pinned by the command lines)."""
    specs = {}
    for command, sub in _subparsers(parser).items():
        table = {}
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            spec = {"dest": action.dest, "takes_value": action.nargs != 0, "const": action.const,
                    "type": _type_name(action), "choices": sorted(action.choices) if action.choices else None,
                    "required": bool(action.required)}
            for name in action.option_strings or [f"<{action.dest}>"]:
                table[name] = spec
        specs[command] = table
    return specs


def record(folder, patch) -> dict:
    files = _files(folder)
    return {"flags": flag_specs(build_parser()),
            "lines": {name: _record_line(_argv(line, files), patch) for name, line in LINES.items()}}


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def pinned():
    with open(PIN_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def test_every_pinned_flag_parses_as_before(pinned):
    now = flag_specs(build_parser())
    for command, table in pinned["flags"].items():
        assert command in now, f"command {command!r} is gone"
        for name, spec in table.items():
            assert name in now[command], f"{command} {name} is gone"
            got = dict(now[command][name])
            if spec["choices"] is None:  # a flag may gain the choices it lacked
                got["choices"] = None
            assert got == spec, f"{command} {name}: now {got}, pinned {spec}"


@pytest.mark.parametrize("name", sorted(LINES))
def test_command_line_reaches_its_pipeline_with_the_pinned_values(name, pinned, tmp_path, monkeypatch):
    files = _files(tmp_path)
    got = _record_line(_argv(LINES[name], files), monkeypatch.setattr)
    assert got == pinned["lines"][name]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_command_line_stays_refused(name, tmp_path, monkeypatch, capsys):
    calls: list = []
    _install_stubs(monkeypatch.setattr, calls)
    assert _exit_code(REFUSED[name]) == 2
    assert calls == []
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ddk-fast ") and ": error: " in last


def test_pins_cover_every_command(pinned):
    """A new command (or sub-command) gets pinned command lines too."""
    commands = {" ".join(line[:2]) if line[0] == "data" else line[0] for line in LINES.values()}
    assert set(pinned["flags"]) - {"data"} <= commands


if __name__ == "__main__":  # pragma: no cover - records the pins: python tests/test_cli_pin.py --write
    import tempfile

    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_cli_pin.py --write   (records tests/data/cli_pin.json)")
    with tempfile.TemporaryDirectory() as tmp:
        result = record(tmp, setattr)
    with open(PIN_FILE, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {PIN_FILE}: {len(result['lines'])} command lines, {len(result['flags'])} commands")
