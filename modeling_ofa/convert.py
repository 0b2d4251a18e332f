"""Convert original OFA checkpoints into this package's layout (`OFAForConditionalGeneration`).

Two source layouts are understood:

* `"fairseq"`: a checkpoint of the original OFA code (OFA-Sys/OFA, `models/ofa/`), e.g. `ofa_base.pt`. Its weights
  sit in `ckpt["model"]`; its hyper-parameters in `ckpt["args"]` (an `argparse.Namespace`) and/or `ckpt["cfg"]`
  (an omegaconf config whose `model` entry may itself be a Namespace).
* `"hf_port"`: the state dict of OFA-Sys's own transformers port (`OFAModel`, branch `feature/add_transformers`),
  e.g. the `pytorch_model.bin` of an `OFA-Sys/ofa-*` folder, with its `config.json`.

Both use the same tensors with the same shapes; only names differ (no transposing, splitting or fusing), so the
conversion is two rename tables plus a list of keys to drop. The deterministic index buffers (`token_rp_bucket`,
`image_rp_bucket`, `image_position_idx`) are rebuilt by the model and never copied. The one shape that differs
between the sources, `image_position_idx` (769 vs 768 filler entries), is such a buffer; its length still tells
the `code_image_size` a checkpoint was built with.

Loading never runs code from the checkpoint: `torch.load(weights_only=True)` first, and for fairseq checkpoints
(which pickle a Namespace and omegaconf objects) a restricted unpickler (`RestrictedUnpickler`, through
`restricted_torch_load`) that rebuilds only tensors and plain containers, turns Namespace and omegaconf containers
into dicts, and refuses every other global by name.
"""

from __future__ import annotations

import _compat_pickle
import json
import logging
import math
import os
import pickle
import re
import shutil
import types
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from .configuration_ofa import PRESETS, RESNET_LAYERS, OFAConfig
from .modeling_ofa import OFAForConditionalGeneration

__all__ = [
    "FAIRSEQ_RENAMES",
    "HF_PORT_RENAMES",
    "DROPPED_KEYS",
    "UNSUPPORTED_KEYS",
    "TIED_KEYS",
    "FAIRSEQ_ARCH_PRESETS",
    "OFA_GENERATION_DEFAULTS",
    "PORT_CONFIG_FIELDS",
    "RestrictedUnpickler",
    "StateDictMismatchError",
    "load_original_checkpoint",
    "detect_source",
    "config_from_fairseq_args",
    "config_from_hf_port_config",
    "infer_config_from_state_dict",
    "convert_state_dict",
    "check_state_dict",
    "convert_checkpoint",
    "restricted_torch_load",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------------------------------------------
# Key tables. Each rename table is an ordered list of (regex, replacement); the FIRST rule whose regex matches a key
# renames it. Keys no rule matches are kept as they are, so `check_state_dict` reports them under their own name.
# ----------------------------------------------------------------------------------------------------------------

_LAYER = r"\.layers\.(\d+)\."

FAIRSEQ_RENAMES: tuple[tuple[str, str], ...] = (
    # One embedding shared by encoder, decoder and output projection (`share_all_embeddings`); copies must agree.
    (r"^(encoder|decoder)\.embed_tokens\.weight$", "model.shared.weight"),
    (r"^decoder\.output_projection\.weight$", "model.shared.weight"),
    # NormFormer LayerNorms and the cross-attention, which fairseq names differently.
    (r"^encoder" + _LAYER + r"attn_ln\.", r"model.encoder.layers.\1.self_attn_mid_layer_norm."),
    (r"^decoder" + _LAYER + r"self_attn_ln\.", r"model.decoder.layers.\1.self_attn_mid_layer_norm."),
    (r"^decoder" + _LAYER + r"cross_attn_ln\.", r"model.decoder.layers.\1.cross_attn_mid_layer_norm."),
    (r"^decoder" + _LAYER + r"encoder_attn_layer_norm\.", r"model.decoder.layers.\1.cross_attn_layer_norm."),
    (r"^decoder" + _LAYER + r"encoder_attn\.", r"model.decoder.layers.\1.cross_attn."),
    (r"^(encoder|decoder)" + _LAYER + r"ffn_layernorm\.", r"model.\1.layers.\2.ffn_layer_norm."),
    # Everything else keeps its name under the `model.` prefix.
    (r"^(encoder|decoder)\.", r"model.\1."),
)

# The port's `OFAModel` is the top-level class, so its keys have no prefix; a `model.` prefix (from a wrapper) is
# accepted too.
HF_PORT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(?:model\.)?(encoder|decoder)\.embed_tokens\.weight$", "model.shared.weight"),
    (r"^(?:model\.)?decoder\.output_projection\.weight$", "model.shared.weight"),
    (r"^(?:model\.)?(encoder|decoder)\.", r"model.\1."),
)

# Keys the model ties to another: conversion sets them to the same tensor, so that a strict `load_state_dict` works
# (`save_pretrained` stores the tensor once).
TIED_KEYS: dict[str, tuple[str, ...]] = {
    "model.shared.weight": ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"),
}

# Deterministic buffers (rebuilt by the model) and fairseq bookkeeping: dropped from either source.
DROPPED_KEYS: tuple[str, ...] = (
    r"^(?:model\.)?(encoder|decoder)\.version$",
    r"^(?:model\.)?(encoder|decoder)\.token_rp_bucket$",
    r"^(?:model\.)?(encoder|decoder)\.image_rp_bucket$",
    r"^(?:model\.)?decoder\.image_position_idx$",
    r"^(?:model\.)?(encoder|decoder)\.embed_positions\._float_tensor$",
)

# Keys of features OFAConfig cannot express: conversion stops with the reason instead of dropping weights.
UNSUPPORTED_KEYS: tuple[tuple[str, str], ...] = (
    (r"\.w_resid$", "NormFormer residual scaling (fairseq --scale-resids) has no counterpart in this model"),
    (r"\.adapter\.", "adapter layers (fairseq --adapter) are not supported"),
    (r"prompt_encoder\.", "prompt tuning (fairseq --encoder-prompt/--decoder-prompt) is not supported"),
    (r"\.in_proj_(weight|bias)$", "fused q/k/v projections of pre-2019 fairseq are not supported"),
)

# Fairseq classification heads (pooler MLPs) are not part of the generative model; they are dropped with a warning.
_CLASSIFICATION_HEAD = r"^classification_heads\."

# Filler entries after the code grid in `decoder.image_position_idx`: 769 in fairseq, 768 in the port.
_IMAGE_POSITION_FILLERS: dict[str, int] = {"fairseq": 769, "hf_port": 768}

# Markers that tell the two layouts apart (the cross-attention is named differently in every decoder layer).
_SOURCE_MARKERS: dict[str, str] = {
    "fairseq": r"(\.encoder_attn\.|\.attn_ln\.|\.self_attn_ln\.|\.ffn_layernorm\.|^(encoder|decoder)\.version$)",
    "hf_port": r"(\.cross_attn\.|_mid_layer_norm\.|\.ffn_layer_norm\.)",
}

# ----------------------------------------------------------------------------------------------------------------
# Hyper-parameter tables
# ----------------------------------------------------------------------------------------------------------------

FAIRSEQ_ARCH_PRESETS: dict[str, str] = {
    "ofa_tiny": "tiny",
    "ofa_medium": "medium",
    "ofa_base": "base",
    "ofa_large": "large",
    "ofa_huge": "huge",
}

# fairseq argument -> OFAConfig field, copied as they are.
_FAIRSEQ_ARG_FIELDS: dict[str, str] = {
    "encoder_embed_dim": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "encoder_ffn_embed_dim": "encoder_ffn_dim",
    "decoder_ffn_embed_dim": "decoder_ffn_dim",
    "encoder_attention_heads": "encoder_attention_heads",
    "decoder_attention_heads": "decoder_attention_heads",
    "max_source_positions": "max_position_embeddings",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "encoder_drop_path_rate": "encoder_drop_path_rate",
    "decoder_drop_path_rate": "decoder_drop_path_rate",
    "resnet_drop_path_rate": "resnet_drop_path_rate",
    "resnet_type": "resnet_type",
    "token_bucket_size": "token_bucket_size",
    "image_bucket_size": "image_bucket_size",
    "add_type_embedding": "add_type_embedding",
    "attn_scale_factor": "attn_scale_factor",
    "code_image_size": "code_image_size",
    "layernorm_embedding": "layernorm_embedding",
    "patch_layernorm_embedding": "patch_layernorm_embedding",
    "code_layernorm_embedding": "code_layernorm_embedding",
    "label_smoothing": "label_smoothing",
}

# Pairs of fairseq arguments that this model holds in one field, so they must agree.
_FAIRSEQ_MUST_AGREE: tuple[tuple[str, str], ...] = (
    ("encoder_embed_dim", "decoder_embed_dim"),
    ("max_source_positions", "max_target_positions"),
    ("encoder_normalize_before", "decoder_normalize_before"),
    ("scale_attn", "scale_fc"),
)

# fairseq activation names -> transformers ACT2FN names.
_FAIRSEQ_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "tanh": "tanh",
    "linear": "linear",
    "swish": "silu",
}

# (argument, value that cannot be converted, why).
_FAIRSEQ_UNSUPPORTED_ARGS: tuple[tuple[str, Any, str], ...] = (
    ("scale_resids", True, "NormFormer residual scaling (--scale-resids, w_resid) has no counterpart in OFAConfig"),
    ("entangle_position_embedding", True, "absolute positions added to the inputs (--entangle-position-embedding)"),
    (
        "disable_entangle",
        False,
        "the fairseq decoder adds absolute positions to its inputs unless --disable-entangle is set (its check is "
        "`entangle_position_embedding is not None`), while the encoder does not; this model cannot express that",
    ),
    ("share_all_embeddings", False, "separate encoder and decoder embeddings (OFA always shares them)"),
    ("share_decoder_input_output_embed", False, "an output projection not tied to the embeddings"),
    ("adapter", True, "adapter layers (--adapter)"),
    ("encoder_prompt", True, "encoder prompt tuning (--encoder-prompt)"),
    ("decoder_prompt", True, "decoder prompt tuning (--decoder-prompt)"),
    ("no_cross_attention", True, "a decoder without cross-attention"),
    ("cross_self_attention", True, "cross+self attention (--cross-self-attention)"),
    ("interpolate_position", True, "interpolated image positions (--interpolate-position)"),
)

# Training-time fairseq settings that do not survive conversion; a non-default value only earns a warning.
_FAIRSEQ_IGNORED_ARGS: dict[str, Any] = {"encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0}

# Config fields of OFA-Sys's transformers port (its `config.json` and its `OFAConfig` arguments) that OFAConfig has
# under the same name and meaning: read from a port's config when converting, and passed to the port's constructor
# by the benchmark that compares it with this model.
PORT_CONFIG_FIELDS: tuple[str, ...] = (
    "vocab_size",
    "max_position_embeddings",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "d_model",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "activation_function",
    "init_std",
    "scale_embedding",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "normformer",
    "encoder_drop_path_rate",
    "decoder_drop_path_rate",
    "layernorm_embedding",
    "patch_layernorm_embedding",
    "code_layernorm_embedding",
    "resnet_type",
    "resnet_drop_path_rate",
    "token_bucket_size",
    "image_bucket_size",
    "add_type_embedding",
    "attn_scale_factor",
    "code_image_size",
    "entangle_position_embedding",
)

# Config fields fixed by tensor shapes: inferred from the weights, and any hyper-parameter disagreeing is an error.
_SHAPE_FIELDS: tuple[str, ...] = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "max_position_embeddings",
    "token_bucket_size",
    "image_bucket_size",
    "resnet_type",
    "normformer",
    "layernorm_embedding",
    "patch_layernorm_embedding",
    "code_layernorm_embedding",
    "add_type_embedding",
    "code_image_size",
)

# Generation settings of the original evaluation scripts (caption / grounding): beam 5, no repeated trigram, and
# fairseq's default length limit max_len_b=200. HF lengths count the start token, so fairseq's "at most 200 tokens
# then </s>" is max_length 202 with </s> forced last, and its min_len=1 is min_length 2.
OFA_GENERATION_DEFAULTS: dict[str, Any] = {
    "num_beams": 5,
    "no_repeat_ngram_size": 3,
    "max_length": 202,
    "min_length": 2,
    "length_penalty": 1.0,
    "early_stopping": True,
}

# Files of a tokenizer folder copied next to the converted weights.
_TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "dict.txt",
)

# Weight files looked for, in order, when the source is a folder.
_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "checkpoint.pt", "model.pt")


class StateDictMismatchError(ValueError):
    """A converted state dict does not fit the model: lists every missing, unexpected and mis-shaped key.

    Args:
        missing: model keys the state dict does not provide.
        unexpected: state-dict keys the model does not have.
        mismatched: `(key, checkpoint shape, model shape)` for keys whose shapes differ.
        untied: groups of keys the model ties together but whose checkpoint values differ.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        untied: list[list[str]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched, self.untied = missing, unexpected, mismatched, untied
        lines = ["the converted state dict does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for key, got, want in mismatched:
            lines.append(f"  shape mismatch for {key}: checkpoint {list(got)} vs model {list(want)}")
        for group in untied:
            lines.append("  tied in the model but different in the checkpoint: " + ", ".join(group))
        super().__init__("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling of fairseq checkpoints
# ----------------------------------------------------------------------------------------------------------------


class _Namespace(dict):
    """Stand-in for `argparse.Namespace`: its attributes become dict items."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)


class _Opaque:
    """Inert stand-in for a data-only global (omegaconf, fairseq enums/meters, numpy): records, never executes."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        self = object.__new__(cls)
        self.args, self.state, self.items = args, None, {}
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


# Globals that are rebuilt for real: tensor reconstruction and plain containers. Nothing here runs user code.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles encode bytes this way
    ("argparse", "Namespace"): _Namespace,
}

# Top-level packages whose globals only ever describe data in a checkpoint (configs, enums, meters, numpy scalars):
# they load as inert `_Opaque` objects. Any other global is refused.
_INERT_PACKAGES: frozenset[str] = frozenset({"omegaconf", "fairseq", "numpy", "typing", "enum", "pathlib", "datetime"})

# Builtin types that configuration metadata refers to (omegaconf's key/element types); loaded as inert references.
_INERT_BUILTINS: frozenset[str] = frozenset(
    {"str", "unicode", "bytes", "int", "long", "float", "bool", "dict", "list", "tuple", "object", "type"}
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only tensors, plain containers (`_SAFE_GLOBALS`, torch dtypes and storages) and the
    globals of data-only packages, which load as inert stand-ins that record their arguments and state and never run.

    Attributes:
        inert_packages (`frozenset[str]`): Top-level packages whose globals load as inert stand-ins: the allow-list
            hook. A checkpoint format with more data-only globals (Lightning's callback keys) extends it, through
            `restricted_torch_load(..., inert_packages=...)` or a subclass; every other global is refused by name.
    """

    inert_packages: frozenset[str] = _INERT_PACKAGES

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch's default) name globals the Python 2 way; map them back as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            return getattr(torch, name)
        if module.split(".")[0] in self.inert_packages or (module == "builtins" and name in _INERT_BUILTINS):
            return type(name, (_Opaque,), {"qualname": f"{module}.{name}"})
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a checkpoint may only hold tensors, plain containers and "
            "configuration objects, and loading this one could run arbitrary code"
        )


def restricted_torch_load(path: PathLike, inert_packages: Iterable[str] = ()) -> Any:
    """
    `torch.load` of a checkpoint without executing code from it: `weights_only=True` first, and where that refuses
    the file (fairseq's Namespace and omegaconf objects, Lightning's callback keys), `RestrictedUnpickler`.

    Args:
        path: the checkpoint file.
        inert_packages: top-level packages whose globals also load as inert stand-ins, beside
            `RestrictedUnpickler.inert_packages`.

    Raises:
        pickle.UnpicklingError: the file names a global outside the allow-list (the message names it).
    """
    extra = frozenset(inert_packages)

    class Unpickler(RestrictedUnpickler):
        inert_packages = RestrictedUnpickler.inert_packages | extra

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        logger.info("weights_only load of %s failed (%s); retrying with the restricted unpickler", path, error)
    # torch.load takes a pickle *module*; this one exposes only the restricted unpickler.
    module = types.SimpleNamespace(
        __name__="ofa_restricted_pickle",
        Unpickler=Unpickler,
        load=lambda file, **kwargs: Unpickler(file, **kwargs).load(),
    )
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)


def _to_plain(obj: Any) -> Any:
    """Turn Namespace and omegaconf stand-ins (and enum-like opaque values) into dicts, lists and scalars."""
    if isinstance(obj, _Namespace):
        return {key: _to_plain(value) for key, value in obj.items()}
    if isinstance(obj, _Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.qualname.endswith(("DictConfig", "ListConfig")):
            content = state.get("_content")
            return _to_plain(content) if isinstance(content, (dict, list)) else content
        if "_val" in state:  # an omegaconf value node
            return _to_plain(state["_val"])
        if len(obj.args) == 1 and isinstance(obj.args[0], (str, int, float, bool)):  # an enum member
            return obj.args[0]
        return obj
    if isinstance(obj, dict):
        return {key: _to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(value) for value in obj)
    return obj


def _fairseq_hparams(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Flat model hyper-parameters of a fairseq checkpoint: `args`, else `cfg.model` over `cfg.task`."""
    args = _to_plain(ckpt.get("args"))
    if isinstance(args, dict) and args:
        return dict(args)
    cfg = _to_plain(ckpt.get("cfg"))
    if not isinstance(cfg, dict):
        return {}
    hparams: dict[str, Any] = {}
    for section in ("task", "model"):  # model settings win over task settings of the same name
        value = cfg.get(section)
        if isinstance(value, dict):
            hparams.update(value)
    if "arch" not in hparams and isinstance(hparams.get("_name"), str):
        hparams["arch"] = hparams["_name"]
    return hparams


def _check_tensors(state_dict: Mapping[str, Any], where: Path) -> dict[str, torch.Tensor]:
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict or a "
                "fairseq checkpoint with its weights under 'model'"
            )
    return dict(state_dict)


def load_original_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """
    Read an original OFA checkpoint without executing code from it.

    Args:
        path: one of
            - a fairseq `.pt` checkpoint (weights under `"model"`, hyper-parameters under `"args"` / `"cfg"`);
            - a plain state dict (`.bin` / `.pt` / `.safetensors`) of either layout;
            - a folder holding such a weights file (`model.safetensors`, `pytorch_model.bin`, ...) and optionally
              the port's `config.json`.

    Returns:
        `(state_dict, hparams)`: the tensors, and the hyper-parameters as a plain dict: fairseq arguments for a
        fairseq checkpoint, the `config.json` contents for a folder, `{}` when the file carries none.
    """
    path = Path(path)
    hparams: dict[str, Any] = {}
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            hparams = json.loads(config_file.read_text())
        found = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds none of the weight files {list(_WEIGHT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return _check_tensors(load_file(path), path), hparams
    obj = restricted_torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return _check_tensors(obj["model"], path), _fairseq_hparams(obj) or hparams
    if isinstance(obj, Mapping):
        return _check_tensors(obj, path), hparams
    raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict or a fairseq checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# Hyper-parameters -> OFAConfig arguments
# ----------------------------------------------------------------------------------------------------------------


def config_from_fairseq_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """
    OFAConfig arguments from the hyper-parameters of a fairseq OFA checkpoint.

    The architecture name (`ofa_tiny` ... `ofa_huge`) selects a preset; explicit arguments override it.

    Args:
        args: the checkpoint's arguments as a plain dict (`load_original_checkpoint` returns them).

    Returns:
        Keyword arguments for `OFAConfig(...)`, complete for the preset fields.

    Raises:
        ValueError: for settings this model cannot reproduce (see `_FAIRSEQ_UNSUPPORTED_ARGS`), for fairseq pairs
            that must agree here (encoder/decoder width, positions, normalize-before, scale-attn/scale-fc), and
            for an unknown activation.
    """
    problems = [
        f"{name}={args[name]!r}: {why}"
        for name, bad, why in _FAIRSEQ_UNSUPPORTED_ARGS
        if name in args and args[name] is not None and bool(args[name]) == bad
    ]
    if args.get("adaptive_softmax_cutoff") is not None:
        problems.append(f"adaptive_softmax_cutoff={args['adaptive_softmax_cutoff']!r}: adaptive softmax output")
    problems += [
        f"{first}={args[first]!r} but {second}={args[second]!r}: this model has a single setting for both"
        for first, second in _FAIRSEQ_MUST_AGREE
        if first in args and second in args and args[first] != args[second]
    ]
    if args.get("scale_heads") and not args.get("scale_attn", True):
        problems.append("scale_heads=True without scale_attn/scale_fc: head scales exist here only with NormFormer")
    if str(args.get("resnet_type", "resnet101")) not in RESNET_LAYERS:
        problems.append(f"resnet_type={args['resnet_type']!r}: only {sorted(RESNET_LAYERS)} image stems exist here")
    activation = args.get("activation_fn", "gelu")
    if activation not in _FAIRSEQ_ACTIVATIONS:
        problems.append(f"activation_fn={activation!r}: known activations are {sorted(_FAIRSEQ_ACTIVATIONS)}")
    if problems:
        raise ValueError("cannot convert this fairseq OFA checkpoint:\n  " + "\n  ".join(problems))
    if "disable_entangle" not in args:
        logger.warning(
            "the checkpoint arguments do not say disable_entangle; assuming it was set, as in every released OFA "
            "script (otherwise the fairseq decoder adds absolute positions to its inputs)"
        )
    for name, default in _FAIRSEQ_IGNORED_ARGS.items():
        if args.get(name, default) != default:
            logger.warning("%s=%r is a training-time setting this model does not have; ignored", name, args[name])

    arch = args.get("arch")
    kwargs: dict[str, Any] = {}
    if arch in FAIRSEQ_ARCH_PRESETS:
        kwargs.update(PRESETS[FAIRSEQ_ARCH_PRESETS[arch]])
    elif arch is not None:
        logger.warning("unknown fairseq architecture %r: using the explicit arguments and the weights' shapes", arch)
    kwargs.update({field: args[name] for name, field in _FAIRSEQ_ARG_FIELDS.items() if args.get(name) is not None})
    if "activation_dropout" not in kwargs and args.get("relu_dropout") is not None:
        kwargs["activation_dropout"] = args["relu_dropout"]
    kwargs["activation_function"] = _FAIRSEQ_ACTIVATIONS[activation]
    if "no_scale_embedding" in args:
        kwargs["scale_embedding"] = not args["no_scale_embedding"]
    if "encoder_normalize_before" in args:
        kwargs["normalize_before"] = bool(args["encoder_normalize_before"])
    if "scale_attn" in args:
        kwargs["normformer"] = bool(args["scale_attn"])
    kwargs["entangle_position_embedding"] = False
    return kwargs


def config_from_hf_port_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """
    OFAConfig arguments from the `config.json` of OFA-Sys's transformers port.

    Args:
        config: the parsed `config.json`.

    Raises:
        ValueError: for settings this model cannot reproduce (untied output embeddings, entangled positions, and
            encoder/decoder normalize-before flags that differ).
    """
    problems = []
    if config.get("share_decoder_input_output_embed", True) is False:
        problems.append("share_decoder_input_output_embed=False: an output projection not tied to the embeddings")
    if config.get("entangle_position_embedding", False):
        problems.append("entangle_position_embedding=True: absolute positions added to the inputs")
    before = {config.get("encoder_normalize_before", True), config.get("decoder_normalize_before", True)}
    if len(before) > 1:
        problems.append("encoder_normalize_before and decoder_normalize_before differ: this model has one setting")
    if problems:
        raise ValueError("cannot convert this OFA transformers-port checkpoint:\n  " + "\n  ".join(problems))
    kwargs = {name: config[name] for name in PORT_CONFIG_FIELDS if config.get(name) is not None}
    kwargs["normalize_before"] = before.pop()
    for name in ("encoder_layerdrop", "decoder_layerdrop"):
        if config.get(name):
            logger.warning("%s=%r is a training-time setting this model does not have; ignored", name, config[name])
    return kwargs


def _resnet_type(blocks: tuple[int, int, int]) -> str:
    # resnet34 and resnet50 are the same network here (Bottleneck blocks); name it resnet50 like the presets.
    for name in ("resnet18", "resnet50", "resnet101", "resnet152", "resnet34"):
        if RESNET_LAYERS[name] == blocks:
            return name
    raise ValueError(f"the image stem has {blocks} blocks per stage, which matches no ResNet in {RESNET_LAYERS}")


def infer_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], code_image_size: int | None = None
) -> dict[str, Any]:
    """
    The OFAConfig fields that tensor shapes and key presence fix, read from a converted state dict.

    Args:
        state_dict: a state dict in this package's layout (`convert_state_dict` output).
        code_image_size: the value read from the source's `image_position_idx` buffer, if it had one.

    Raises:
        ValueError: if a required key is absent or the shapes are inconsistent.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"cannot infer the configuration: the state dict has no {key}")
        return tuple(state_dict[key].shape)

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({match.group(1) for key in state_dict if (match := pattern.match(key))})

    vocab_size, d_model = shape("model.shared.weight")
    image_rows = shape("model.encoder.embed_image_positions.weight")[0] - 1
    image_bucket_size = math.isqrt(image_rows)
    if image_bucket_size**2 != image_rows:
        raise ValueError(f"embed_image_positions has {image_rows + 1} rows, not image_bucket_size**2 + 1")
    blocks = tuple(count(f"model.encoder.embed_images.layer{stage}.") for stage in (1, 2, 3))
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "encoder_layers": count("model.encoder.layers."),
        "decoder_layers": count("model.decoder.layers."),
        "encoder_ffn_dim": shape("model.encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_dim": shape("model.decoder.layers.0.fc1.weight")[0],
        "encoder_attention_heads": shape("model.encoder.token_rel_pos_table_list.0.weight")[1],
        "decoder_attention_heads": shape("model.decoder.token_rel_pos_table_list.0.weight")[1],
        "max_position_embeddings": shape("model.encoder.embed_positions.weight")[0] - 2,
        "token_bucket_size": (shape("model.encoder.token_rel_pos_table_list.0.weight")[0] + 1) // 2,
        "image_bucket_size": image_bucket_size,
        "resnet_type": _resnet_type(blocks),
        "normformer": "model.encoder.layers.0.self_attn_mid_layer_norm.weight" in state_dict,
        "layernorm_embedding": "model.encoder.layernorm_embedding.weight" in state_dict,
        "patch_layernorm_embedding": "model.encoder.patch_layernorm_embedding.weight" in state_dict,
        "code_layernorm_embedding": "model.decoder.code_layernorm_embedding.weight" in state_dict,
        "add_type_embedding": "model.encoder.type_embedding.weight" in state_dict,
    }
    if code_image_size is not None:
        kwargs["code_image_size"] = code_image_size
    return kwargs


def _code_image_size(state_dict: Mapping[str, torch.Tensor], source: str) -> int | None:
    """`code_image_size` from the source's `image_position_idx` buffer: length 1 + W**2 + fillers, W = size / 8."""
    buffer = next((v for k, v in state_dict.items() if re.match(r"^(?:model\.)?decoder\.image_position_idx$", k)), None)
    if buffer is None:
        return None
    window = math.isqrt(buffer.numel() - 1 - _IMAGE_POSITION_FILLERS[source])
    if 1 + window**2 + _IMAGE_POSITION_FILLERS[source] != buffer.numel():
        raise ValueError(f"decoder.image_position_idx has {buffer.numel()} entries, not 1 + W**2 + fillers")
    return window * 8


def _merge_config(inferred: dict[str, Any], declared: dict[str, Any], preset: str | None, where: str) -> dict[str, Any]:
    """Preset < declared hyper-parameters < shapes; a declared shape field that disagrees with the weights fails."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    conflicts = []
    for name in _SHAPE_FIELDS:
        if name not in declared or name not in inferred or declared[name] == inferred[name]:
            continue
        if name == "resnet_type" and RESNET_LAYERS.get(declared[name]) == RESNET_LAYERS[inferred[name]]:
            continue
        conflicts.append(f"{name}: {where} says {declared[name]!r}, the weights say {inferred[name]!r}")
    if conflicts:
        raise ValueError("the checkpoint's hyper-parameters contradict its weights:\n  " + "\n  ".join(conflicts))
    return {**(PRESETS[preset] if preset is not None else {}), **declared, **inferred}


# ----------------------------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------------------------


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> str:
    """
    Tell a fairseq state dict from an HF-port one by their key names.

    Raises:
        ValueError: if the keys look like both, neither, or already like this package's layout.
    """
    if "model.shared.weight" in state_dict or "lm_head.weight" in state_dict:
        raise ValueError("this state dict is already in this package's layout; load it with from_pretrained")
    found = [name for name, marker in _SOURCE_MARKERS.items() if any(re.search(marker, key) for key in state_dict)]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the checkpoint layout from its keys (markers of {found or 'neither layout'} found); "
            "pass source='fairseq' or source='hf_port'"
        )
    return found[0]


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return key


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """
    Rename an original OFA state dict into this package's layout.

    Drops `DROPPED_KEYS` (rebuilt buffers, fairseq `version` keys) and fairseq classification heads (with a
    warning). The shared embedding is also set under the keys the model ties to it (`TIED_KEYS`), so the result
    loads with a strict `load_state_dict`. Checkpoints trained without fairseq's `--scale-heads` but with the
    NormFormer LayerNorms get head scales of one, which is the identity. Keys no rule knows are kept under their
    own name, for `check_state_dict` to report.

    Args:
        state_dict: the source tensors.
        source: `"fairseq"` or `"hf_port"`.

    Raises:
        ValueError: for an unknown source, for keys of unsupported features (`UNSUPPORTED_KEYS`), and when two
            source keys that must hold the same tensor (the shared embedding) differ.
    """
    rules = {"fairseq": FAIRSEQ_RENAMES, "hf_port": HF_PORT_RENAMES}.get(source)
    if rules is None:
        raise ValueError(f"source must be 'fairseq' or 'hf_port', got {source!r}")
    unsupported = sorted(
        f"{key} ({why})" for key in state_dict for pattern, why in UNSUPPORTED_KEYS if re.search(pattern, key)
    )
    if unsupported:
        raise ValueError("the checkpoint holds weights of unsupported features:\n  " + "\n  ".join(unsupported))
    heads = sorted(key for key in state_dict if re.match(_CLASSIFICATION_HEAD, key))
    if heads:
        logger.warning("dropping fairseq classification heads, which the generative model does not use: %s", heads)

    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state_dict.items():
        if key in heads or any(re.search(pattern, key) for pattern in DROPPED_KEYS):
            continue
        new_key = _rename(key, rules)
        if new_key in converted:
            if not torch.equal(converted[new_key], tensor):
                raise ValueError(
                    f"{origin[new_key]} and {key} both become {new_key} (one shared embedding) but differ; "
                    "checkpoints with separate embeddings or an untied output projection are not supported"
                )
            continue
        converted[new_key], origin[new_key] = tensor, key

    for key, aliases in TIED_KEYS.items():
        if key in converted:
            converted.update(dict.fromkeys(aliases, converted[key]))

    # fairseq --scale-attn/--scale-fc without --scale-heads: no c_attn, which then equals ones.
    if not any(key.endswith(".c_attn") for key in converted):
        for key in [k for k in converted if re.search(r"_mid_layer_norm\.weight$", k)]:
            stack = key.split(".layers.")[0]
            heads_key = f"{stack}.token_rel_pos_table_list.0.weight"
            if heads_key in converted:
                attn = key.replace("_mid_layer_norm.weight", ".c_attn")  # ...self_attn.c_attn / ...cross_attn.c_attn
                converted[attn] = torch.ones(converted[heads_key].shape[1], dtype=converted[key].dtype)
    return converted


def _tied_groups(reference: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """For every key, the keys that share its storage (itself included)."""
    by_storage: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for key, tensor in reference.items():
        if tensor.numel() == 0:
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        by_storage.setdefault(ident, []).append(key)
    return {key: group for group in by_storage.values() for key in group}


def check_state_dict(converted: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """
    Strictly compare a converted state dict with a model's.

    A key the model ties to another (the shared embedding, `lm_head.weight`) counts as present when any key of
    its tie group is given; all given keys of a group must hold equal values.

    Args:
        converted: the state dict to load.
        model: the model it is meant for.

    Raises:
        StateDictMismatchError: naming every missing, unexpected and mis-shaped key and every broken tie.
    """
    expected = model.state_dict()
    groups = _tied_groups(expected)
    missing = [
        key for key in expected if key not in converted and not any(k in converted for k in groups.get(key, [key]))
    ]
    unexpected = [key for key in converted if key not in expected]
    mismatched = [
        (key, tuple(converted[key].shape), tuple(expected[key].shape))
        for key in converted
        if key in expected and tuple(converted[key].shape) != tuple(expected[key].shape)
    ]
    bad_shapes = {key for key, _, _ in mismatched}
    untied, seen = [], set()
    for group in groups.values():
        given = [key for key in group if key in converted and key not in bad_shapes]
        if id(group) in seen or len(given) < 2:
            continue
        seen.add(id(group))
        if not all(torch.equal(converted[given[0]], converted[key]) for key in given[1:]):
            untied.append(given)
    if missing or unexpected or mismatched or untied:
        raise StateDictMismatchError(missing, unexpected, mismatched, untied)


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------


def _generation_config(config: OFAConfig) -> GenerationConfig:
    return GenerationConfig(
        **OFA_GENERATION_DEFAULTS,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=config.eos_token_id,
    )


def convert_checkpoint(
    src: PathLike,
    dst_folder: PathLike,
    *,
    source: str = "auto",
    preset: str | None = None,
    tokenizer_dir: PathLike | None = None,
    resnet_norm: str = "frozen",
) -> Path:
    """
    Convert an original OFA checkpoint into a folder that `OFAForConditionalGeneration.from_pretrained` loads.

    The configuration comes from, in increasing priority: `preset`, the checkpoint's hyper-parameters (fairseq
    arguments or the port's `config.json`, including the architecture's preset), and what the weights' shapes fix
    (widths, depths, heads, table sizes, ResNet depth, which LayerNorms exist). Declared hyper-parameters that
    contradict the shapes are an error.

    Args:
        src: a fairseq `.pt`, a state-dict file, or a folder (see `load_original_checkpoint`).
        dst_folder: output folder; receives `config.json`, `model.safetensors` and `generation_config.json` (beam
            5, no repeated trigram, fairseq's length limit) and the tokenizer files of `tokenizer_dir`.
        source: `"fairseq"`, `"hf_port"`, or `"auto"` to tell them apart by key names.
        preset: `tiny`/`medium`/`base`/`large`/`huge`, for the settings the checkpoint does not record.
        tokenizer_dir: optional folder whose tokenizer files (`vocab.json`, `merges.txt`, `tokenizer.json`, ...)
            are copied next to the weights.
        resnet_norm: the `OFAConfig.resnet_norm` written into the config. `"frozen"` by default: the converted
            BatchNorm statistics and affine stay as trained, so fine-tuning (one task or many, full or PEFT) never
            moves them and tasks do not couple through them. Eval outputs are those of `"batch"` exactly and the
            keys are the same, so `from_pretrained(folder, resnet_norm="batch")` trains the statistics too.

    Returns:
        The output folder.

    Raises:
        StateDictMismatchError: if the converted weights do not fit the configured model exactly.
        ValueError: for unsupported checkpoint settings (see `config_from_fairseq_args`).
    """
    state_dict, hparams = load_original_checkpoint(src)
    if source == "auto":
        source = detect_source(state_dict)
    code_image_size = _code_image_size(state_dict, source) if source in _IMAGE_POSITION_FILLERS else None
    converted = convert_state_dict(state_dict, source)
    if source == "fairseq":
        declared = config_from_fairseq_args(hparams) if hparams else {}
    else:
        declared = config_from_hf_port_config(hparams) if hparams else {}
    if not hparams:
        logger.warning("%s records no hyper-parameters: the configuration comes from the weights and defaults", src)
    inferred = infer_config_from_state_dict(converted, code_image_size)
    merged = _merge_config(inferred, declared, preset, f"the {source} hyper-parameters")
    config = OFAConfig(**{**merged, "resnet_norm": resnet_norm})

    model = OFAForConditionalGeneration(config)
    check_state_dict(converted, model)
    model.load_state_dict(converted)
    model.generation_config = _generation_config(config)
    dst = Path(dst_folder)
    model.save_pretrained(dst, safe_serialization=True)

    if tokenizer_dir is not None:
        copied = [name for name in _TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
        if not copied:
            raise FileNotFoundError(f"{tokenizer_dir} holds none of the tokenizer files {list(_TOKENIZER_FILES)}")
        for name in copied:
            shutil.copyfile(Path(tokenizer_dir) / name, dst / name)
    return dst
