"""OFA as a native transformers model. Importing this package registers it with the Auto classes.

Saved folders also carry the model's code and an `auto_map` (`register_for_auto_class`), so that
`AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)` works where this package is not installed;
where it is imported, its own classes are used and `trust_remote_code` is not needed.

`import modeling_ofa` loads what the model needs (its configuration, modules, MoE and ResNet, and the int8 quantizer,
which `from_pretrained` of a quantized folder looks up by name). The checkpoint converter, the ONNX exporter and the
PEFT helpers load on first use of one of their names (`modeling_ofa.export_onnx`, ...), so that importing the model
does not import `onnx`, `onnxruntime` or `peft`. PEFT's default LoRA targets for `model_type="ofa"` are registered as
soon as `peft` itself is imported, so `peft.get_peft_model(model, LoraConfig(r=8))` needs no `target_modules`.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForSeq2SeqLM

from .configuration_ofa import EXTRA_MODALITIES, MODALITIES, MOE_TYPES, PRESETS, RESNET_LAYERS, OFAConfig
from .configuration_vqgan import VQGAN_PRESETS, OFAVQGANConfig
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
from .modeling_vqgan import (
    OFAVQGANModel,
    OFAVQGANOutput,
    VQTrainingResult,
    images_to_pixel_values,
    pixel_values_to_images,
    reconstruction_error,
    train_vq_tokenizer,
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

# Eager: importing it registers the int8 quantizer that `from_pretrained` of a quantized folder looks up by name.
from .quantization import greedy_agreement, logits_max_abs_diff, quantize_dynamic_int8, tied_lm_head_error
from .resnet import RESNET_NORMS, FrozenBatchNorm2d, freeze_resnet_norm

if TYPE_CHECKING:
    from .convert import (
        StateDictMismatchError,
        check_state_dict,
        convert_checkpoint,
        convert_state_dict,
        load_original_checkpoint,
    )
    from .convert_vqgan import (
        config_from_taming_yaml,
        convert_vqgan_checkpoint,
        convert_vqgan_state_dict,
        load_converted_vqgan,
        load_vqgan_checkpoint,
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

# Loaded on first use: name -> submodule (the converter, the ONNX exporter and the PEFT helpers).
_LAZY_MODULES = {
    ".convert": [
        "StateDictMismatchError",
        "check_state_dict",
        "convert_checkpoint",
        "convert_state_dict",
        "load_original_checkpoint",
    ],
    ".convert_vqgan": [
        "config_from_taming_yaml",
        "convert_vqgan_checkpoint",
        "convert_vqgan_state_dict",
        "load_converted_vqgan",
        "load_vqgan_checkpoint",
    ],
    ".onnx": ["OnnxOFA", "OnnxValidation", "export_onnx", "quantize_onnx_int8", "validate_onnx"],
    ".peft_utils": [
        "LORA_TARGET_GROUPS",
        "OFA_LORA_TARGET_MODULES",
        "TaskAdapters",
        "get_ofa_peft_model",
        "ofa_lora_config",
        "register_peft_defaults",
    ],
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}

__all__ = [
    "VQGAN_PRESETS",
    "OFAVQGANConfig",
    "OFAVQGANModel",
    "OFAVQGANOutput",
    "VQTrainingResult",
    "images_to_pixel_values",
    "pixel_values_to_images",
    "reconstruction_error",
    "train_vq_tokenizer",
    "config_from_taming_yaml",
    "convert_vqgan_checkpoint",
    "convert_vqgan_state_dict",
    "load_converted_vqgan",
    "load_vqgan_checkpoint",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _RegisterWithPeft(importlib.abc.MetaPathFinder):
    """Registers OFA's default LoRA targets right after `peft` is imported (PEFT reads them from its own tables when
    a `LoraConfig` names no `target_modules`), without importing `peft` with the model."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            import_module(".peft_utils", __name__)  # its import registers the defaults

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "peft" in sys.modules:
    import_module(".peft_utils", __name__)
elif not any(isinstance(finder, _RegisterWithPeft) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithPeft())
