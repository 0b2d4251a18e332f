"""Tests for the audio, struct and motion preprocessors (`processing.audio`, `.struct`, `.motion`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from processing import audio as audio_module
from processing.audio import OFAAudioFeatureExtractor, resample_waveform
from processing.motion import MotionPreprocessor
from processing.struct import StructPreprocessor

SR = 16000


def _sine(freq: float, num_samples: int, sampling_rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(num_samples) / sampling_rate)


def _kaldi_mel(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


@pytest.fixture(scope="module")
def raw_fe() -> OFAAudioFeatureExtractor:
    """Feature extractor without CMVN, so absolute log-mel energies can be checked."""
    return OFAAudioFeatureExtractor(do_normalize=False)


@pytest.fixture(scope="module")
def fe() -> OFAAudioFeatureExtractor:
    return OFAAudioFeatureExtractor()


# ----------------------------------------------------------------------------------------------------------- audio


def test_sine_peak_is_in_the_mel_bin_of_its_frequency(raw_fe):
    feats = raw_fe(_sine(1000, SR), sampling_rate=SR)["input_features"][0]
    # Filter m is centred at mel(20) + (m + 1) * delta on the Kaldi mel scale, 80 filters between 20 Hz and 8 kHz.
    delta = (_kaldi_mel(8000) - _kaldi_mel(20)) / 81
    expected = round((_kaldi_mel(1000) - _kaldi_mel(20)) / delta - 1)
    assert expected == 27
    assert int(feats.mean(axis=0).argmax()) == expected


def test_matches_kaldi_fbank_golden(raw_fe):
    # Golden values from torchaudio.compliance.kaldi.fbank(x * 2**15, num_mel_bins=80, dither=0.0), frame 0.
    n = np.arange(1200)
    wave = 0.3 * np.sin(2 * np.pi * 440 * n / SR) + 0.1 * np.sin(2 * np.pi * 3000 * n / SR)
    golden = np.array([8.21938, 15.19939, 12.43672, 5.26982, 4.73568, 14.44941, 6.72656, 1.59962, -1.11296])
    feats = raw_fe(wave, sampling_rate=SR)["input_features"][0]
    assert feats.shape == (6, 80)
    np.testing.assert_allclose(feats[0, [0, 10, 20, 30, 40, 50, 60, 70, 79]], golden, atol=2e-3)


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 1999, 16000])
def test_frame_count_formula(fe, num_samples):
    expected = 1 + (num_samples - 400) // 160
    out = fe(np.random.default_rng(0).uniform(-0.5, 0.5, num_samples), sampling_rate=SR)
    assert out["input_features"].shape == (1, expected, 80)
    assert fe.num_frames(num_samples) == expected
    assert fe.num_frames(399) == 0


def test_padding_and_attention_mask(fe):
    rng = np.random.default_rng(1)
    lengths = [16000, 4000, 8000]
    out = fe([rng.uniform(-0.5, 0.5, n) for n in lengths], sampling_rate=SR)
    frames = [fe.num_frames(n) for n in lengths]
    assert out["input_features"].shape == (3, max(frames), 80)
    assert out["input_features"].dtype == np.float32
    assert out["attention_mask"].shape == (3, max(frames))
    assert out["attention_mask"].sum(axis=1).tolist() == frames
    for row, n_frames in enumerate(frames):
        assert np.all(out["attention_mask"][row, :n_frames] == 1)
        assert np.all(out["input_features"][row, n_frames:] == 0.0)


@pytest.mark.parametrize(
    ("padding", "pad_to_multiple_of", "expected_frames"),
    [("longest", None, 48), ("longest", 16, 48), ("max_length", None, 60), (True, 20, 60)],
)
def test_padding_strategies(fe, padding, pad_to_multiple_of, expected_frames):
    waves = [np.random.default_rng(2).uniform(-0.5, 0.5, 8000), np.random.default_rng(3).uniform(-0.5, 0.5, 4000)]
    out = fe(
        waves,
        sampling_rate=SR,
        padding=padding,
        max_length=60 if padding == "max_length" else None,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
    assert tuple(out["input_features"].shape) == (2, expected_frames, 80)
    assert out["input_features"].dtype == torch.float32
    assert out["attention_mask"].sum(dim=1).tolist() == [48, 23]


def test_no_padding_returns_ragged_list(fe):
    out = fe([_sine(300, 8000), _sine(300, 4000)], sampling_rate=SR, padding=False)
    assert [f.shape for f in out["input_features"]] == [(48, 80), (23, 80)]
    assert [m.sum() for m in out["attention_mask"]] == [48, 23]


def test_cmvn_normalizes_each_bin(fe):
    feats = fe(np.random.default_rng(4).normal(0, 0.1, 16000), sampling_rate=SR)["input_features"][0]
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(feats.std(axis=0), 1.0, atol=1e-3)


def test_max_length_truncates_to_leading_frames(raw_fe):
    wave = np.random.default_rng(5).uniform(-0.5, 0.5, 16000)
    full = raw_fe(wave, sampling_rate=SR)["input_features"][0]
    cut = raw_fe(wave, sampling_rate=SR, max_length=10)["input_features"][0]
    assert cut.shape == (10, 80)
    np.testing.assert_allclose(cut, full[:10], atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_stereo_is_mixed_down_to_mono(raw_fe, layout):
    left, right = _sine(500, 4000), _sine(2000, 4000, amplitude=0.2)
    stereo = np.stack([left, right]) if layout == "channels_first" else np.stack([left, right], axis=1)
    mixed = raw_fe(stereo, sampling_rate=SR)["input_features"]
    mono = raw_fe((left + right) / 2, sampling_rate=SR)["input_features"]
    np.testing.assert_allclose(mixed, mono, atol=1e-5)


@pytest.mark.parametrize(
    "make_input",
    [
        lambda w: w,
        lambda w: torch.tensor(w),
        lambda w: w.tolist(),
        lambda w: {"array": w, "sampling_rate": SR},
        lambda w: np.round(w * 2**15).astype(np.int16),
    ],
    ids=["numpy", "torch", "list", "datasets_dict", "int16"],
)
def test_input_forms_agree(raw_fe, make_input):
    wave = np.round(_sine(700, 3200) * 2**15) / 2**15  # on the int16 grid, so every form carries the same samples
    expected = raw_fe(wave, sampling_rate=SR)["input_features"]
    got = raw_fe(make_input(wave), sampling_rate=SR)["input_features"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3)


@pytest.mark.parametrize("use_scipy", [True, False], ids=["scipy", "linear"])
@pytest.mark.parametrize("num_samples", [8000, 8001, 3])
def test_resample_8k_to_16k_doubles_length(monkeypatch, use_scipy, num_samples):
    if not use_scipy:
        monkeypatch.setattr(audio_module, "_scipy_resample_poly", lambda: None)
    elif audio_module._scipy_resample_poly() is None:
        pytest.skip("scipy is not installed")
    out = resample_waveform(np.random.default_rng(6).uniform(-1, 1, num_samples), 8000, 16000)
    assert abs(len(out) - 2 * num_samples) <= 1


@pytest.mark.parametrize("use_scipy", [True, False], ids=["scipy", "linear"])
def test_resampled_sine_keeps_its_frequency(monkeypatch, raw_fe, use_scipy):
    if not use_scipy:
        monkeypatch.setattr(audio_module, "_scipy_resample_poly", lambda: None)
    wave_8k = _sine(1000, 8000, sampling_rate=8000)
    out = raw_fe({"array": wave_8k, "sampling_rate": 8000})["input_features"][0]
    assert out.shape[0] == raw_fe.num_frames(16000)
    assert int(out.mean(axis=0).argmax()) == 27


def test_linear_fallback_is_exact_on_kept_samples(monkeypatch):
    monkeypatch.setattr(audio_module, "_scipy_resample_poly", lambda: None)
    np.testing.assert_allclose(resample_waveform(np.array([0.0, 1.0, 3.0]), 8000, 16000), [0, 0.5, 1, 2, 3, 3])
    np.testing.assert_allclose(resample_waveform(np.array([0.0, 1.0, 2.0, 3.0]), 16000, 8000), [0, 2])


def test_resample_false_rejects_other_rates():
    fe = OFAAudioFeatureExtractor(resample=False)
    with pytest.raises(ValueError, match=r"8000 Hz.*16000 Hz.*resample=False"):
        fe(_sine(440, 8000, 8000), sampling_rate=8000)
    assert fe(_sine(440, 8000, 8000), sampling_rate=8000, resample=True)["input_features"].shape[1] == 98


@pytest.mark.parametrize(
    ("wave", "sampling_rate", "error", "pattern"),
    [
        (np.zeros(0), SR, ValueError, r"row 3, column 'wav': audio is empty"),
        (np.array([0.1, np.nan] + [0.0] * 500), SR, ValueError, r"row 3, column 'wav'.*NaN or inf.*index 1"),
        (np.array([0.0] * 500 + [np.inf]), SR, ValueError, r"row 3, column 'wav'.*NaN or inf.*index 500"),
        (np.zeros(399), SR, ValueError, r"row 3, column 'wav'.*399 samples.*400"),
        (np.zeros((2, 3, 500)), SR, ValueError, r"row 3, column 'wav'.*1-D .* or 2-D"),
        (np.zeros((100, 100)), SR, ValueError, r"row 3, column 'wav'.*multi-channel"),
        (np.zeros(500, dtype=np.int64), SR, TypeError, r"row 3, column 'wav'.*int64"),
        ({"path": "x.wav"}, SR, ValueError, r"row 3, column 'wav'.*'array'"),
        ({"array": np.zeros(800), "sampling_rate": 8000}, SR, ValueError, r"row 3, column 'wav'.*8000.*16000"),
        ("x.wav", SR, TypeError, r"got str"),
        (np.zeros(800), -5, ValueError, r"sampling_rate must be a positive integer"),
    ],
)
def test_audio_errors_name_the_location(fe, wave, sampling_rate, error, pattern):
    with pytest.raises(error, match=pattern):
        fe(wave, sampling_rate=sampling_rate, where="row 3, column 'wav'")


def test_batch_errors_name_the_item(fe):
    with pytest.raises(ValueError, match=r"batch item 1: audio is empty"):
        fe([np.zeros(800), np.zeros(0)], sampling_rate=SR)
    with pytest.raises(ValueError, match=r"row 7, column 'wav': audio is empty"):
        fe([np.zeros(800), np.zeros(0)], sampling_rate=SR, where=["row 6, column 'wav'", "row 7, column 'wav'"])
    with pytest.raises(ValueError, match="empty list"):
        fe([], sampling_rate=SR)


def test_save_and_load_round_trip(tmp_path):
    fe = OFAAudioFeatureExtractor(feature_size=40, do_normalize=False, dither=0.0, min_frequency=60.0)
    fe.save_pretrained(tmp_path)
    loaded = OFAAudioFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == fe.to_dict()
    assert "mel_filters" not in loaded.to_dict()
    wave = _sine(1000, 4000)
    np.testing.assert_array_equal(
        loaded(wave, sampling_rate=SR)["input_features"], fe(wave, sampling_rate=SR)["input_features"]
    )
    assert loaded(wave, sampling_rate=SR)["input_features"].shape == (1, 23, 40)


# ---------------------------------------------------------------------------------------------------------- struct


@pytest.mark.parametrize(
    ("table", "kwargs", "expected"),
    [
        ([["name", "age"], ["ann", 3], ["bob", 4.5]], {}, "name : age | ann : 3 | bob : 4.5"),
        ([("name", "age"), (" ann ", True)], {}, "name : age | ann : True"),
        ([["ann", 3], ["bob", 4]], {"header": ["Name", "Age"]}, "Name : Age | ann : 3 | bob : 4"),
        ([["ann", 3], ["bob", 4]], {"header": False}, "ann : 3 | bob : 4"),
        ([{"name": "ann", "age": 3}, {"age": 4, "name": "bob"}], {}, "name : age | ann : 3 | bob : 4"),
        ([{"name": "ann", "age": 3}], {"header": ["age", "name"]}, "age : name | 3 : ann"),
        ([{"name": "ann", "age": 3}], {"header": False}, "ann : 3"),
        ({"name": ["ann", "bob"], "age": [3, np.int64(4)]}, {}, "name : age | ann : 3 | bob : 4"),
        ({"name": ("Ann",), "age": np.array([3.5])}, {"uncased": True}, "name : age | ann : 3.5"),
        ([["City", "Note"], ["Paris", None]], {}, "City : Note | Paris :"),
        ([["a (b)", 'say "hi", x_y']], {"ofasys_clean": True}, "a b : say hi  x y"),
        ([[1, 2], [3, 4], [5, 6]], {"max_cells": 5}, "1 : 2 | 3 : 4"),
    ],
)
def test_table_linearization_golden(table, kwargs, expected):
    assert StructPreprocessor().linearize(table, **kwargs) == expected


def test_custom_separators_and_call_alias():
    struct = StructPreprocessor(row_separator=" ; ", col_separator=" = ")
    assert struct([["k", "v"], ["a", 1]]) == "k = v ; a = 1"


@pytest.mark.parametrize(
    ("triples", "kwargs", "expected"),
    [
        (
            [("Mars Hill", "joined", "1973"), ("Mars Hill", "city", "Mars Hill")],
            {},
            "Mars Hill : joined : 1973 | Mars Hill : city : Mars Hill",
        ),
        ([["Ann", "AGE", 3]], {"uncased": True}, "ann : age : 3"),
        (
            [("Mars_Hill_College", "date_Of  Birth", "(1973)"), ("[TABLECONTEXT]", "[TITLE]", 'List "x", y')],
            {"ofasys_clean": True},
            "Mars Hill College : date of birth : 1973 | [TABLECONTEXT] : [title] : List x  y",
        ),
        ([("a", "b", "c"), ("d", "e", "f"), ("g", "h", "i")], {"max_cells": 7}, "a : b : c | d : e : f"),
    ],
)
def test_triples_golden(triples, kwargs, expected):
    assert StructPreprocessor().linearize_triples(triples, **kwargs) == expected


@pytest.mark.parametrize(
    ("table", "kwargs", "error", "pattern"),
    [
        ([["a", "b"], ["1", "2"], ["3"]], {}, ValueError, r"ragged table: row 2 has 1 cells but row 0 has 2"),
        ([["1", "2", "3"]], {"header": ["a", "b"]}, ValueError, r"ragged table: row 0 has 3 cells but the header"),
        ([{"a": 1, "b": 2}, {"a": 3}], {}, ValueError, r"ragged table: row 1 .*missing \['b'\]"),
        ([{"a": 1}, {"a": 3, "c": 4}], {}, ValueError, r"row 1 .*extra \['c'\]"),
        ({"a": [1, 2], "b": [3]}, {}, ValueError, r"ragged table: column 'b' has 1 values but column 'a' has 2"),
        ([], {}, ValueError, r"table is empty"),
        ({}, {}, ValueError, r"table is empty"),
        ({"a": [], "b": []}, {}, ValueError, r"table is empty"),
        ([["a"], []], {}, ValueError, r"row 1 is empty"),
        ([{}], {}, ValueError, r"row 0 is an empty record"),
        ([["a", "b"], ["1", [2]]], {}, TypeError, r"row 1, column 1: a table cell must be"),
        ([{"a": {"x": 1}}], {}, TypeError, r"row 0, column 'a'"),
        ({"a": [1, 2j]}, {}, TypeError, r"row 1, column 'a'.*complex"),
        ([{"a": 1}, ["x"]], {}, TypeError, r"row 1 is a list but row 0 is a record"),
        ({"a": "abc"}, {}, TypeError, r"column 'a' must be a list"),
        ("a : b", {}, TypeError, r"a table must be"),
        ([{"a": 1}], {"header": ["z"]}, ValueError, r"column\(s\) \['z'\]"),
        ([["a", "b", "c"]], {"max_cells": 2}, ValueError, r"max_cells=2 is smaller than the first row"),
        ([["a"]], {"max_cells": 0}, ValueError, r"max_cells must be a positive integer"),
    ],
)
def test_struct_errors(table, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        StructPreprocessor().linearize(table, **kwargs)


@pytest.mark.parametrize(
    ("triples", "pattern"),
    [([], r"no triples"), ([("a", "b")], r"triple 0 must be"), ([("a", "b", "c"), "abc"], r"triple 1 must be")],
)
def test_triple_errors(triples, pattern):
    with pytest.raises(ValueError, match=pattern):
        StructPreprocessor().linearize_triples(triples)


def test_struct_where_prefix_and_config_round_trip():
    with pytest.raises(ValueError, match=r"^row 3, column 'table': ragged table"):
        StructPreprocessor().linearize([["a"], ["b", "c"]], where="row 3, column 'table'")
    struct = StructPreprocessor(row_separator=" || ", strip_cells=False)
    again = StructPreprocessor.from_dict(struct.to_dict())
    assert again.to_dict() == struct.to_dict() and again.linearize([[" a "]]) == " a "
    with pytest.raises(ValueError, match="Unknown StructPreprocessor config"):
        StructPreprocessor.from_dict({"row_sep": " | "})


# ---------------------------------------------------------------------------------------------------------- motion

# Two frames, two joints, 2-D coordinates.
TINY = np.array([[[1.0, 1.0], [3.0, 2.0]], [[2.0, 1.0], [2.0, 4.0]]])


@pytest.mark.parametrize(
    ("keep_root_trajectory", "unscaled"),
    [
        # Joint 1 minus joint 0 per frame; joint 0 holds the root's offset from frame 0 ([0,0] then [1,0]).
        (True, [0, 0, 2, 1, 1, 0, 0, 3]),
        # Plain root-relative: joint 0 is all zeros.
        (False, [0, 0, 2, 1, 0, 0, 0, 3]),
    ],
)
def test_motion_normalization_golden(keep_root_trajectory, unscaled):
    values = np.array(unscaled, dtype=np.float64)
    # Population std by hand: keep -> mean 7/8, E[x^2] 15/8; plain -> mean 6/8, E[x^2] 14/8.
    std = math.sqrt(15 / 8 - (7 / 8) ** 2) if keep_root_trajectory else math.sqrt(14 / 8 - (6 / 8) ** 2)
    prep = MotionPreprocessor(num_coords=2, keep_root_trajectory=keep_root_trajectory, frames_per_token=2)
    out = prep(TINY)
    assert out["motion_features"].shape == (1, 8) and out["motion_features"].dtype == np.float32
    np.testing.assert_allclose(out["motion_features"][0], values / std, rtol=1e-6)
    assert out["motion_mask"].tolist() == [1]


def test_motion_scaling_modes():
    glob = MotionPreprocessor(num_coords=2, root_relative=False, scale="global", global_std=2.0)(TINY)
    np.testing.assert_allclose(glob["motion_features"], TINY.reshape(2, 4) / 2.0)
    raw = MotionPreprocessor(num_coords=2, root_relative=False, scale="none")(TINY)
    np.testing.assert_allclose(raw["motion_features"], TINY.reshape(2, 4))
    # A constant clip has no spread: it is left unscaled rather than divided by ~0.
    still = MotionPreprocessor(num_coords=2, root_relative=False)(np.full((3, 2, 2), 5.0))
    np.testing.assert_allclose(still["motion_features"], 5.0)


@pytest.mark.parametrize(
    ("num_frames", "frames_per_token", "drop_remainder", "frame_stride", "max_length", "expected_steps"),
    [
        (10, 1, False, 1, None, 10),
        (10, 4, False, 1, None, 3),
        (10, 4, True, 1, None, 2),
        (12, 4, False, 1, None, 3),
        (10, 2, False, 2, None, 3),
        (100, 4, False, 1, 7, 7),
        (5, 8, False, 1, None, 1),
    ],
)
def test_motion_chunking_shapes(num_frames, frames_per_token, drop_remainder, frame_stride, max_length, expected_steps):
    prep = MotionPreprocessor(
        num_joints=5,
        frames_per_token=frames_per_token,
        drop_remainder=drop_remainder,
        frame_stride=frame_stride,
        max_length=max_length,
    )
    out = prep(np.random.default_rng(7).normal(size=(num_frames, 5, 3)))
    assert out["motion_features"].shape == (expected_steps, 5 * 3 * frames_per_token)
    assert prep.feature_size == 5 * 3 * frames_per_token
    assert out["motion_mask"].tolist() == [1] * expected_steps


def test_motion_chunks_are_frame_major_and_complete_with_last_frame():
    frames = np.arange(3 * 2 * 3, dtype=np.float64).reshape(3, 2, 3)
    out = MotionPreprocessor(root_relative=False, scale="none", frames_per_token=2)(frames)
    np.testing.assert_array_equal(out["motion_features"][0], frames[:2].reshape(-1))
    np.testing.assert_array_equal(out["motion_features"][1], np.concatenate([frames[2].ravel(), frames[2].ravel()]))


def test_motion_flat_input_and_torch_match_3d():
    frames = np.random.default_rng(8).normal(size=(6, 4, 3))
    prep = MotionPreprocessor(frames_per_token=2)
    expected = prep(frames)["motion_features"]
    np.testing.assert_allclose(prep(frames.reshape(6, 12))["motion_features"], expected)
    np.testing.assert_allclose(prep(torch.tensor(frames))["motion_features"], expected, rtol=1e-6)


def test_motion_min_length_rejects_or_pads():
    frames = np.random.default_rng(9).normal(size=(4, 2, 3))
    with pytest.raises(ValueError, match=r"row 2, column 'motion': 4 output step\(s\).*min_length=10"):
        MotionPreprocessor(min_length=10)(frames, where="row 2, column 'motion'")
    padded = MotionPreprocessor(min_length=10, pad_to_min_length=True)(frames)
    assert padded["motion_features"].shape == (10, 6)
    assert padded["motion_mask"].tolist() == [1] * 4 + [0] * 6
    assert np.all(padded["motion_features"][4:] == 0)
    # Per-call overrides (the slot's min_length / max_length attributes).
    assert MotionPreprocessor(min_length=10)(frames, min_length=2, max_length=3)["motion_features"].shape == (3, 6)


@pytest.mark.parametrize(
    ("motion", "kwargs", "error", "pattern"),
    [
        (np.zeros((0, 2, 3)), {}, ValueError, r"zero frames"),
        (np.zeros((4, 0, 3)), {}, ValueError, r"zero joints"),
        (np.zeros(12), {}, ValueError, r"1-D shape"),
        (np.zeros((2, 2, 2, 3)), {}, ValueError, r"4-D shape"),
        (np.zeros((4, 2, 2)), {}, ValueError, r"2 coordinates per joint.*num_coords=3"),
        (np.zeros((4, 7)), {}, ValueError, r"joints \* 3"),
        (np.zeros((4, 3, 3)), {"num_joints": 2}, ValueError, r"3 joints but num_joints=2"),
        (np.where(np.arange(24).reshape(4, 2, 3) == 13, np.nan, 0.0), {}, ValueError, r"NaN or inf in 1.*frame 2"),
        (np.full((4, 2, 3), np.inf), {}, ValueError, r"NaN or inf in 4 frame\(s\), the first is frame 0"),
        (np.array([["a", "b", "c"]]), {}, TypeError, r"numeric"),
        ([[[0, 0, 0]], [[0, 0]]], {}, ValueError, r"could not read"),
        (np.zeros((3, 2, 3)), {"frames_per_token": 4, "drop_remainder": True}, ValueError, r"no step is left"),
    ],
)
def test_motion_errors_name_the_location(motion, kwargs, error, pattern):
    with pytest.raises(error, match=r"row 5, column 'mo'.*" + pattern if error is ValueError else pattern):
        MotionPreprocessor(**kwargs)(motion, where="row 5, column 'mo'")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_coords": 4},
        {"scale": "zscore"},
        {"scale": "global"},
        {"scale": "global", "global_std": 0.0},
        {"frames_per_token": 0},
        {"max_length": 2, "min_length": 3},
        {"min_length": 0},
    ],
)
def test_motion_bad_config(kwargs):
    with pytest.raises(ValueError):
        MotionPreprocessor(**kwargs)


def test_motion_config_round_trip_and_collate():
    prep = MotionPreprocessor(num_coords=2, num_joints=2, scale="global", global_std=3.0, frames_per_token=2)
    again = MotionPreprocessor.from_dict(prep.to_dict())
    assert again.to_dict() == prep.to_dict()
    np.testing.assert_array_equal(again(TINY)["motion_features"], prep(TINY)["motion_features"])
    with pytest.raises(ValueError, match="Unknown MotionPreprocessor config"):
        MotionPreprocessor.from_dict({"stride": 2})

    items = [prep(np.ones((6, 2, 2))), prep(TINY)]
    batch = prep.collate(items, return_tensors="pt")
    assert tuple(batch["motion_features"].shape) == (2, 3, 8)
    assert batch["motion_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.all(batch["motion_features"][1, 1:] == 0)
    with pytest.raises(ValueError, match="different feature sizes"):
        prep.collate([items[0], MotionPreprocessor(num_coords=2)(np.ones((2, 3, 2)))])
