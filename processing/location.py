# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""Boxes in pixels <-> OFA location tokens `<bin_i>`, quantized exactly as the original OFA does.

OFA (visual grounding, detection) resizes the image from `image_size` to `resized_size` and scales the box by the
per-axis ratios `resized / original`, divides by `max_image_size` (a constant, 512 by default, *not* the resized side)
and quantizes each coordinate to `round(coord * (num_bins - 1))` with round-half-to-even (torch `.round()`). Decoding
is `bin / (num_bins - 1) * max_image_size`, divided by the same ratios. OFA computes all of this in float32 tensors;
so do we, operation by operation, so that bins match the original bit for bit (the checkpoint converter and the
evaluation numbers depend on it).

Sizes are `(width, height)` like `PIL.Image.size`; boxes are `(x0, y0, x1, y1)` in pixels of the original image.
Boxes partly outside the image are clipped to it before quantizing (OFA would emit bins below 0 or above
`num_bins - 1`); pass `strict=True` to reject them instead. A box entirely outside the image, a box with `x1 < x0` or
`y1 < y0`, NaN or infinite coordinates, and a box without exactly four numbers raise `ValueError` naming the box.
Decoded boxes are not clipped unless asked (`clip=True`): with `resized_size < max_image_size` the last bins lie
beyond the image, and OFA's evaluation keeps them as they are.

A round trip moves each coordinate by at most half a bin: `max_image_size / (num_bins - 1) / ratio / 2` pixels
(`bin_width` gives the full width per axis).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_IMAGE_SIZE",
    "DEFAULT_NUM_BINS",
    "bin_token",
    "bin_width",
    "bins_to_box",
    "bins_to_boxes",
    "box_to_bins",
    "box_to_tokens",
    "boxes_to_bins",
    "parse_bin_token",
    "tokens_to_box",
]

DEFAULT_MAX_IMAGE_SIZE = 512
"""OFA's `max_image_size`: boxes are normalized by this constant, whatever the resized image size."""
DEFAULT_NUM_BINS = 1000
"""OFA's `num_bins`: tokens `<bin_0>` ... `<bin_999>`."""

_BIN_TOKEN_RE = re.compile(r"<bin_(0|[1-9][0-9]*)>")
_BIN_SEQUENCE_RE = re.compile(r"\s*(<bin_(?:0|[1-9][0-9]*)>)")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_sequence_of(value: Any, length: int) -> bool:
    """Whether `value` is a flat sequence (or 1-D array) of `length` items, without tripping on ragged input."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        return False
    try:
        return np.ndim(value) == 1 and len(value) == length
    except ValueError:  # numpy refuses ragged nested sequences
        return False


def _check_size(name: str, size: Any) -> tuple[int, int]:
    if not _is_sequence_of(size, 2):
        raise ValueError(f"{name} must be (width, height), got {size!r}")
    if not all(_is_int(v) and v > 0 for v in size):
        raise ValueError(f"{name} must be two positive integers (width, height), got {size!r}")
    return int(size[0]), int(size[1])


def _check_quantizer(max_image_size: Any, num_bins: Any) -> None:
    if not _is_int(max_image_size) or max_image_size <= 0:
        raise ValueError(f"max_image_size must be a positive integer, got {max_image_size!r}")
    if not _is_int(num_bins) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")


def _check_geometry(
    image_size: Any, resized_size: Any, max_image_size: Any, num_bins: Any
) -> tuple[tuple[int, int], tuple[int, int]]:
    original = _check_size("image_size", image_size)
    resized = _check_size("resized_size", resized_size)
    _check_quantizer(max_image_size, num_bins)
    if max(resized) > max_image_size:
        raise ValueError(
            f"resized_size {resized} exceeds max_image_size {max_image_size}: boxes near the far edge would need bins "
            f"beyond <bin_{num_bins - 1}>"
        )
    return original, resized


def _as_box_array(boxes: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must hold numbers (x0, y0, x1, y1), got {boxes!r}") from error
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} must have shape (num_boxes, 4) as (x0, y0, x1, y1), got shape {array.shape}")
    return array


def _box_name(index: int, box: np.ndarray, single: bool) -> str:
    coords = ", ".join(f"{v:g}" for v in box)
    return f"box ({coords})" if single else f"box {index} ({coords})"


def _first_bad(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _validate_boxes(array: np.ndarray, original: tuple[int, int], strict: bool, single: bool) -> np.ndarray:
    """Reject malformed boxes; clip the rest to the image unless `strict`. Returns the boxes to quantize."""
    width, height = original
    checks = (
        (~np.isfinite(array).all(axis=1), "coordinates must be finite numbers"),
        (array[:, 2] < array[:, 0], "x1 < x0"),
        (array[:, 3] < array[:, 1], "y1 < y0"),
        (
            (array[:, 2] < 0) | (array[:, 0] > width) | (array[:, 3] < 0) | (array[:, 1] > height),
            f"lies entirely outside the {width}x{height} image",
        ),
    )
    for mask, reason in checks:
        bad = _first_bad(mask)
        if bad is not None:
            raise ValueError(f"{_box_name(bad, array[bad], single)}: {reason}")
    outside = (array[:, :2] < 0).any(axis=1) | (array[:, 2] > width) | (array[:, 3] > height)
    if strict:
        bad = _first_bad(outside)
        if bad is not None:
            raise ValueError(
                f"{_box_name(bad, array[bad], single)}: extends outside the {width}x{height} image (strict=True)"
            )
        return array
    limits = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(array, 0.0, limits)


def _quantize(
    array: np.ndarray,
    original: tuple[int, int],
    resized: tuple[int, int],
    max_image_size: int,
    num_bins: int,
) -> np.ndarray:
    # OFA: float32 box tensor * float32([rw, rh, rw, rh]) with r = float(resized) / float(original) in double,
    # then / max_image_size, then * (num_bins - 1), then .round() (half to even): each step rounded to float32.
    ratio_w = resized[0] / original[0]
    ratio_h = resized[1] / original[1]
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    scaled = array.astype(np.float32) * ratios
    normalized = scaled / np.float32(max_image_size)
    bins = np.rint(normalized * np.float32(num_bins - 1)).astype(np.int64)
    if bins.size and (bins.min() < 0 or bins.max() > num_bins - 1):  # excluded by the checks above; never clip silently
        raise ValueError(f"internal error: bins {bins.tolist()} outside [0, {num_bins - 1}]")
    return bins


def boxes_to_bins(
    boxes: Any,
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    strict: bool = False,
) -> np.ndarray:
    """Quantize many boxes of one image (e.g. detection targets).

    Args:
        boxes: Array-like of shape `(num_boxes, 4)`: `(x0, y0, x1, y1)` in original pixels.
        image_size: Original `(width, height)`.
        resized_size: `(width, height)` the image is resized to before patching (OFA: `patch_image_size` square).
        max_image_size: Normalization constant (OFA default 512); must be at least the resized side.
        num_bins: Number of location tokens (OFA default 1000).
        strict: Reject boxes that extend outside the image instead of clipping them.

    Returns:
        `int64` array of shape `(num_boxes, 4)` with bin indices in `[0, num_bins - 1]`.

    Raises:
        ValueError: Bad sizes, or a malformed box (named by index and coordinates).
    """
    original, resized = _check_geometry(image_size, resized_size, max_image_size, num_bins)
    array = _validate_boxes(_as_box_array(boxes, "boxes"), original, strict, single=False)
    return _quantize(array, original, resized, max_image_size, num_bins)


def box_to_bins(
    box: Sequence[float],
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    strict: bool = False,
) -> list[int]:
    """Quantize one box `(x0, y0, x1, y1)` to four bin indices. Arguments as in `boxes_to_bins`."""
    original, resized = _check_geometry(image_size, resized_size, max_image_size, num_bins)
    if not _is_sequence_of(box, 4):
        raise ValueError(f"box must be four numbers (x0, y0, x1, y1), got {box!r}")
    array = _validate_boxes(_as_box_array([box], "box"), original, strict, single=True)
    return [int(v) for v in _quantize(array, original, resized, max_image_size, num_bins)[0]]


def bins_to_boxes(
    bins: Any,
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    clip: bool = False,
) -> np.ndarray:
    """Decode many boxes of one image from bin indices back to original pixels.

    Args:
        bins: Integer array-like of shape `(num_boxes, 4)`, values in `[0, num_bins - 1]`.
        image_size: Original `(width, height)`.
        resized_size: `(width, height)` the image was resized to.
        max_image_size: Normalization constant used when quantizing.
        num_bins: Number of location tokens.
        clip: Clip decoded boxes to the image (OFA's evaluation does not).

    Returns:
        `float64` array of shape `(num_boxes, 4)`; the arithmetic is OFA's float32.
    """
    original, resized = _check_geometry(image_size, resized_size, max_image_size, num_bins)
    array = np.asarray(bins)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"bins must be integers, got {bins!r}")
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"bins must have shape (num_boxes, 4), got shape {array.shape}")
    bad = _first_bad(((array < 0) | (array > num_bins - 1)).any(axis=1))
    if bad is not None:
        raise ValueError(f"bins of box {bad} {array[bad].tolist()} outside [0, {num_bins - 1}]")
    # OFA: long bins / (num_bins - 1) * max_image_size in float32, then / (resized / original) also in float32.
    ratio_w = np.float32(resized[0]) / np.float32(original[0])
    ratio_h = np.float32(resized[1]) / np.float32(original[1])
    coords = array.astype(np.float32) / np.float32(num_bins - 1) * np.float32(max_image_size)
    coords = coords / np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    out = coords.astype(np.float64)
    if clip:
        out = np.clip(out, 0.0, np.array([original[0], original[1], original[0], original[1]], dtype=np.float64))
    return out


def bins_to_box(
    bins: Sequence[int],
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    clip: bool = False,
) -> tuple[float, float, float, float]:
    """Decode four bin indices to one box `(x0, y0, x1, y1)` in original pixels. Arguments as in `bins_to_boxes`."""
    if not _is_sequence_of(bins, 4) or not all(_is_int(v) for v in bins):
        raise ValueError(f"bins must be four integers, got {bins!r}")
    row = bins_to_boxes(
        np.asarray([list(bins)], dtype=np.int64),
        image_size=image_size,
        resized_size=resized_size,
        max_image_size=max_image_size,
        num_bins=num_bins,
        clip=clip,
    )[0]
    return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))


def bin_width(
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
) -> tuple[float, float]:
    """Width and height of one bin in original pixels: `max_image_size / (num_bins - 1) / ratio` per axis."""
    original, resized = _check_geometry(image_size, resized_size, max_image_size, num_bins)
    step = max_image_size / (num_bins - 1)
    return (step * original[0] / resized[0], step * original[1] / resized[1])


def bin_token(index: int, *, num_bins: int | None = None) -> str:
    """The location token for bin `index`: `"<bin_{index}>"`.

    Args:
        index: Bin index, `>= 0` (and `< num_bins` when given).
        num_bins: Optional upper bound to check against.
    """
    if not _is_int(index) or index < 0 or (num_bins is not None and index >= num_bins):
        bound = f" < {num_bins}" if num_bins is not None else ""
        raise ValueError(f"bin index must be an integer >= 0{bound}, got {index!r}")
    return f"<bin_{int(index)}>"


def parse_bin_token(token: str, *, num_bins: int | None = None) -> int:
    """The bin index of a location token such as `"<bin_17>"` (exact spelling; no spaces, no leading zeros).

    Args:
        token: The token string.
        num_bins: Optional upper bound to check against.
    """
    match = _BIN_TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise ValueError(f"not a location token '<bin_N>': {token!r}")
    index = int(match.group(1))
    if num_bins is not None and index >= num_bins:
        raise ValueError(f"location token {token!r} is beyond the last bin <bin_{num_bins - 1}>")
    return index


def _split_tokens(tokens: str | Sequence[str]) -> list[str]:
    if isinstance(tokens, str):
        parts, position = [], 0
        while position < len(tokens.rstrip()):
            match = _BIN_SEQUENCE_RE.match(tokens, position)
            if match is None:
                raise ValueError(f"expected only location tokens '<bin_N>' in {tokens!r} (at character {position})")
            parts.append(match.group(1))
            position = match.end()
        return parts
    return list(tokens)


def box_to_tokens(
    box: Sequence[float],
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    strict: bool = False,
) -> list[str]:
    """One box as its four location tokens, e.g. `["<bin_0>", "<bin_12>", "<bin_500>", "<bin_999>"]`."""
    bins = box_to_bins(
        box,
        image_size=image_size,
        resized_size=resized_size,
        max_image_size=max_image_size,
        num_bins=num_bins,
        strict=strict,
    )
    return [bin_token(b) for b in bins]


def tokens_to_box(
    tokens: str | Sequence[str],
    *,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
    num_bins: int = DEFAULT_NUM_BINS,
    clip: bool = False,
) -> tuple[float, float, float, float]:
    """Decode four location tokens (a list, or one string such as `"<bin_1> <bin_2><bin_3> <bin_4>"`) to a box."""
    parts = _split_tokens(tokens)
    if len(parts) != 4:
        raise ValueError(f"a box needs exactly 4 location tokens, got {len(parts)}: {tokens!r}")
    bins = [parse_bin_token(part, num_bins=num_bins) for part in parts]
    return bins_to_box(
        bins,
        image_size=image_size,
        resized_size=resized_size,
        max_image_size=max_image_size,
        num_bins=num_bins,
        clip=clip,
    )
