"""Named schedules.

``quick``: the README's end-to-end example (fine-tune a teacher on 4000 SST-2 sentences, prune it
one-shot, compress it, on SST-2) fits in about 10 minutes on a 2-core CPU: a subsampled train set,
dynamic padding, a few hundred steps. ``full`` (the default) is the real schedule.

Precedence, lowest first: the config dataclass defaults < the preset < a ``--config`` YAML file <
flags given on the command line.
"""
from __future__ import annotations
from ddk_fast.errors import UserError

PRESETS: dict[str, dict[str, dict]] = {
    "finetune": {
        "full": {
            "epochs": 3,
            "lr": 1e-4,  # MiniLM-L6 under-fits at 5e-5 in 3 epochs (docs/results.md, "Teachers")
            "batch_size": 32,
            "max_seq_len": 128,
            "max_train_examples": None,
            "save_steps": 500,
        },
        "quick": {
            "epochs": 2,
            "lr": 1e-4,
            "batch_size": 32,
            "max_seq_len": 128,
            "max_train_examples": 4000,
            "save_steps": 50,
        },
    },
    "prune": {
        "full": {"calibration_examples": 2048},
        "quick": {"calibration_examples": 512, "tuning_examples": 256, "latency_batch_size": 8, "latency_seq_len": 64,
                  "latency_repeats": 5},
    },
    "compress": {
        "full": {
            "search_epochs": 3,
            "distill_epochs": 6,
            "batch_size": 32,
            "max_seq_len": 128,
            "max_train_examples": None,
            "save_steps": 500,
            "latency_batch_size": 32,
            "latency_seq_len": 128,
        },
        "quick": {
            "search_epochs": 1,
            "distill_epochs": 1,
            "batch_size": 32,
            "max_seq_len": 128,
            "max_train_examples": 1000,
            "max_eval_examples": None,
            "save_steps": 50,
            "latency_batch_size": 8,
            "latency_seq_len": 64,
            "latency_repeats": 5,
            "log_steps": 5,
        },
    },
}

PRESETS["distill"] = {
    "full": {},
    "quick": {"steps": 200, "max_train_examples": 2000, "max_eval_examples": 400, "max_seq_len": 64,
              "batch_size": 16, "lr": 1e-4, "block_size": 64},
}
PRESETS["compress-lm"] = {  # ``compress --task lm``
    "full": {},
    "quick": {"search_steps": 150, "distill_steps": 300, "block_size": 64, "batch_size": 16,
              "max_train_examples": 2000, "max_eval_examples": 200, "lr": 3e-4, "channel_granularity": 16},
}


# Per-task values of the ``full`` schedule, from the lr x epochs sweep of docs/results.md ("Teachers"): on
# CoLA the packaged MiniLM-L6 reaches MCC 29.6 at lr 5e-5 (best of 5 epochs) against 26.6 at 1e-4 and 12.2
# at 2e-4. A named preset (``quick``) is a schedule of its own and takes none of them; flags and
# ``--config`` values win over them as over any preset value.
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    "finetune": {"cola": {"lr": 5e-5, "epochs": 5}},
}


def preset_values(command: str, name: str, task=None) -> dict:
    """The values preset ``name`` of ``command`` sets; for ``full``, with ``task``'s own (``TASK_DEFAULTS``)."""
    table = PRESETS[command]
    if name not in table:
        raise UserError(f"--preset {name!r} is not a preset; expected one of {', '.join(table)}")
    values = dict(table[name])
    if name == "full" and isinstance(task, str):
        values.update(TASK_DEFAULTS.get(command, {}).get(task.lower(), {}))
    return values
