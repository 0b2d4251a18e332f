"""Contract tests of the OFA model on tiny configs: shapes, loss, cache, padding, generation, save/load, presets."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import cached_step_logits, tiny_config_kwargs
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from modeling_ofa import CACHE_NAME, PRESETS, OFAConfig, OFAForConditionalGeneration, OFAModel
from modeling_ofa.modeling_ofa import (
    image_grid_position_ids,
    make_image_bucket_positions,
    make_token_bucket_positions,
    shift_tokens_right,
)

PAD, BOS, EOS = 1, 0, 2


def build(seed: int = 0, **overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(seed)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**overrides))).eval()
    # Relative tables and per-head scales start at trivial values; perturb them so the tests exercise them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos_table" in name or name.endswith("c_attn"):
                param.add_(torch.randn_like(param) * 0.5)
    return model


def batch(with_image: bool = True, with_text: bool = True, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, 100, (2, 7), generator=g) if with_text else torch.empty(2, 0, dtype=torch.long)
    input_ids = torch.cat([torch.full((2, 1), BOS), text, torch.full((2, 1), EOS)], dim=1)
    if with_text:
        input_ids[1, -3:] = torch.tensor([EOS, PAD, PAD])  # the second sample is shorter
    inputs = {"input_ids": input_ids, "attention_mask": input_ids.ne(PAD).long()}
    if with_image:
        inputs["pixel_values"] = torch.randn(2, 3, 64, 64, generator=g)
    return inputs


def labels_for(seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, 100, (2, 5), generator=g)
    labels[:, -1] = EOS
    labels[1, -2:] = -100
    return labels


# ---------------------------------------------------------------------------------------------------------------
# Position buckets: golden values from the formulas of the original implementation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "key", "expected"),
    [(0, 0, 255), (5, 0, 260), (0, 128, 127), (129, 0, 384), (1023, 0, 510), (0, 1023, 0), (0, 200, 255 - 170)],
)
def test_token_buckets_golden(query, key, expected):
    buckets = make_token_bucket_positions(256, 1024)
    assert buckets.shape == (1024, 1024)
    if expected == 255 - 170:  # rel -200: -(ceil(ln(200/128)/ln(1023/128)*127) + 128) + 255
        expected = 255 - (math.ceil(math.log(200 / 128) / math.log(1023 / 128) * 127) + 128)
    assert buckets[query, key].item() == expected
    assert buckets.min().item() == 0 and buckets.max().item() == 510


def test_image_buckets_golden():
    table = make_image_bucket_positions(42)
    assert table.shape == (1765, 1765)
    assert table[0, 0].item() == 6891 and table[0, 7].item() == 6889 and table[7, 0].item() == 6890
    ids = image_grid_position_ids(2, 3, 42)
    assert ids.tolist() == [1, 2, 3, 43, 44, 45]
    # (row 0, col 0) against (row 0, col 1): (0 - 0 + 41) * 83 + (0 - 1 + 41)
    assert table[1, 2].item() == 41 * 83 + 40
    assert table[1:, 1:].max().item() == 6888


def test_shift_tokens_right():
    labels = torch.tensor([[5, 6, EOS], [7, EOS, -100]])
    assert shift_tokens_right(labels, PAD, BOS).tolist() == [[BOS, 5, 6], [BOS, 7, EOS]]


# ---------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------

PUBLISHED_PARAMS = {"tiny": 33e6, "medium": 93e6, "base": 180e6, "large": 470e6, "huge": 930e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = OFAForConditionalGeneration(OFAConfig.from_preset(name))
    count = sum(p.numel() for p in model.parameters())  # tied embeddings are one parameter
    assert abs(count / PUBLISHED_PARAMS[name] - 1) < 0.03, f"{name}: {count / 1e6:.1f}M"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    with torch.device("meta"):
        model = OFAForConditionalGeneration(OFAConfig.from_preset(name))
    assert model.config.d_model == PRESETS[name]["d_model"]
    if name == "demo":
        assert model.config.moe_type == "modality" and model.get_encoder().adapters.keys() == {"AUDIO", "MOTION"}


def test_from_preset_overrides_and_errors():
    config = OFAConfig.from_preset("base", dropout=0.0, label_smoothing=0.1)
    assert (config.d_model, config.encoder_layers, config.dropout, config.label_smoothing) == (768, 6, 0.0, 0.1)
    with pytest.raises(ValueError, match="unknown OFA preset 'gigantic'"):
        OFAConfig.from_preset("gigantic")
    with pytest.raises(ValueError, match="resnet_type"):
        OFAConfig(resnet_type="resnet9")
    with pytest.raises(ValueError, match="not divisible"):
        OFAConfig(d_model=30, encoder_attention_heads=4)
    # A code grid wider than the image position table is refused when the config is made, not at generation.
    with pytest.raises(ValueError, match=r"code_image_size=72 gives a 9x9 decoder code grid.*image_bucket_size=8"):
        OFAConfig(image_bucket_size=8, code_image_size=72)
    assert OFAConfig(image_bucket_size=8, code_image_size=64).code_image_size == 64  # the demo preset's pair


def test_config_docstring_documents_every_argument():
    doc = OFAConfig.__doc__
    for name in inspect.signature(OFAConfig.__init__).parameters:
        if name in {"self", "kwargs"}:
            continue
        assert f"{name} (" in doc, f"OFAConfig docstring does not document {name}"


# ---------------------------------------------------------------------------------------------------------------
# Forward, loss, backward
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("with_image", "with_text"), [(False, True), (True, True), (True, False)])
def test_forward_backward_shapes(with_image, with_text):
    model = build().train()
    inputs, labels = batch(with_image, with_text), labels_for()
    out = model(**inputs, labels=labels)
    num_patches = (64 // 16) ** 2 if with_image else 0
    assert out.logits.shape == (2, 5, 120)
    assert out.encoder_last_hidden_state.shape == (2, num_patches + inputs["input_ids"].shape[1], 32)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["model.shared.weight"] is not None and torch.isfinite(grads["model.shared.weight"]).all()
    if with_image:
        assert grads["model.encoder.embed_images.conv1.weight"].abs().sum() > 0


def test_loss_is_token_cross_entropy_ignoring_minus_100():
    model = build()
    inputs, labels = batch(), labels_for()
    out = model(**inputs, labels=labels)
    expected = F.cross_entropy(out.logits.reshape(-1, 120), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    summed = model(**inputs, labels=labels, num_items_in_batch=100).loss
    torch.testing.assert_close(summed, expected * (labels != -100).sum() / 100)


def test_label_smoothing():
    model = build(label_smoothing=0.1)
    inputs, labels = batch(), labels_for()
    out = model(**inputs, labels=labels)
    expected = F.cross_entropy(out.logits.reshape(-1, 120), labels.reshape(-1), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, expected)
    unsmoothed = F.cross_entropy(out.logits.reshape(-1, 120), labels.reshape(-1), ignore_index=-100)
    assert not torch.allclose(out.loss, unsmoothed)


def test_decoder_input_ids_are_derived_from_labels():
    model = build()
    inputs, labels = batch(), labels_for()
    implicit = model(**inputs, labels=labels).logits
    explicit = model(**inputs, decoder_input_ids=shift_tokens_right(labels, PAD, BOS)).logits
    torch.testing.assert_close(implicit, explicit)


# ---------------------------------------------------------------------------------------------------------------
# Cache, padding, mixed batches
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", [False, True])
def test_cached_decoding_matches_full_forward(codes):
    model = build()
    inputs = batch()
    decoder_ids = torch.randint(4, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    decoder_ids[:, 0] = BOS
    extra = {"code_masks": torch.tensor([True, False])} if codes else {}
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=decoder_ids, **extra).logits
        steps = cached_step_logits(model, model.get_encoder()(**inputs), decoder_ids, **extra)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("num_beams", "codes"), [(1, False), (2, True)])
def test_cached_generation_projects_each_position_key_once(num_beams, codes):
    model = build()
    rows = []
    model.model.decoder.self_pos_k_linear.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    extra = {"code_masks": torch.tensor([True, False])} if codes else {}
    options = dict(max_new_tokens=6, min_new_tokens=6, num_beams=num_beams, do_sample=False, **extra)
    cached = model.generate(**batch(), **options)
    # One call per position kind (text, and image codes) and step, each projecting the new position only.
    assert rows == [1] * 6 * (2 if codes else 1)
    rows.clear()
    uncached = model.generate(**batch(), use_cache=False, **options)
    assert rows[-1] == 6  # without a cache, every step projects all its positions
    assert cached.tolist() == uncached.tolist()


def test_cropped_cache_reuses_stored_position_keys():
    model = build()
    inputs = batch()
    decoder_ids = torch.tensor([[BOS, 5, 6, 7, 8], [BOS, 9, 10, 11, 12]])
    rows = []
    model.model.decoder.self_pos_k_linear.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=decoder_ids).logits
        encoder_outputs = model.get_encoder()(**inputs)
        cache = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, :4], use_cache=True)
        cache = getattr(cache, CACHE_NAME)
        cache.crop(-2)  # back to 2 positions; the keys of 4 positions are stored
        rows.clear()
        again = model(
            encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, 2:], cache=cache, use_cache=True
        ).logits
    assert rows == [1]  # only position 4 was never projected
    torch.testing.assert_close(again, full[:, 2:], atol=1e-5, rtol=1e-5)


def test_code_masks_change_positions_per_sample():
    model = build()
    inputs = batch()
    decoder_ids = torch.tensor([[BOS, 5, 6, 7]] * 2)
    with torch.no_grad():
        text = model(**inputs, decoder_input_ids=decoder_ids).logits
        mixed = model(**inputs, decoder_input_ids=decoder_ids, code_masks=torch.tensor([True, False])).logits
    torch.testing.assert_close(mixed[1], text[1])
    assert not torch.allclose(mixed[0], text[0])


@pytest.mark.parametrize("with_image", [False, True])
def test_padded_batch_matches_each_example_alone(with_image):
    model = build()
    inputs = batch(with_image)
    decoder_ids = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, 10]])
    with torch.no_grad():
        together = model(**inputs, decoder_input_ids=decoder_ids).logits
        generated = model.generate(**inputs, max_new_tokens=6, num_beams=2, do_sample=False)
        for i in range(2):
            length = int(inputs["attention_mask"][i].sum())
            alone = {k: v[i : i + 1] for k, v in inputs.items()}
            alone["input_ids"], alone["attention_mask"] = (
                alone["input_ids"][:, :length],
                alone["attention_mask"][:, :length],
            )
            torch.testing.assert_close(model(**alone, decoder_input_ids=decoder_ids[i : i + 1]).logits[0], together[i])
            single = model.generate(**alone, max_new_tokens=6, num_beams=2, do_sample=False)
            assert single[0].tolist() == generated[i, : single.shape[1]].tolist()


def test_sample_without_image_in_mixed_batch_matches_text_only_run():
    model = build()
    inputs = batch(with_image=True)
    inputs["patch_masks"] = torch.tensor([True, False])
    decoder_ids = torch.tensor([[BOS, 5, 6, 7]] * 2)
    with torch.no_grad():
        mixed = model(**inputs, decoder_input_ids=decoder_ids).logits
        text_only = {k: v[1:] for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        alone = model(**text_only, decoder_input_ids=decoder_ids[1:]).logits
    torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Attention implementations, checkpointing, dtypes
# ---------------------------------------------------------------------------------------------------------------


def test_sdpa_matches_eager_and_attentions_are_returned():
    model = build()
    inputs, decoder_ids = batch(), torch.tensor([[BOS, 5, 6], [BOS, 7, 8]])
    with torch.no_grad():
        sdpa = model(**inputs, decoder_input_ids=decoder_ids).logits
        model.set_attn_implementation("eager")
        out = model(**inputs, decoder_input_ids=decoder_ids, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, sdpa, atol=1e-5, rtol=1e-5)
    n = 16 + inputs["input_ids"].shape[1]
    assert out.encoder_attentions[0].shape == (2, 4, n, n)
    assert out.cross_attentions[0].shape == (2, 4, 3, n)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 3
    # Padding keys get no attention.
    assert out.encoder_attentions[0][1, :, :, -2:].abs().max() == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs, labels = batch(), labels_for()
    grads = []
    for checkpointing in (False, True):
        model = build().train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.encoder.layers[0].gradient_checkpointing
            assert model.model.decoder.layers[1].gradient_checkpointing
        model(**inputs, labels=labels).loss.backward()
        grads.append(model.model.encoder.layers[0].fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_forward_and_backward():
    model = build().to(torch.bfloat16).train()
    inputs, labels = batch(), labels_for()
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    out = model(**inputs, labels=labels)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert torch.isfinite(model.model.shared.weight.grad.float()).all()


def test_drop_path_and_patch_sampling_train_only():
    model = build(encoder_drop_path_rate=0.5, decoder_drop_path_rate=0.5, sample_patch_num=5)
    inputs = batch()
    with torch.no_grad():
        assert model.model.encoder(**inputs).last_hidden_state.shape[1] == 16 + 9
        model.train()
        assert model.model.encoder(**inputs).last_hidden_state.shape[1] == 5 + 9


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [dict(num_beams=1), dict(num_beams=3), dict(do_sample=True, top_k=5), dict(num_beams=2, num_return_sequences=2)],
)
@pytest.mark.parametrize(("with_image", "with_text"), [(False, True), (True, True), (True, False)])
def test_generation_modes(mode, with_image, with_text):
    model = build()
    torch.manual_seed(0)
    out = model.generate(**batch(with_image, with_text), max_new_tokens=5, **mode)
    assert out.shape[0] == 2 * mode.get("num_return_sequences", 1)
    assert (out[:, 0] == BOS).all() and out.shape[1] <= 6


def test_greedy_generation_equals_argmax_loop():
    model = build()
    inputs = batch()
    generated = model.generate(**inputs, max_new_tokens=5, num_beams=1, do_sample=False)
    ids = torch.full((2, 1), BOS)
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(**inputs, decoder_input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    finished = generated.shape[1]
    for i in range(2):
        row = generated[i].tolist()
        stop = row.index(EOS) + 1 if EOS in row[1:] else finished
        assert row[:stop] == ids[i, :stop].tolist()


# ---------------------------------------------------------------------------------------------------------------
# Save / load and Auto classes
# ---------------------------------------------------------------------------------------------------------------


def test_save_and_load_through_auto_classes(tmp_path):
    model = build()
    inputs, decoder_ids = batch(), torch.tensor([[BOS, 5, 6], [BOS, 7, 8]])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ofa"
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, OFAForConditionalGeneration)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.shared.weight.data_ptr()
    torch.testing.assert_close(reloaded.model.encoder.token_rp_bucket, model.model.encoder.token_rp_bucket)
    torch.testing.assert_close(reloaded.model.decoder.image_position_idx, model.model.decoder.image_position_idx)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**inputs, decoder_input_ids=decoder_ids).logits,
            model(**inputs, decoder_input_ids=decoder_ids).logits,
        )
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, OFAModel)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_clear_errors():
    model = build()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(1, 100, dtype=torch.long), decoder_input_ids=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="image_bucket_size"):
        model(
            **batch(with_image=False),
            pixel_values=torch.randn(2, 3, 160, 160),
            decoder_input_ids=torch.zeros(2, 1, dtype=torch.long),
        )
    with pytest.raises(TypeError, match="OFAEncoderOutput"):
        model(encoder_outputs=(torch.zeros(2, 3, 32),), decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
