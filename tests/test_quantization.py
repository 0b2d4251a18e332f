"""Dynamic int8 quantization on tiny configs: which layers convert, the tied output projection, generation still
runs and stays close to float, the agreement metric, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb_weights, tiny_config_kwargs
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from modeling_ofa import OFAConfig, OFAForConditionalGeneration, TopKRouter
from modeling_ofa.onnx import sample_encoder_inputs
from modeling_ofa.quantization import (
    greedy_agreement,
    logits_max_abs_diff,
    quantize_dynamic_int8,
    tied_lm_head_error,
)

PAD = 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(seed: int = 0, **overrides) -> OFAForConditionalGeneration:
    """A tiny model (d_model 64) with weights perturbed so that greedy outputs vary (`perturb_weights`)."""
    torch.manual_seed(seed)
    kwargs = tiny_config_kwargs(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, **overrides)
    return perturb_weights(OFAForConditionalGeneration(OFAConfig(**kwargs)).eval())


@pytest.fixture(scope="module")
def model():
    return build()


def batches(model, count: int = 2) -> list[dict[str, torch.Tensor]]:
    return [
        sample_encoder_inputs(model.config, variant, batch_size=4, text_length=9, image_size=48, seed=seed)
        for seed in range(count)
        for variant in ("text", "image")
    ]


def linear_names(model: nn.Module, kind: type) -> set[str]:
    return {name for name, module in model.named_modules() if type(module) is kind}


@pytest.mark.parametrize("quantize_lm_head", [True, False])
def test_every_linear_converted(model, quantize_lm_head):
    float_linears = linear_names(model, nn.Linear)
    quantized = quantize_dynamic_int8(model, quantize_lm_head=quantize_lm_head)
    converted = linear_names(quantized, DynamicQuantizedLinear)
    expected = float_linears if quantize_lm_head else float_linears - {"lm_head"}
    assert converted == expected
    assert linear_names(quantized, nn.Linear) == float_linears - expected
    assert {"model.encoder.image_proj", "model.decoder.cross_pos_k_linear"} <= converted
    # The float model is untouched, and its head is still the embedding itself.
    assert linear_names(model, DynamicQuantizedLinear) == set()
    assert model.lm_head.weight is model.model.shared.weight


@pytest.mark.parametrize(
    ("per_channel", "scheme"), [(True, torch.per_channel_affine), (False, torch.per_tensor_affine)]
)
def test_tied_head_stays_consistent(model, per_channel, scheme):
    quantized = quantize_dynamic_int8(model, per_channel=per_channel)
    assert quantized.lm_head.weight().qscheme() == scheme
    # The embedding stays float and equal; the head is its int8 rounding (at most half a step off per value).
    assert torch.equal(quantized.model.shared.weight, model.model.shared.weight)
    assert quantized.model.encoder.embed_tokens.weight is quantized.model.shared.weight
    assert 0.25 < tied_lm_head_error(quantized) <= 0.5 + 1e-3
    assert tied_lm_head_error(model) == 0.0
    assert tied_lm_head_error(quantize_dynamic_int8(model, quantize_lm_head=False)) == 0.0


def test_generation_close_to_float(model):
    quantized = quantize_dynamic_int8(model)
    data = batches(model)
    agreement = greedy_agreement(model, quantized, data, max_new_tokens=8, pad_token_id=PAD)
    assert agreement["sequences"] == 16 and agreement["token_agreement"] >= 0.8
    decoder_ids = torch.randint(3, 100, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = max(float(model(**b, decoder_input_ids=decoder_ids).logits.abs().max()) for b in data)
    diff = max(logits_max_abs_diff(model, quantized, {**b, "decoder_input_ids": decoder_ids}) for b in data)
    # This random model has large activations (weights at twice the usual scale), a hard case for per-batch
    # activation scales: about 13% of the largest logit here, yet greedy tokens agree.
    assert 0.0 < diff < 0.25 * scale
    with torch.no_grad():
        ids = quantized.generate(**data[1], max_new_tokens=5, num_beams=1, do_sample=False)
    assert ids.shape == (4, 6) and ids.dtype == torch.long


def test_inplace_and_modality_moe():
    moe = build(moe_type="modality", moe_modality_groups=[["TEXT", "BOX", "STRUCT"], ["IMAGE", "IMAGE_CODE", "VIDEO"]])
    quantized = quantize_dynamic_int8(moe, inplace=True)
    assert quantized is moe
    experts = quantized.model.decoder.layers[0].moe.experts
    assert all(isinstance(expert.fc1, DynamicQuantizedLinear) for expert in experts)
    inputs = sample_encoder_inputs(moe.config, "image", batch_size=2, text_length=6, image_size=32)
    with torch.no_grad():
        ids = quantized.generate(**inputs, decoder_modality_ids=torch.tensor([0, 9]), max_new_tokens=4)
    assert ids.shape == (2, 5)


def test_topk_router_stays_float():
    topk = build(moe_type="topk", moe_num_experts=2)
    quantized = quantize_dynamic_int8(topk)
    routers = [name for name, module in quantized.named_modules() if name.endswith("moe.router")]
    assert routers and all(type(quantized.get_submodule(name)) is TopKRouter for name in routers)
    assert isinstance(quantized.model.encoder.layers[0].moe.experts[0].fc1, DynamicQuantizedLinear)
    inputs = sample_encoder_inputs(topk.config, "text", batch_size=2, text_length=6)
    with torch.no_grad():
        assert quantized.generate(**inputs, max_new_tokens=3).shape == (2, 4)


class FixedGenerator:
    """Stands in for a model: `generate` returns fixed ids."""

    def __init__(self, ids: list[list[int]]):
        self.ids = np.array(ids)

    def generate(self, **kwargs):
        return self.ids


def test_greedy_agreement_golden():
    # Sample 0 identical; sample 1 differs at one of 3 generated tokens; sample 2 stops early (one more pad).
    reference = FixedGenerator([[0, 5, 6, 2], [0, 5, 6, 2], [0, 7, 2, 1]])
    candidate = FixedGenerator([[0, 5, 6, 2], [0, 5, 9, 2], [0, 7, 2, 1]])
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long)}
    result = greedy_agreement(reference, candidate, [batch], pad_token_id=PAD)
    assert result == {"sequence_match": 2 / 3, "token_agreement": 7 / 8, "sequences": 3.0}
    # A shorter candidate: missing positions disagree unless the reference is padding there.
    short = FixedGenerator([[0, 5, 6], [0, 5, 6], [0, 7, 2]])
    result = greedy_agreement(reference, short, [batch], pad_token_id=PAD)
    assert result["sequence_match"] == 1 / 3 and result["token_agreement"] == 6 / 8


def test_errors(model):
    with pytest.raises(TypeError, match="OFAForConditionalGeneration"):
        quantize_dynamic_int8(model.model)
    with pytest.raises(ValueError, match="float32"):
        quantize_dynamic_int8(build().to(torch.bfloat16))
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        logits_max_abs_diff(model, model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="no batches"):
        greedy_agreement(model, model, [])
