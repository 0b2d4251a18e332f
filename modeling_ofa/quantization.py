"""int8 CPU inference: dynamic quantization of OFA's linear layers, and checks of what it costs in accuracy.

`quantize_dynamic_int8` stores every `nn.Linear` weight as int8 (one scale per output channel by default) and
quantizes activations per batch at run time (PyTorch dynamic quantization, fbgemm/x86 kernels). It applies to the
attention and feed-forward projections, the position projections, `image_proj`, the adapters and the output
projection `lm_head`. Embeddings, LayerNorms, the ResNet stem (convolutions) and `TopKMoE` routers stay in float:
the routers because a flipped routing decision changes a token's whole expert, and embeddings because the lookup is
not a matrix product.

Tied output projection: `lm_head` shares its weight with the token embedding. Quantizing it keeps the embedding in
float and gives `lm_head` the int8 rounding of that same matrix (checked by `tied_lm_head_error`), so the two stay
consistent up to one quantization step per value. The quantized model is for inference (`generate`, `forward`);
save the float model and quantize after loading.

API: `torch.ao.quantization.quantize_dynamic`. torch marks `torch.ao.quantization` as deprecated in favour of
`torchao`, which this project does not depend on; the eager dynamic path still exists in torch 2.13, and the
deprecation warning is silenced here. The ONNX route (`modeling_ofa.onnx.quantize_onnx_int8`) does not depend on it.

Saving and reloading: `quantize_dynamic_int8(model).save_pretrained(folder)` writes safetensors (each quantized
linear layer as its dequantized float weight plus its per-row scales and zero points, `weight_scale` and
`weight_zero_point`) and a `quantization_config` (`OFADynamicInt8Config`) in `config.json`; `from_pretrained(folder)`
(`AutoModelForSeq2SeqLM` too, once this package is imported) rebuilds the same int8 layers through
`OFADynamicInt8Quantizer`, registered with transformers' quantizers. Re-quantizing the dequantized weight with its
saved scale gives back the same int8 values, so the reloaded model computes exactly what the saved one did.

`greedy_agreement` and `logits_max_abs_diff` measure a quantized (or exported) model against the float one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .modeling_ofa import OFAForConditionalGeneration
from .moe import TopKMoE

__all__ = [
    "QUANT_METHOD",
    "OFADynamicInt8Config",
    "OFADynamicInt8Quantizer",
    "greedy_agreement",
    "logits_max_abs_diff",
    "quantize_dynamic_int8",
    "tied_lm_head_error",
]

QUANT_METHOD = "ofa_dynamic_int8"
"""`quant_method` of a saved int8 OFA model's `quantization_config`."""


@register_quantization_config(QUANT_METHOD)
class OFADynamicInt8Config(QuantizationConfigMixin):
    """`quantization_config` of a model saved after `quantize_dynamic_int8`.

    Args:
        modules (`list[str]`): Names of the linear layers stored as int8 (with `weight_scale`, `weight_zero_point`).
        per_channel (`bool`, defaults to `True`): One scale per output row (else one per matrix).
    """

    def __init__(self, modules: list[str] | None = None, per_channel: bool = True, **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.modules = list(modules or [])
        self.per_channel = per_channel


@register_quantizer(QUANT_METHOD)
class OFADynamicInt8Quantizer(HfQuantizer):
    """Loads a folder saved from a `quantize_dynamic_int8` model back into the same int8 layers (CPU inference)."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # Buffers the checkpoint fills with each layer's scales and zero points (the float weight loads as usual).
        for name in self.quantization_config.modules:
            linear = model.get_submodule(name)
            rows = linear.out_features if self.quantization_config.per_channel else 1
            linear.register_buffer("weight_scale", torch.ones(rows, device=linear.weight.device))
            linear.register_buffer(
                "weight_zero_point", torch.zeros(rows, dtype=torch.long, device=linear.weight.device)
            )
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        for name in self.quantization_config.modules:
            linear = model.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, _requantized(linear, self.quantization_config.per_channel))
        return model.eval()

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def _dynamic_linear_class() -> type[nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.nn.quantized.dynamic import Linear
    return Linear


def _saveable_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook of a dynamic int8 linear layer: its packed parameters (a `torch.dtype` and a tuple, which
    safetensors cannot store) become plain tensors: the dequantized weight, the bias, the scales and zero points."""
    for key in ("_packed_params.dtype", "_packed_params._packed_params", "scale", "zero_point"):
        state_dict.pop(prefix + key, None)
    weight, bias = module.weight(), module.bias()
    state_dict[prefix + "weight"] = weight.dequantize()
    if bias is not None:
        state_dict[prefix + "bias"] = bias.detach()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zero_points = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
    else:
        scales, zero_points = torch.tensor([weight.q_scale()]), torch.tensor([weight.q_zero_point()])
    state_dict[prefix + "weight_scale"] = scales.to(torch.float32)
    state_dict[prefix + "weight_zero_point"] = zero_points.to(torch.long)


def _requantized(linear: nn.Linear, per_channel: bool) -> nn.Module:
    """The dynamic int8 layer of a float layer that holds a dequantized weight and its saved scales."""
    weight = linear.weight.detach().to(torch.float32)
    scales, zero_points = linear.weight_scale.to(torch.float64), linear.weight_zero_point
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*", category=UserWarning)
        if per_channel:
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        else:
            qweight = torch.quantize_per_tensor(weight, float(scales[0]), int(zero_points[0]), torch.qint8)
    layer = _dynamic_linear_class()(linear.in_features, linear.out_features, bias_=linear.bias is not None)
    layer.set_weight_bias(qweight, None if linear.bias is None else linear.bias.detach().to(torch.float32))
    layer.register_state_dict_post_hook(_saveable_state)
    return layer


def _quantization_api():
    """`(quantize_dynamic, per-channel qconfig, per-tensor qconfig)`, or a clear error where torch dropped them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as err:  # pragma: no cover - depends on the torch release
        raise ImportError(
            "this torch has no eager dynamic quantization (torch.ao.quantization.quantize_dynamic); use the ONNX "
            "route instead: export_onnx(...) then quantize_onnx_int8(...)"
        ) from err
    return quantize_dynamic, per_channel_dynamic_qconfig, default_dynamic_qconfig


def quantize_dynamic_int8(
    model: OFAForConditionalGeneration,
    *,
    quantize_lm_head: bool = True,
    per_channel: bool = True,
    inplace: bool = False,
) -> OFAForConditionalGeneration:
    """Dynamic int8 quantization of the linear layers, for CPU inference.

    Args:
        model (`OFAForConditionalGeneration`): A float32 model on the CPU.
        quantize_lm_head (`bool`, defaults to `True`): Quantize the output projection too (the largest matrix
            product of every decoding step); `False` keeps it tied to the float embedding.
        per_channel (`bool`, defaults to `True`): One weight scale per output row (more accurate) rather than one
            per matrix.
        inplace (`bool`, defaults to `False`): Convert `model` itself instead of a copy.

    Returns:
        The quantized model, in eval mode.
    """
    if not isinstance(model, OFAForConditionalGeneration):
        raise TypeError(f"quantize_dynamic_int8 needs an OFAForConditionalGeneration, got {type(model).__name__}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("dynamic int8 quantization runs on the CPU; move the model with model.to('cpu') first")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("quantize a float32 model (dynamic quantization takes float32 weights and activations)")
    quantize_dynamic, channel_qconfig, tensor_qconfig = _quantization_api()
    spec: dict[Any, Any] = {nn.Linear: channel_qconfig if per_channel else tensor_qconfig}
    # `None` keeps a module (named by its path) in float.
    spec.update({f"{name}.router": None for name, module in model.named_modules() if isinstance(module, TopKMoE)})
    if not quantize_lm_head:
        spec["lm_head"] = None
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # torch warns that quantized tensor factories are deprecated; they are what dynamic quantization builds on.
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*", category=UserWarning)
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    dynamic_linear = _dynamic_linear_class()
    names = [name for name, module in model.named_modules() if isinstance(module, dynamic_linear)]
    for name in names:
        model.get_submodule(name).register_state_dict_post_hook(_saveable_state)
    # Saved into config.json, so that from_pretrained rebuilds these layers (OFADynamicInt8Quantizer).
    model.config = copy.deepcopy(model.config)
    model.config.quantization_config = OFADynamicInt8Config(modules=names, per_channel=per_channel)
    return model


def tied_lm_head_error(model: OFAForConditionalGeneration) -> float:
    """Max |dequantized `lm_head` weight - token embedding|, in units of the quantization step (at most 0.5).

    0 for an unquantized (tied) head. A value above 0.5 means the head no longer matches the embedding.
    """
    embedding = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings()
    weight = head.weight
    if not callable(weight):
        return float((weight.detach() - embedding).abs().max())
    quantized = weight()
    if quantized.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        step = quantized.q_per_channel_scales().to(embedding.dtype)[:, None]
    else:
        step = torch.tensor(quantized.q_scale(), dtype=embedding.dtype)
    return float(((quantized.dequantize() - embedding).abs() / step).max())


def _as_batch(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def logits_max_abs_diff(
    reference: OFAForConditionalGeneration, candidate: OFAForConditionalGeneration, batch: Mapping[str, Any]
) -> float:
    """Max |logit difference| of two models on one teacher-forced batch (`decoder_input_ids` or `labels` needed)."""
    inputs = dict(batch)
    if "decoder_input_ids" not in inputs:
        if "labels" not in inputs:
            raise ValueError("logits_max_abs_diff needs decoder_input_ids or labels in the batch")
        inputs["decoder_input_ids"] = reference.prepare_decoder_input_ids_from_labels(torch.as_tensor(inputs["labels"]))
    inputs = _as_batch(inputs)
    return float((reference(**inputs).logits - candidate(**inputs).logits).abs().max())


def greedy_agreement(
    reference: Any,
    candidate: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    pad_token_id: int | None = None,
    **generate_kwargs: Any,
) -> dict[str, float]:
    """How often two models' greedy generations agree: whole sequences and generated tokens.

    Args:
        reference, candidate: Objects with `generate(**batch, **generate_kwargs)` returning ids `(B, T)` (torch
            models, quantized models, `OnnxOFA`).
        batches: Model inputs (e.g. `OFAProcessor` outputs; `labels` are dropped).
        pad_token_id (`int`, *optional*): Padding after `</s>`; positions where both sequences are padding do not
            count as agreeing tokens.
        generate_kwargs: Passed to both, e.g. `max_new_tokens=20`; greedy (`num_beams=1, do_sample=False`) is
            forced on torch models.

    Returns:
        `sequence_match` (fraction of identical sequences), `token_agreement` (fraction of generated positions,
        after the start token and any forced prefix, where the ids agree), `sequences` (count).
    """
    matches, agreeing, positions, count = 0, 0, 0, 0
    for batch in batches:
        batch = _as_batch(batch)
        prefix = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else 1
        outputs = []
        for model in (reference, candidate):
            kwargs = dict(generate_kwargs)
            if isinstance(model, nn.Module):
                kwargs.update(num_beams=1, do_sample=False)
                with torch.no_grad():
                    ids = model.generate(**batch, **kwargs)
            else:
                ids = model.generate(**batch, **kwargs)
            outputs.append(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids))
        # Batches are padded to their longest sequence; a shorter output continues with padding.
        fill = -1 if pad_token_id is None else pad_token_id
        length = max(out.shape[1] for out in outputs)
        ref, cand = (np.pad(out, ((0, 0), (0, length - out.shape[1])), constant_values=fill) for out in outputs)
        matches += int((ref == cand).all(axis=1).sum())
        ref, cand = ref[:, prefix:], cand[:, prefix:]
        counted = ~((ref == fill) & (cand == fill))
        agreeing += int(((ref == cand) & counted).sum())
        positions += int(counted.sum())
        count += ref.shape[0]
    if count == 0:
        raise ValueError("greedy_agreement got no batches")
    return {
        "sequence_match": matches / count,
        "token_agreement": agreeing / positions if positions else 1.0,
        "sequences": float(count),
    }
