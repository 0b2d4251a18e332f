"""Convert an original taming-transformers VQGAN checkpoint (OFA's image tokenizer) into `OFAVQGANModel`.

The original is a PyTorch Lightning checkpoint (`last.ckpt`: the weights under `"state_dict"`, beside the epoch,
optimizer states, callback states and hyper-parameters) plus the run's `model.yaml`. The yaml gives the architecture
(`model.params.ddconfig`, `n_embed`, `embed_dim`, `kl_weight`), which becomes an `OFAVQGANConfig`.

The names of `OFAVQGANModel` are taming's, so the conversion is a rule for what is dropped and a strict check of
the rest:

* dropped: `loss.*`, the training-only loss module (LPIPS perceptual network and patch discriminator);
* every other tensor must be a parameter of the model with the model's shape, and every parameter must be given;
  otherwise `StateDictMismatchError` names the missing, unexpected and mis-shaped keys.

Loading never runs code from the checkpoint: `modeling_ofa.convert.restricted_torch_load` (`weights_only=True`
first, then the restricted unpickler), which here also admits Lightning's globals (a Lightning checkpoint keys its
callback states by callback class and may pickle an `AttributeDict` of hyper-parameters) as inert stand-ins.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .configuration_vqgan import VQGAN_PRESETS, OFAVQGANConfig
from .convert import check_state_dict, restricted_torch_load
from .modeling_vqgan import OFAVQGANModel

PathLike = str | os.PathLike

# Prefixes of the original state dict that hold no part of the tokenizer: the training loss (perceptual network and
# discriminator). Everything else must be placed.
DROPPED_PREFIXES: tuple[str, ...] = ("loss.",)

# taming `model.params.ddconfig` key -> `OFAVQGANConfig` field.
_DDCONFIG_FIELDS: dict[str, str] = {
    "ch": "base_channels",
    "out_ch": "out_channels",
    "ch_mult": "channel_multiplier",
    "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions",
    "dropout": "dropout",
    "in_channels": "in_channels",
    "resolution": "resolution",
    "z_channels": "latent_channels",
}
# ddconfig keys that only change the layout when set differently from these values, which this model does not have.
_DDCONFIG_FIXED: dict[str, Any] = {"double_z": False, "resamp_with_conv": True, "give_pre_end": False}
# `model.params` keys that are training-time settings and do not change the weights' meaning.
_TRAINING_PARAMS: frozenset[str] = frozenset(
    {
        "lossconfig",
        "temperature_scheduler_config",
        "ckpt_path",
        "ignore_keys",
        "image_key",
        "monitor",
        "colorize_nlabels",
        "base_learning_rate",
    }
)
# Top-level packages of a Lightning checkpoint's data-only globals, loaded as inert stand-ins.
_LIGHTNING_PACKAGES: frozenset[str] = frozenset({"pytorch_lightning", "lightning", "lightning_fabric"})


def load_vqgan_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """
    Read the weights of an original VQGAN checkpoint without executing code from it.

    Args:
        path: a Lightning `.ckpt` (weights under `"state_dict"`) or a plain state dict file.

    Returns:
        The state dict, in the original layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no VQGAN checkpoint at {path}")
    obj = restricted_torch_load(path, inert_packages=_LIGHTNING_PACKAGES)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a Lightning checkpoint or a state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{path}: entry {key!r} of the state dict is a {type(value).__name__}, not a tensor; expected a "
                "Lightning checkpoint with its weights under 'state_dict', or a state dict"
            )
    return dict(obj)


def config_from_taming_yaml(source: PathLike | Mapping[str, Any]) -> OFAVQGANConfig:
    """
    `OFAVQGANConfig` of a taming-transformers `model.yaml` (a path, or the parsed mapping) describing a `GumbelVQ`.

    Raises:
        ValueError: the yaml describes another model (a plain `VQModel`, a remapped codebook, `double_z`), or has
            architecture keys this conversion does not know, naming them.
    """
    if isinstance(source, Mapping):
        document, where = source, "the VQGAN config"
    else:
        import yaml  # a dependency of transformers; imported here so the package does not need it at import time

        where = str(source)
        document = yaml.safe_load(Path(source).read_text())
    model = document.get("model") if isinstance(document, Mapping) else None
    if not isinstance(model, Mapping) or not isinstance(model.get("params"), Mapping):
        raise ValueError(f"{where}: expected a taming config with `model.target` and `model.params`")
    target = str(model.get("target", ""))
    if not target.endswith("GumbelVQ"):
        raise ValueError(
            f"{where}: model.target is {target!r}; only taming's GumbelVQ (OFA's VQGAN) is supported, whose "
            "quantizer has the `proj` logits layer this model holds"
        )
    params = dict(model["params"])
    if params.get("remap") is not None:
        raise ValueError(f"{where}: model.params.remap = {params['remap']!r}: remapped codebooks are not supported")
    ddconfig = params.pop("ddconfig", None)
    if not isinstance(ddconfig, Mapping):
        raise ValueError(f"{where}: model.params.ddconfig is missing")
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in ddconfig.items():
        if key in _DDCONFIG_FIELDS:
            kwargs[_DDCONFIG_FIELDS[key]] = value
        elif key in _DDCONFIG_FIXED:
            if bool(value) != _DDCONFIG_FIXED[key]:
                raise ValueError(f"{where}: ddconfig.{key} = {value!r} is not supported (only {_DDCONFIG_FIXED[key]})")
        else:
            unknown.append(f"ddconfig.{key}")
    for key, field in (("n_embed", "num_embeddings"), ("embed_dim", "embed_dim"), ("kl_weight", "kl_weight")):
        if key in params:
            kwargs[field] = params.pop(key)
    params.pop("remap", None)
    unknown += [f"params.{key}" for key in params if key not in _TRAINING_PARAMS]
    if unknown:
        raise ValueError(f"{where}: unknown VQGAN config keys: {', '.join(sorted(unknown))}")
    missing = [f"ddconfig.{k}" for k, f in _DDCONFIG_FIELDS.items() if f not in kwargs and k != "dropout"]
    missing += [
        f"params.{k}" for k, f in (("n_embed", "num_embeddings"), ("embed_dim", "embed_dim")) if f not in kwargs
    ]
    if missing:
        raise ValueError(f"{where}: missing VQGAN config keys: {', '.join(missing)}")
    if kwargs["embed_dim"] != kwargs["latent_channels"]:
        # taming's GumbelQuantize projects from z_channels but receives embed_dim channels: it only runs when equal.
        raise ValueError(
            f"{where}: embed_dim {kwargs['embed_dim']} != z_channels {kwargs['latent_channels']}; the original "
            "GumbelVQ cannot run such a config"
        )
    return OFAVQGANConfig(**kwargs)


def convert_vqgan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original state dict without its `DROPPED_PREFIXES` keys; the remaining names are already the model's."""
    return {key: value for key, value in state_dict.items() if not key.startswith(DROPPED_PREFIXES)}


def load_converted_vqgan(state_dict: Mapping[str, torch.Tensor], config: OFAVQGANConfig) -> OFAVQGANModel:
    """Build `OFAVQGANModel(config)` and load the converted `state_dict` strictly (`StateDictMismatchError`)."""
    converted = convert_vqgan_state_dict(state_dict)
    model = OFAVQGANModel(config)
    check_state_dict(converted, model)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_vqgan_checkpoint(
    checkpoint_path: PathLike, config_path: PathLike, output_dir: PathLike | None = None
) -> tuple[OFAVQGANModel, dict[str, Any]]:
    """
    Convert an original VQGAN (`last.ckpt` + `model.yaml`) and optionally save it as a transformers folder.

    Returns:
        `(model, summary)`: the loaded model (eval mode) and a JSON-able summary (config, parameter count, number
        of dropped keys, seconds taken).
    """
    start = time.perf_counter()
    config = config_from_taming_yaml(config_path)
    state_dict = load_vqgan_checkpoint(checkpoint_path)
    model = load_converted_vqgan(state_dict, config)
    if output_dir is not None:
        model.save_pretrained(output_dir)
    summary = {
        "preset_match": next(
            (
                name
                for name, values in VQGAN_PRESETS.items()
                if all(config.to_dict()[k] == v for k, v in values.items())
            ),
            None,
        ),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dropped_keys": sum(key.startswith(DROPPED_PREFIXES) for key in state_dict),
        "grid": [config.grid_size, config.grid_size],
        "num_embeddings": config.num_embeddings,
        "output_dir": None if output_dir is None else str(output_dir),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return model, summary


__all__ = [
    "DROPPED_PREFIXES",
    "config_from_taming_yaml",
    "convert_vqgan_checkpoint",
    "convert_vqgan_state_dict",
    "load_converted_vqgan",
    "load_vqgan_checkpoint",
]
