"""The image processor and the audio feature extractor on transformers' own bases: which base, what they still match,
and that folders saved before they were rebased load (the config keys did not change)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.speech_to_text import Speech2TextFeatureExtractor

from processing.audio import OFAAudioFeatureExtractor
from processing.image import OFAImageProcessor

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# `preprocessor_config.json` as the image processor and the feature extractor wrote it before they were rebased onto
# `PilBackend` and `Speech2TextFeatureExtractor` (every setting away from its default, so a key that is not read shows).
LEGACY_IMAGE_CONFIG = {
    "auto_map": {"AutoImageProcessor": "image.OFAImageProcessor"},
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.4, 0.5, 0.6],
    "image_processor_type": "OFAImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "return_tensors": "pt",
    "size": {"height": 32, "width": 40},
}
LEGACY_AUDIO_CONFIG = {
    "auto_map": {"AutoFeatureExtractor": "audio.OFAAudioFeatureExtractor"},
    "dither": 0.0,
    "do_normalize": True,
    "feature_extractor_type": "OFAAudioFeatureExtractor",
    "feature_size": 40,
    "hop_length": 80,
    "max_frequency": 8000.0,
    "min_frequency": 60.0,
    "n_fft": 512,
    "normalize_variance": False,
    "padding_side": "right",
    "padding_value": 0.0,
    "preemphasis": 0.97,
    "resample": True,
    "return_attention_mask": False,
    "sampling_rate": 16000,
    "win_length": 320,
}
LEGACY_IMAGE_KWARGS = {"size": {"height": 32, "width": 40}, "image_mean": [0.4, 0.5, 0.6], "resample": 2}
LEGACY_AUDIO_KWARGS = {
    "feature_size": 40,
    "win_length": 320,
    "hop_length": 80,
    "normalize_variance": False,
    "min_frequency": 60.0,
    "return_attention_mask": False,
}


def _noise_image() -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))


def _noise_wave(num_samples: int = 4000) -> np.ndarray:
    return np.random.default_rng(1).uniform(-0.5, 0.5, num_samples)


def _settings(processor) -> dict:
    """The saved settings; `auto_map` only says where the class was loaded from."""
    return {key: value for key, value in processor.to_dict().items() if key != "auto_map"}


def _write_legacy_folders(root: Path) -> tuple[Path, Path]:
    image_dir, audio_dir = root / "image", root / "audio"
    for folder, config in ((image_dir, LEGACY_IMAGE_CONFIG), (audio_dir, LEGACY_AUDIO_CONFIG)):
        folder.mkdir()
        (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    return image_dir, audio_dir


def test_bases_are_transformers_backends():
    processor, extractor = OFAImageProcessor(), OFAAudioFeatureExtractor()
    assert isinstance(processor, PilBackend) and isinstance(processor, BaseImageProcessor)
    assert processor.backend == "pil"
    assert isinstance(extractor, Speech2TextFeatureExtractor)


def test_image_matches_the_ofa_transform_exactly():
    """OFA: PIL bicubic resize to S x S, ToTensor (/255, float32), Normalize(0.5, 0.5): the same float32 bits."""
    image = _noise_image()
    pixels = OFAImageProcessor(size=24)(image)["pixel_values"][0]
    reference = np.asarray(image.resize((24, 24), PIL.Image.BICUBIC), dtype=np.float32) / 255.0
    reference = torch.from_numpy((reference - 0.5) / 0.5).permute(2, 0, 1)
    assert torch.equal(pixels, reference)


def test_image_outputs_keep_their_types():
    processor = OFAImageProcessor(size=8)
    as_torch = processor([_noise_image(), np.zeros((5, 7, 3), np.uint8)])
    assert as_torch["pixel_values"].dtype == torch.float32 and as_torch["original_sizes"].dtype == torch.int64
    assert as_torch["original_sizes"].tolist() == [[37, 53], [5, 7]]
    as_numpy = processor(_noise_image(), return_tensors="np")
    assert as_numpy["pixel_values"].dtype == np.float32 and as_numpy["original_sizes"].dtype == np.int64
    with pytest.raises(ValueError, match="return_tensors"):
        processor(_noise_image(), return_tensors="tf")
    with pytest.raises(ValueError, match="different sizes"):
        processor([_noise_image(), np.zeros((5, 7, 3), np.uint8)], do_resize=False)


def test_audio_recipe_is_speech2text_recipe():
    """On Speech2Text's own (numpy) path, the default extractor computes the same features; Speech2Text rounds the
    waveform to float32 first, so the same float32 samples go to both."""
    reference = Speech2TextFeatureExtractor()
    if not hasattr(reference, "mel_filters"):
        pytest.skip("torchaudio is installed, so Speech2Text uses torchaudio's fbank instead of the numpy recipe")
    wave = _noise_wave().astype(np.float32)
    expected = reference(wave, sampling_rate=SR, return_tensors="np")["input_features"]
    got = OFAAudioFeatureExtractor()(wave.astype(np.float64), sampling_rate=SR)["input_features"]
    assert got.shape == expected.shape == (1, 23, 80)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert np.abs(got).max() > 0.5  # CMVN'd noise, not a degenerate all-zero comparison


def test_audio_speech2text_names_are_views_of_ofa_settings():
    extractor = OFAAudioFeatureExtractor(feature_size=40, do_normalize=False, normalize_variance=False)
    assert (extractor.num_mel_bins, extractor.do_ceptral_normalize, extractor.normalize_vars) == (40, False, False)
    extractor.do_ceptral_normalize = True
    assert extractor.do_normalize is True
    saved = extractor.to_dict()
    assert not {"num_mel_bins", "do_ceptral_normalize", "normalize_vars"} & set(saved)
    assert saved["do_normalize"] is True and saved["normalize_variance"] is False


def test_silent_clip_normalizes_to_zeros_not_nan():
    """Speech2Text divides by the raw standard deviation; fairseq's floor keeps a constant bin finite."""
    features = OFAAudioFeatureExtractor()(np.zeros(1600), sampling_rate=SR)["input_features"]
    assert np.isfinite(features).all() and not features.any()


def test_legacy_folders_load(tmp_path):
    image_dir, audio_dir = _write_legacy_folders(tmp_path)
    processor = OFAImageProcessor.from_pretrained(image_dir)
    fresh = OFAImageProcessor(**LEGACY_IMAGE_KWARGS)
    assert _settings(processor) == _settings(fresh)
    image = _noise_image()
    out = processor(image)
    assert out["pixel_values"].shape == (1, 3, 32, 40)
    assert torch.equal(out["pixel_values"], fresh(image)["pixel_values"])
    # The mean 0.4 of the red channel and the bilinear filter were read, not left at their defaults.
    assert not torch.equal(
        out["pixel_values"], OFAImageProcessor(size={"height": 32, "width": 40})(image)["pixel_values"]
    )

    extractor = OFAAudioFeatureExtractor.from_pretrained(audio_dir)
    fresh_audio = OFAAudioFeatureExtractor(**LEGACY_AUDIO_KWARGS)
    assert _settings(extractor) == _settings(fresh_audio)
    features = extractor(_noise_wave(), sampling_rate=SR)
    assert "attention_mask" not in features and features["input_features"].shape == (1, 47, 40)
    np.testing.assert_array_equal(
        features["input_features"], fresh_audio(_noise_wave(), sampling_rate=SR)["input_features"]
    )
    # A re-save writes the same keys (readable by the code that wrote the legacy folder).
    extractor.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "preprocessor_config.json").read_text())
    assert set(LEGACY_AUDIO_CONFIG) <= set(resaved) and resaved["normalize_variance"] is False


def test_legacy_folders_load_through_auto_classes_in_a_new_process(tmp_path):
    image_dir, audio_dir = _write_legacy_folders(tmp_path)
    script = f"""
import numpy as np
import processing  # registers the OFA classes with the auto classes
from transformers import AutoFeatureExtractor, AutoImageProcessor
image_processor = AutoImageProcessor.from_pretrained({str(image_dir)!r})
extractor = AutoFeatureExtractor.from_pretrained({str(audio_dir)!r})
pixels = image_processor(np.zeros((9, 9, 3), np.uint8))["pixel_values"]
features = extractor(np.random.default_rng(1).uniform(-0.5, 0.5, 4000), sampling_rate=16000)
print(type(image_processor).__name__, tuple(pixels.shape), round(float(pixels[0, 0, 0, 0]), 4))
print(type(extractor).__name__, features["input_features"].shape, sorted(features))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    image_line, audio_line = result.stdout.strip().splitlines()[-2:]
    # Black through mean 0.4 / std 0.5: (0 - 0.4) / 0.5.
    assert image_line == "OFAImageProcessor (1, 3, 32, 40) -0.8"
    assert audio_line == "OFAAudioFeatureExtractor (1, 47, 40) ['input_features']"
