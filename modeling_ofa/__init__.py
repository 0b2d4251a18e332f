"""OFA as a native transformers model. Importing this package registers it with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_ofa import EXTRA_MODALITIES, MODALITIES, MOE_TYPES, PRESETS, RESNET_LAYERS, OFAConfig
from .convert import (
    StateDictMismatchError,
    check_state_dict,
    convert_checkpoint,
    convert_state_dict,
    load_original_checkpoint,
)
from .modeling_ofa import (
    OFADecoder,
    OFAEncoder,
    OFAEncoderOutput,
    OFAForConditionalGeneration,
    OFAModel,
    OFAPreTrainedModel,
    OFASeq2SeqLMOutput,
    shift_tokens_right,
)
from .moe import (
    FeedForward,
    ModalityMoE,
    MoEStats,
    TopKMoE,
    collect_moe_stats,
    dense_to_moe_state_dict,
    select_moe_layers,
    sum_aux_losses,
    upcycle_dense_ffn,
)
from .peft_utils import (
    LORA_TARGET_GROUPS,
    OFA_LORA_TARGET_MODULES,
    TaskAdapters,
    get_ofa_peft_model,
    ofa_lora_config,
    register_peft_defaults,
)

__all__ = [
    "EXTRA_MODALITIES",
    "MODALITIES",
    "MOE_TYPES",
    "PRESETS",
    "RESNET_LAYERS",
    "StateDictMismatchError",
    "check_state_dict",
    "convert_checkpoint",
    "convert_state_dict",
    "load_original_checkpoint",
    "LORA_TARGET_GROUPS",
    "OFA_LORA_TARGET_MODULES",
    "TaskAdapters",
    "get_ofa_peft_model",
    "ofa_lora_config",
    "register_peft_defaults",
    "FeedForward",
    "ModalityMoE",
    "MoEStats",
    "TopKMoE",
    "collect_moe_stats",
    "dense_to_moe_state_dict",
    "select_moe_layers",
    "sum_aux_losses",
    "upcycle_dense_ffn",
    "OFAConfig",
    "OFADecoder",
    "OFAEncoder",
    "OFAEncoderOutput",
    "OFAForConditionalGeneration",
    "OFAModel",
    "OFAPreTrainedModel",
    "OFASeq2SeqLMOutput",
    "shift_tokens_right",
]

AutoConfig.register("ofa", OFAConfig, exist_ok=True)
AutoModel.register(OFAConfig, OFAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(OFAConfig, OFAForConditionalGeneration, exist_ok=True)
