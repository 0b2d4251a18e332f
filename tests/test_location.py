"""Tests for box <-> location-bin conversion (`processing.location`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from processing.location import (
    bin_token,
    bin_width,
    bins_to_box,
    bins_to_boxes,
    box_to_bins,
    box_to_tokens,
    boxes_to_bins,
    parse_bin_token,
    tokens_to_box,
)

SQUARE = {"image_size": (512, 512), "resized_size": (512, 512)}  # max_image_size 512, 1000 bins (OFA defaults)


# ----------------------------------------------------------------------------------------------------------------------
# Golden values, computed by hand from round(coord * resized / original / max_image_size * (num_bins - 1))


@pytest.mark.parametrize(
    ("box", "geometry", "expected"),
    [
        ((0, 0, 512, 512), SQUARE, [0, 0, 999, 999]),
        # 256/512*999 = 499.5 -> 500 (half to even), 128 -> 249.75 -> 250, 384 -> 749.25 -> 749, 511 -> 997.05 -> 997
        ((256, 128, 384, 511), SQUARE, [500, 250, 749, 997]),
        # 1024x768 resized to 512x512: x * 0.5, y * 2/3. 100 -> 50 -> 97.56 -> 98; 300 -> 200 -> 390.23 -> 390
        ((100, 300, 1024, 768), {"image_size": (1024, 768), "resized_size": (512, 512)}, [98, 390, 999, 999]),
        # patch size 480 < max_image_size 512 (OFA base): 640 -> 480 -> 936.56 -> 937; 10 -> 7.5 -> 14.63 -> 15
        ((10, 10, 640, 480), {"image_size": (640, 480), "resized_size": (480, 480)}, [15, 20, 937, 937]),
    ],
)
def test_box_to_bins_golden(box, geometry, expected):
    assert box_to_bins(box, **geometry) == expected
    assert box_to_tokens(box, **geometry) == [f"<bin_{b}>" for b in expected]


@pytest.mark.parametrize(("coord", "expected"), [(0.5, 0), (1.5, 2), (2.5, 2), (3.5, 4), (510.5, 510)])
def test_ties_round_half_to_even_like_torch(coord, expected):
    # With max_image_size 512 and 513 bins the scale is exactly 1, so the bin is round(coord) with exact ties.
    bins = box_to_bins((coord, coord, coord, coord), **SQUARE, num_bins=513)
    assert bins == [expected] * 4
    assert int(torch.tensor(coord).round()) == expected


@pytest.mark.parametrize(
    ("x", "image_width", "resized_width", "ofa_bin"),
    [
        (0.2562562562562563, 512, 512, 0),  # float64 gives 1
        (0.7687687687687687, 512, 512, 2),  # float64 gives 1
        (0.5005005005005004, 1000, 512, 1),  # float64 gives 0
        (1.0250250250250248, 640, 480, 2),  # float64 gives 1
    ],
)
def test_near_ties_follow_ofa_float32_arithmetic(x, image_width, resized_width, ofa_bin):
    geometry = {"image_size": (image_width, 512), "resized_size": (resized_width, 512)}
    assert box_to_bins((x, 0, x, 0), **geometry)[0] == ofa_bin
    assert _ofa_quantize((x, 0, x, 0), *geometry.values(), 512, 1000)[0] == ofa_bin
    assert round(x * (resized_width / image_width) / 512 * 999) != ofa_bin  # why float64 would not do


def test_bins_to_box_golden():
    # bin / 999 * 512, then / ratio: 500 -> 256.2563, 250 -> 128.1281, 999 -> 512.
    x0, y0, x1, y1 = bins_to_box([500, 250, 999, 999], **SQUARE)
    assert x0 == pytest.approx(500 / 999 * 512, abs=1e-4) and y0 == pytest.approx(250 / 999 * 512, abs=1e-4)
    assert (x1, y1) == (512.0, 512.0)
    x0, y0, x1, y1 = bins_to_box([98, 390, 999, 999], image_size=(1024, 768), resized_size=(512, 512))
    assert x0 == pytest.approx(98 / 999 * 512 * 2, abs=1e-3) and y0 == pytest.approx(390 / 999 * 512 * 1.5, abs=1e-3)
    assert (x1, y1) == (1024.0, 768.0)
    # With resized < max_image_size the last bin lies beyond the image; OFA keeps it, clip=True does not.
    geometry = {"image_size": (640, 480), "resized_size": (480, 480)}
    assert bins_to_box([0, 0, 999, 999], **geometry)[2] == pytest.approx(512 * 640 / 480, abs=1e-3)
    assert bins_to_box([0, 0, 999, 999], **geometry, clip=True) == (0.0, 0.0, 640.0, 480.0)


def test_bin_width():
    assert bin_width(**SQUARE) == pytest.approx((512 / 999, 512 / 999))
    assert bin_width(image_size=(1024, 768), resized_size=(512, 512)) == pytest.approx((1024 / 999, 768 / 999))


# ----------------------------------------------------------------------------------------------------------------------
# Parity with OFA's own torch arithmetic (refcoco_dataset / transforms.resize / Normalize / refcoco valid_step)


def _ofa_quantize(box, image_size, resized_size, max_image_size, num_bins):
    boxes = torch.tensor([[float(v) for v in box]])
    ratio_w, ratio_h = (float(s) / float(o) for s, o in zip(resized_size, image_size))
    boxes = boxes * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    boxes = boxes / max_image_size
    return [int((boxes[0][i] * (num_bins - 1)).round()) for i in range(4)]


def _ofa_dequantize(bins, image_size, resized_size, max_image_size, num_bins):
    hyps = torch.tensor([bins]) / (num_bins - 1) * max_image_size
    hyps[:, ::2] /= torch.tensor(resized_size[0]) / image_size[0]
    hyps[:, 1::2] /= torch.tensor(resized_size[1]) / image_size[1]
    return hyps[0].tolist()


@st.composite
def _geometry_and_box(draw):
    width, height = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
    max_image_size = draw(st.sampled_from([256, 480, 512, 1024]))
    resized = (draw(st.integers(1, max_image_size)), draw(st.integers(1, max_image_size)))
    num_bins = draw(st.sampled_from([2, 100, 513, 1000]))
    xs = sorted(draw(st.floats(0, width, allow_nan=False)) for _ in range(2))
    ys = sorted(draw(st.floats(0, height, allow_nan=False)) for _ in range(2))
    geometry = {
        "image_size": (width, height),
        "resized_size": resized,
        "max_image_size": max_image_size,
        "num_bins": num_bins,
    }
    return geometry, (xs[0], ys[0], xs[1], ys[1])


@settings(max_examples=300, deadline=None)
@given(_geometry_and_box())
def test_matches_ofa_torch_arithmetic_exactly(case):
    geometry, box = case
    args = (geometry["image_size"], geometry["resized_size"], geometry["max_image_size"], geometry["num_bins"])
    bins = box_to_bins(box, **geometry)
    assert bins == _ofa_quantize(box, *args)
    assert list(bins_to_box(bins, **geometry)) == _ofa_dequantize(bins, *args)


@settings(max_examples=300, deadline=None)
@given(_geometry_and_box())
def test_round_trip_within_half_a_bin(case):
    geometry, box = case
    restored = bins_to_box(box_to_bins(box, **geometry), **geometry)
    width_x, width_y = bin_width(**geometry)
    for original, back, step in zip(box, restored, (width_x, width_y, width_x, width_y)):
        assert abs(original - back) <= step / 2 * (1 + 1e-4) + 1e-3, (original, back, step)


@settings(max_examples=100, deadline=None)
@given(st.lists(_geometry_and_box(), min_size=1, max_size=1), st.integers(0, 6))
def test_batch_matches_single(cases, repeat):
    geometry, box = cases[0]
    boxes = [box] * (repeat + 1)
    batch = boxes_to_bins(boxes, **geometry)
    assert batch.dtype == np.int64 and batch.shape == (repeat + 1, 4)
    assert batch.tolist() == [box_to_bins(box, **geometry)] * (repeat + 1)
    decoded = bins_to_boxes(batch, **geometry)
    assert decoded.dtype == np.float64
    assert decoded[0].tolist() == list(bins_to_box(batch[0].tolist(), **geometry))


def test_empty_batch():
    assert boxes_to_bins(np.zeros((0, 4)), **SQUARE).shape == (0, 4)
    assert bins_to_boxes(np.zeros((0, 4), dtype=np.int64), **SQUARE).shape == (0, 4)


# ----------------------------------------------------------------------------------------------------------------------
# Boxes outside the image and malformed input


def test_partly_outside_boxes_are_clipped_or_rejected_when_strict():
    assert box_to_bins((-20, -1, 600, 300), **SQUARE) == box_to_bins((0, 0, 512, 300), **SQUARE)
    with pytest.raises(ValueError, match=r"box \(-20, -1, 600, 300\): extends outside the 512x512 image"):
        box_to_bins((-20, -1, 600, 300), **SQUARE, strict=True)
    assert box_to_bins((0, 0, 512, 512), **SQUARE, strict=True) == [0, 0, 999, 999]  # the edges are inside


@pytest.mark.parametrize(
    ("box", "pattern"),
    [
        ((10, 0, 5, 5), r"box \(10, 0, 5, 5\): x1 < x0"),
        ((0, 10, 5, 5), "y1 < y0"),
        ((0, math.nan, 5, 5), "finite"),
        ((0, 0, math.inf, 5), "finite"),
        ((600, 0, 700, 5), "entirely outside"),
        ((-9, 0, -1, 5), "entirely outside"),
        ((0, 0, 5), "four numbers"),
        ((0, 0, 5, 5, 6), "four numbers"),
        ("0,0,5,5", "four numbers"),
        (("a", "b", "c", "d"), "must hold numbers"),
        ([[0, 0, 5, 5]], "four numbers"),
    ],
)
def test_malformed_boxes_are_named(box, pattern):
    with pytest.raises(ValueError, match=pattern):
        box_to_bins(box, **SQUARE)


def test_batch_errors_name_the_box_index():
    boxes = np.array([[0, 0, 5, 5], [1, 1, 2, 2], [9, 0, 3, 5]], dtype=np.float64)
    with pytest.raises(ValueError, match=r"box 2 \(9, 0, 3, 5\): x1 < x0"):
        boxes_to_bins(boxes, **SQUARE)
    with pytest.raises(ValueError, match=r"shape \(num_boxes, 4\)"):
        boxes_to_bins(np.zeros((2, 3)), **SQUARE)
    with pytest.raises(ValueError, match=r"bins of box 1 \[0, 0, 1000, 3\] outside \[0, 999\]"):
        bins_to_boxes(np.array([[0, 0, 1, 1], [0, 0, 1000, 3]]), **SQUARE)
    with pytest.raises(ValueError, match="must be integers"):
        bins_to_boxes(np.array([[0.0, 0.0, 1.0, 1.0]]), **SQUARE)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"image_size": (0, 512), "resized_size": (512, 512)}, "two positive integers"),
        ({"image_size": (512.0, 512), "resized_size": (512, 512)}, "two positive integers"),
        ({"image_size": (True, 512), "resized_size": (512, 512)}, "two positive integers"),
        ({"image_size": 512, "resized_size": (512, 512)}, r"\(width, height\)"),
        ({"image_size": (512, 512), "resized_size": (640, 480)}, "exceeds max_image_size"),
        ({**SQUARE, "num_bins": 1}, "num_bins"),
        ({**SQUARE, "max_image_size": 0}, "max_image_size"),
    ],
)
def test_bad_geometry(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        box_to_bins((0, 0, 1, 1), **kwargs)


@pytest.mark.parametrize("bins", [[0, 0, 1], [0, 0, 1, 2.0], [0, 0, 1, True], "0000", [0, 0, 1, -1], [0, 0, 1, 1000]])
def test_bad_bins(bins):
    with pytest.raises(ValueError):
        bins_to_box(bins, **SQUARE)


# ----------------------------------------------------------------------------------------------------------------------
# Tokens


@pytest.mark.parametrize("index", [0, 1, 17, 999])
def test_bin_token_round_trip(index):
    assert bin_token(index) == f"<bin_{index}>"
    assert parse_bin_token(bin_token(index), num_bins=1000) == index
    assert bin_token(np.int64(index)) == f"<bin_{index}>"


@pytest.mark.parametrize("token", ["<bin_01>", "<bin_-1>", "bin_1", "<bin_1> ", "<bin_>", "<code_1>", 3, "<BIN_1>"])
def test_parse_bin_token_rejects(token):
    with pytest.raises(ValueError, match="not a location token"):
        parse_bin_token(token)


def test_token_bounds():
    with pytest.raises(ValueError, match="beyond the last bin"):
        parse_bin_token("<bin_1000>", num_bins=1000)
    for bad in (-1, 1.0, True, "3"):
        with pytest.raises(ValueError):
            bin_token(bad)
    with pytest.raises(ValueError, match="< 1000"):
        bin_token(1000, num_bins=1000)


def test_tokens_to_box_accepts_lists_and_strings():
    tokens = box_to_tokens((256, 128, 384, 511), **SQUARE)
    expected = bins_to_box([500, 250, 749, 997], **SQUARE)
    assert tokens_to_box(tokens, **SQUARE) == expected
    assert tokens_to_box("".join(tokens), **SQUARE) == expected
    assert tokens_to_box(" ".join(tokens) + " ", **SQUARE) == expected
    with pytest.raises(ValueError, match="exactly 4 location tokens, got 3"):
        tokens_to_box(tokens[:3], **SQUARE)
    with pytest.raises(ValueError, match="only location tokens"):
        tokens_to_box(" ".join(tokens) + " dog", **SQUARE)
