"""Public fused ops. Each lives in its own module with its reference beside it; imported lazily so
that ``import ddk_fast.ops`` stays cheap and never touches a GPU."""
import importlib

_WHERE = {
    "gated_attention": "ddk_fast.ops.gated_attention",
    "masked_self_attention": "ddk_fast.ops.gated_attention",
    "linear_active_out": "ddk_fast.ops.masked_linear",
    "linear_active_in": "ddk_fast.ops.masked_linear",
    "masked_ffn": "ddk_fast.ops.masked_ffn",
    "hidden_distill_loss": "ddk_fast.ops.distill_losses",
    "attention_distill_loss": "ddk_fast.ops.distill_losses",
    "soft_cross_entropy": "ddk_fast.ops.distill_losses",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ddk_fast.ops' has no attribute {name!r}")
