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

from .modeling_ofa import OFAForConditionalGeneration
from .moe import TopKMoE

__all__ = ["greedy_agreement", "logits_max_abs_diff", "quantize_dynamic_int8", "tied_lm_head_error"]


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
