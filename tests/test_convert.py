"""Tests of `modeling_ofa.convert`: original OFA checkpoints (fairseq, OFA-Sys transformers port) -> our layout.

A tiny random `OFAForConditionalGeneration` is mapped back into each original layout (by tables written here,
independently of the converter's), saved the way the originals save, converted, reloaded and compared logit by
logit. The rest checks the strict key report, unsupported settings and the restricted unpickler.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.convert import (
    StateDictMismatchError,
    check_state_dict,
    config_from_fairseq_args,
    config_from_hf_port_config,
    convert_checkpoint,
    convert_state_dict,
    detect_source,
    load_original_checkpoint,
)
from modeling_ofa.resnet import FrozenBatchNorm2d

TINY = dict(
    vocab_size=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=1,
    encoder_attention_heads=4,
    decoder_attention_heads=2,
    encoder_ffn_dim=48,
    decoder_ffn_dim=40,
    max_position_embeddings=32,
    token_bucket_size=16,
    image_bucket_size=4,
    code_image_size=32,
    resnet_type="resnet18",
    dropout=0.0,
)

# Our key -> original key, as the original code names things (written independently of the converter's tables).
TO_FAIRSEQ = (
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_mid_layer_norm\.", r"encoder.layers.\1.attn_ln."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_mid_layer_norm\.", r"decoder.layers.\1.self_attn_ln."),
    (r"^model\.decoder\.layers\.(\d+)\.cross_attn_mid_layer_norm\.", r"decoder.layers.\1.cross_attn_ln."),
    (r"^model\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"decoder.layers.\1.encoder_attn_layer_norm."),
    (r"^model\.decoder\.layers\.(\d+)\.cross_attn\.", r"decoder.layers.\1.encoder_attn."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.ffn_layer_norm\.", r"\1.layers.\2.ffn_layernorm."),
    (r"^model\.", ""),
)
TO_HF_PORT = ((r"^model\.", ""),)
TIED = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
FILLERS = {"fairseq": 769, "hf_port": 768}
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


@pytest.fixture(scope="module")
def model() -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**TINY)).eval()
    with torch.no_grad():
        # Zero-initialized tables and unit scales would hide a wrongly mapped key; make every weight distinct.
        for name, param in model.named_parameters():
            if "rel_pos_table" in name or name.endswith(("c_attn", "layer_norm.weight", "layernorm_embedding.weight")):
                param.add_(0.2 * torch.randn_like(param))
        # Trained-looking BatchNorm statistics: the converted (frozen) stem must normalize with exactly these.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _original_state_dict(model: OFAForConditionalGeneration, layout: str) -> dict[str, torch.Tensor]:
    """Our weights under the original names, with the original's buffers and tied copies."""
    rules = TO_FAIRSEQ if layout == "fairseq" else TO_HF_PORT
    ours = model.state_dict()
    sd = {_rename(key, rules): value.clone() for key, value in ours.items() if key not in TIED}
    shared = sd.pop("shared.weight")
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        sd[key] = shared  # one tensor, as in a saved tied module
    for stack in ("encoder", "decoder"):
        module = getattr(model.model, stack)
        sd[f"{stack}.token_rp_bucket"] = module.token_rp_bucket.clone()
        sd[f"{stack}.image_rp_bucket"] = module.image_rp_bucket.clone()
        if layout == "fairseq":
            sd[f"{stack}.version"] = torch.tensor([3.0])
    window = TINY["code_image_size"] // 8
    sd["decoder.image_position_idx"] = torch.arange(1 + window**2 + FILLERS[layout])
    return sd


def _fairseq_args(**overrides) -> dict:
    args = dict(
        arch="ofa_tiny",
        encoder_embed_dim=32,
        decoder_embed_dim=32,
        encoder_ffn_embed_dim=48,
        decoder_ffn_embed_dim=40,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        max_source_positions=32,
        max_target_positions=32,
        encoder_normalize_before=True,
        decoder_normalize_before=True,
        activation_fn="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        no_scale_embedding=True,
        layernorm_embedding=True,
        patch_layernorm_embedding=True,
        code_layernorm_embedding=True,
        share_all_embeddings=True,
        share_decoder_input_output_embed=True,
        resnet_type="resnet18",
        token_bucket_size=16,
        image_bucket_size=4,
        code_image_size=32,
        add_type_embedding=True,
        attn_scale_factor=2.0,
        entangle_position_embedding=False,
        disable_entangle=True,
        scale_attn=True,
        scale_fc=True,
        scale_heads=True,
        scale_resids=False,
        patch_image_size=64,
    )
    args.update(overrides)
    return args


class _FakeOmegaconf:
    """Stand-ins registered as `omegaconf.*` modules only while pickling: loading must not need omegaconf."""

    names = ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes", "omegaconf.base")

    def __enter__(self):
        self.saved = {name: sys.modules.get(name) for name in self.names}
        modules = {name: types.ModuleType(name) for name in self.names}

        class ContainerMetadata:
            def __init__(self):
                self.key_type, self.flags = str, {"readonly": False}

        class AnyNode:
            def __init__(self, value, parent):
                self._val, self._parent, self._metadata = value, parent, ContainerMetadata()

        class DictConfig:
            def __init__(self, content, parent=None):
                self._parent, self._metadata = parent, ContainerMetadata()
                self._content = {
                    key: DictConfig(value, self) if isinstance(value, dict) else AnyNode(value, self)
                    for key, value in content.items()
                }

        for cls, module in ((DictConfig, "dictconfig"), (AnyNode, "nodes"), (ContainerMetadata, "base")):
            cls.__module__, cls.__qualname__ = f"omegaconf.{module}", cls.__name__
            setattr(modules[f"omegaconf.{module}"], cls.__name__, cls)
        sys.modules.update(modules)
        self.DictConfig = DictConfig
        return self

    def __exit__(self, *exc):
        for name, module in self.saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _save_fairseq(model, path, hparams_in: str, args: dict) -> None:
    ckpt = {
        "model": _original_state_dict(model, "fairseq"),
        "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion", "num_updates": 10}],
        "extra_state": {"epoch": 3, "best": np.float64(0.5)},
    }
    if hparams_in == "args":
        torch.save({**ckpt, "args": argparse.Namespace(**args), "cfg": None}, path)
    elif hparams_in == "cfg_namespace":
        cfg = {"model": argparse.Namespace(**args), "task": {"_name": "caption", "patch_image_size": 64}}
        torch.save({**ckpt, "args": None, "cfg": cfg}, path)
    else:
        with _FakeOmegaconf() as fake:
            cfg = fake.DictConfig({"model": {**args, "_name": args["arch"]}, "task": {"patch_image_size": 64}})
            torch.save({**ckpt, "args": None, "cfg": cfg}, path)


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, TINY["vocab_size"], (2, 7), generator=generator)
    input_ids[1, 5:] = 1  # padding
    return dict(
        input_ids=input_ids,
        pixel_values=torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1,
        decoder_input_ids=torch.randint(4, TINY["vocab_size"], (2, 5), generator=generator),
        code_masks=torch.tensor([False, True]),
    )


def _assert_same_logits(reference: OFAForConditionalGeneration, folder) -> OFAForConditionalGeneration:
    loaded = OFAForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        expected, got = reference(**_inputs()).logits, loaded(**_inputs()).logits
    assert torch.equal(expected, got)
    return loaded


@pytest.mark.parametrize("hparams_in", ["args", "cfg_namespace", "cfg_omegaconf"])
def test_fairseq_checkpoint_round_trip(model, tmp_path, hparams_in):
    src = tmp_path / "checkpoint_best.pt"
    _save_fairseq(model, src, hparams_in, _fairseq_args())
    with pytest.raises(pickle.UnpicklingError):  # a real fairseq file: weights_only alone cannot read it
        torch.load(src, weights_only=True)
    state_dict, hparams = load_original_checkpoint(src)
    assert hparams["encoder_embed_dim"] == 32 and hparams["arch"] == "ofa_tiny"
    assert "encoder.layers.0.attn_ln.weight" in state_dict

    dst = convert_checkpoint(src, tmp_path / "converted")
    loaded = _assert_same_logits(model, dst)
    for name in ("d_model", "encoder_layers", "decoder_ffn_dim", "decoder_attention_heads", "code_image_size"):
        assert getattr(loaded.config, name) == TINY[name]
    # Converted checkpoints fine-tune with frozen BatchNorm statistics; the logits above are those of "batch".
    assert loaded.config.resnet_norm == "frozen" and model.config.resnet_norm == "batch"
    assert isinstance(loaded.model.encoder.embed_images.layer1[0].downsample[1], FrozenBatchNorm2d)
    generation = json.loads((dst / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["no_repeat_ngram_size"], generation["max_length"]) == (5, 3, 202)
    assert generation["decoder_start_token_id"] == 0


@pytest.mark.parametrize("file_format", ["folder_bin", "safetensors"])
def test_hf_port_checkpoint_round_trip(model, tmp_path, file_format):
    state_dict = _original_state_dict(model, "hf_port")
    port_config = {**TINY, "share_decoder_input_output_embed": True, "encoder_layerdrop": 0.0, "model_type": "ofa"}
    if file_format == "folder_bin":
        src = tmp_path / "port"
        src.mkdir()
        torch.save(state_dict, src / "pytorch_model.bin")
        (src / "config.json").write_text(json.dumps(port_config))
    else:
        src = tmp_path / "port.safetensors"
        save_file({key: value.clone().contiguous() for key, value in state_dict.items()}, src)
    assert detect_source(load_original_checkpoint(src)[0]) == "hf_port"
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text("{}")
    dst = convert_checkpoint(src, tmp_path / "converted", tokenizer_dir=tokenizer)
    _assert_same_logits(model, dst)
    assert (dst / "vocab.json").is_file()


@pytest.fixture(scope="module")
def converted(model) -> dict[str, torch.Tensor]:
    return convert_state_dict(_original_state_dict(model, "fairseq"), "fairseq")


def test_converted_state_dict_loads_strictly(model, converted):
    check_state_dict(converted, model)
    assert sorted(converted) == sorted(model.state_dict())  # buffers, version keys gone; tied aliases present
    assert converted["lm_head.weight"] is converted["model.shared.weight"]
    fresh = OFAForConditionalGeneration(OFAConfig(**TINY)).eval()
    fresh.load_state_dict(converted)  # strict
    with torch.no_grad():
        assert torch.equal(fresh(**_inputs()).logits, model(**_inputs()).logits)


def test_untied_output_projection_is_refused(model):
    state_dict = _original_state_dict(model, "fairseq")
    state_dict["decoder.output_projection.weight"] = state_dict["decoder.output_projection.weight"] + 1
    with pytest.raises(ValueError, match="decoder.output_projection.weight both become model.shared.weight"):
        convert_state_dict(state_dict, "fairseq")


def test_command_line(model, tmp_path):
    spec = importlib.util.spec_from_file_location("convert_cli", SCRIPTS / "convert_ofa_checkpoint.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    src = tmp_path / "checkpoint.pt"
    _save_fairseq(model, src, "args", _fairseq_args())
    cli.main([str(src), str(tmp_path / "converted"), "--source", "fairseq", "--preset", "tiny"])
    _assert_same_logits(model, tmp_path / "converted")


@pytest.mark.parametrize(
    "corruption, field, key",
    [
        ("missing", "missing", "model.decoder.layers.0.cross_attn.k_proj.weight"),
        ("missing", "missing", "model.encoder.embed_images.layer2.0.downsample.1.running_var"),
        ("unexpected", "unexpected", "model.encoder.layers.0.bogus.weight"),
        ("misshaped", "mismatched", "model.encoder.layers.1.fc1.weight"),
        ("misshaped", "mismatched", "model.decoder.image_rel_pos_table_list.0.weight"),
        ("untied", "untied", "lm_head.weight"),
    ],
)
def test_check_state_dict_names_bad_keys(model, converted, corruption, field, key):
    broken = dict(converted)
    if corruption == "missing":
        del broken[key]
    elif corruption == "unexpected":
        broken[key] = torch.zeros(3)
    elif corruption == "misshaped":
        broken[key] = torch.zeros(broken[key].shape[0] + 1, *broken[key].shape[1:])
    else:
        broken[key] = broken["model.shared.weight"] + 1
    with pytest.raises(StateDictMismatchError, match=re.escape(key)) as info:
        check_state_dict(broken, model)
    reported = getattr(info.value, field)
    assert key in [entry if isinstance(entry, str) else entry[0] for entry in reported] or any(
        key in group for group in reported if isinstance(group, list)
    )


def test_check_state_dict_reports_every_problem_at_once(model, converted):
    broken = dict(converted)
    del broken["model.encoder.layer_norm.bias"]
    broken["model.decoder.extra"] = torch.zeros(1)
    broken["model.encoder.type_embedding.weight"] = torch.zeros(3, TINY["d_model"])
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(broken, model)
    error = info.value
    assert error.missing == ["model.encoder.layer_norm.bias"]
    assert error.unexpected == ["model.decoder.extra"]
    assert error.mismatched == [("model.encoder.type_embedding.weight", (3, 32), (2, 32))]


def test_missing_head_scales_become_ones(model):
    state_dict = {key: v for key, v in _original_state_dict(model, "fairseq").items() if not key.endswith("c_attn")}
    converted = convert_state_dict(state_dict, "fairseq")
    assert torch.equal(
        converted["model.decoder.layers.0.cross_attn.c_attn"], torch.ones(TINY["decoder_attention_heads"])
    )
    assert torch.equal(
        converted["model.encoder.layers.1.self_attn.c_attn"], torch.ones(TINY["encoder_attention_heads"])
    )
    check_state_dict(converted, model)


def test_classification_heads_are_dropped_with_a_warning(model, caplog):
    state_dict = _original_state_dict(model, "fairseq")
    state_dict["classification_heads.snli.dense.weight"] = torch.zeros(4, 32)
    converted = convert_state_dict(state_dict, "fairseq")
    assert not any(key.startswith("classification_heads") for key in converted)
    assert "classification_heads.snli.dense.weight" in caplog.text


@pytest.mark.parametrize("key", ["encoder.layers.0.w_resid", "decoder.layers.0.adapter.down_proj.weight"])
def test_weights_of_unsupported_features_are_refused(model, key):
    state_dict = _original_state_dict(model, "fairseq")
    state_dict[key] = torch.ones(32)
    with pytest.raises(ValueError, match=re.escape(key)):
        convert_state_dict(state_dict, "fairseq")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"scale_resids": True}, "scale_resids"),
        ({"disable_entangle": False}, "disable_entangle"),
        ({"entangle_position_embedding": True}, "entangle_position_embedding"),
        ({"share_all_embeddings": False}, "share_all_embeddings"),
        ({"decoder_embed_dim": 64}, "decoder_embed_dim"),
        ({"scale_fc": False}, "scale_fc"),
        ({"resnet_type": "vit_base"}, "resnet_type"),
        ({"activation_fn": "mish"}, "activation_fn"),
    ],
)
def test_unsupported_fairseq_settings_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        config_from_fairseq_args(_fairseq_args(**override))


def test_fairseq_args_map_to_config_fields():
    kwargs = config_from_fairseq_args(_fairseq_args(arch="ofa_base", encoder_layers=None, no_scale_embedding=False))
    assert kwargs["encoder_layers"] == 6  # from the ofa_base preset, since the argument is unset
    assert kwargs["d_model"] == 32 and kwargs["decoder_ffn_dim"] == 40  # explicit arguments win
    assert kwargs["scale_embedding"] is True and kwargs["normformer"] is True
    assert kwargs["activation_function"] == "gelu" and kwargs["normalize_before"] is True
    OFAConfig(**kwargs)  # every key is an OFAConfig argument


def test_hf_port_config_is_checked():
    assert config_from_hf_port_config({"d_model": 32, "classifier_dropout": 0.0})["d_model"] == 32
    with pytest.raises(ValueError, match="share_decoder_input_output_embed"):
        config_from_hf_port_config({"share_decoder_input_output_embed": False})


def test_hyperparameters_contradicting_weights_are_refused(model, tmp_path):
    src = tmp_path / "checkpoint.pt"
    _save_fairseq(model, src, "args", _fairseq_args(encoder_layers=3))
    with pytest.raises(ValueError, match="encoder_layers: .* says 3, the weights say 2"):
        convert_checkpoint(src, tmp_path / "converted")


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["decoder.layers.0.encoder_attn.q_proj.weight", "encoder.version"], "fairseq"),
        (["decoder.layers.0.cross_attn.q_proj.weight"], "hf_port"),
        (["model.shared.weight"], "already in this package's layout"),
        (["foo.weight"], "cannot tell"),
    ],
)
def test_detect_source(keys, expected):
    state_dict = dict.fromkeys(keys, torch.zeros(1))
    if expected in ("fairseq", "hf_port"):
        assert detect_source(state_dict) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            detect_source(state_dict)


class _Exploit:
    def __init__(self, func, marker):
        self.func, self.marker = func, marker

    def __reduce__(self):
        if self.func is os.system:
            return os.system, (f"touch {self.marker}",)
        if self.func is subprocess.call:
            return subprocess.call, (["touch", str(self.marker)],)
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("func, name", [(os.system, "system"), (subprocess.call, "subprocess.call"), (eval, "eval")])
def test_forbidden_globals_are_refused_without_running(tmp_path, func, name):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"model": {"encoder.version": torch.ones(1)}, "args": _Exploit(func, marker)}, src)
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global .*{re.escape(name)}"):
        load_original_checkpoint(src)
    assert not marker.exists()
