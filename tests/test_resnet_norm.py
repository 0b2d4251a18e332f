"""The ResNet stem's normalization (`resnet_norm`): trainable, frozen and group norms, and what PEFT relies on.

"batch" must keep parity with released checkpoints, "frozen" must never move a buffer and give the eval outputs of
"batch" with the same keys, "group" must train without statistics; an adapter trained in train mode must reproduce
the trained logits on a fresh base in a new process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_checkpointed_stem_matches, tiny_config_kwargs
from safetensors.torch import load_file, save_file
from torch import nn

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.peft_utils import TaskAdapters, get_ofa_peft_model, ofa_lora_config
from modeling_ofa.resnet import RESNET_NORMS, FrozenBatchNorm2d, OFAResNet, freeze_resnet_norm, resnet_norm_layer

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 1, 0, 2
NORM_TYPES: dict[str, type[nn.Module]] = {"batch": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d, "group": nn.GroupNorm}
# Every norm of a (1, 1, 1) stem: bn1 of the stem, then per stage one block with bn1-bn3 and a projected shortcut.
NORMS_PER_SMALL_STEM = 1 + 3 * 4
NORM_KINDS = (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)


def perturb_norms(module: nn.Module, seed: int = 0) -> None:
    """Statistics and affine far from their initial values, so that normalization changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, NORM_KINDS):
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.3)
            if isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=generator) * 0.3)
                norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
                norm.num_batches_tracked.fill_(7)


def small_stem(norm: str, seed: int = 0) -> OFAResNet:
    torch.manual_seed(seed)
    stem = OFAResNet((1, 1, 1), norm=norm)
    perturb_norms(stem, seed)
    return stem


def build(norm: str = "batch", seed: int = 0) -> OFAForConditionalGeneration:
    """A tiny, non-degenerate model in eval mode: relative tables, head scales and every norm perturbed."""
    torch.manual_seed(seed)
    config = OFAConfig(**tiny_config_kwargs(encoder_layers=1, decoder_layers=1, resnet_norm=norm))
    model = OFAForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos_table" in name or name.endswith("c_attn"):
                param.add_(torch.randn_like(param) * 0.5)
    perturb_norms(model, seed)
    return model


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.cat([torch.full((2, 1), BOS), torch.randint(4, 100, (2, 6), generator=g)], dim=1)
    input_ids[1, -2:] = PAD
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids.ne(PAD).long(),
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        "decoder_input_ids": torch.cat([torch.full((2, 1), BOS), torch.randint(4, 100, (2, 4), generator=g)], dim=1),
    }


def labels_for(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    # Next-token targets of the decoder inputs, ending in </s>.
    return torch.cat([inputs["decoder_input_ids"][:, 1:], torch.full((2, 1), EOS)], dim=1)


def eval_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**inputs).logits
    model.train(was_training)
    return out


def stem_of(model: nn.Module) -> OFAResNet:
    (stem,) = [module for module in model.modules() if isinstance(module, OFAResNet)]
    return stem


def norm_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every norm's state (affine, statistics, counter), by key: the same keys for "batch" and "frozen"."""
    return {
        f"{name}.{key}": value.clone()
        for name, norm in module.named_modules()
        if isinstance(norm, NORM_KINDS)
        for key, value in norm.state_dict().items()
    }


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    after = norm_state(module)
    assert after.keys() == before.keys()
    return [key for key, value in after.items() if not torch.equal(value, before[key])]


# ---------------------------------------------------------------------------------------------------------------
# Config and construction
# ---------------------------------------------------------------------------------------------------------------


def test_config_field_default_and_validation():
    assert OFAConfig().resnet_norm == "batch"
    assert OFAConfig(resnet_norm="group").to_dict()["resnet_norm"] == "group"
    with pytest.raises(ValueError, match=r"resnet_norm='layer' is not one of \['batch', 'frozen', 'group'\]"):
        OFAConfig(resnet_norm="layer")
    with pytest.raises(ValueError, match="norm='instance'"):
        OFAResNet((1, 1, 1), norm="instance")
    with pytest.raises(ValueError, match="norm='instance'"):
        resnet_norm_layer("instance", 64)


@pytest.mark.parametrize("norm", RESNET_NORMS)
def test_stem_uses_one_kind_of_norm_and_trains(norm):
    stem = small_stem(norm).train()
    kinds = {type(m) for m in stem.modules() if isinstance(m, NORM_KINDS)}
    assert kinds == {NORM_TYPES[norm]}
    assert sum(isinstance(m, NORM_TYPES[norm]) for m in stem.modules()) == NORMS_PER_SMALL_STEM
    out = stem(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1024, 2, 2)
    out.square().mean().backward()
    assert stem.conv1.weight.grad.abs().sum() > 0 and stem.layer3[0].conv3.weight.grad.abs().sum() > 0
    affine = [n for n, _ in stem.named_parameters() if n.endswith("bn1.weight")]
    # Frozen affine is a buffer: not a parameter, so no optimizer can hold it.
    assert (affine == []) == (norm == "frozen")
    if norm == "group":
        assert stem.bn1.num_groups == 32 and stem.layer3[0].bn3.num_groups == 32
        assert not any("running" in name for name, _ in stem.named_buffers())


def test_group_count_divides_small_channel_counts():
    assert resnet_norm_layer("group", 48).num_groups == 16
    assert resnet_norm_layer("group", 8).num_groups == 8


# ---------------------------------------------------------------------------------------------------------------
# Statistics in train mode
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", RESNET_NORMS)
def test_optimizer_step_in_train_mode_moves_statistics_only_with_batch_norm(norm):
    stem = small_stem(norm).train()
    before = norm_state(stem)
    conv_before = stem.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(stem.parameters(), lr=0.1)
    stem(torch.randn(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(stem.conv1.weight, conv_before)  # the step happened
    moved = changed(before, stem)
    if norm == "batch":
        assert "bn1.running_mean" in moved and "layer3.0.bn3.running_var" in moved
        assert int(stem.bn1.num_batches_tracked) == 8
    elif norm == "frozen":
        assert len(before) == 5 * NORMS_PER_SMALL_STEM and moved == []  # statistics, affine, counters bit-identical
    else:
        assert len(before) == 2 * NORMS_PER_SMALL_STEM  # affine only, and it trains
        assert "bn1.weight" in moved and "layer3.0.bn3.bias" in moved


def test_frozen_norm_normalizes_with_its_statistics_in_train_mode():
    frozen = small_stem("frozen")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(frozen.train()(x), frozen.eval()(x))
        batch_kind = small_stem("batch")
        assert not torch.equal(batch_kind.train()(x), batch_kind.eval()(x))


# ---------------------------------------------------------------------------------------------------------------
# Parity and state dicts across kinds
# ---------------------------------------------------------------------------------------------------------------


def test_batch_and_frozen_load_each_other_strictly_and_agree_in_eval():
    x = torch.randn(2, 3, 32, 32)
    trained = small_stem("batch", seed=1).eval()
    frozen = small_stem("frozen", seed=2).eval()
    assert trained.state_dict().keys() == frozen.state_dict().keys()
    with torch.no_grad():
        assert not torch.equal(trained(x), frozen(x))
        frozen.load_state_dict(trained.state_dict(), strict=True)
        assert torch.equal(trained(x), frozen(x))  # released-checkpoint parity, bit for bit
        # And back: a frozen state dict (its own values) into a trainable stem.
        perturb_norms(frozen, seed=3)
        back = small_stem("batch", seed=4).eval()
        back.load_state_dict(frozen.state_dict(), strict=True)
        assert torch.equal(back(x), frozen(x))
    assert int(back.bn1.num_batches_tracked) == 7


def test_frozen_norm_loads_a_state_dict_without_counter():
    norm = FrozenBatchNorm2d(4)
    state = {"weight": torch.full((4,), 2.0), "bias": torch.ones(4), "running_mean": torch.zeros(4)}
    state["running_var"] = torch.full((4,), 3.0)
    norm.load_state_dict(state, strict=True)  # detectron2/torchvision layout: no num_batches_tracked
    assert torch.equal(norm.weight, state["weight"]) and int(norm.num_batches_tracked) == 0


def test_group_norm_refuses_batch_norm_statistics():
    with pytest.raises(RuntimeError, match="running_mean"):
        small_stem("group").load_state_dict(small_stem("batch").state_dict(), strict=True)


def test_freeze_resnet_norm_keeps_outputs_keys_and_then_statistics():
    model = build("batch")
    inputs = batch()
    expected = eval_logits(model, inputs)
    keys = model.state_dict().keys()
    assert freeze_resnet_norm(model) == 1 + 3 * (4 + 3)  # resnet18: per stage a projecting and a plain block
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.config.resnet_norm == "frozen" and stem_of(model).norm == "frozen"
    assert model.state_dict().keys() == keys
    assert torch.equal(eval_logits(model, inputs), expected)
    assert freeze_resnet_norm(model) == 0
    # From now on a train-mode step leaves every stem buffer alone.
    before = norm_state(stem_of(model))
    model.train()
    model(**inputs, labels=labels_for(inputs)).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert changed(before, stem_of(model)) == []


# ---------------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", RESNET_NORMS)
def test_checkpointed_stem_matches_plain_stem(norm):
    plain = small_stem(norm).train()
    checkpointed = copy.deepcopy(plain)
    for stem in (plain, checkpointed):
        for block in (*stem.layer1, *stem.layer2, *stem.layer3):
            block.drop_path.rate = 0.3
    assert_checkpointed_stem_matches(plain, checkpointed)


# ---------------------------------------------------------------------------------------------------------------
# The whole model (the stem built from config.resnet_norm)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", RESNET_NORMS)
def test_model_builds_its_stem_from_the_config_and_trains(norm):
    model = build(norm).train()
    assert isinstance(stem_of(model).bn1, NORM_TYPES[norm]) and stem_of(model).norm == norm
    inputs = batch()
    model(**inputs, labels=labels_for(inputs)).loss.backward()
    assert stem_of(model).conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["frozen", "group"])
def test_save_pretrained_round_trip(norm, tmp_path):
    model = build(norm)
    inputs = batch()
    model.save_pretrained(tmp_path)
    loaded, info = OFAForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert loaded.config.resnet_norm == norm and isinstance(stem_of(loaded).bn1, NORM_TYPES[norm])
    assert torch.equal(eval_logits(loaded, inputs), eval_logits(model, inputs))


def test_batch_folder_loads_frozen_with_every_key(tmp_path):
    model = build("batch")
    model.save_pretrained(tmp_path)
    frozen, info = OFAForConditionalGeneration.from_pretrained(tmp_path, resnet_norm="frozen", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert isinstance(stem_of(frozen).layer2[0].downsample[1], FrozenBatchNorm2d)
    assert torch.equal(eval_logits(frozen, batch()), eval_logits(model, batch()))


@pytest.mark.parametrize("norm", ["batch", "frozen"])
def test_stem_norm_missing_from_a_checkpoint_starts_as_a_fresh_norm(norm, tmp_path):
    """`from_pretrained` builds on the meta device; a norm absent from the file must get `_init_weights`' values."""
    build(norm).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    missing = {key for key in weights if key.startswith("model.encoder.embed_images.bn1.")}
    save_file({k: v for k, v in weights.items() if k not in missing}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded, info = OFAForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == missing
    fresh = stem_of(loaded).bn1
    assert torch.equal(fresh.weight, torch.ones(64)) and torch.equal(fresh.bias, torch.zeros(64))
    assert torch.equal(fresh.running_mean, torch.zeros(64)) and torch.equal(fresh.running_var, torch.ones(64))
    assert int(fresh.num_batches_tracked) == 0
    # The norms that were in the file keep their (perturbed) values.
    assert int(stem_of(loaded).layer1[0].bn1.num_batches_tracked) == 7


# ---------------------------------------------------------------------------------------------------------------
# PEFT: an adapter trained in train mode reproduces the trained model on a fresh base
# ---------------------------------------------------------------------------------------------------------------


def train_lora(model: nn.Module, inputs: dict[str, torch.Tensor], steps: int = 3) -> None:
    """A few LoRA steps in train mode (where BatchNorm would update its statistics)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs, labels=labels_for(inputs)).loss.backward()
        optimizer.step()
    model.eval()


_RELOAD_SCRIPT = """
import sys
import torch
from peft import PeftModel
from modeling_ofa import OFAForConditionalGeneration

base, adapter, inputs, out = sys.argv[1:]
model = PeftModel.from_pretrained(OFAForConditionalGeneration.from_pretrained(base), adapter).eval()
with torch.no_grad():
    torch.save(model(**torch.load(inputs)).logits, out)
"""


def test_lora_adapter_reloaded_in_a_new_process_reproduces_the_trained_logits(tmp_path):
    pytest.importorskip("peft")
    base = build("batch")
    base.save_pretrained(tmp_path / "base")
    inputs = batch()
    base_logits = eval_logits(base, inputs)
    stem_before = norm_state(stem_of(base))

    model = get_ofa_peft_model(base, ofa_lora_config(r=4, lora_alpha=8))
    train_lora(model, inputs)
    trained = eval_logits(model, inputs)
    assert (trained - base_logits).abs().max() > 1e-2  # the adapter learned something
    assert changed(stem_before, stem_of(model)) == []
    model.save_pretrained(tmp_path / "adapter")

    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "reload.py"
    script.write_text(textwrap.dedent(_RELOAD_SCRIPT))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(tmp_path / name) for name in ("base", "adapter", "inputs.pt", "logits.pt")]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


def test_without_frozen_norms_lora_training_moves_the_stem_and_breaks_reload(tmp_path):
    """What the test above guards against: plain PEFT on a "batch" stem, trained in train mode, reloaded."""
    peft = pytest.importorskip("peft")
    base = build("batch")
    fresh_base = copy.deepcopy(base)
    inputs = batch()
    stem_before = norm_state(stem_of(base))
    model = peft.get_peft_model(base, ofa_lora_config(r=4, lora_alpha=8))  # no freeze_resnet_norm
    train_lora(model, inputs)
    trained = eval_logits(model, inputs)
    assert "bn1.running_mean" in changed(stem_before, stem_of(model))
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(fresh_base, tmp_path)
    assert (eval_logits(reloaded, inputs) - trained).abs().max() > 1e-3


def test_task_adapters_freeze_the_stem():
    pytest.importorskip("peft")
    model = build("batch")
    expected = eval_logits(model, batch())
    adapters = TaskAdapters(model, ["caption"], r=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in adapters.model.modules())
    # LoRA's B starts at zero, so only the order of float sums differs.
    torch.testing.assert_close(eval_logits(adapters.model, batch()), expected, rtol=0, atol=1e-6)
