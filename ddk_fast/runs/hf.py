"""Stock transformers sequence / token classifiers and extractive-QA models (the teacher): load with
checks, save as a standard folder.

Only safetensors weights are read (``use_safetensors=True``): a folder with pickled weights only is
refused rather than unpickled.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch

from ddk_fast.data.encoding import needs_prefix_space, with_prefix_space
from ddk_fast.errors import UserError


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report (missing classifier weights are expected for a fresh head)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    import logging as std_logging

    hub_logger = std_logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    hub_logger.setLevel(std_logging.ERROR)
    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        hub_logger.setLevel(hub_level)
        if bars:
            hf_logging.enable_progress_bar()


def read_config(path: str) -> dict:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise UserError(f"{path!r} is not a model folder: config.json not found")
    try:
        with open(cfg, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg!r}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None


# architecture suffix -> the kind of head it names (what check_head_kind compares with the task's)
HEAD_KINDS = {"ForSequenceClassification": "sequence-classification", "ForTokenClassification": "token-classification",
              "ForQuestionAnswering": "question-answering"}
HEAD_SUFFIXES = tuple(HEAD_KINDS)


def has_classifier_head(config: dict) -> bool:
    """A sequence or token classification or a QA span head (``check_label_count`` then checks its rows)."""
    return any(a.endswith(HEAD_SUFFIXES) for a in (config.get("architectures") or []))


def is_token_task(spec) -> bool:
    return bool(getattr(spec, "is_token_classification", False))


def is_qa_task(spec) -> bool:
    return bool(getattr(spec, "is_qa", False))


def head_kind_of(spec) -> str:
    """The head kind ``spec`` needs (a value of ``HEAD_KINDS``)."""
    if is_qa_task(spec):
        return "question-answering"
    return "token-classification" if is_token_task(spec) else "sequence-classification"


def head_kind(config: dict) -> str:
    """The kind of head a checkpoint config's architecture names (sequence classification when none)."""
    return next((kind for a in (config.get("architectures") or []) for suffix, kind in HEAD_KINDS.items()
                 if a.endswith(suffix)), "sequence-classification")


def check_head_kind(path: str, config: dict, spec) -> None:
    """A teacher's head must be the task's kind: per token for token classification, a span head for QA,
    per sequence otherwise (another kind's head may have the right shape but means something else)."""
    have, need = head_kind(config), head_kind_of(spec)
    if have != need:
        raise UserError(f"{path!r} has a {have} head (architectures={config.get('architectures')}) "
                        f"but task {spec.name} needs a {need} one; fine-tune it for the task "
                        f"with `ddk-fast finetune`")


def check_label_count(path: str, config: dict, spec) -> None:
    """A folder that already has a head of the task's kind must have the task's number of labels (a head
    of another kind is not used: fine-tuning starts a fresh one)."""
    if not has_classifier_head(config) or head_kind(config) != head_kind_of(spec):
        return
    n = config.get("num_labels")
    if n is None and config.get("id2label"):
        n = len(config["id2label"])
    if n is None and os.path.isdir(path):  # transformers 5 writes neither for the default 2 labels
        n = _classifier_rows(path)
    if n is not None and int(n) != spec.num_labels:
        raise UserError(f"the model at {path!r} has a {n}-label classifier but task {spec.name} needs "
                        f"{spec.num_labels} label(s)")


def _classifier_rows(path: str):
    """Output rows of the classifier in a folder's safetensors weights (header only), or None."""
    from safetensors import SafetensorError, safe_open

    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        try:
            with safe_open(os.path.join(path, name), "pt") as fh:
                for key in fh.keys():
                    # not DistilBERT's pre_classifier: its rows are the hidden size
                    if key == "classifier.weight" or key.endswith((".classifier.weight", "classifier.out_proj.weight")):
                        return int(fh.get_slice(key).get_shape()[0])
        except (OSError, SafetensorError):
            return None
    return None


def load_tokenizer(path: str, spec=None):
    """The tokenizer of a model folder (or hub name), ready for ``spec``'s inputs.

    Token classification feeds pre-split words: a byte-level BPE tokenizer (RoBERTa, GPT-2 style) is then
    loaded again with ``add_prefix_space=True`` so that each word is split as it is inside a sentence
    (``ddk_fast.data.encoding.needs_prefix_space``); saved with a run's output, it keeps that setting."""
    tokenizer = _tokenizer_from(path)
    if is_token_task(spec) and needs_prefix_space(tokenizer):
        tokenizer = _tokenizer_from(path, add_prefix_space=True)
        if needs_prefix_space(tokenizer):  # a plain fast tokenizer ignores the keyword: set it in the backend
            tokenizer = with_prefix_space(tokenizer)
        if needs_prefix_space(tokenizer):
            raise UserError(f"the tokenizer of {path!r} ({type(tokenizer).__name__}) is byte-level BPE and cannot be "
                            f"set to add a space before each pre-split word, which token classification needs")
    return tokenizer


def _tokenizer_from(path: str, **kwargs):
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():  # trust_remote_code=False: never run shipped code
            return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad folder from the user's point of view
        raise UserError(f"cannot load a tokenizer from {path!r}: {_one_line(exc)}") from None


def load_classifier(path: str, spec, require_head: bool = False):
    """(model, tokenizer) for ``spec`` from a local folder or a hub name; errors are one line naming it.

    A name that is not a local folder goes to the Hugging Face hub (or its cache); only safetensors
    weights are accepted either way."""
    if os.path.isdir(path):
        config = read_config(path)
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            raise UserError(f"{path!r} has no .safetensors weights; only safetensors checkpoints are read")
    elif _looks_like_path(path):
        raise UserError(f"model {path!r} is not a folder")
    else:
        config = _hub_config(path)
    if require_head and not has_classifier_head(config):
        raise UserError(f"{path!r} has no {head_kind_of(spec)} head (architectures="
                        f"{config.get('architectures')}); fine-tune it first with `ddk-fast finetune`")
    if require_head:
        check_head_kind(path, config, spec)
    check_label_count(path, config, spec)
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    auto_class = {"token-classification": AutoModelForTokenClassification,
                  "question-answering": AutoModelForQuestionAnswering}.get(head_kind_of(spec),
                                                                          AutoModelForSequenceClassification)
    kwargs = {"num_labels": spec.num_labels}
    if is_token_task(spec) or is_qa_task(spec):
        pass  # cross entropy per token (-100 labels skipped) / the span loss of the start and end positions
    elif spec.is_regression:
        kwargs["problem_type"] = "regression"
    elif getattr(spec, "is_multilabel", False):
        kwargs["problem_type"] = "multi_label_classification"  # BCE on multi-hot float labels
    else:
        kwargs["problem_type"] = "single_label_classification"
    kwargs["id2label"] = {i: n for i, n in enumerate(spec.label_names)}
    kwargs["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
    try:
        with quiet_transformers():
            model = auto_class.from_pretrained(path, use_safetensors=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load a {head_kind_of(spec)} model from {path!r}: {_one_line(exc)}") from None
    model.config.finetuning_task = spec.name
    return model, load_tokenizer(path, spec)


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else (./x, /x, a/b/c, an existing file) is a path."""
    return (os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def _hub_config(name: str) -> dict:
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(name, trust_remote_code=False).to_dict()
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad repo: all the user's to fix
        raise UserError(f"model {name!r} is not a local folder and cannot be fetched from the hub: "
                        f"{_one_line(exc)}") from None


def save_classifier(model, tokenizer, folder: str) -> None:
    """A standard transformers folder: config.json, model.safetensors, tokenizer files."""
    os.makedirs(folder, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def logits_of(model, batch: dict) -> torch.Tensor:
    """The model's logits; a QA model's start and end logits stacked as ``[B, S, 2]`` (the engine's layout)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"))
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits if hasattr(out, "logits") else out


def label_arguments(spec, labels: torch.Tensor) -> dict:
    """The keyword arguments that hand a batch's labels to a stock model's own loss: ``labels``, or a QA
    model's ``start_positions`` / ``end_positions`` (the columns of the ``[B, 2]`` labels)."""
    if is_qa_task(spec):
        return {"start_positions": labels[:, 0], "end_positions": labels[:, 1]}
    return {"labels": labels}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
