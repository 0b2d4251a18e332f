"""OFA as a native transformers model. Importing this package registers it with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_ofa import PRESETS, RESNET_LAYERS, OFAConfig
from .modeling_ofa import (
    OFADecoder,
    OFAEncoder,
    OFAEncoderOutput,
    OFAForConditionalGeneration,
    OFAModel,
    OFAPreTrainedModel,
    shift_tokens_right,
)

__all__ = [
    "PRESETS",
    "RESNET_LAYERS",
    "OFAConfig",
    "OFADecoder",
    "OFAEncoder",
    "OFAEncoderOutput",
    "OFAForConditionalGeneration",
    "OFAModel",
    "OFAPreTrainedModel",
    "shift_tokens_right",
]

AutoConfig.register("ofa", OFAConfig, exist_ok=True)
AutoModel.register(OFAConfig, OFAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(OFAConfig, OFAForConditionalGeneration, exist_ok=True)
