"""MotionPreprocessor's per-call sampling options (OFASys's motion attributes `sample_rate`, `soft_trim`, `window`)."""

from __future__ import annotations

import numpy as np
import pytest

from processing.motion import MotionPreprocessor

# Raw coordinates out (no root subtraction, no scaling), so each output step can be traced back to its frame: frame t
# holds the value t everywhere.
RAW = {"num_coords": 2, "root_relative": False, "scale": "none"}


def clip(num_frames: int, joints: int = 3) -> np.ndarray:
    return np.repeat(np.arange(num_frames, dtype=float), joints * 2).reshape(num_frames, joints, 2)


def frames_of(out) -> list[int]:
    """The source frame index of every output step (frames_per_token=1)."""
    features = out["motion_features"]
    assert (features == features[:, :1]).all()
    return [int(v) for v in features[:, 0]]


def test_without_options_the_clip_is_unchanged():
    assert frames_of(MotionPreprocessor(**RAW)(clip(12))) == list(range(12))


def test_sample_rate_keeps_every_nth_frame_from_a_random_phase():
    pre = MotionPreprocessor(**RAW, frame_stride=2)
    assert frames_of(pre(clip(30), sample_rate=3)) == list(range(0, 30, 6))  # phase 0 without rng
    phases = set()
    for seed in range(40):
        kept = frames_of(pre(clip(30), sample_rate=3, rng=np.random.default_rng(seed)))
        phase = kept[0] // 2
        assert phase in (0, 1, 2) and kept == list(range(2 * phase, 30, 6))
        phases.add(phase)
    assert phases == {0, 1, 2}
    assert frames_of(pre(clip(30), sample_rate=1, rng=np.random.default_rng(0))) == list(range(0, 30, 2))


def test_soft_trim_cuts_both_ends_and_keeps_min_length():
    pre = MotionPreprocessor(**RAW)
    assert frames_of(pre(clip(40), soft_trim=0.5)) == list(range(10, 30))  # margins of 0.5 * 40 / 2 without rng
    assert frames_of(pre(clip(40), soft_trim=0.5, min_length=36)) == list(range(2, 38))  # margins cut to keep 36
    kept_fractions = []
    for seed in range(200):
        kept = frames_of(pre(clip(40), soft_trim=0.5, min_length=8, rng=np.random.default_rng(seed)))
        assert kept == list(range(kept[0], kept[0] + len(kept))) and len(kept) >= 8  # one contiguous piece
        kept_fractions.append(len(kept) / 40)
    assert abs(np.mean(kept_fractions) - 0.5) < 0.05  # Poisson margins of mean p * T / 2 on each side
    assert len(set(kept_fractions)) > 5


def test_window_crops_min_to_max_length_steps():
    pre = MotionPreprocessor(**RAW)
    assert frames_of(pre(clip(30), window=True, max_length=10)) == list(range(10, 20))  # centred without rng
    assert frames_of(pre(clip(30), max_length=10)) == list(range(10))  # plain truncation keeps the start
    sizes, starts = set(), set()
    for seed in range(100):
        kept = frames_of(pre(clip(30), window=True, min_length=4, max_length=10, rng=np.random.default_rng(seed)))
        assert 4 <= len(kept) <= 10 and kept == list(range(kept[0], kept[0] + len(kept)))
        sizes.add(len(kept))
        starts.add(kept[0])
    assert sizes == set(range(4, 11)) and len(starts) > 10
    # In units of output steps: frames_per_token frames per step.
    chunked = MotionPreprocessor(**RAW, frames_per_token=2)
    assert chunked(clip(30), window=True, max_length=5)["motion_features"].shape[0] == 5


def test_soft_trim_then_window_stays_inside_the_trimmed_clip():
    pre = MotionPreprocessor(**RAW)
    kept = frames_of(pre(clip(40), soft_trim=0.5, window=True, max_length=6))
    assert kept == list(range(17, 23))  # the centred 6 of frames 10..29


def test_the_options_make_normalization_describe_the_kept_frames():
    pre = MotionPreprocessor(num_coords=2)  # root-relative, scaled per clip
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(40, 3, 2))
    cropped = pre(motion, window=True, max_length=10)
    assert np.allclose(cropped["motion_features"], pre(motion[15:25])["motion_features"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample_rate": 0}, ValueError, "sample_rate must be a positive integer"),
        ({"sample_rate": 1.5}, ValueError, "sample_rate must be a positive integer"),
        ({"soft_trim": 1.0}, ValueError, "soft_trim must be a number in \\(0, 1\\)"),
        ({"soft_trim": 0}, ValueError, "soft_trim must be a number in \\(0, 1\\)"),
        ({"soft_trim": 0.2, "rng": 3}, TypeError, "rng must be a numpy Generator"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MotionPreprocessor(**RAW)(clip(10), **kwargs)


def test_a_clip_too_short_for_min_length_after_sampling_is_an_error():
    with pytest.raises(ValueError, match="fewer than min_length=5"):
        MotionPreprocessor(**RAW)(clip(12), sample_rate=3, min_length=5)
