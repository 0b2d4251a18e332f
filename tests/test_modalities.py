"""OFA+ encoder adapters: video, audio and motion slots beside text and image, in one sequence."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config_kwargs

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.configuration_ofa import MODALITIES

BOS, EOS, PAD = 0, 2, 1


def build(**overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(
        extra_modalities=["AUDIO", "VIDEO", "MOTION"], motion_feature_size=6, max_video_frames=4
    )
    kwargs.update(overrides)
    return OFAForConditionalGeneration(OFAConfig(**kwargs)).eval()


def inputs(**present) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]])}
    if present.get("image"):
        batch["pixel_values"] = torch.randn(2, 3, 32, 32, generator=g)
    if present.get("video"):
        batch["video_pixel_values"] = torch.randn(2, 3, 3, 32, 32, generator=g)
    if present.get("audio"):
        batch["audio_features"] = torch.randn(2, 17, 80, generator=g)
        batch["audio_attention_mask"] = torch.tensor([[1] * 17, [1] * 9 + [0] * 8])
    if present.get("motion"):
        batch["motion_features"] = torch.randn(2, 5, 6, generator=g)
        batch["motion_attention_mask"] = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    return batch


# lengths: image 32px -> 2x2 = 4 patches; video 3 frames x 4; audio 17 -> 9 -> 5; motion 5; text 4
SEGMENTS = {"image": ("IMAGE", 4), "video": ("VIDEO", 12), "audio": ("AUDIO", 5), "motion": ("MOTION", 5)}


@pytest.mark.parametrize("present", [(), ("image",), ("video",), ("audio",), ("motion",), tuple(SEGMENTS)])
def test_mixed_encoder_sequence(present):
    model = build().train()
    batch = inputs(**{name: True for name in present})
    labels = torch.tensor([[10, 11, EOS], [12, EOS, -100]])
    out = model(**batch, labels=labels, output_hidden_states=True)
    out.loss.backward()
    encoder = model.get_encoder()
    enc = encoder(**batch)
    expected = [m for name in ("image", "video", "audio", "motion") if name in present for m in [SEGMENTS[name]]]
    expected.append(("TEXT", 4))
    assert enc.last_hidden_state.shape[1] == sum(n for _, n in expected)
    ids = [MODALITIES.index(m) for m, n in expected for _ in range(n)]
    assert enc.modality_ids[0].tolist() == ids
    # Padding follows each segment's own mask: the second sample's audio keeps 9 -> 5 -> 3 frames, motion 3 steps.
    start = 0
    for name, (_, n) in zip([p for p in ("image", "video", "audio", "motion") if p in present], expected):
        real = (~enc.padding_mask[1, start : start + n]).sum().item()
        assert real == {"audio": 3, "motion": 3}.get(name, n)
        start += n
    # Every adapter that ran received gradient; the others did not run.
    for name, module in {"audio": encoder.adapters["AUDIO"], "motion": encoder.adapters["MOTION"]}.items():
        grad = next(module.parameters()).grad
        assert (grad is not None and grad.abs().sum() > 0) == (name in present)


def test_generate_with_every_modality():
    model = build()
    out = model.generate(**inputs(image=True, video=True, audio=True, motion=True), max_new_tokens=4, num_beams=2)
    assert out.shape[0] == 2 and (out[:, 0] == BOS).all()


def test_missing_sample_modality_is_padding():
    """A sample without audio in a batch that has audio gives the same logits as without any audio."""
    model = build()
    batch = inputs(audio=True)
    batch["audio_masks"] = torch.tensor([True, False])
    decoder_ids = torch.tensor([[BOS, 5, 6]] * 2)
    with torch.no_grad():
        mixed = model(**batch, decoder_input_ids=decoder_ids).logits
        alone = model(input_ids=batch["input_ids"][1:], decoder_input_ids=decoder_ids[1:]).logits
    torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=1e-5)


def test_input_modality_ids_are_reported():
    model = build()
    batch = inputs()
    batch["input_modality_ids"] = torch.full((2, 4), MODALITIES.index("STRUCT"))
    assert model.get_encoder()(**batch).modality_ids.eq(MODALITIES.index("STRUCT")).all()


@pytest.mark.parametrize("name", ["audio", "video", "motion"])
def test_missing_adapter_is_a_clear_error(name):
    model = build(extra_modalities=[], motion_feature_size=None)
    with pytest.raises(ValueError, match=f"no {name.upper()} adapter"):
        model.get_encoder()(**inputs(**{name: True}))


def test_config_validation():
    with pytest.raises(ValueError, match="motion_feature_size"):
        OFAConfig(extra_modalities=["MOTION"])
    with pytest.raises(ValueError, match="unknown"):
        OFAConfig(extra_modalities=["SMELL"])
    with pytest.raises(ValueError, match="max_video_frames"):
        build().get_encoder()(**{**inputs(), "video_pixel_values": torch.randn(2, 5, 3, 32, 32)})
