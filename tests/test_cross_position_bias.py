"""`cross_attention_position_bias=False`: cross-attention without OFA's absolute position bias (content and padding
only), its two projections kept in the checkpoint but given no gradient; on by default, as in the original."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_step_logits, perturb_weights, tiny_config_kwargs

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.onnx import sample_encoder_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODES = {"text": None, "codes": torch.tensor([True, True]), "mixed": torch.tensor([True, False])}


def build(bias: bool, **extra) -> OFAForConditionalGeneration:
    torch.manual_seed(4)
    config = OFAConfig(**tiny_config_kwargs(cross_attention_position_bias=bias, **extra))
    return perturb_weights(OFAForConditionalGeneration(config).eval(), seed=5)


def logits(model, code_masks=None, cached=False) -> torch.Tensor:
    inputs = sample_encoder_inputs(model.config, "image", batch_size=2, text_length=6, image_size=32, seed=6)
    ids = torch.randint(10, 120, (2, 9), generator=torch.Generator().manual_seed(7))
    ids[:, 0] = 0
    with torch.no_grad():
        encoded = model.get_encoder()(**inputs)
        if not cached:
            return model(encoder_outputs=encoded, decoder_input_ids=ids, code_masks=code_masks).logits
        return cached_step_logits(model, encoded, ids, code_masks=code_masks)


def move_cross_position_projections(model) -> None:
    with torch.no_grad():
        for linear in (model.model.decoder.cross_pos_q_linear, model.model.decoder.cross_pos_k_linear):
            linear.weight.add_(torch.randn_like(linear.weight))


@pytest.mark.parametrize("kind", list(CODES))
def test_without_the_bias_the_projections_do_not_matter(kind):
    model = build(False)
    before = logits(model, CODES[kind])
    move_cross_position_projections(model)
    assert torch.equal(logits(model, CODES[kind]), before)
    # ... and the cache gives the same logits as one forward.
    torch.testing.assert_close(logits(model, CODES[kind], cached=True), before, rtol=0, atol=1e-5)


def test_with_the_bias_they_do():
    model = build(True)
    before = logits(model)
    move_cross_position_projections(model)
    assert (logits(model) - before).abs().max() > 1e-2


@pytest.mark.parametrize("moe", [False, True])
def test_the_unused_projections_get_no_gradient(moe):
    model = build(False, **({"moe_type": "modality"} if moe else {})).train()
    inputs = sample_encoder_inputs(model.config, "image", batch_size=2, text_length=6, image_size=32, seed=6)
    model(**inputs, labels=torch.randint(10, 120, (2, 5))).loss.backward()
    decoder = model.model.decoder
    assert all(
        p.grad is None for p in (*decoder.cross_pos_q_linear.parameters(), *decoder.cross_pos_k_linear.parameters())
    )
    # The rest of the decoder's position machinery still learns: the self-attention position projections.
    assert all(p.grad is not None for p in (*decoder.self_pos_q_linear.parameters(), *decoder.pos_ln.parameters()))


def test_the_choice_survives_save_and_load(tmp_path):
    model = build(False)
    model.save_pretrained(tmp_path)
    loaded = OFAForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.cross_attention_position_bias is False
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert OFAConfig().cross_attention_position_bias is True  # the original's behaviour by default


# `cross_attention_position_bias_dropout`: in training, whole samples lose the bias; never in evaluation.
STILL = {
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_drop_path_rate": 0.0,
    "decoder_drop_path_rate": 0.0,
}


def train_logits(model, seed: int) -> torch.Tensor:
    """Train-mode logits (every other stochastic layer is off in these models) under a fixed seed."""
    model.train()
    torch.manual_seed(seed)
    return logits(model)


def test_dropping_every_sample_trains_as_without_the_bias():
    dropped = build(True, cross_attention_position_bias_dropout=1.0, **STILL)
    without = build(False, **STILL)
    with_bias = build(True, **STILL)
    torch.testing.assert_close(train_logits(dropped, 0), train_logits(without, 0), rtol=0, atol=1e-6)
    assert (train_logits(with_bias, 0) - train_logits(without, 0)).abs().max() > 1e-2  # the bias matters here


def test_samples_are_dropped_one_by_one():
    half = build(True, cross_attention_position_bias_dropout=0.5, **STILL)
    kept, dropped = train_logits(build(True, **STILL), 0), train_logits(build(False, **STILL), 0)
    seen = set()
    for seed in range(12):
        out = train_logits(half, seed)
        for row in range(out.shape[0]):
            if torch.allclose(out[row], kept[row], rtol=0, atol=1e-6):
                seen.add("kept")
            else:
                torch.testing.assert_close(out[row], dropped[row], rtol=0, atol=1e-6)
                seen.add("dropped")
    assert seen == {"kept", "dropped"}


def test_evaluation_and_generation_always_use_the_bias():
    dropped = build(True, cross_attention_position_bias_dropout=1.0)
    assert torch.equal(logits(dropped), logits(build(True)))
    torch.testing.assert_close(logits(dropped, cached=True), logits(build(True)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_the_dropout_must_be_a_probability(value):
    with pytest.raises(ValueError, match="cross_attention_position_bias_dropout"):
        OFAConfig(**tiny_config_kwargs(cross_attention_position_bias_dropout=value))
