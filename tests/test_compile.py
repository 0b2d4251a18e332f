"""`torch.compile`: a compiled OFA trains and generates as the eager one does, and a cached decoding step is one graph.

The fast tests compile with the `aot_eager` backend: TorchDynamo captures the graphs and AOTAutograd traces the
backward, as with the default backend, without inductor's code generation (minutes on a small CPU; inductor's own
numerics are torch's to test).
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

from modeling_ofa import CACHE_NAME, OFAConfig, OFAForConditionalGeneration


def build() -> OFAForConditionalGeneration:
    """A tiny model without dropout whose relative position tables and LayerNorms are not at their neutral start."""
    torch.manual_seed(0)
    config = OFAConfig.from_preset("tiny", attn_implementation="sdpa", dropout=0.0)
    model = OFAForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "rel_pos_table" in name or "layer_norm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def batch() -> dict[str, torch.Tensor]:
    """Image+text inputs with a padded row, and labels with an unscored position."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, 500, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 6:], attention_mask[1, 6:] = 1, 0
    labels = torch.randint(4, 500, (2, 5), generator=generator)
    labels[1, -1] = -100
    pixel_values = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, "labels": labels}


def loss_and_grads(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], params: torch.nn.Module
) -> tuple[torch.Tensor, dict]:
    """Loss of `model` on `inputs` and the gradients of `params`' parameters (the eager module a compiled one wraps)."""
    loss = model(**inputs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in params.named_parameters() if p.grad is not None}
    params.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_compiled_train_step_matches_eager():
    model = build().train()
    inputs = batch()
    eager_loss, eager_grads = loss_and_grads(model, inputs, model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    loss, grads = loss_and_grads(compiled, inputs, model)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys() and len(grads) > 100
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_generate_matches_eager():
    model = build().eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    config = GenerationConfig(
        max_new_tokens=6, min_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    with torch.no_grad():
        eager = model.generate(**inputs, generation_config=config)
        # What `model.compile()`-style use does for generation: the forward is compiled, generate's loop is not.
        model.forward = torch.compile(model.forward, backend="aot_eager", dynamic=True)
        compiled = model.generate(**inputs, generation_config=config)
    assert torch.equal(compiled.sequences, eager.sequences)
    for step_compiled, step_eager in zip(compiled.scores, eager.scores, strict=True):
        finite = torch.isfinite(step_eager)
        assert torch.equal(torch.isfinite(step_compiled), finite)
        torch.testing.assert_close(step_compiled[finite], step_eager[finite], rtol=1e-4, atol=1e-4)


def test_cached_decoder_step_has_no_graph_breaks():
    model = build().eval()
    inputs = batch()
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
        start = torch.zeros(2, 1, dtype=torch.long)
        first = model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True)
        step = {
            "encoder_outputs": encoder_outputs,
            "decoder_input_ids": first.logits[:, -1:].argmax(-1),
            "cache": getattr(first, CACHE_NAME),
            "use_cache": True,
        }
        explanation = torch._dynamo.explain(model)(**step)
    assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_fixed_size_cache_is_refused_clearly():
    # A StaticCache hands back keys for all its slots; the decoder's biases cover the positions so far only.
    model = build().eval()
    inputs = batch()
    cache = EncoderDecoderCache(StaticCache(config=model.config, max_cache_len=8), DynamicCache(config=model.config))
    with torch.no_grad(), pytest.raises(TypeError, match="DynamicCache"):
        model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=torch.zeros(2, 1, dtype=torch.long),
            cache=cache,
            use_cache=True,
        )
