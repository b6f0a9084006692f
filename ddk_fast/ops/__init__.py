"""Public fused ops. Each lives in its own module with its reference beside it.

The functions are bound here eagerly: a lazy ``__getattr__`` would be shadowed by the submodule of
the same name (``ddk_fast.ops.masked_ffn`` the module vs ``masked_ffn`` the op) as soon as anything
imports that submodule. Importing never touches a GPU (kernels are only compiled on first launch).
"""
from ddk_fast.ops.distill_losses import attention_distill_loss, hidden_distill_loss, soft_cross_entropy
from ddk_fast.ops.gated_attention import gated_attention, masked_self_attention
from ddk_fast.ops.masked_ffn import masked_ffn
from ddk_fast.ops.masked_linear import linear_active_in, linear_active_out

__all__ = [
    "attention_distill_loss",
    "gated_attention",
    "hidden_distill_loss",
    "linear_active_in",
    "linear_active_out",
    "masked_ffn",
    "masked_self_attention",
    "soft_cross_entropy",
]
