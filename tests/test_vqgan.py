"""The VQ image tokenizer (`OFAVQGANModel`) and the converter of original taming-transformers VQGAN checkpoints.

The original layout is built here key by key from taming's architecture rules (no original code), and an
independent functional forward over that state dict is the reference the converted model is compared with.
"""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModel

from modeling_ofa.configuration_vqgan import VQGAN_PRESETS, OFAVQGANConfig
from modeling_ofa.convert import StateDictMismatchError
from modeling_ofa.convert_vqgan import (
    config_from_taming_yaml,
    convert_vqgan_checkpoint,
    load_converted_vqgan,
    load_vqgan_checkpoint,
)
from modeling_ofa.modeling_vqgan import (
    OFAVQGANModel,
    images_to_pixel_values,
    pixel_values_to_images,
    train_vq_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent

# OFA's VQGAN model.yaml (taming's f8 Gumbel VQGAN with 8192 codes), as released.
OFA_VQGAN_YAML = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.GumbelVQ
  params:
    kl_weight: 1.0e-08
    embed_dim: 256
    n_embed: 8192
    monitor: val/rec_loss
    temperature_scheduler_config:
      target: taming.lr_scheduler.LambdaWarmUpCosineScheduler
      params: {warm_up_steps: 0, max_decay_steps: 1000001, lr_start: 0.9, lr_max: 0.9, lr_min: 1.0e-06}
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [1, 1, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [32]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.DummyLoss
"""

# A small GumbelVQ of the same layout (taming's GroupNorm has 32 groups, so widths are multiples of 32): 32-px
# images, f4 -> an 8x8 grid, 64 codes; the level widths change (32 -> 64), so shortcut convs exist.
SMALL_DDCONFIG = dict(
    double_z=False,
    z_channels=32,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 1, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)
SMALL_PARAMS = dict(embed_dim=32, n_embed=64, kl_weight=1e-8)


def taming_yaml(ddconfig: dict, params: dict) -> dict:
    return {
        "model": {
            "base_learning_rate": 4.5e-6,
            "target": "taming.models.vqgan.GumbelVQ",
            "params": {
                **params,
                "temperature_scheduler_config": {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler"},
                "ddconfig": ddconfig,
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"},
            },
        }
    }


def taming_shapes(dd: dict, embed_dim: int, n_embed: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of taming's GumbelVQ, in its names, from its construction rules."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    ch, mult, nres, z = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]
    levels = len(mult)
    conv("encoder.conv_in", dd["in_channels"], ch, 3)
    res, in_mult = dd["resolution"], (1, *mult)
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nres):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in dd["attn_resolutions"]:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    for prefix in ("encoder", "decoder"):
        c = ch * mult[-1]
        resnet(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        resnet(f"{prefix}.mid.block_2", c, c)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, z, 3)

    block_in, res = ch * mult[-1], dd["resolution"] // 2 ** (levels - 1)
    conv("decoder.conv_in", z, block_in, 3)
    for i in reversed(range(levels)):
        block_out = ch * mult[i]
        for j in range(nres + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in dd["attn_resolutions"]:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, dd["out_ch"], 3)

    conv("quant_conv", z, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z, 1)
    conv("quantize.proj", z, n_embed, 1)
    shapes["quantize.embed.weight"] = (n_embed, embed_dim)
    return shapes


def taming_state_dict(dd: dict, embed_dim: int, n_embed: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random, non-degenerate weights in the original layout, plus training-only `loss.*` tensors."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in taming_shapes(dd, embed_dim, n_embed).items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) == 4:  # conv weight: fan-in scaled
            state[key] = noise * (shape[1] * shape[2] * shape[3]) ** -0.5
        elif key.endswith("embed.weight"):
            state[key] = noise
        elif ".norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.2 * noise
        else:
            state[key] = 0.1 * noise
    # The Lightning module's loss (LPIPS + discriminator): dropped by the converter.
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4, generator=generator)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=generator)
    return state


# --- an independent functional forward over the original state dict ---------------------------------------------


def _gn(sd, p, x):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _conv(sd, p, x, padding=0, stride=1):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=stride, padding=padding)


def _resnet(sd, p, x):
    h = _conv(sd, f"{p}.conv1", F.silu(_gn(sd, f"{p}.norm1", x)), padding=1)
    h = _conv(sd, f"{p}.conv2", F.silu(_gn(sd, f"{p}.norm2", h)), padding=1)
    if f"{p}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{p}.nin_shortcut", x)
    return x + h


def _attn(sd, p, x):
    h = _gn(sd, f"{p}.norm", x)
    q, k, v = (_conv(sd, f"{p}.{n}", h) for n in "qkv")
    b, c, hh, ww = q.shape
    weights = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * c**-0.5
    weights = weights.softmax(dim=2)
    out = torch.bmm(v.reshape(b, c, hh * ww), weights.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + _conv(sd, f"{p}.proj_out", out)


def _mid(sd, p, x):
    return _resnet(sd, f"{p}.mid.block_2", _attn(sd, f"{p}.mid.attn_1", _resnet(sd, f"{p}.mid.block_1", x)))


def reference_encode(sd, dd, x):
    h = _conv(sd, "encoder.conv_in", x, padding=1)
    for i in range(len(dd["ch_mult"])):
        for j in range(dd["num_res_blocks"]):
            h = _resnet(sd, f"encoder.down.{i}.block.{j}", h)
            if f"encoder.down.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"encoder.down.{i}.attn.{j}", h)
        if f"encoder.down.{i}.downsample.conv.weight" in sd:
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = _conv(sd, "encoder.conv_out", F.silu(_gn(sd, "encoder.norm_out", _mid(sd, "encoder", h))), padding=1)
    logits = _conv(sd, "quantize.proj", _conv(sd, "quant_conv", h))
    return logits.argmax(dim=1)


def reference_decode(sd, dd, codes):
    one_hot = F.one_hot(codes, sd["quantize.embed.weight"].shape[0]).float()  # (B, h, w, N)
    z = (one_hot @ sd["quantize.embed.weight"]).permute(0, 3, 1, 2)
    h = _mid(sd, "decoder", _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z), padding=1))
    for i in reversed(range(len(dd["ch_mult"]))):
        for j in range(dd["num_res_blocks"] + 1):
            h = _resnet(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i != 0:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"), 1)
    return _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h)), padding=1)


# --- a Lightning checkpoint as the original training writes it ---------------------------------------------------


class _FakeModelCheckpoint:
    """Stands for `pytorch_lightning.callbacks.ModelCheckpoint`, whose class keys the callback states."""


def write_lightning_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    saved = {name: sys.modules.get(name) for name in names}
    module = types.ModuleType(names[-1])
    module.ModelCheckpoint = _FakeModelCheckpoint
    _FakeModelCheckpoint.__module__, _FakeModelCheckpoint.__qualname__ = names[-1], "ModelCheckpoint"
    for name in names:
        sys.modules[name] = module if name == names[-1] else types.ModuleType(name)
    try:
        torch.save(
            {
                "epoch": 12,
                "global_step": 1000,
                "pytorch-lightning_version": "1.0.8",
                "callbacks": {_FakeModelCheckpoint: {"best_model_score": torch.tensor(0.5), "monitor": "val/rec"}},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6}]}],
                "lr_schedulers": [],
                "state_dict": state_dict,
            },
            path,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqgan_original")
    state = taming_state_dict(SMALL_DDCONFIG, SMALL_PARAMS["embed_dim"], SMALL_PARAMS["n_embed"])
    write_lightning_checkpoint(folder / "last.ckpt", state)
    (folder / "model.yaml").write_text(yaml.safe_dump(taming_yaml(SMALL_DDCONFIG, SMALL_PARAMS)))
    return folder, state


def test_lightning_checkpoint_needs_the_restricted_unpickler(original):
    folder, state = original
    # The callback key is a class global: torch's weights-only loader refuses it, ours reads it as inert data.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(folder / "last.ckpt", weights_only=True)
    loaded = load_vqgan_checkpoint(folder / "last.ckpt")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_converted_model_matches_the_reference_forward(original, tmp_path):
    folder, state = original
    model, summary = convert_vqgan_checkpoint(folder / "last.ckpt", folder / "model.yaml", tmp_path / "out")
    assert summary["dropped_keys"] == 3 and summary["grid"] == [8, 8]
    assert summary["parameters"] == sum(v.numel() for k, v in state.items() if not k.startswith("loss."))
    torch.manual_seed(1)
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = model.encode(pixels)
        want_codes = reference_encode(state, SMALL_DDCONFIG, pixels)
        assert codes.shape == (3, 8, 8)
        assert torch.equal(codes, want_codes)
        assert len(codes.unique()) > 10  # non-degenerate: many codes in use
        decoded = model.decode(codes)
        want = reference_decode(state, SMALL_DDCONFIG, codes)
    assert decoded.shape == (3, 3, 32, 32) and float(want.std()) > 0.1
    assert torch.allclose(decoded, want, atol=1e-5, rtol=0)
    # The saved folder reloads through the Auto classes with the same outputs.
    reloaded = AutoModel.from_pretrained(tmp_path / "out")
    assert type(reloaded) is OFAVQGANModel
    with torch.no_grad():
        assert torch.equal(reloaded.encode(pixels), codes)
        assert torch.equal(reloaded.decode(codes), decoded)


def test_cli_converts_in_a_fresh_interpreter(original, tmp_path):
    folder, state = original
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_vqgan_checkpoint.py"),
            "--checkpoint",
            str(folder / "last.ckpt"),
            "--config",
            str(folder / "model.yaml"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert '"dropped_keys": 3' in result.stdout
    model = OFAVQGANModel.from_pretrained(out)
    codes = torch.randint(0, SMALL_PARAMS["n_embed"], (2, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model.decode(codes), reference_decode(state, SMALL_DDCONFIG, codes), atol=1e-5, rtol=0)


def _config():
    return config_from_taming_yaml(taming_yaml(SMALL_DDCONFIG, SMALL_PARAMS))


def test_strict_missing_key_is_named(original):
    _, state = original
    broken = dict(state)
    del broken["decoder.up.1.block.1.conv2.bias"]
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(1\): decoder\.up\.1\.block\.1\.conv2\.bias"):
        load_converted_vqgan(broken, _config())


def test_strict_unexpected_key_is_named(original):
    _, state = original
    broken = {**state, "quantize.used": torch.arange(64), "encoder.extra.weight": torch.zeros(2)}
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys \(2\): quantize\.used, encoder\.extra\.weight"):
        load_converted_vqgan(broken, _config())


def test_strict_wrong_shape_is_named(original):
    _, state = original
    broken = {**state, "quantize.embed.weight": torch.zeros(128, 32)}
    with pytest.raises(
        StateDictMismatchError, match=r"shape mismatch for quantize\.embed\.weight: checkpoint \[128, 32\]"
    ):
        load_converted_vqgan(broken, _config())


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    torch.save({"state_dict": {"a": torch.zeros(1)}, "hparams": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global subprocess.call"):
        load_vqgan_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_ofa_yaml_is_the_ofa_preset_and_has_the_original_parameter_count():
    config = config_from_taming_yaml(yaml.safe_load(OFA_VQGAN_YAML))
    preset = OFAVQGANConfig.from_preset("ofa_vqgan_f8_8192")
    for key in VQGAN_PRESETS["ofa_vqgan_f8_8192"]:
        assert getattr(config, key) == getattr(preset, key), key
    dd = yaml.safe_load(OFA_VQGAN_YAML)["model"]["params"]["ddconfig"]
    original_shapes = taming_shapes(dd, 256, 8192)
    with torch.device("meta"):
        model = OFAVQGANModel(preset)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == original_shapes
    count = sum(torch.Size(s).numel() for s in original_shapes.values())
    assert count == sum(p.numel() for p in model.parameters()) == 68_995_971
    assert preset.grid_size == 32  # 256-px images -> OFA's 32x32 = 1024 text-to-image codes


@pytest.mark.parametrize(
    "change, message",
    [
        ({"target": "taming.models.vqgan.VQModel"}, "only taming's GumbelVQ"),
        ({"params": {"remap": "used.npy"}}, "remapped codebooks are not supported"),
        ({"ddconfig": {"double_z": True}}, r"ddconfig.double_z = True is not supported"),
        ({"ddconfig": {"tanh_out": True}}, r"unknown VQGAN config keys: ddconfig.tanh_out"),
        ({"params": {"embed_dim": 64}}, "embed_dim 64 != z_channels 32"),
    ],
)
def test_unsupported_yaml_is_a_clear_error(change, message):
    document = taming_yaml(dict(SMALL_DDCONFIG), dict(SMALL_PARAMS))
    model = document["model"]
    model.update({k: v for k, v in change.items() if k == "target"})
    model["params"].update(change.get("params", {}))
    model["params"]["ddconfig"].update(change.get("ddconfig", {}))
    with pytest.raises(ValueError, match=message):
        config_from_taming_yaml(document)


# --- the tokenizer as a transformers model ----------------------------------------------------------------------


def scene(seed: int, size: int = 64) -> Image.Image:
    """A flat synthetic scene: one or two coloured circles / squares on a light background."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    colours = [(220, 30, 30), (30, 60, 220), (30, 170, 60), (240, 200, 20)]
    for _ in range(rng.randint(1, 2)):
        s = rng.randint(size // 5, size // 3)
        x, y = rng.randint(2, size - s - 2), rng.randint(2, size - s - 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + s, y + s], fill=rng.choice(colours))
    return image


def test_tiny_preset_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny")).eval()
    assert model.config.grid_size == 8 and model.config.num_embeddings == 256
    pixels = images_to_pixel_values([scene(i) for i in range(3)])
    with torch.no_grad():
        logits = model.code_logits(pixels)
        codes = model.encode(pixels)
        decoded = model.decode(codes)
    assert codes.shape == (3, 8, 8) and len(codes.unique()) > 5
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ofa_vqgan"
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is OFAVQGANModel and not reloaded.training
    with torch.no_grad():
        assert torch.equal(reloaded.code_logits(pixels), logits)
        assert torch.equal(reloaded.decode(codes), decoded)


def test_tiny_tokenizer_learns_to_reconstruct_scenes():
    torch.manual_seed(0)
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny"))
    images = [scene(i) for i in range(6)]
    # The plain-L1 loop (hard straight-through Gumbel, no colour weighting): the demo's defaults spend their error
    # budget on saturated objects, not on these light backgrounds.
    result = train_vq_tokenizer(
        model,
        images,
        steps=40,
        batch_size=4,
        learning_rate=3e-3,
        betas=(0.5, 0.9),
        warmup_steps=0,
        temperature=(1.0, 0.3),
        straight_through=True,
        colour_weight=0.0,
        l2_weight=0.0,
    )
    pixels = images_to_pixel_values(images)
    # The baseline a codebook must beat: each image replaced by its own mean colour.
    flat = (pixels - pixels.mean(dim=(2, 3), keepdim=True)).abs().mean()
    print(
        f"tiny VQ reconstruction L1 before {result.error_before:.3f}, after {result.error_after:.3f}, "
        f"mean-colour baseline {float(flat):.3f}"
    )
    assert result.error_after < 0.5 * result.error_before
    assert result.error_after < 0.14
    assert result.error_after < float(flat)
    assert not model.training
    # The reconstruction goes through PIL images of the right size.
    with torch.no_grad():
        out = pixel_values_to_images(model.decode(model.encode(pixels[:2])))
    assert [im.size for im in out] == [(64, 64), (64, 64)]


def test_bad_inputs_are_clear_errors():
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny")).eval()
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 8"):
        model.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        model.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        model.decode(torch.full((1, 8, 8), 256))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="unknown VQGAN preset"):
        OFAVQGANConfig.from_preset("f16")
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        OFAVQGANConfig(base_channels=20)


RELOAD = """
import sys, torch
{imports}
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], {kwargs})
assert type(model).__name__ == "OFAVQGANModel", type(model)
data = torch.load(sys.argv[2])
with torch.no_grad():
    assert torch.equal(model.encode(data["pixels"]), data["codes"])
    assert torch.equal(model.decode(data["codes"]), data["decoded"])
print("ok", type(model).__module__)
"""


@pytest.mark.parametrize("installed", [True, False], ids=["package", "remote_code"])
def test_saved_tokenizer_reloads_in_a_fresh_interpreter(tmp_path, installed):
    torch.manual_seed(0)
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny")).eval()
    pixels = images_to_pixel_values([scene(i) for i in range(2)])
    with torch.no_grad():
        codes = model.encode(pixels)
        torch.save({"pixels": pixels, "codes": codes, "decoded": model.decode(codes)}, tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "tok")
    code = RELOAD.format(
        imports="import modeling_ofa" if installed else "", kwargs="" if installed else "trust_remote_code=True"
    )
    # Without the package on the path, the folder's own copy of the code is what loads.
    cwd = ROOT if installed else tmp_path
    env = {"PYTHONPATH": str(ROOT) if installed else "", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "tok"), str(tmp_path / "expected.pt")],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert ("modeling_ofa.modeling_vqgan" in result.stdout) == installed, result.stdout
