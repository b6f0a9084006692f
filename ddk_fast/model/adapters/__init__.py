"""Checkpoint-family adapters: stock transformers layouts -> MaskedTransformer layout.

Built in: "bert", "roberta", "xlm-roberta", "electra" (bert.py) and "distilbert" (distilbert.py);
``base.REFUSED`` names the families that are refused and why (docs/models.md). A new family (GPT-2:
pre-LN, causal, Conv1D weights) adds a module here that implements ``FamilyAdapter`` (see base.py)
and calls ``register_adapter``; the masked layers may need matching switches in TransformerConfig
(pre-LN, final norm, last-token pooling).
"""
from ddk_fast.model.adapters.base import FamilyAdapter, adapter_for, refusal, register_adapter, supported_model_types
from ddk_fast.model.adapters import bert as _bert  # noqa: F401 - registers bert, roberta, xlm-roberta, electra
from ddk_fast.model.adapters import distilbert as _distilbert  # noqa: F401 - registers distilbert

__all__ = ["FamilyAdapter", "adapter_for", "refusal", "register_adapter", "supported_model_types"]
