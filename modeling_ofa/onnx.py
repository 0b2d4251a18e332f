"""ONNX export of OFA and greedy generation on onnxruntime.

An exported model is a folder of graphs plus `onnx_manifest.json`:

* `encoder_<variant>.onnx`, one per encoder input signature (`text`, `image` = image + text, `audio`, `video`,
  `motion`, or a combination such as `image+audio`). Inputs: the `OFAEncoder.forward` tensors of the variant;
  outputs: `last_hidden_state`, `padding_mask`, `position_embeddings` (what the decoder needs).
* `decoder.onnx`, the first decoder call: the start token (plus any forced prefix) against the encoder outputs.
  It returns the logits, the self-attention cache, the cross-attention keys and values of every layer, and the
  decoder's projection of the encoder positions (`cross_position_keys`), which later steps reuse.
* `decoder_with_past.onnx`, every later call: new tokens against the caches; returns logits and the grown cache.

The graphs wrap the model's own modules (`OFAForConditionalGeneration.forward` with an `OFACache` built
from explicit tensors), so they compute what `generate()` computes. Batch size, text length, image size, number of
video frames, audio and motion lengths, encoder length, past and new decoder lengths are dynamic axes.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The dynamo-based exporter (the default in
recent torch) needs the `onnxscript` package, which this project does not depend on; it would also have to guard
the data-dependent branches below, which tracing simply evaluates once on the sample inputs.

Limits (what the graphs fix at export time):

* `code_masks`: with `with_code_masks=True` (default) the decoder graphs take a `code_masks` input and compute both
  position kinds (text and image codes), selecting per sample, so one graph serves text and image-code targets
  (the model's `bool(code_masks.any())` branch is traced on a sample that has both kinds). With `False` the graphs
  are text-only and slightly cheaper.
* Modality mixture-of-experts (`moe_type="modality"`) is exported with every expert run on every token and the
  result selected by expert id (the eager model sorts tokens by expert after a host synchronisation, which a graph
  cannot express); the function is the same, the cost is `num_experts` feed-forward passes per MoE layer.
  `moe_type="topk"` (capacity-limited learned routing) is not exportable and raises.
* No decoder attention mask: decoder inputs are the start token, a forced prefix and generated tokens, never
  padding (as `OFAProcessor` batches them).
* Image-code positions past the code grid: the decoder graphs compute the code position bias for every sample, so
  the position ids past the grid are clamped into `embed_image_positions` during export (see `_exportable`); code
  samples longer than `code_position_limit` are refused by `OnnxOFA`, as PyTorch refuses them.
* Training-only behaviour (dropout, patch sampling, drop-path) is absent: graphs are exported in eval mode.
* Quantized torch models are not exported; `quantize_onnx_int8` quantizes the exported float graphs instead.

Usage::

    export_onnx(model, "ofa-onnx", encoders=["text", "image"])
    runner = OnnxOFA("ofa-onnx")
    ids = runner.generate(**processor(instruction, rows), max_new_tokens=20)  # == model.generate(num_beams=1)
    report = validate_onnx(model, runner, batch)  # max abs differences and greedy equality
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .configuration_ofa import MODALITIES, OFAConfig
from .modeling_ofa import (
    CACHE_NAME,
    OFACache,
    OFADecoderLayer,
    OFAEncoderLayer,
    OFAEncoderOutput,
    OFAForConditionalGeneration,
)
from .moe import ModalityMoE, TopKMoE

__all__ = [
    "ENCODER_INPUTS",
    "MANIFEST_NAME",
    "OFAOnnxDecoder",
    "OFAOnnxEncoder",
    "OnnxOFA",
    "OnnxValidation",
    "code_position_limit",
    "encoder_variant",
    "export_onnx",
    "quantize_onnx_int8",
    "sample_encoder_inputs",
    "validate_onnx",
]

MANIFEST_NAME = "onnx_manifest.json"
MANIFEST_FORMAT = "ofa-onnx"
MANIFEST_VERSION = 1
DEFAULT_OPSET = 17
DEFAULT_NEW_TOKENS = 20  # what `generate()` produces when neither the call nor the generation config sets a length

# Encoder inputs per modality, in the order the encoder lays out its segments. Text is part of every variant.
ENCODER_INPUTS: dict[str, tuple[str, ...]] = {
    "image": ("pixel_values", "patch_masks"),
    "video": ("video_pixel_values", "video_frame_indices", "video_masks"),
    "audio": ("audio_features", "audio_attention_mask", "audio_masks"),
    "motion": ("motion_features", "motion_attention_mask", "motion_masks"),
    "text": ("input_ids", "attention_mask"),
}
# The config's `extra_modalities` entry each non-image modality needs.
_NEEDS_EXTRA: dict[str, str] = {"video": "VIDEO", "audio": "AUDIO", "motion": "MOTION"}

# Dynamic axes of every graph input and output, by name (cache tensors are added per layer).
_AXES: dict[str, dict[int, str]] = {
    "input_ids": {0: "batch", 1: "text_length"},
    "attention_mask": {0: "batch", 1: "text_length"},
    "input_modality_ids": {0: "batch", 1: "text_length"},
    "pixel_values": {0: "batch", 2: "height", 3: "width"},
    "patch_masks": {0: "batch"},
    "video_pixel_values": {0: "batch", 1: "frames", 3: "height", 4: "width"},
    "video_frame_indices": {0: "batch", 1: "frames"},
    "video_masks": {0: "batch"},
    "audio_features": {0: "batch", 1: "audio_frames"},
    "audio_attention_mask": {0: "batch", 1: "audio_frames"},
    "audio_masks": {0: "batch"},
    "motion_features": {0: "batch", 1: "motion_steps"},
    "motion_attention_mask": {0: "batch", 1: "motion_steps"},
    "motion_masks": {0: "batch"},
    "last_hidden_state": {0: "batch", 1: "encoder_length"},
    "padding_mask": {0: "batch", 1: "encoder_length"},
    "position_embeddings": {0: "batch", 1: "encoder_length"},
    "decoder_input_ids": {0: "batch", 1: "new_length"},
    "encoder_hidden_states": {0: "batch", 1: "encoder_length"},
    "encoder_padding_mask": {0: "batch", 1: "encoder_length"},
    "encoder_position_embeddings": {0: "batch", 1: "encoder_length"},
    "cross_position_keys": {0: "batch", 2: "encoder_length"},
    "decoder_modality_ids": {0: "batch"},
    "code_masks": {0: "batch"},
    "logits": {0: "batch", 1: "new_length"},
}
_CACHE_AXES: dict[str, dict[int, str]] = {
    "past_key": {0: "batch", 2: "past_length"},
    "past_value": {0: "batch", 2: "past_length"},
    "present_key": {0: "batch", 2: "total_length"},
    "present_value": {0: "batch", 2: "total_length"},
    "cross_key": {0: "batch", 2: "encoder_length"},
    "cross_value": {0: "batch", 2: "encoder_length"},
}


def _cache_names(prefix: str, num_layers: int) -> list[str]:
    """`{prefix}_key.{i}`, `{prefix}_value.{i}` for every layer, layer-major."""
    return [f"{prefix}_{kind}.{i}" for i in range(num_layers) for kind in ("key", "value")]


def _axes(name: str) -> dict[int, str]:
    if name in _AXES:
        return _AXES[name]
    return _CACHE_AXES[name.split(".")[0]]


def encoder_variant(modalities: str | Sequence[str]) -> str:
    """Canonical name of an encoder input signature: `"text"`, `"image"`, `"image+audio"`, ...

    Args:
        modalities: `"image+audio"`, or a sequence of names from `ENCODER_INPUTS`; text is implied.
    """
    names = modalities.split("+") if isinstance(modalities, str) else list(modalities)
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in ENCODER_INPUTS]
    if unknown:
        raise ValueError(f"unknown encoder modalities {unknown}; known: {sorted(ENCODER_INPUTS)}")
    ordered = [m for m in ENCODER_INPUTS if m in names and m != "text"]
    return "+".join(ordered) or "text"


def _variant_modalities(variant: str) -> list[str]:
    return [m for m in variant.split("+") if m != "text"]


def _encoder_input_names(config: OFAConfig, variant: str) -> list[str]:
    names = [name for m in _variant_modalities(variant) for name in ENCODER_INPUTS[m]]
    names += ENCODER_INPUTS["text"]
    if config.moe_type == "modality":
        names.append("input_modality_ids")  # routes text-like tokens (box, struct, ...) to their experts
    return names


def _check_exportable(model: nn.Module) -> OFAForConditionalGeneration:
    if not isinstance(model, OFAForConditionalGeneration):
        raise TypeError(f"export needs an OFAForConditionalGeneration, got {type(model).__name__}")
    if model.config.moe_type == "topk":
        raise ValueError(
            "moe_type='topk' cannot be exported to ONNX: its capacity-limited routing sizes expert groups on the "
            "host. Export a dense or moe_type='modality' model."
        )
    if any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules()):
        raise ValueError("export the float model; quantize the ONNX graphs instead (quantized torch modules)")
    return model


# ----------------------------------------------------------------------------------------------------------------
# Export wrappers
# ----------------------------------------------------------------------------------------------------------------


class _AllExpertsMoE(nn.Module):
    """A `ModalityMoE` computed without host synchronisation: every expert on every token, selected by id.

    Same function as `ModalityMoE.forward` for valid ids (each expert is a per-token map); used only while
    exporting, sharing the experts' parameters.
    """

    def __init__(self, moe: ModalityMoE):
        super().__init__()
        self.experts = moe.experts

    def forward(
        self, hidden_states: torch.Tensor, expert_ids: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for index, expert in enumerate(self.experts):
            out = torch.where((expert_ids == index)[..., None], expert(hidden_states), out)
        if token_mask is not None:  # padding is not routed: zero, as in ModalityMoE
            out = out * token_mask[..., None].to(out.dtype)
        return out


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode; every submodule gets its own previous mode back afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def code_position_limit(model: OFAForConditionalGeneration) -> int:
    """Longest decoder sequence whose image-code position ids exist in `embed_image_positions`.

    Beyond the code grid the decoder's position ids are a filler id (1024 as in the original, or the last row of a
    smaller table), so this is the whole buffer for models built by this version; older buffers are checked anyway.
    """
    decoder = model.get_decoder()
    valid = decoder.image_position_idx < decoder.embed_image_positions.num_embeddings
    return int(valid.long().cumprod(0).sum())


@contextmanager
def _exportable(model: OFAForConditionalGeneration) -> Iterator[OFAForConditionalGeneration]:
    """The model in eval mode with graph-friendly parts; restores everything afterwards.

    * `ModalityMoE` blocks become `_AllExpertsMoE` (same function, no host synchronisation);
    * the decoder's image-code position ids are clamped into `embed_image_positions`. The decoder graphs compute
      the code positions for every sample and select per sample, so an out-of-table filler id would make long
      text-only generations fail in onnxruntime, where PyTorch (which skips the code path without code samples)
      works. Code samples beyond `code_position_limit` are refused by `OnnxOFA` as PyTorch refuses them.
    """
    layers = [m for m in model.modules() if isinstance(m, (OFAEncoderLayer, OFADecoderLayer))]
    if any(isinstance(layer.moe, TopKMoE) for layer in layers):
        raise ValueError("moe_type='topk' cannot be exported to ONNX")
    swapped = [(layer, layer.moe) for layer in layers if isinstance(layer.moe, ModalityMoE)]
    decoder = model.get_decoder()
    code_ids = decoder.image_position_idx
    with _eval_mode(model):
        for layer, moe in swapped:
            layer.moe = _AllExpertsMoE(moe)
        decoder.image_position_idx = code_ids.clamp(max=decoder.embed_image_positions.num_embeddings - 1)
        try:
            yield model
        finally:
            decoder.image_position_idx = code_ids
            for layer, moe in swapped:
                layer.moe = moe


class OFAOnnxEncoder(nn.Module):
    """`OFAEncoder` as a function of positional tensors (`input_names`), returning the decoder's three inputs.

    Args:
        model (`OFAForConditionalGeneration`): The model whose encoder is wrapped (parameters are shared).
        variant (`str`): Encoder input signature, see `encoder_variant`.
    """

    output_names = ("last_hidden_state", "padding_mask", "position_embeddings")

    def __init__(self, model: OFAForConditionalGeneration, variant: str = "text"):
        super().__init__()
        self.variant = encoder_variant(variant)
        for modality in _variant_modalities(self.variant):
            extra = _NEEDS_EXTRA.get(modality)
            if extra is not None and extra not in model.config.extra_modalities:
                raise ValueError(
                    f"encoder variant {self.variant!r} needs {extra!r} in config.extra_modalities "
                    f"(now {model.config.extra_modalities})"
                )
        self.encoder = model.get_encoder()
        self.input_names = tuple(_encoder_input_names(model.config, self.variant))

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(**dict(zip(self.input_names, tensors)))
        return out.last_hidden_state, out.padding_mask, out.position_embeddings


class OFAOnnxDecoder(nn.Module):
    """One decoder call of `generate()` as a function of explicit tensors.

    Without past (`with_past=False`), inputs are `decoder_input_ids`, `encoder_hidden_states`,
    `encoder_padding_mask`, `encoder_position_embeddings`; outputs are `logits`, `cross_position_keys`, then
    `present_key.{i}`/`present_value.{i}` and `cross_key.{i}`/`cross_value.{i}` for every layer.

    With past, inputs are `decoder_input_ids`, `encoder_padding_mask`, `cross_position_keys`, the
    `past_key.{i}`/`past_value.{i}` and `cross_key.{i}`/`cross_value.{i}` of every layer; outputs are `logits` and
    the grown `present_key.{i}`/`present_value.{i}`. Both take `decoder_modality_ids` (modality MoE) and
    `code_masks` (when `with_code_masks`) last.

    Args:
        model (`OFAForConditionalGeneration`): The wrapped model (parameters are shared).
        with_past (`bool`): Whether the call continues from caches.
        with_code_masks (`bool`, defaults to `True`): Take `code_masks` (image-code targets) as an input.
    """

    def __init__(self, model: OFAForConditionalGeneration, with_past: bool, with_code_masks: bool = True):
        super().__init__()
        self.model = model
        self.with_past = with_past
        self.num_layers = model.config.decoder_layers
        extra = ["decoder_modality_ids"] if model.config.moe_type == "modality" else []
        extra += ["code_masks"] if with_code_masks else []
        if with_past:
            inputs = ["decoder_input_ids", "encoder_padding_mask", "cross_position_keys"]
            inputs += _cache_names("past", self.num_layers) + _cache_names("cross", self.num_layers)
            outputs = ["logits", *_cache_names("present", self.num_layers)]
        else:
            inputs = ["decoder_input_ids", "encoder_hidden_states", "encoder_padding_mask"]
            inputs += ["encoder_position_embeddings"]
            outputs = ["logits", "cross_position_keys", *_cache_names("present", self.num_layers)]
            outputs += _cache_names("cross", self.num_layers)
        self.input_names = tuple(inputs + extra)
        self.output_names = tuple(outputs)

    def _pairs(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(tensors[f"{prefix}_key.{i}"], tensors[f"{prefix}_value.{i}"]) for i in range(self.num_layers)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(self.input_names, tensors))
        if self.with_past:
            cache = OFACache(DynamicCache(self._pairs(inputs, "past")), DynamicCache(self._pairs(inputs, "cross")))
            cache.cross_position_keys = inputs["cross_position_keys"]
            encoder_outputs = OFAEncoderOutput(padding_mask=inputs["encoder_padding_mask"])
        else:
            cache = OFACache(DynamicCache(), DynamicCache())
            encoder_outputs = OFAEncoderOutput(
                last_hidden_state=inputs["encoder_hidden_states"],
                padding_mask=inputs["encoder_padding_mask"],
                position_embeddings=inputs["encoder_position_embeddings"],
            )
        out = self.model(
            decoder_input_ids=inputs["decoder_input_ids"],
            encoder_outputs=encoder_outputs,
            cache=cache,
            use_cache=True,
            code_masks=inputs.get("code_masks"),
            decoder_modality_ids=inputs.get("decoder_modality_ids"),
        )
        present = [t for layer in cache.self_attention_cache.layers for t in (layer.keys, layer.values)]
        if self.with_past:
            return (out.logits, *present)
        cross = [t for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, cache.cross_position_keys, *present, *cross)


# ----------------------------------------------------------------------------------------------------------------
# Sample inputs
# ----------------------------------------------------------------------------------------------------------------


def sample_encoder_inputs(
    config: OFAConfig,
    variant: str = "text",
    *,
    batch_size: int = 2,
    text_length: int = 7,
    image_size: int | None = None,
    num_frames: int = 2,
    sequence_length: int = 12,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random encoder inputs of one variant, with padding, for tracing and validation.

    Args:
        config (`OFAConfig`): The model's config (vocabulary, feature sizes, limits).
        variant (`str`): Encoder input signature, see `encoder_variant`.
        batch_size (`int`): Samples; from 2 on, the last sample has text padding and lacks its non-text inputs.
        text_length (`int`): Token count, `<s>` and `</s>` included.
        image_size (`int`, *optional*): Side of images and video frames; defaults to 16 patches of 16 pixels per
            side, capped by `config.image_bucket_size`.
        num_frames (`int`): Video frames.
        sequence_length (`int`): Audio frames and motion steps.
        seed (`int`): Seed of the random values.
    """
    variant = encoder_variant(variant)
    g = torch.Generator().manual_seed(seed)
    side = image_size or 16 * min(config.image_bucket_size, 4)
    bos, eos, pad = config.bos_token_id, config.eos_token_id, config.pad_token_id
    low = max(bos, eos, pad) + 1
    text = torch.randint(low, config.vocab_size, (batch_size, text_length), generator=g)
    text[:, 0], text[:, -1] = bos, eos
    mask = torch.ones(batch_size, text_length, dtype=torch.long)
    if batch_size > 1 and text_length > 3:
        text[-1, -2:], text[-1, -3], mask[-1, -2:] = pad, eos, 0
    present = torch.ones(batch_size, dtype=torch.bool)
    if batch_size > 1:
        present[-1] = False
    inputs: dict[str, torch.Tensor] = {}
    for modality in _variant_modalities(variant):
        if modality == "image":
            inputs["pixel_values"] = torch.randn(batch_size, 3, side, side, generator=g)
            inputs["patch_masks"] = present
        elif modality == "video":
            frames = min(num_frames, config.max_video_frames)
            inputs["video_pixel_values"] = torch.randn(batch_size, frames, 3, side, side, generator=g)
            inputs["video_frame_indices"] = torch.arange(frames).expand(batch_size, -1).contiguous()
            inputs["video_masks"] = present
        else:
            size = config.audio_feature_size if modality == "audio" else config.motion_feature_size
            seq_mask = torch.ones(batch_size, sequence_length, dtype=torch.long)
            if batch_size > 1:
                seq_mask[0, -sequence_length // 3 :] = 0
            inputs[f"{modality}_features"] = torch.randn(batch_size, sequence_length, size, generator=g)
            inputs[f"{modality}_attention_mask"] = seq_mask
            inputs[f"{modality}_masks"] = present
    inputs["input_ids"], inputs["attention_mask"] = text, mask
    if config.moe_type == "modality":
        inputs["input_modality_ids"] = torch.zeros(batch_size, text_length, dtype=torch.long)
    return inputs


def _sample_decoder_inputs(
    model: OFAForConditionalGeneration, wrapper: OFAOnnxDecoder, encoder_out: OFAEncoderOutput, new_length: int
) -> tuple[torch.Tensor, ...]:
    """Sample inputs of a decoder wrapper: `new_length` tokens after a past of 3 (with past) or from scratch."""
    config = model.config
    bsz = encoder_out.last_hidden_state.shape[0]
    g = torch.Generator().manual_seed(1)
    low = max(config.bos_token_id, config.eos_token_id, config.pad_token_id) + 1
    past_ids = torch.randint(low, config.vocab_size, (bsz, 3), generator=g)
    new_ids = torch.randint(low, config.vocab_size, (bsz, new_length), generator=g)
    # Both position kinds in the batch, so that the traced graph keeps the per-sample selection.
    code_masks = torch.arange(bsz) % 2 == 0
    modality_ids = torch.zeros(bsz, dtype=torch.long)
    values: dict[str, torch.Tensor] = {
        "encoder_hidden_states": encoder_out.last_hidden_state,
        "encoder_padding_mask": encoder_out.padding_mask,
        "encoder_position_embeddings": encoder_out.position_embeddings,
        "code_masks": code_masks,
        "decoder_modality_ids": modality_ids,
    }
    if wrapper.with_past:
        first = OFAOnnxDecoder(model, with_past=False, with_code_masks="code_masks" in wrapper.input_names)
        first_inputs = {**values, "decoder_input_ids": past_ids}
        outs = dict(zip(first.output_names, first(*(first_inputs[n] for n in first.input_names))))
        values.update({k.replace("present", "past"): v for k, v in outs.items()})
    values["decoder_input_ids"] = new_ids
    return tuple(values[name] for name in wrapper.input_names)


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def _export_graph(wrapper: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int) -> dict[str, list[str]]:
    input_names, output_names = list(wrapper.input_names), list(wrapper.output_names)
    dynamic_axes = {name: _axes(name) for name in input_names + output_names}
    with warnings.catch_warnings():
        # Tracing warns at every Python branch on a tensor (length checks, `code_masks.any()`); those branches are
        # evaluated once on the sample inputs on purpose (see the module docstring).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs `onnxscript` (see above).
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        # Advanced indexing is only applied with non-negative ids here (positions, grid ids, checked modality ids).
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return {"file": path.name, "inputs": input_names, "outputs": output_names}


def export_onnx(
    model: OFAForConditionalGeneration,
    output_dir: str | os.PathLike,
    *,
    encoders: Sequence[str] = ("text", "image"),
    with_code_masks: bool = True,
    image_size: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export the encoder variants, the first decoder call and the decoder with past, and write the manifest.

    Args:
        model (`OFAForConditionalGeneration`): A dense or `moe_type="modality"` model; left unchanged.
        output_dir (`str` or `os.PathLike`): Folder to write (created if needed).
        encoders (`Sequence[str]`): Encoder variants to export (`"text"`, `"image"`, `"image+audio"`, ...).
        with_code_masks (`bool`, defaults to `True`): Decoder graphs that also generate image codes.
        image_size (`int`, *optional*): Image side of the tracing samples (any size runs afterwards).
        opset (`int`, defaults to 17): ONNX opset.

    Returns:
        The manifest (also written to `output_dir/onnx_manifest.json`).
    """
    model = _check_exportable(model)
    if not encoders:
        raise ValueError("export_onnx needs at least one encoder variant")
    variants = list(dict.fromkeys(encoder_variant(v) for v in encoders))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch_version": torch.__version__,
        "opset": opset,
        "encoders": {},
        "num_layers": config.decoder_layers,
        "max_positions": config.max_position_embeddings,
        "image_bucket_size": config.image_bucket_size,
        "max_video_frames": config.max_video_frames,
        "vocab_size": config.vocab_size,
        "moe_type": config.moe_type,
        "modality_to_expert": config.modality_to_expert() if config.moe_type == "modality" else None,
        "with_code_masks": with_code_masks,
        "code_position_limit": code_position_limit(model),
        # Inputs `generate()` accepts that a dense model ignores; the runner drops them instead of failing.
        "ignored_inputs": [] if config.moe_type == "modality" else ["input_modality_ids", "decoder_modality_ids"],
        "generation": _generation_settings(model),
    }
    with torch.no_grad(), _exportable(model):
        for variant in variants:
            wrapper = OFAOnnxEncoder(model, variant).eval()
            sample = sample_encoder_inputs(config, variant, image_size=image_size)
            args = tuple(sample[name] for name in wrapper.input_names)
            name = f"encoder_{variant.replace('+', '_')}.onnx"
            manifest["encoders"][variant] = _export_graph(wrapper, args, out / name, opset)
        encoder_out = model.get_encoder()(**sample_encoder_inputs(config, "text", text_length=9))
        for key, with_past in (("decoder", False), ("decoder_with_past", True)):
            wrapper = OFAOnnxDecoder(model, with_past, with_code_masks).eval()
            args = _sample_decoder_inputs(model, wrapper, encoder_out, new_length=2)
            manifest[key] = _export_graph(wrapper, args, out / f"{key}.onnx", opset)
    # The config alone: the graphs are the model here, so the Python code `save_pretrained` copies beside a config
    # registered for the Auto classes does not belong in an ONNX folder.
    config.to_json_file(out / "config.json")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# Generation settings that change which token greedy decoding picks; the ONNX loop applies none of them.
_LOGITS_SETTINGS: tuple[str, ...] = (
    "bad_words_ids",
    "begin_suppress_tokens",
    "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty",
    "exponential_decay_length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "min_length",
    "min_new_tokens",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "sequence_bias",
    "suppress_tokens",
)


def _generation_settings(model: OFAForConditionalGeneration) -> dict[str, Any]:
    """What the greedy loop needs from the generation config, and the logits settings it does not apply."""
    gen = model.generation_config
    eos = gen.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else None)
    changed = gen.to_diff_dict()
    return {
        "decoder_start_token_id": gen.decoder_start_token_id,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "max_length": gen.max_length,
        "not_applied": sorted(k for k in _LOGITS_SETTINGS if changed.get(k) is not None),
    }


def quantize_onnx_int8(
    source_dir: str | os.PathLike, output_dir: str | os.PathLike, *, per_channel: bool = True
) -> dict[str, Any]:
    """Dynamic int8 quantization of every graph of an exported folder (onnxruntime `quantize_dynamic`).

    Weights of the matrix products become 8-bit (unsigned, which CPUs without VNNI need); activations are
    quantized per call. The output folder runs with `OnnxOFA` like the float one.

    Args:
        source_dir (`str` or `os.PathLike`): Folder written by `export_onnx`.
        output_dir (`str` or `os.PathLike`): Folder to write (must differ from `source_dir`).
        per_channel (`bool`, defaults to `True`): One weight scale per output channel.

    Returns:
        The manifest of the quantized folder.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = Path(source_dir), Path(output_dir)
    if source.resolve() == out.resolve():
        raise ValueError("quantize_onnx_int8 needs an output folder different from the source folder")
    manifest = _read_manifest(source)
    out.mkdir(parents=True, exist_ok=True)
    graphs = [*manifest["encoders"].values(), manifest["decoder"], manifest["decoder_with_past"]]
    # The quantizer logs a generic "consider pre-processing" advice per graph on the root logger; it concerns
    # static (calibrated) quantization of vision models, not this dynamic quantization.
    advice = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        for graph in graphs:
            quantize_dynamic(
                source / graph["file"],
                out / graph["file"],
                per_channel=per_channel,
                # Unsigned 8-bit weights: x86 CPUs without VNNI multiply u8 activations by s8 weights into
                # saturating 16-bit pair sums, which wrecks the outputs (greedy token agreement with PyTorch 0.39 on
                # an AVX2-only machine); u8 x u8 products do not saturate (0.94 there). A folder may run anywhere.
                weight_type=QuantType.QUInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
    finally:
        logging.getLogger().removeFilter(advice)
    quantization = {"method": "onnxruntime dynamic int8", "per_channel": per_channel, "weights": "uint8"}
    manifest = {**manifest, "quantization": quantization}
    if (source / "config.json").is_file():
        (out / "config.json").write_text((source / "config.json").read_text())
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found; export the model with export_onnx first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{manifest_path} is not a version-{MANIFEST_VERSION} {MANIFEST_FORMAT} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})"
        )
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------------------

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class OnnxOFA:
    """Runs an exported OFA folder on onnxruntime: encoder, decoder steps and greedy generation.

    `generate` takes the inputs `OFAProcessor` produces (torch tensors or numpy arrays) and returns the same ids as
    `OFAForConditionalGeneration.generate(num_beams=1, do_sample=False)`.

    Args:
        path (`str` or `os.PathLike`): Folder written by `export_onnx`.
        providers (`Sequence[str]`, *optional*): onnxruntime execution providers (CPU by default).
        session_options (`onnxruntime.SessionOptions`, *optional*): Shared by all sessions.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        session_options: Any | None = None,
    ):
        import onnxruntime  # optional dependency: only the runner needs it

        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self._ort = onnxruntime
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._options = session_options
        self._sessions: dict[str, Any] = {}

    def _session(self, file: str) -> Any:
        if file not in self._sessions:
            self._sessions[file] = self._ort.InferenceSession(
                str(self.path / file), sess_options=self._options, providers=self._providers
            )
        return self._sessions[file]

    def _run(self, graph: Mapping[str, Any], feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        session = self._session(graph["file"])
        arrays = {}
        for spec in session.get_inputs():
            if feeds.get(spec.name) is None:
                raise ValueError(f"{graph['file']} needs the input {spec.name!r}, which was not given")
            arrays[spec.name] = np.ascontiguousarray(_numpy(feeds[spec.name]), dtype=_ORT_TYPES[spec.type])
        return dict(zip(graph["outputs"], session.run(None, arrays)))

    @property
    def encoder_variants(self) -> list[str]:
        """The exported encoder input signatures (`"text"`, `"image"`, ...)."""
        return list(self.manifest["encoders"])

    def _split_inputs(self, inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(encoder variant, encoder inputs, decoder-side inputs) from `generate`-style keyword arguments."""
        decoder_keys = {"decoder_input_ids", "code_masks", "decoder_modality_ids"}
        known = {name for names in ENCODER_INPUTS.values() for name in names} | decoder_keys | {"input_modality_ids"}
        unknown = sorted(k for k in inputs if k not in known)
        if unknown:
            raise TypeError(
                f"OnnxOFA got unsupported inputs {unknown}; it takes {sorted(known)} (decoder attention masks, "
                "inputs_embeds and labels are not part of the exported graphs)"
            )
        present = [m for m in ENCODER_INPUTS if m != "text" and ENCODER_INPUTS[m][0] in inputs]
        variant = encoder_variant(present)
        if variant not in self.manifest["encoders"]:
            raise ValueError(
                f"inputs {sorted(inputs)} need the encoder variant {variant!r}, which was not exported; this folder "
                f"has {self.encoder_variants} (export it with encoders=[..., {variant!r}])"
            )
        ignored = set(self.manifest["ignored_inputs"])
        encoder_inputs = {k: v for k, v in inputs.items() if k not in decoder_keys and k not in ignored}
        decoder_inputs = {k: v for k, v in inputs.items() if k in decoder_keys and k not in ignored}
        return variant, encoder_inputs, decoder_inputs

    def _check_modality_ids(self, name: str, ids: np.ndarray) -> None:
        table = self.manifest["modality_to_expert"]
        if table is None:
            return
        bad = sorted({int(i) for i in np.unique(ids) if not 0 <= int(i) < len(table) or table[int(i)] < 0})
        if bad:
            names = [MODALITIES[i] if 0 <= i < len(MODALITIES) else str(i) for i in bad]
            raise ValueError(f"{name} holds modality ids {names} that no expert of this model handles")

    def encode(self, **inputs: Any) -> dict[str, np.ndarray]:
        """Encoder outputs (`last_hidden_state`, `padding_mask`, `position_embeddings`) for encoder inputs.

        Presence masks (`patch_masks`, ...) default to all True and `attention_mask` to `input_ids != pad`, as in
        the model.
        """
        variant, encoder_inputs, _ = self._split_inputs(inputs)
        if "input_ids" not in encoder_inputs:
            raise ValueError("OnnxOFA.encode needs input_ids (inputs_embeds cannot be exported)")
        feeds = dict(encoder_inputs)
        ids = _numpy(feeds["input_ids"])
        batch = ids.shape[0]
        if feeds.get("attention_mask") is None:
            feeds["attention_mask"] = (ids != self.manifest["generation"]["pad_token_id"]).astype(np.int64)
        for modality in _variant_modalities(variant):
            first, *_, presence = ENCODER_INPUTS[modality]
            if feeds.get(presence) is None:
                feeds[presence] = np.ones(batch, dtype=np.bool_)
            if modality == "video" and feeds.get("video_frame_indices") is None:
                frames = _numpy(feeds[first]).shape[1]
                feeds["video_frame_indices"] = np.broadcast_to(np.arange(frames), (batch, frames))
            if modality in ("audio", "motion") and feeds.get(f"{modality}_attention_mask") is None:
                feeds[f"{modality}_attention_mask"] = np.ones(_numpy(feeds[first]).shape[:2], dtype=np.int64)
        self._check_sizes(feeds)
        if "input_modality_ids" in self.manifest["encoders"][variant]["inputs"]:
            if feeds.get("input_modality_ids") is None:
                feeds["input_modality_ids"] = np.zeros(ids.shape, dtype=np.int64)
            self._check_modality_ids("input_modality_ids", _numpy(feeds["input_modality_ids"]))
        return self._run(self.manifest["encoders"][variant], feeds)

    def _check_sizes(self, feeds: Mapping[str, Any]) -> None:
        """The size limits the model checks in PyTorch, which the graphs cannot (they would fail less clearly)."""
        limit = self.manifest["max_positions"]
        length = _numpy(feeds["input_ids"]).shape[1]
        if length > limit:
            raise ValueError(f"the text input has {length} positions, more than max_position_embeddings={limit}")
        bucket = self.manifest["image_bucket_size"]
        for key in ("pixel_values", "video_pixel_values"):
            if feeds.get(key) is not None:
                side = max(_numpy(feeds[key]).shape[-2:])
                if -(-side // 16) > bucket:  # the ResNet stem reduces each side 16 times (rounding up)
                    raise ValueError(
                        f"{key} of side {side} gives a patch grid larger than image_bucket_size={bucket}; use images "
                        f"of at most {16 * bucket} pixels per side"
                    )
        if feeds.get("video_pixel_values") is not None:
            frames = _numpy(feeds["video_pixel_values"]).shape[1]
            if frames > self.manifest["max_video_frames"]:
                raise ValueError(
                    f"the video has {frames} frames, more than max_video_frames={self.manifest['max_video_frames']}"
                )

    def _decoder_extras(self, batch: int, decoder_inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        extras: dict[str, np.ndarray] = {}
        code_masks = decoder_inputs.get("code_masks")
        code_masks = np.zeros(batch, np.bool_) if code_masks is None else _numpy(code_masks).astype(np.bool_)
        if code_masks.any() and not self.manifest["with_code_masks"]:
            raise ValueError("code_masks has True entries, but the decoder graphs were exported without code masks")
        if self.manifest["with_code_masks"]:
            extras["code_masks"] = code_masks
        if "decoder_modality_ids" in self.manifest["decoder"]["inputs"]:
            ids = decoder_inputs.get("decoder_modality_ids")
            if ids is None:  # the model's default: image codes for code-mask samples, text otherwise
                ids = np.where(code_masks, MODALITIES.index("IMAGE_CODE"), MODALITIES.index("TEXT"))
            extras["decoder_modality_ids"] = _numpy(ids).astype(np.int64).reshape(batch)
            self._check_modality_ids("decoder_modality_ids", extras["decoder_modality_ids"])
        return extras

    def decode(
        self,
        decoder_input_ids: Any,
        encoder_outputs: Mapping[str, np.ndarray],
        past: Mapping[str, np.ndarray] | None = None,
        **decoder_inputs: Any,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call: logits `(B, T, V)` of the new tokens and the state for the next call.

        Args:
            decoder_input_ids: `(B, T)` new token ids (the start token and any prefix on the first call).
            encoder_outputs: What `encode` returned.
            past: The state returned by the previous call, or `None` for the first call.
            decoder_inputs: `code_masks`, `decoder_modality_ids` (as in `generate`).
        """
        ids = _numpy(decoder_input_ids).astype(np.int64)
        if ids.ndim != 2:
            raise ValueError(f"decoder_input_ids must be (batch, length), got shape {ids.shape}")
        total = ids.shape[1] + (0 if past is None else past["present_key.0"].shape[2])
        if total > self.manifest["max_positions"]:
            raise ValueError(
                f"the decoder sequence has {total} positions, more than max_position_embeddings="
                f"{self.manifest['max_positions']}"
            )
        feeds: dict[str, Any] = {"decoder_input_ids": ids, **self._decoder_extras(ids.shape[0], decoder_inputs)}
        if feeds.get("code_masks") is not None and feeds["code_masks"].any():
            limit = self.manifest["code_position_limit"]
            if total > limit:
                raise ValueError(
                    f"the decoder sequence has {total} positions, but image-code targets have position ids for "
                    f"{limit} (code_image_size and image_bucket_size of the model)"
                )
        feeds["encoder_padding_mask"] = encoder_outputs["padding_mask"]
        if past is None:
            feeds["encoder_hidden_states"] = encoder_outputs["last_hidden_state"]
            feeds["encoder_position_embeddings"] = encoder_outputs["position_embeddings"]
            outputs = self._run(self.manifest["decoder"], feeds)
            state = {k: v for k, v in outputs.items() if k != "logits"}
        else:
            feeds.update({k.replace("present", "past"): v for k, v in past.items() if k.startswith("present")})
            feeds.update({k: v for k, v in past.items() if k.startswith("cross") or k == "cross_position_keys"})
            outputs = self._run(self.manifest["decoder_with_past"], feeds)
            state = {k: v for k, v in past.items() if not k.startswith("present")}
            state.update({k: v for k, v in outputs.items() if k != "logits"})
        return outputs["logits"], state

    def generate(
        self,
        input_ids: Any = None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        **inputs: Any,
    ) -> np.ndarray:
        """Greedy decoding, as `generate(num_beams=1, do_sample=False)`: ids `(B, T)` with the start token.

        Args:
            input_ids: `(B, L)` encoder token ids; other encoder inputs (`pixel_values`, ...) as keywords.
            max_new_tokens (`int`, *optional*): Tokens to generate at most after `decoder_input_ids`.
            max_length (`int`, *optional*): Total decoder length at most (default: the generation config's, else 20
                new tokens within `max_position_embeddings`, as `generate()`).
            logits_processor (*optional*): A transformers `LogitsProcessor` (or list), called on torch tensors of
                the ids so far and the scores of the last position, e.g. `OFAProcessor.closed_set_logits_processor`.
            inputs: Other model inputs: `attention_mask`, `pixel_values`, `patch_masks`, ..., `decoder_input_ids`
                (a forced prefix), `code_masks`, `decoder_modality_ids`.
        """
        if input_ids is None:
            raise ValueError("OnnxOFA.generate needs input_ids")
        settings = self.manifest["generation"]
        if settings["not_applied"] and logits_processor is None:
            warnings.warn(
                f"the model's generation config sets {settings['not_applied']}, which OnnxOFA.generate does not "
                "apply (plain greedy); pass the equivalent transformers LogitsProcessorList as logits_processor",
                stacklevel=2,
            )
        _, _, decoder_inputs = self._split_inputs(inputs)
        encoder_outputs = self.encode(input_ids=input_ids, **inputs)
        batch = encoder_outputs["padding_mask"].shape[0]
        ids = inputs.get("decoder_input_ids")
        if ids is None:
            ids = np.full((batch, 1), settings["decoder_start_token_id"], dtype=np.int64)
        ids = _numpy(ids).astype(np.int64)
        if max_new_tokens is not None:
            limit = ids.shape[1] + max_new_tokens
        elif max_length is not None or settings["max_length"] is not None:
            limit = max_length if max_length is not None else settings["max_length"]
        else:  # transformers' default: 20 new tokens, within the position limit
            limit = min(ids.shape[1] + DEFAULT_NEW_TOKENS, self.manifest["max_positions"])
        eos = np.asarray(settings["eos_token_id"], dtype=np.int64)
        pad = settings["pad_token_id"] if settings["pad_token_id"] is not None else 0  # unused without an eos
        extras = {k: v for k, v in decoder_inputs.items() if k != "decoder_input_ids"}
        unfinished = np.ones(batch, dtype=np.bool_)
        logits, state = self.decode(ids, encoder_outputs, None, **extras)
        while ids.shape[1] < limit:
            scores = logits[:, -1, :]
            if logits_processor is not None:
                scores = logits_processor(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()
            tokens = scores.argmax(axis=-1).astype(np.int64)
            tokens = np.where(unfinished, tokens, pad)
            ids = np.concatenate([ids, tokens[:, None]], axis=1)
            unfinished &= ~np.isin(tokens, eos)
            if not unfinished.any() or ids.shape[1] >= limit:
                break
            logits, state = self.decode(tokens[:, None], encoder_outputs, state, **extras)
        return ids


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class OnnxValidation:
    """How an exported folder compares with the PyTorch model on one batch.

    Args:
        encoder_max_abs_diff (`float`): Max |difference| of the encoder's last hidden state (real positions).
        logits_max_abs_diff (`list[float]`): Max |difference| of the logits of each decoder call (first, then
            each cached step), teacher-forced on the PyTorch greedy tokens.
        greedy_equal (`bool`): Whether the greedy ids are identical.
        torch_ids (`list[list[int]]`): PyTorch `generate` ids.
        onnx_ids (`list[list[int]]`): `OnnxOFA.generate` ids.
    """

    encoder_max_abs_diff: float
    logits_max_abs_diff: list[float]
    greedy_equal: bool
    torch_ids: list[list[int]] = field(repr=False)
    onnx_ids: list[list[int]] = field(repr=False)

    @property
    def max_abs_diff(self) -> float:
        return max([self.encoder_max_abs_diff, *self.logits_max_abs_diff])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_abs_diff": self.max_abs_diff}


def validate_onnx(
    model: OFAForConditionalGeneration,
    onnx: OnnxOFA | str | os.PathLike,
    inputs: Mapping[str, Any],
    *,
    max_new_tokens: int = 8,
) -> OnnxValidation:
    """Compare an exported folder with the PyTorch model on one batch (encoder, every decoder call, greedy ids).

    Args:
        model (`OFAForConditionalGeneration`): The model that was exported (its mode is restored afterwards).
        onnx (`OnnxOFA` or path): The runner, or the exported folder.
        inputs (`Mapping`): A batch as `generate()` takes it (e.g. from `OFAProcessor` or `sample_encoder_inputs`).
        max_new_tokens (`int`): Greedy steps compared.
    """
    runner = onnx if isinstance(onnx, OnnxOFA) else OnnxOFA(onnx)
    batch = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in inputs.items()}
    decoder_keys = ("decoder_input_ids", "code_masks", "decoder_modality_ids")
    encoder_inputs = {k: v for k, v in batch.items() if k not in decoder_keys}
    extras = {k: batch[k] for k in decoder_keys[1:] if k in batch}
    prefix = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else 1
    with torch.no_grad(), _eval_mode(model):
        torch_ids = model.generate(**batch, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        onnx_ids = runner.generate(**batch, max_new_tokens=max_new_tokens)
        torch_enc = model.get_encoder()(**encoder_inputs)
        onnx_enc = runner.encode(**encoder_inputs)
        real = ~torch_enc.padding_mask.numpy()  # padded rows are never attended to
        enc_diff = float(np.abs(torch_enc.last_hidden_state.numpy() - onnx_enc["last_hidden_state"])[real].max())
        # Teacher-forced on the PyTorch tokens: the first call takes the prefix, then one token per call.
        diffs, cache, state = [], None, None
        for end in range(prefix, torch_ids.shape[1]):
            step_ids = torch_ids[:, :end] if cache is None else torch_ids[:, end - 1 : end]
            out = model(encoder_outputs=torch_enc, decoder_input_ids=step_ids, cache=cache, use_cache=True, **extras)
            cache = getattr(out, CACHE_NAME)
            logits, state = runner.decode(step_ids, onnx_enc, state, **extras)
            diffs.append(float(np.abs(out.logits.numpy() - logits).max()))
    return OnnxValidation(
        encoder_max_abs_diff=enc_diff,
        logits_max_abs_diff=diffs,
        greedy_equal=bool(np.array_equal(torch_ids.numpy(), onnx_ids)),
        torch_ids=torch_ids.tolist(),
        onnx_ids=onnx_ids.tolist(),
    )
