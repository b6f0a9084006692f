"""The commands as functions: finetune, prune, compress (GLUE and ``--task lm``), distill, sweep,
evaluate, data check, pretrain-lm, ONNX deployment. Each is a config dataclass and a ``run_*``
function that supplies its steps and epoch ends to ``ddk_fast.runs``. Never imports ``api`` or ``cli``."""
