"""Pad and stack encoded examples (one dict per row, see `OFAProcessor.encode`) into model inputs.

Examples of one batch may differ in which modalities they have: a sample without an image gets a zero image and
`patch_masks` False (likewise `video_masks`, `audio_masks`, `motion_masks`), which the model treats as padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature

__all__ = ["collate_examples"]

# Per-example keys that hold dense arrays, the batch keys they become, and their presence-mask name.
_DENSE_INPUTS: tuple[tuple[str, str, str | None, str], ...] = (
    # example key, batch key, attention-mask key (variable length) or None (fixed shape), presence key
    ("pixel_values", "pixel_values", None, "patch_masks"),
    ("video_pixel_values", "video_pixel_values", None, "video_masks"),
    ("audio_features", "audio_features", "audio_attention_mask", "audio_masks"),
    ("motion_features", "motion_features", "motion_attention_mask", "motion_masks"),
)


def _pad_ids(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    length = max(len(row) for row in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def _stack_dense(
    examples: Sequence[dict[str, Any]], key: str, variable_length: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Stack one modality; zeros where an example lacks it. Returns (values, attention mask or None, presence)."""
    present = torch.tensor([key in ex for ex in examples])
    arrays = [torch.as_tensor(ex[key], dtype=torch.float32) for ex in examples if key in ex]
    shapes = {tuple(a.shape[1:] if variable_length else a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch {key} of different shapes {sorted(shapes)}; preprocess them to one size")
    inner = shapes.pop()
    length = max(a.shape[0] for a in arrays) if variable_length else None
    full_shape = (len(examples), length, *inner) if variable_length else (len(examples), *inner)
    values = torch.zeros(full_shape)
    mask = torch.zeros(len(examples), length, dtype=torch.long) if variable_length else None
    arrays_iter = iter(arrays)
    for i, has in enumerate(present.tolist()):
        if not has:
            continue
        array = next(arrays_iter)
        if variable_length:
            values[i, : array.shape[0]] = array
            mask[i, : array.shape[0]] = 1
        else:
            values[i] = array
    return values, mask, present


def collate_examples(examples: Sequence[dict[str, Any]], pad_token_id: int) -> BatchFeature:
    """Encoded examples -> a `BatchFeature` of tensors that `OFAForConditionalGeneration` accepts.

    Text is right-padded with `pad_token_id` (labels with -100). Targets are all-or-none: a batch mixes training
    examples (with `labels`) and inference examples (decoder prefix only) only if every prefix has one length.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    batch: dict[str, torch.Tensor] = {
        "input_ids": _pad_ids([ex["input_ids"] for ex in examples], pad_token_id),
        "input_modality_ids": _pad_ids([ex["input_modality_ids"] for ex in examples], 0),
    }
    batch["attention_mask"] = _pad_ids([[1] * len(ex["input_ids"]) for ex in examples], 0)
    for key, batch_key, mask_key, presence_key in _DENSE_INPUTS:
        if any(key in ex for ex in examples):
            values, mask, present = _stack_dense(examples, key, variable_length=mask_key is not None)
            batch[batch_key] = values
            if mask is not None:
                batch[mask_key] = mask
            if not bool(present.all()):
                batch[presence_key] = present
    if any("video_frame_indices" in ex for ex in examples):
        frames = batch["video_pixel_values"].shape[1]
        batch["video_frame_indices"] = torch.stack(
            [torch.as_tensor(ex.get("video_frame_indices", range(frames)), dtype=torch.long) for ex in examples]
        )

    with_labels = ["labels" in ex for ex in examples]
    if any(with_labels) and not all(with_labels):
        raise ValueError("cannot batch examples with targets together with examples without targets")
    if all(with_labels):
        batch["labels"] = _pad_ids([ex["labels"] for ex in examples], -100)
        batch["decoder_input_ids"] = _pad_ids([ex["decoder_input_ids"] for ex in examples], pad_token_id)
    else:
        lengths = {len(ex["decoder_input_ids"]) for ex in examples}
        if len(lengths) > 1:
            raise ValueError(
                "inference examples have decoder prefixes of different lengths "
                f"{sorted(lengths)}; batch examples of one prefix length together for generation"
            )
        batch["decoder_input_ids"] = _pad_ids([ex["decoder_input_ids"] for ex in examples], pad_token_id)
    batch["code_masks"] = torch.tensor([bool(ex.get("code_mask", False)) for ex in examples])
    batch["decoder_modality_ids"] = torch.tensor([int(ex["decoder_modality_id"]) for ex in examples])
    if not bool(batch["code_masks"].any()):
        del batch["code_masks"]
    return BatchFeature(batch, tensor_type=None)
