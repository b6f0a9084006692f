"""Export a (pruned) masked transformer as a folder that stock transformers can load.

``save_pruned(model, out_dir, tokenizer=None, extra_files=None, overwrite=False) -> str``
    Writes config.json (model_type "ddk_bert", per-layer ``num_heads`` / ``intermediate_sizes``,
    ``auto_map`` for AutoConfig / AutoModel / AutoModelForSequenceClassification, or
    AutoModelForTokenClassification for a token classification model, AutoModelForQuestionAnswering for
    an extractive-QA one: ``start_logits`` / ``end_logits``), the standalone
    modeling file ``modeling_ddk_bert.py`` (plain torch + transformers, no ddk_fast import; attention
    through torch SDPA; uneven heads and widths, 0-unit blocks), model.safetensors, the tokenizer files
    (``tokenizer``: an object with ``save_pretrained`` or a folder to copy tokenizer files from),
    ``structure.json`` when the model came from ``prune`` (kept units relative to the original), and
    ``extra_files`` ({relative name: str (text) | bytes | dict/list (JSON) | pathlib.Path (copied)}).
    Atomic: written to a temporary sibling folder, then renamed; an existing non-empty ``out_dir``
    is refused unless ``overwrite=True`` (then replaced whole). Returns the folder path.

``load_pruned(dir, dtype=torch.float32) -> MaskedTransformer``: the exported model, ready for more
    distillation or evaluation (``pruned_from`` restored from structure.json when present).

``save_causal_lm(model, out_dir, tokenizer=None, extra_files=None, overwrite=False)`` / ``load_causal_lm(dir)``:
    the same for a (pruned) ``MaskedGPT2``: model_type "ddk_gpt2", standalone ``modeling_ddk_gpt2.py``;
    ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it and ``.generate()`` works
    (KV cache supported).

The folder also loads without ddk_fast:
    ``transformers.AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``
    (same logits), ``AutoModel`` (encoder + pooler), ``AutoConfig``. Load the tokenizer with
    ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)`` too: AutoTokenizer reads config.json
    first, and without the flag transformers stops to ask (stdin prompt, 15 s) because it names custom code.

``register_auto_classes()``: registers ddk_bert / ddk_gpt2 with AutoConfig / AutoModel /
    AutoModelForSequenceClassification / AutoModelForTokenClassification / AutoModelForQuestionAnswering /
    AutoModelForCausalLM, so those and AutoTokenizer load exports
    without ``trust_remote_code`` and with the packaged classes (no folder code runs).
"""
from ddk_fast._lazy import lazy_attributes

_WHERE = {
    "save_pruned": "ddk_fast.export.save",
    "load_pruned": "ddk_fast.export.save",
    "MODEL_TYPE": "ddk_fast.export.save",
    "save_causal_lm": "ddk_fast.export.gpt2",
    "load_causal_lm": "ddk_fast.export.gpt2",
    "register_auto_classes": "ddk_fast.export.auto",
}

__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
