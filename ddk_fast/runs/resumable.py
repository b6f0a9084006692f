"""Publishing the result of the step-counted runs (``distill``, ``compress --task lm``): the exported
model with its report files and logs, swapped onto the output in one rename.

(Their checkpoints and resume are ``ddk_fast.runs.checkpointer.Checkpointer``'s, as for every run.)
"""
from __future__ import annotations

import shutil

from ddk_fast._io import to_jsonable
from ddk_fast.export.gpt2 import save_causal_lm
from ddk_fast.export.save import save_pruned
from ddk_fast.model.gpt2 import MaskedGPT2
from ddk_fast.runs.rundir import copy_logs, finalize, stage_dir


def export_model(model, tokenizer, out: str, extra_files: dict) -> str:
    """Atomic export of a MaskedTransformer (``save_pruned``) or MaskedGPT2 (``save_causal_lm``) with extra files."""
    if isinstance(model, MaskedGPT2):
        return save_causal_lm(model, out, tokenizer=tokenizer, extra_files=extra_files, overwrite=True)
    return save_pruned(model, out, tokenizer=tokenizer, extra_files=extra_files, overwrite=True)


def publish(dirs, model, tokenizer, extra_files: dict, keep_work: bool) -> str:
    """Export the finished model (+ report files and the run's logs) into a staged folder, then swap it
    onto the output in one rename: the output is either the previous result or the complete new one."""
    staged = stage_dir(dirs)
    try:
        export_model(model, tokenizer, staged, {name: to_jsonable(value) for name, value in extra_files.items()})
        copy_logs(dirs, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finalize(dirs, staged, keep_work=keep_work)
    return dirs.output


__all__ = ["export_model", "publish"]
