"""Decoding image codes: a batch whose samples all generate codes computes only the code positions, with the same
logits as those samples get beside a text sample, cached or not, dense or MoE."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_step_logits, perturb_weights, tiny_config_kwargs

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.modeling_ofa import CACHE_NAME
from modeling_ofa.onnx import sample_encoder_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL_CODES = torch.tensor([True, True, True])
MIXED = torch.tensor([True, False, True])  # rows 0 and 2 generate codes beside a text row
NO_CODES = torch.tensor([False, False, False])
# 20 positions: the start token, the tiny model's 4x4 code grid, then filler code positions.
LENGTH = 20


@pytest.fixture(scope="module", params=["dense", "moe"])
def model(request):
    extra = {"dense": {}, "moe": dict(moe_type="modality")}[request.param]
    torch.manual_seed(4)
    return perturb_weights(OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**extra))).eval(), seed=5)


@pytest.fixture(scope="module")
def encoded(model):
    inputs = sample_encoder_inputs(model.config, "text", batch_size=3, text_length=7, image_size=32, seed=6)
    with torch.no_grad():
        return model.get_encoder()(**inputs)


@pytest.fixture(scope="module")
def decoder_ids():
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(10, 120, (3, LENGTH), generator=generator)
    ids[:, 0] = 0
    return ids


def forward(model, encoded, decoder_ids, code_masks, cached: bool) -> torch.Tensor:
    """Logits of every position: one teacher-forced call, or one cached call per position (as `generate` runs)."""
    with torch.no_grad():
        if not cached:
            return model(encoder_outputs=encoded, decoder_input_ids=decoder_ids, code_masks=code_masks).logits
        return cached_step_logits(model, encoded, decoder_ids, code_masks=code_masks)


@pytest.mark.parametrize("cached", [False, True])
def test_all_code_batch_matches_its_rows_in_a_mixed_batch(model, encoded, decoder_ids, cached):
    all_codes = forward(model, encoded, decoder_ids, ALL_CODES, cached)
    mixed = forward(model, encoded, decoder_ids, MIXED, cached)
    text = forward(model, encoded, decoder_ids, NO_CODES, cached)
    # Rows decoded in batches of other compositions: the experts then multiply other numbers of rows at once.
    torch.testing.assert_close(all_codes[[0, 2]], mixed[[0, 2]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text[1], mixed[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward(model, encoded, decoder_ids, None, cached), text, atol=1e-6, rtol=1e-6)
    # Non-degenerate: the code positions change every row's logits.
    assert (all_codes - text).abs().amax(dim=(1, 2)).min() > 1e-2


@pytest.mark.parametrize("code_masks", [ALL_CODES, MIXED, NO_CODES], ids=["all_codes", "mixed", "text"])
def test_cached_steps_match_one_forward(model, encoded, decoder_ids, code_masks):
    uncached = forward(model, encoded, decoder_ids, code_masks, cached=False)
    cached = forward(model, encoded, decoder_ids, code_masks, cached=True)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def count_calls(*modules: torch.nn.Module) -> list[int]:
    calls = [0] * len(modules)
    for i, module in enumerate(modules):
        module.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize(
    ("code_masks", "text_calls", "code_calls"),
    [(ALL_CODES, 0, 1), (NO_CODES, 1, 0), (None, 1, 0), (MIXED, 1, 1)],
    ids=["all_codes", "no_codes", "none", "mixed"],
)
def test_a_step_runs_only_the_position_kinds_of_its_batch(encoded, decoder_ids, code_masks, text_calls, code_calls):
    # A model of its own: the hooks stay on it.
    torch.manual_seed(4)
    model = perturb_weights(OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs())).eval(), seed=5)
    decoder = model.get_decoder()
    calls = count_calls(
        decoder.pos_ln, decoder.layernorm_embedding, decoder.image_pos_ln, decoder.code_layernorm_embedding
    )
    with torch.no_grad():
        out = model(
            encoder_outputs=encoded, decoder_input_ids=decoder_ids[:, :3], code_masks=code_masks, use_cache=True
        )
        cache = getattr(out, CACHE_NAME)
        calls[:] = [0] * len(calls)
        model(encoder_outputs=encoded, decoder_input_ids=decoder_ids[:, 3:4], cache=cache, code_masks=code_masks)
    # One LayerNorm call per kind and step, shared by the self- and cross-attention biases; none for the other kind.
    assert calls == [text_calls, text_calls, code_calls, code_calls]
    assert set(cache.self_position_keys) == {kind for kind, n in (("text", text_calls), ("image", code_calls)) if n}


def test_stored_position_keys_are_kept_per_kind(model, encoded, decoder_ids):
    """A cache that a mixed call filled serves a later all-code call with the code keys, not the text ones."""
    full = forward(model, encoded, decoder_ids, ALL_CODES, cached=False)
    with torch.no_grad():
        out = model(encoder_outputs=encoded, decoder_input_ids=decoder_ids[:, :5], code_masks=MIXED, use_cache=True)
        cache = getattr(out, CACHE_NAME)
        assert set(cache.self_position_keys) == {"text", "image"}
        step = model(encoder_outputs=encoded, decoder_input_ids=decoder_ids[:, 5:6], cache=cache, code_masks=ALL_CODES)
    torch.testing.assert_close(step.logits[[0, 2]], full[[0, 2], 5:6], atol=1e-5, rtol=1e-5)
