"""ONNX export on tiny configs: graphs match PyTorch (encoder, every decoder call), greedy ids are identical, the
folder layout and manifest, int8 graphs, the CLI, and the errors for what cannot be exported or run."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import perturb_weights, tiny_config_kwargs
from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor

from modeling_ofa import MODALITIES, ModalityMoE, OFAConfig, OFAForConditionalGeneration
from modeling_ofa.onnx import (
    MANIFEST_NAME,
    OnnxOFA,
    encoder_variant,
    export_onnx,
    quantize_onnx_int8,
    sample_encoder_inputs,
    validate_onnx,
)
from modeling_ofa.quantization import greedy_agreement, quantize_dynamic_int8

TOLERANCE = 1e-4  # fp32 max abs difference the export must stay under
PAD = 1

MOE_KWARGS = dict(
    extra_modalities=["AUDIO", "VIDEO", "MOTION"],
    motion_feature_size=10,
    moe_type="modality",
    moe_modality_groups=[["TEXT", "PHONE", "CATEGORY"], ["IMAGE", "VIDEO", "IMAGE_CODE"], ["BOX"], ["AUDIO", "MOTION"]],
)


def build(seed: int = 0, **overrides) -> OFAForConditionalGeneration:
    """A tiny model with perturbed weights (`perturb_weights`), so that every path of the graph matters."""
    torch.manual_seed(seed)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**overrides))).eval()
    return perturb_weights(model)


def choose_eos(model: OFAForConditionalGeneration, inputs: dict) -> int:
    """A token that the first sample generates for the first time at step 3 or later, as end token: the batch then
    has finished and unfinished samples (padding after `</s>`) in the comparison."""
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, num_beams=1, do_sample=False)
    first = ids[0].tolist()
    steps = [step for step in range(3, len(first)) if first[step] not in first[1:step]]
    assert steps, f"test setup: sample 0 generates no new token after step 2 ({first}); pick another seed"
    return first[steps[0]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ort_runner(path) -> OnnxOFA:
    # One non-spinning onnxruntime thread: the tests alternate with torch, whose threads would otherwise compete.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return OnnxOFA(path, session_options=options)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    model = build()
    probe = sample_encoder_inputs(model.config, "image", batch_size=3, text_length=9, image_size=48, seed=7)
    model.generation_config.eos_token_id = choose_eos(model, probe)
    out = tmp_path_factory.mktemp("onnx_dense")
    manifest = export_onnx(model, out, encoders=["text", "image"])
    return model, out, manifest, ort_runner(out)


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    model = build(seed=3, **MOE_KWARGS).train()  # exported in eval mode, given back in training mode
    out = tmp_path_factory.mktemp("onnx_moe")
    manifest = export_onnx(model, out, encoders=["text", "audio+image", "video+motion"])
    assert all(module.training for module in model.modules())
    return model.eval(), out, manifest, ort_runner(out)


# ---------------------------------------------------------------------------------------------------------------
# Folder layout and graphs
# ---------------------------------------------------------------------------------------------------------------


def test_folder_and_manifest(dense):
    model, out, manifest, _ = dense
    files = sorted(p.name for p in out.iterdir())
    expected = ["config.json", "decoder.onnx", "decoder_with_past.onnx", "encoder_image.onnx", "encoder_text.onnx"]
    assert files == sorted([*expected, MANIFEST_NAME])
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    assert manifest["exporter"] == "torch.onnx.export(dynamo=False)"
    assert manifest["encoders"]["image"]["inputs"] == ["pixel_values", "patch_masks", "input_ids", "attention_mask"]
    assert manifest["decoder"]["inputs"][-1] == "code_masks"
    assert manifest["generation"]["eos_token_id"] == [model.generation_config.eos_token_id]
    assert manifest["ignored_inputs"] == ["input_modality_ids", "decoder_modality_ids"]
    with_past = manifest["decoder_with_past"]
    assert with_past["inputs"][:5] == [
        "decoder_input_ids",
        "encoder_padding_mask",
        "cross_position_keys",
        "past_key.0",
        "past_value.0",
    ]
    assert with_past["outputs"] == ["logits", "present_key.0", "present_value.0", "present_key.1", "present_value.1"]


@pytest.mark.parametrize(
    ("graph", "name", "dims"),
    [
        ("encoder_image.onnx", "pixel_values", ["batch", 3, "height", "width"]),
        ("encoder_text.onnx", "input_ids", ["batch", "text_length"]),
        ("decoder.onnx", "encoder_hidden_states", ["batch", "encoder_length", 32]),
        ("decoder_with_past.onnx", "past_key.1", ["batch", 4, "past_length", 8]),
        ("decoder_with_past.onnx", "decoder_input_ids", ["batch", "new_length"]),
    ],
)
def test_dynamic_axes(dense, graph, name, dims):
    _, out, _, _ = dense
    inputs = {i.name: i for i in onnx.load(str(out / graph), load_external_data=False).graph.input}
    shape = [d.dim_param or d.dim_value for d in inputs[name].type.tensor_type.shape.dim]
    assert shape == dims


def test_export_leaves_model_unchanged(moe):
    """Export swaps in graph-friendly MoE blocks and a clamped code-position buffer; both are given back (the
    training mode is checked in the fixture)."""
    model, _, manifest, _ = moe
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    assert all(isinstance(layer.moe, ModalityMoE) for layer in layers)
    decoder = model.model.decoder
    assert int(decoder.image_position_idx.max()) == min(1024, model.config.image_bucket_size**2)
    assert manifest["modality_to_expert"] == model.config.modality_to_expert()


# ---------------------------------------------------------------------------------------------------------------
# Numerical parity and greedy equality (sizes differ from the export samples: batch 2, text 7, 64-px images)
# ---------------------------------------------------------------------------------------------------------------


DENSE_CASES = {
    "text_b1": dict(variant="text", batch_size=1, text_length=12),
    "text_b3_prefix": dict(variant="text", batch_size=3, text_length=10, prefix=[0, 50, 60]),
    "image_b3_48px": dict(variant="image", batch_size=3, text_length=9, image_size=48),
    "image_b4_codes": dict(variant="image", batch_size=4, text_length=5, image_size=96, codes=[1, 0, 1, 0]),
    "image_b1_all_codes": dict(variant="image", batch_size=1, text_length=6, image_size=32, codes=[True]),
}


def make_inputs(model, variant, batch_size, text_length, image_size=None, prefix=None, codes=None, seed=11):
    inputs = sample_encoder_inputs(
        model.config, variant, batch_size=batch_size, text_length=text_length, image_size=image_size, seed=seed
    )
    if prefix is not None:
        inputs["decoder_input_ids"] = torch.tensor([prefix] * batch_size)
    if codes is not None:
        inputs["code_masks"] = torch.tensor(codes, dtype=torch.bool)
    return inputs


@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_dense_matches_pytorch(dense, case):
    model, _, _, runner = dense
    inputs = make_inputs(model, **DENSE_CASES[case])
    result = validate_onnx(model, runner, inputs, max_new_tokens=6)
    assert result.encoder_max_abs_diff < TOLERANCE
    prefix = inputs["decoder_input_ids"].shape[1] if "decoder_input_ids" in inputs else 1
    assert len(result.logits_max_abs_diff) == len(result.torch_ids[0]) - prefix  # one call per generated token
    assert max(result.logits_max_abs_diff) < TOLERANCE
    assert result.greedy_equal, (result.torch_ids, result.onnx_ids)
    generated = {t for row in result.torch_ids for t in row[1:]}
    assert len(generated) > 1  # not a trivial constant output


def test_eos_and_padding(dense):
    """The probe batch stops its first sample at step 3 or later: `</s>` then padding, identical to PyTorch."""
    model, _, manifest, runner = dense
    inputs = sample_encoder_inputs(model.config, "image", batch_size=3, text_length=9, image_size=48, seed=7)
    result = validate_onnx(model, runner, inputs, max_new_tokens=6)
    eos = manifest["generation"]["eos_token_id"][0]
    first = list(result.onnx_ids[0])
    stop = first.index(eos)
    assert 3 <= stop < len(first) - 1 and set(first[stop + 1 :]) == {PAD}
    assert result.greedy_equal and max(result.logits_max_abs_diff) < TOLERANCE


def test_logits_processor_hook(dense):
    model, _, _, runner = dense
    inputs = make_inputs(model, "text", 2, 8)
    plain = runner.generate(**inputs, max_new_tokens=5)
    banned = sorted({int(t) for t in plain[:, 1:].reshape(-1)})
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor(banned)])
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=5, num_beams=1, logits_processor=processors)
    got = runner.generate(**inputs, max_new_tokens=5, logits_processor=processors)
    assert np.array_equal(got, expected.numpy())
    assert not np.isin(got[:, 1:], banned).any()


def test_length_limits(dense):
    model, _, manifest, runner = dense
    inputs = make_inputs(model, "text", 1, 6)
    assert runner.generate(**inputs, max_length=4).shape == (1, 4)
    # No length anywhere: 20 new tokens unless `</s>` comes first, as generate() (which warns about its default).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = model.generate(**inputs, num_beams=1).numpy()
    assert np.array_equal(runner.generate(**inputs), expected)
    # Text and image-code targets both run up to max_position_embeddings, past the code grid (1 + 4 * 4 positions
    # here): beyond it, code positions use the table's filler row.
    assert manifest["code_position_limit"] == model.get_decoder().image_position_idx.numel()
    # (an input whose greedy answer does not reach the probe's end token within 30 steps)
    endless = make_inputs(model, "text", 1, 6, seed=13)
    long = validate_onnx(model, runner, endless, max_new_tokens=30)
    assert long.greedy_equal and len(long.onnx_ids[0]) == 31
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        runner.generate(**endless, max_new_tokens=80)
    codes = validate_onnx(model, runner, {**inputs, "code_masks": torch.tensor([True])}, max_new_tokens=20)
    assert codes.greedy_equal


MOE_CASES = {
    "text": dict(variant="text", batch_size=2, text_length=9),
    "audio+image": dict(variant="audio+image", batch_size=3, text_length=6, image_size=48),
    "video+motion": dict(variant="video+motion", batch_size=3, text_length=8, image_size=32),
}


@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_modality_moe_matches_pytorch(moe, case):
    model, _, _, runner = moe
    inputs = make_inputs(model, **MOE_CASES[case], codes=None)
    batch, length = inputs["input_ids"].shape
    g = torch.Generator().manual_seed(5)
    # Text-like tokens routed to the TEXT and BOX experts, decoder targets to three different experts.
    inputs["input_modality_ids"] = torch.tensor([0, 2])[torch.randint(0, 2, (batch, length), generator=g)]
    inputs["decoder_modality_ids"] = torch.tensor([0, 2, 9])[:batch]
    inputs["code_masks"] = torch.arange(batch) == batch - 1
    result = validate_onnx(model, runner, inputs, max_new_tokens=6)
    assert result.encoder_max_abs_diff < TOLERANCE and max(result.logits_max_abs_diff) < TOLERANCE
    assert result.greedy_equal, (result.torch_ids, result.onnx_ids)


# ---------------------------------------------------------------------------------------------------------------
# int8 graphs and the CLI
# ---------------------------------------------------------------------------------------------------------------


def test_quantize_onnx_int8(dense, tmp_path):
    """int8 graphs agree with PyTorch on every x86 CPU: with signed weights, on a machine without VNNI (saturating
    u8 x s8 products), the greedy token agreement was 0.39; unsigned weights give 0.94 there."""
    model, out, _, _ = dense
    manifest = quantize_onnx_int8(out, tmp_path)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "decoder_with_past.onnx")).graph.node}
    assert "MatMulInteger" in ops and manifest["quantization"]["per_channel"] is True
    assert manifest["quantization"]["weights"] == "uint8"
    batches = [make_inputs(model, v, 3, 8, image_size=48, seed=2) for v in ("text", "image")]
    agreement = greedy_agreement(model, ort_runner(tmp_path), batches, max_new_tokens=6, pad_token_id=PAD)
    assert agreement["sequences"] == 6 and agreement["token_agreement"] >= 0.8
    with pytest.raises(ValueError, match="different from the source"):
        quantize_onnx_int8(out, out)


def test_cli_text_only_decoder(tmp_path, capsys):
    from scripts.export_onnx import main

    model = build(seed=1)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    status = main(
        [
            str(tmp_path / "model"),
            str(tmp_path / "onnx"),
            "--encoders",
            "text",
            "--text-only-decoder",
            "--int8-dir",
            str(tmp_path / "int8"),
            "--validate",
            "--max-new-tokens",
            "6",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["passed"] is True
    check = report["validation"]["text"]
    assert check["greedy_equal"] and check["logits_max_abs_diff"] < TOLERANCE and check["decoder_calls"] >= 1
    assert 0.0 <= check["int8_greedy_agreement"]["token_agreement"] <= 1.0
    assert "tokenizer.json" in report["copied"] and (tmp_path / "int8" / "tokenizer.json").is_file()
    runner = OnnxOFA(tmp_path / "onnx")
    assert "code_masks" not in runner.manifest["decoder"]["inputs"]
    inputs = make_inputs(model, "text", 2, 6, codes=[True, False])
    with pytest.raises(ValueError, match="exported without code masks"):
        runner.generate(**inputs, max_new_tokens=2)
    # Logits settings of the generation config are recorded; the greedy loop warns that it does not apply them.
    assert runner.manifest["generation"]["not_applied"] == []
    manifest_path = tmp_path / "onnx" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["generation"]["not_applied"] = ["no_repeat_ngram_size"]
    manifest_path.write_text(json.dumps(manifest))
    del inputs["code_masks"]
    with pytest.warns(UserWarning, match="no_repeat_ngram_size"):
        OnnxOFA(tmp_path / "onnx").generate(**inputs, max_new_tokens=2)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("text", "text"), ("image+text", "image"), ("audio+image", "image+audio"), (["motion", "video"], "video+motion")],
)
def test_encoder_variant_names(given, expected):
    assert encoder_variant(given) == expected


def test_encoder_variant_unknown():
    with pytest.raises(ValueError, match="unknown encoder modalities"):
        encoder_variant("image+sound")


def test_export_refusals(tmp_path):
    topk = build(moe_type="topk", moe_num_experts=2)
    with pytest.raises(ValueError, match="topk"):
        export_onnx(topk, tmp_path)
    dense_model = build()
    with pytest.raises(ValueError, match="float model"):
        export_onnx(quantize_dynamic_int8(dense_model), tmp_path)
    with pytest.raises(ValueError, match="extra_modalities"):
        export_onnx(dense_model, tmp_path, encoders=["audio"])
    with pytest.raises(TypeError, match="OFAForConditionalGeneration"):
        export_onnx(dense_model.model, tmp_path)


def test_runner_refusals(dense, moe, tmp_path):
    model, _, _, runner = dense
    inputs = make_inputs(model, "text", 2, 6)
    with pytest.raises(ValueError, match="'audio'"):
        runner.generate(**inputs, audio_features=torch.zeros(2, 8, 80))
    with pytest.raises(TypeError, match="decoder_attention_mask"):
        runner.generate(**inputs, decoder_attention_mask=torch.ones(2, 1))
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        OnnxOFA(tmp_path)
    image = make_inputs(model, "image", 2, 6, image_size=144)  # a 9x9 patch grid; the tables cover 8x8
    with pytest.raises(ValueError, match="image_bucket_size=8"):
        runner.generate(**image)
    with pytest.raises(ValueError, match="text input has 70 positions"):
        runner.generate(input_ids=torch.full((1, 70), 5))
    moe_model, _, _, moe_runner = moe
    inputs = make_inputs(moe_model, "text", 2, 6)
    inputs["input_modality_ids"] = torch.full_like(inputs["input_ids"], MODALITIES.index("STRUCT"))
    with pytest.raises(ValueError, match="STRUCT"):
        moe_runner.generate(**inputs)


# ---------------------------------------------------------------------------------------------------------------
# Demo tasks: PyTorch and ONNX greedy generation on the demo corpus, encoded by a trained folder's processor
# ---------------------------------------------------------------------------------------------------------------

DEMO_VARIANTS = {
    "caption": "image",
    "vqa": "image",
    "grounding": "image",
    "detection": "image",
    "itm": "image",
    "asr": "audio",
    "video_direction": "video",
    "table_qa": "text",  # a STRUCT table is text tokens
    "motion_class": "motion",
    "summarization": "text",
}


def test_cli_demo_tasks(demo_output, tmp_path, capsys):
    from scripts.export_onnx import main
    from trainers.demo import DEMO_TASK_NAMES

    folder = demo_output[0]
    data = folder.parents[1] / "demo_data"
    args = [str(folder), str(tmp_path / "onnx"), "--demo-data", str(data), "--demo-examples", "4", "--validate"]
    status = main(args)
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["passed"] is True
    # Without --encoders, every variant the demo needs is exported (and checked on random inputs too).
    assert sorted(report["validation"]) == ["audio", "image", "motion", "text", "video"]
    tasks = report["demo_tasks"]
    assert list(tasks) == list(DEMO_TASK_NAMES)
    for name, result in tasks.items():
        assert result["variant"] == DEMO_VARIANTS[name], name
        assert result["examples"] == 4 and result["batches"] == 1, name
        assert result["sequence_match"] == 1.0 and result["token_agreement"] == 1.0, name
        assert result["max_abs_diff"] < TOLERANCE and result["passed"] is True, name
    # Closed sets decode their longest answer and </s> (one-word answers here); open tasks the free budget.
    assert {tasks[name]["max_new_tokens"] for name in ("vqa", "itm", "video_direction", "motion_class")} == {2}
    assert tasks["caption"]["closed_set"] is False and tasks["caption"]["max_new_tokens"] == 32


def test_cli_demo_task_without_its_encoder_fails(demo_output, tmp_path, capsys):
    from scripts.export_onnx import main

    folder = demo_output[0]
    data = folder.parents[1] / "demo_data"
    args = [str(folder), str(tmp_path / "onnx"), "--encoders", "text", "--demo-data", str(data)]
    status = main([*args, "--demo-tasks", "asr", "summarization", "--demo-examples", "2"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and report["passed"] is False
    assert report["demo_tasks"]["summarization"]["passed"] is True
    asr = report["demo_tasks"]["asr"]
    assert asr["passed"] is False and "encoder variant 'audio', which was not exported" in asr["error"]


def test_demo_task_selection_errors(demo_output):
    from processing import OFAProcessor
    from scripts.export_onnx import prepare_demo_tasks

    folder = demo_output[0]
    processor = OFAProcessor.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"\['nope'\] are not demo tasks"):
        prepare_demo_tasks(processor, folder.parents[1] / "demo_data", tasks=["nope"])
    processor.task_instructions = {"other": "[TEXT:src] -> [TEXT:tgt]"}
    with pytest.raises(ValueError, match="none of the demo instructions"):
        prepare_demo_tasks(processor, folder.parents[1] / "demo_data")


def test_exportable_variants_reports_missing_modalities():
    from scripts.export_onnx import exportable_variants

    exportable, refused = exportable_variants(build(), ["text", "image", "audio", "video+motion"])
    assert exportable == ["text", "image"]
    assert sorted(refused) == ["audio", "video+motion"]
    assert "'AUDIO' in config.extra_modalities" in refused["audio"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["input_ids", "attention_mask", "input_modality_ids"], "text"),
        (["input_ids", "pixel_values", "patch_masks", "decoder_input_ids"], "image"),
        (["input_ids", "audio_features", "audio_attention_mask"], "audio"),
        (["input_ids", "video_pixel_values", "video_frame_indices", "motion_features"], "video+motion"),
    ],
)
def test_batch_encoder_variant(keys, expected):
    from scripts.export_onnx import batch_encoder_variant

    assert batch_encoder_variant(dict.fromkeys(keys)) == expected
