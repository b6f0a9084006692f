"""Options several commands take with one meaning: the task and the teacher, the schedule switches, the
checkpoint and output switches, the kernel path, the teacher cache, the KD catalog. Each is declared
here once (help, group, choices); a command passes its own default where the commands differ.

    from ddk_fast.runs import shared_options as shared

    @dataclass
    class DistillConfig:
        seed: int = shared.seed()
        batch_size: int = shared.batch_size(32)
"""
from __future__ import annotations

from typing import Any, Optional

from ddk_fast.data.tasks import GLUE_TASKS
from ddk_fast.distill.objectives import kd_options_help
from ddk_fast.ops._dispatch import ENGINE_PATHS
from ddk_fast.runs import teacher_cache as _teacher_cache
from ddk_fast.runs.options import POSITIVE, api_only, option
from ddk_fast.runs.threads import THREADS_HELP

PATHS = ("auto", *ENGINE_PATHS)
GLUE_TASK_HELP = (f"GLUE task: {' '.join(GLUE_TASKS)} (or CoLA, SST-2, ...); with --train-file/--dataset an "
                  "optional name for your task")
LM_TASK_HELP = "GLUE task, or lm (or a name for your --train-file/--dataset task)"


# ------------------------------------------------------------------------------------- model and task
def task(help: str = GLUE_TASK_HELP, default: Optional[str] = "") -> Any:
    return option(default, help=help, group="task")


def data_dir(help: str = "folder of GLUE TSVs (DIR/MRPC/train.tsv); default: the Hugging Face hub") -> Any:
    return option(None, help=help, group="task")


def teacher(help: str) -> Any:
    return option("", help=help, group="task")


# ------------------------------------------------------------------------------------------ training
def seed(default: int = 42) -> Any:
    return option(default, help="random seed", group="train")


def batch_size(default: int, help: str = "training batch size per process") -> Any:
    return option(default, help=help, group="train", minimum=POSITIVE)


def eval_batch_size(default: int) -> Any:
    return option(default, help="evaluation batch size", group="train", minimum=POSITIVE)


def max_seq_len(default: Optional[int] = 128,
                help: str = "truncate inputs to this many tokens (batches use dynamic padding)") -> Any:
    return option(default, help=help, group="train", minimum=POSITIVE)


def max_train_examples(help: str = "use a seeded random subset of the train split") -> Any:
    return option(None, help=help, group="train", minimum=POSITIVE)


def max_eval_examples(help: str = "use a seeded random subset of the dev split") -> Any:
    return option(None, help=help, group="train", minimum=POSITIVE)


def lr(default: float, help: str = "learning rate of the model weights") -> Any:
    return option(default, help=help, group="train", minimum=POSITIVE)


def weight_decay(default: float = 0.01) -> Any:
    return option(default, help="AdamW weight decay", group="train")


def warmup_ratio(default: float) -> Any:
    return option(default, help="fraction of the steps with linear learning-rate warmup", group="train")


def max_grad_norm(default: float = 1.0) -> Any:
    return option(default, help="clip the global gradient norm to this", group="train")


# ------------------------------------------------------------------------------------ run and output
def output(help: str) -> Any:
    return option("", help=help, group="run")


def preset(*tables: dict) -> Any:
    """``--preset``, its choices the schedules every given table names (e.g. PRESETS["compress"])."""
    names = sorted(set.intersection(*(set(t) for t in tables)))
    return option("full", help="schedule: quick (minutes on a CPU) or full", group="run", choices=names)


def device() -> Any:
    return option("auto", help="auto, cpu, cuda or cuda:N", group="run")


def threads() -> Any:
    return option(None, help=THREADS_HELP, group="run", metavar="N")


def kernel_path(help: str = "kernel path of the masked model") -> Any:
    return option("auto", help=help, group="run", choices=PATHS)


def save_steps(default: int) -> Any:
    return option(default, help="write a resumable checkpoint every N steps", group="run", minimum=POSITIVE)


def log_steps(default: int) -> Any:
    return option(default, help="log the training loss every N steps", group="run", minimum=POSITIVE)


def overwrite(help: str = "replace an existing --output (and any unfinished run of it)") -> Any:
    return option(False, help=help, group="run")


def resume(help: str = "continue the unfinished run of --output from its last checkpoint") -> Any:
    return option(False, help=help, group="run")


def keep_checkpoints() -> Any:
    return option(False, help="keep OUTPUT.inprogress/ (checkpoints) after the run finishes", group="run")


def progress() -> Any:
    return option(True, help="no progress bars or console messages", group="run", flag="--no-progress")


def stop_after_steps() -> Any:
    return api_only(None, why="testing hook: stop as if killed right after this global step")


# ------------------------------------------------------------------------------------- distillation
def teacher_cache() -> Any:
    return option("auto", group="distill", choices=_teacher_cache.MODES,
                  help="teacher outputs computed once per example (first epoch) and reused by later epochs and "
                       "stages: in memory, in a memory-mapped file under the run folder, auto (memory if it fits "
                       "in a quarter of the available RAM, else disk, else off) or off")


def teacher_cache_dtype() -> Any:
    return option("bf16", group="distill", choices=tuple(_teacher_cache.DTYPES),
                  help="storage precision of the teacher cache (fp32 returns exactly what was stored)")


def kd(default: Any = None, default_factory: Any = None) -> Any:
    """``--kd KEY=VALUE,...``: terms of the KD catalog; its help lists every key, default and choice."""
    if default_factory is not None:
        return option(default_factory=default_factory, help=kd_options_help(), group="distill", metavar="KEY=VALUE,...")
    return option(default, help=kd_options_help(), group="distill", metavar="KEY=VALUE,...")
