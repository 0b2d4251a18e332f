"""OFA as a native transformers model. Importing this package registers it with the Auto classes.

Saved folders also carry the model's code and an `auto_map` (`register_for_auto_class`), so that
`AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)` works where this package is not installed;
where it is imported, its own classes are used and `trust_remote_code` is not needed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForSeq2SeqLM

from .configuration_ofa import EXTRA_MODALITIES, MODALITIES, MOE_TYPES, PRESETS, RESNET_LAYERS, OFAConfig
from .convert import (
    StateDictMismatchError,
    check_state_dict,
    convert_checkpoint,
    convert_state_dict,
    load_original_checkpoint,
)
from .modeling_ofa import (
    CACHE_NAME,
    OFACache,
    OFADecoder,
    OFADecoderOutput,
    OFAEncoder,
    OFAEncoderOutput,
    OFAForConditionalGeneration,
    OFAModel,
    OFAPreTrainedModel,
    OFASeq2SeqLMOutput,
    micro_batch_share,
    shift_tokens_right,
)
from .moe import (
    FeedForward,
    ModalityMoE,
    MoEStats,
    TopKMoE,
    TopKRouter,
    collect_moe_stats,
    dense_to_moe_state_dict,
    router_losses,
    select_moe_layers,
    sum_aux_losses,
    upcycle_dense_ffn,
)
from .onnx import OnnxOFA, OnnxValidation, export_onnx, quantize_onnx_int8, validate_onnx
from .peft_utils import (
    LORA_TARGET_GROUPS,
    OFA_LORA_TARGET_MODULES,
    TaskAdapters,
    get_ofa_peft_model,
    ofa_lora_config,
    register_peft_defaults,
)
from .quantization import greedy_agreement, logits_max_abs_diff, quantize_dynamic_int8, tied_lm_head_error
from .resnet import RESNET_NORMS, FrozenBatchNorm2d, freeze_resnet_norm

__all__ = [
    "OnnxOFA",
    "OnnxValidation",
    "export_onnx",
    "quantize_onnx_int8",
    "validate_onnx",
    "greedy_agreement",
    "logits_max_abs_diff",
    "quantize_dynamic_int8",
    "tied_lm_head_error",
    "EXTRA_MODALITIES",
    "MODALITIES",
    "MOE_TYPES",
    "PRESETS",
    "RESNET_LAYERS",
    "RESNET_NORMS",
    "FrozenBatchNorm2d",
    "freeze_resnet_norm",
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
    "TopKRouter",
    "collect_moe_stats",
    "dense_to_moe_state_dict",
    "router_losses",
    "select_moe_layers",
    "sum_aux_losses",
    "upcycle_dense_ffn",
    "OFAConfig",
    "CACHE_NAME",
    "OFACache",
    "OFADecoder",
    "OFADecoderOutput",
    "OFAEncoder",
    "OFAEncoderOutput",
    "OFAForConditionalGeneration",
    "OFAModel",
    "OFAPreTrainedModel",
    "OFASeq2SeqLMOutput",
    "micro_batch_share",
    "shift_tokens_right",
]

AutoConfig.register("ofa", OFAConfig, exist_ok=True)
AutoModel.register(OFAConfig, OFAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(OFAConfig, OFAForConditionalGeneration, exist_ok=True)
# images + a prompt -> text: what `pipeline("image-text-to-text")` loads (the processor takes `images=`, `text=`).
AutoModelForImageTextToText.register(OFAConfig, OFAForConditionalGeneration, exist_ok=True)
OFAConfig.register_for_auto_class()
OFAForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
