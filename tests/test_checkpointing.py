"""Gradient checkpointing of the OFA model: the same results as a plain step, and what it recomputes.

The encoder layers build their attention bias inside the checkpointed region (from one shared absolute bias), and the
ResNet stem is checkpointed block by block without updating BatchNorm running statistics a second time.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_checkpointed_stem_matches, tiny_config_kwargs
from torch import nn

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.resnet import Bottleneck, OFAResNet, batch_norm_stats_frozen

PAD, BOS, EOS = 1, 0, 2


def build(**overrides) -> OFAForConditionalGeneration:
    """A tiny model in train mode, with non-trivial relative tables, head scales and BatchNorm statistics."""
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**overrides))).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos_table" in name or name.endswith("c_attn"):
                param.add_(torch.randn_like(param) * 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(3)
    return model


def batch(with_image: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    input_ids = torch.cat([torch.full((2, 1), BOS), torch.randint(4, 100, (2, 7), generator=g)], dim=1)
    input_ids[1, -2:] = PAD  # padding keys must stay masked in every layer
    labels = torch.randint(4, 100, (2, 5), generator=g)
    labels[1, -2:] = -100
    inputs = {"input_ids": input_ids, "attention_mask": input_ids.ne(PAD).long(), "labels": labels}
    if with_image:
        inputs["pixel_values"] = torch.randn(2, 3, 64, 64, generator=g)
    return inputs


def train_step(model: OFAForConditionalGeneration, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Loss, logits, every parameter gradient and every buffer after one forward and backward."""
    torch.manual_seed(5)  # dropout and drop-path draw the same masks in both runs
    out = model(**inputs)
    out.loss.backward()
    state = {"loss": out.loss.detach(), "logits": out.logits.detach()}
    state.update({f"grad:{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    state.update({f"buffer:{n}": b.clone() for n, b in model.named_buffers()})
    return state


def enable(model: OFAForConditionalGeneration, use_reentrant: bool) -> None:
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})


# ---------------------------------------------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("with_image", "momentum"), [(True, 0.1), (True, None), (False, 0.1)])
def test_non_reentrant_checkpointing_is_bit_identical(with_image, momentum):
    overrides = dict(dropout=0.1, encoder_drop_path_rate=0.2, decoder_drop_path_rate=0.2, resnet_drop_path_rate=0.2)
    plain, checkpointed = build(**overrides), build(**overrides)
    for module in (*plain.modules(), *checkpointed.modules()):
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum  # None: cumulative average, which counts num_batches_tracked
    enable(checkpointed, use_reentrant=False)
    stats = "model.encoder.embed_images.layer3.1.bn2.running_mean"
    initial = dict(checkpointed.named_buffers())[stats].clone()
    expected, got = train_step(plain, batch(with_image)), train_step(checkpointed, batch(with_image))
    assert expected.keys() == got.keys()
    assert [name for name in expected if not torch.equal(expected[name], got[name])] == []
    if with_image:
        # One update per step: the counter moved by one, and the statistics moved.
        assert int(checkpointed.model.encoder.embed_images.layer1[0].bn1.num_batches_tracked) == 4
        assert not torch.equal(got[f"buffer:{stats}"], initial)


def test_reentrant_checkpointing_matches_up_to_rounding():
    plain, checkpointed = build(), build()
    enable(checkpointed, use_reentrant=True)
    expected, got = train_step(plain, batch()), train_step(checkpointed, batch())
    assert expected.keys() == got.keys()
    for name in expected:
        if name.startswith("buffer:"):
            assert torch.equal(expected[name], got[name]), name  # BatchNorm statistics: exactly one update
        else:
            # Reentrant checkpoints backpropagate each region separately, which reorders float sums.
            torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_encoder_layers_share_one_absolute_bias_and_build_their_own():
    model = build()
    enable(model, use_reentrant=False)
    seen = []

    def record(module, args, kwargs):
        seen.append((args[2], kwargs.get("bias_builder"), args[1]))

    for layer in model.model.encoder.layers:
        layer.register_forward_pre_hook(record, with_kwargs=True)
    train_step(model, batch())
    assert len(seen) == len(model.model.encoder.layers)
    # Every layer gets the same (B, H, N, N) tensor; it is what checkpointing keeps, once for all layers.
    assert len({bias.data_ptr() for bias, _, _ in seen}) == 1 and seen[0][0].shape == (2, 4, 16 + 8, 16 + 8)
    # The builders differ by layer (each adds its own relative tables); the additive mask hides padding keys.
    built = [builder(bias) for bias, builder, _ in seen]
    assert not torch.equal(built[0], built[1])
    mask = seen[0][2]
    assert (mask[1, :, :, -2:] == torch.finfo(mask.dtype).min).all() and (mask[0] == 0).all()


def test_stem_blocks_are_recomputed_only_when_enabled():
    model = build()
    calls = []
    model.model.encoder.embed_images.layer2[1].conv1.register_forward_hook(lambda *args: calls.append(1))
    train_step(model, batch())
    assert len(calls) == 1
    enable(model, use_reentrant=False)
    assert model.model.encoder.embed_images.gradient_checkpointing
    train_step(model, batch())
    assert len(calls) == 1 + 2  # forward and recomputation
    with torch.no_grad():
        model(**batch())  # no backward, nothing to recompute
    assert len(calls) == 4
    model.activation_checkpointing_disable()
    assert not model.model.encoder.embed_images.gradient_checkpointing
    train_step(model, batch())
    assert len(calls) == 5


def test_frozen_stem_is_not_checkpointed_and_keeps_its_statistics():
    model = build()
    enable(model, use_reentrant=False)
    stem = model.model.encoder.embed_images
    stem.eval().requires_grad_(False)  # the original's --freeze-resnet
    before = {n: b.clone() for n, b in stem.named_buffers()}
    calls = []
    stem.layer1[0].conv1.register_forward_hook(lambda *args: calls.append(1))
    state = train_step(model, batch())
    assert len(calls) == 1
    assert all(torch.equal(b, before[n]) for n, b in stem.named_buffers())
    assert "grad:model.encoder.embed_images.conv1.weight" not in state
    assert state["grad:model.encoder.image_proj.weight"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# The ResNet stem alone
# ---------------------------------------------------------------------------------------------------------------


def test_stem_alone_gradients_and_statistics():
    torch.manual_seed(3)
    plain = OFAResNet((2, 1, 1), drop_path_rate=0.3).train()
    checkpointed = OFAResNet((2, 1, 1), drop_path_rate=0.3).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert_checkpointed_stem_matches(plain, checkpointed)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_stats_frozen(momentum):
    torch.manual_seed(0)
    block = Bottleneck(8, 4).train()  # with a projected shortcut: four BatchNorms
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = momentum
    x = torch.randn(2, 8, 6, 6)
    before = {n: b.clone() for n, b in block.named_buffers()}
    with batch_norm_stats_frozen(block):
        frozen = block(x)
    assert all(torch.equal(b, before[n]) for n, b in block.named_buffers())
    assert all(m.momentum == momentum for m in block.modules() if isinstance(m, nn.BatchNorm2d))
    # Batch statistics still normalize: the output is the train-mode output, and a plain call updates the stats.
    assert torch.equal(frozen, block(x))
    assert not torch.equal(block.bn1.running_mean, before["bn1.running_mean"])
    assert int(block.bn1.num_batches_tracked) == 1
    # Restored on errors too.
    with pytest.raises(RuntimeError), batch_norm_stats_frozen(block):
        block(torch.randn(2, 3, 6, 6))
    assert block.bn1.momentum == momentum and int(block.bn1.num_batches_tracked) == 1
