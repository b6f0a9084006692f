"""Teach stock ``transformers`` Auto classes the exported model types, so no folder code has to run.

An exported folder names its classes in config.json's ``auto_map``; stock transformers then runs the
folder's copy of the modeling file, and only with ``trust_remote_code=True``. transformers 5 reads
config.json before the tokenizer files, so even ``AutoTokenizer.from_pretrained(DIR)`` stops to ask
("run custom code? [y/N]", 15 s) for such a folder. Registering the packaged configuration and model
classes under the same ``model_type`` makes the types local: AutoConfig, AutoTokenizer and the model
Auto classes then load an export without the flag, without a prompt, and with the packaged code
(the same classes ``export-onnx`` reads), even from folders written by an older release.

Registration imports transformers' modeling code (seconds), so ``import ddk_fast`` does not do it:
call ``ddk_fast.register_auto_classes()`` once per process. A process that never imports ddk_fast
(a serving stack with stock transformers only) passes ``trust_remote_code=True`` to the tokenizer too.
"""
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification)

from ddk_fast.export import modeling_ddk_bert, modeling_ddk_gpt2

_REGISTRATIONS = (
    (modeling_ddk_bert.DdkBertConfig, (
        (AutoModel, modeling_ddk_bert.DdkBertModel),
        (AutoModelForSequenceClassification, modeling_ddk_bert.DdkBertForSequenceClassification),
        (AutoModelForTokenClassification, modeling_ddk_bert.DdkBertForTokenClassification),
        (AutoModelForQuestionAnswering, modeling_ddk_bert.DdkBertForQuestionAnswering),
    )),
    (modeling_ddk_gpt2.DdkGPT2Config, (
        (AutoModel, modeling_ddk_gpt2.DdkGPT2Model),
        (AutoModelForCausalLM, modeling_ddk_gpt2.DdkGPT2ForCausalLM),
    )),
)


def register_auto_classes() -> None:
    """Register the ddk_bert / ddk_gpt2 configs and models with the transformers Auto classes (idempotent)."""
    for config_class, models in _REGISTRATIONS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class, model_class in models:
            auto_class.register(config_class, model_class, exist_ok=True)
