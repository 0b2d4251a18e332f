"""Mixture-of-experts inside the OFA model: routing, aux loss, upcycling, save/load, generation."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_step_logits, tiny_config_kwargs

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.configuration_ofa import MODALITIES
from modeling_ofa.moe import ModalityMoE, TopKMoE, collect_moe_stats

BOS, EOS, PAD = 0, 2, 1
EXTRA = dict(extra_modalities=["AUDIO", "VIDEO", "MOTION"], motion_feature_size=6, max_video_frames=4)


def build(seed: int = 0, **overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(seed)
    return OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**{**EXTRA, **overrides}))).eval()


def mixed_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]]),
        "input_modality_ids": torch.tensor([[0, 7, 7, 0], [0, 0, 0, 0]]),  # two STRUCT tokens in sample 0
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        "audio_features": torch.randn(2, 9, 80, generator=g),
        "motion_features": torch.randn(2, 3, 6, generator=g),
        "video_pixel_values": torch.randn(2, 2, 3, 32, 32, generator=g),
        "labels": torch.tensor([[10, 11, EOS], [12, EOS, -100]]),
    }


@pytest.mark.parametrize(
    "moe", [dict(moe_type="modality"), dict(moe_type="topk", moe_top_k=1), dict(moe_type="topk", moe_top_k=2)]
)
def test_forward_backward_generate(moe):
    model = build(**moe).train()
    out = model(**mixed_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    if moe["moe_type"] == "topk":
        assert out.aux_loss is not None and out.aux_loss.requires_grad and torch.isfinite(out.aux_loss)
        router = model.get_encoder().layers[0].moe.router.weight
        assert router.grad is not None and router.grad.abs().sum() > 0
    else:
        assert out.aux_loss is None
    stats = collect_moe_stats(model)
    assert stats and all(isinstance(v, float) for v in stats.values())
    batch = {k: v for k, v in mixed_batch().items() if k != "labels"}
    generated = model.eval().generate(**batch, max_new_tokens=4, num_beams=2)
    assert generated.shape[0] == 2


def test_every_token_reaches_its_modality_expert():
    model = build(moe_type="modality")
    seen: dict[int, int] = {}
    layer = model.get_encoder().layers[0]
    assert isinstance(layer.moe, ModalityMoE) and layer.moe.num_experts == len(MODALITIES)
    hooks = [
        expert.register_forward_hook(lambda m, args, out, e=e: seen.__setitem__(e, seen.get(e, 0) + args[0].shape[0]))
        for e, expert in enumerate(layer.moe.experts)
    ]
    decoder_seen: dict[int, int] = {}
    dec = model.get_decoder().layers[0]
    hooks += [
        expert.register_forward_hook(
            lambda m, args, out, e=e: decoder_seen.__setitem__(e, decoder_seen.get(e, 0) + args[0].shape[0])
        )
        for e, expert in enumerate(dec.moe.experts)
    ]
    batch = mixed_batch()
    with torch.no_grad():
        model(**batch, decoder_modality_ids=torch.tensor([MODALITIES.index("BOX"), MODALITIES.index("TEXT")]))
    for h in hooks:
        h.remove()
    # per sample: image 4 patches, video 2x4, audio 9 -> 3, motion 3, text 4 (2 of them STRUCT in sample 0); the
    # padding token of sample 1 is not routed

    index = MODALITIES.index
    expected = {
        index("IMAGE"): 8,
        index("VIDEO"): 16,
        index("AUDIO"): 6,
        index("MOTION"): 6,
        index("TEXT"): 5,
        index("STRUCT"): 2,
    }
    assert seen == expected
    assert decoder_seen == {index("BOX"): 3, index("TEXT"): 3}


def test_modality_groups_share_experts():
    groups = [["TEXT", "STRUCT", "BOX", "PHONE", "CATEGORY"], ["IMAGE", "VIDEO", "IMAGE_CODE"], ["AUDIO"], ["MOTION"]]
    model = build(moe_type="modality", moe_modality_groups=groups, moe_layers="every_other")
    assert model.get_encoder().layers[0].moe is None and model.get_encoder().layers[1].moe.num_experts == 4
    model(**mixed_batch()).loss.backward()
    with pytest.raises(ValueError, match="belong to no group"):
        build(moe_type="modality", moe_modality_groups=groups[:2])(**mixed_batch())


@pytest.mark.parametrize(
    "moe", [dict(moe_type="modality"), dict(moe_type="topk", moe_top_k=2), dict(moe_type="topk", moe_top_k=1)]
)
def test_upcycling_gives_the_dense_logits(tmp_path, moe):
    dense = build()
    batch = mixed_batch()
    with torch.no_grad():
        expected = dense(**batch).logits
    dense.save_pretrained(tmp_path)
    upcycled = OFAForConditionalGeneration.from_pretrained(tmp_path, **moe).eval()
    assert upcycled.config.moe_type == moe["moe_type"]
    assert isinstance(upcycled.get_encoder().layers[0].moe, ModalityMoE if moe["moe_type"] == "modality" else TopKMoE)
    with torch.no_grad():
        torch.testing.assert_close(upcycled(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    # The MoE model saves and reloads as itself.
    upcycled.save_pretrained(tmp_path / "moe")
    again = OFAForConditionalGeneration.from_pretrained(tmp_path / "moe").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_moe_with_gradient_checkpointing_and_cache():
    model = build(moe_type="topk", moe_top_k=2).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    out = model(**mixed_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model.eval()
    batch = {k: v for k, v in mixed_batch().items() if k != "labels"}
    decoder_ids = torch.tensor([[BOS, 5, 6, 7]] * 2)
    with torch.no_grad():
        full = model(**batch, decoder_input_ids=decoder_ids).logits
        steps = cached_step_logits(model, model.get_encoder()(**batch), decoder_ids)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_from_dense_errors():
    with pytest.raises(ValueError, match="moe_type"):
        OFAForConditionalGeneration.from_dense(build())
    with pytest.raises(ValueError, match="already has moe_type"):
        OFAForConditionalGeneration.from_dense(build(moe_type="modality"), moe_type="topk")
