"""Image targets end to end: pictures -> VQ code targets through the processor's image tokenizer (cached), generation
constrained to exactly `h * w` codes, candidates ranked, PIL images back; image infilling; save/load of model +
processor + image tokenizer in a fresh interpreter; the pipeline and `scripts/predict.py` on a saved folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_weights, tiny_config_kwargs
from PIL import Image, ImageDraw
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.configuration_vqgan import OFAVQGANConfig
from modeling_ofa.modeling_vqgan import OFAVQGANModel, images_to_pixel_values
from processing import ExampleError, OFAImageProcessor, OFAProcessor, parse_instruction, train_demo_tokenizer
from processing.answers import TARGET_KINDS, AnswerGenerator, generation_inputs, target_kind
from processing.image_generation import CodeTokenLogitsProcessor
from trainers import MultiTaskTrainer, Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
# The tiny OFA decodes a 4x4 code grid (code_image_size 32); the tiny VQ tokenizer at 32 px gives that grid.
GRID, NUM_CODES = (4, 4), 64
COUNT = GRID[0] * GRID[1]
T2I = "what is the complete image? caption: [TEXT:text] -> [IMAGE:img,preprocess=image_vqgan]"
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}


def scene(color: str, shape: str = "circle", size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (size // 8, size // 8, size * 5 // 8, size * 5 // 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image


def rows(n: int = 6) -> list[dict]:
    names = list(COLORS)
    return [
        {
            "text": f"a {names[i % 3]} {('circle', 'square')[i % 2]}",
            "img": scene(names[i % 3], ("circle", "square")[i % 2]),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def image_tokenizer() -> OFAVQGANModel:
    torch.manual_seed(0)
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny", resolution=32, num_embeddings=NUM_CODES)).eval()
    with torch.no_grad():  # spread the codebook so that different pictures get different codes
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    words = "a red blue green circle square and what is the complete image caption"
    return train_demo_tokenizer([words] * 20, vocab_size=300, num_codes=NUM_CODES, num_bins=20)


@pytest.fixture
def processor(tokenizer, image_tokenizer) -> OFAProcessor:
    return OFAProcessor(OFAImageProcessor(size=32), tokenizer, image_tokenizer=image_tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer) -> OFAForConditionalGeneration:
    torch.manual_seed(1)
    config = OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer)))
    return perturb_weights(OFAForConditionalGeneration(config), seed=2).eval()


def codes_of(image_tokenizer, image: Image.Image) -> list[int]:
    with torch.no_grad():
        return image_tokenizer.encode(images_to_pixel_values([image], size=32)).flatten().tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Targets


def test_image_targets_become_the_tokenizers_code_tokens(processor, image_tokenizer):
    row = rows(1)[0]
    expected = [processor.vocab.code_id(c) for c in codes_of(image_tokenizer, row["img"])]
    assert len(set(expected)) > 2  # a picture of several regions, not one repeated code
    forms = [
        T2I,
        "caption: [TEXT:text] -> [IMAGE:img,adaptor=image_vqgan]",
        "caption: [TEXT:text] -> [IMAGE:img,preprocess=image_vqgan,adaptor=image_vqgan]",
        "caption: [TEXT:text] -> [IMAGE_CODE:img]",  # an IMAGE_CODE column holding a picture
    ]
    for instruction in forms:
        example = processor.encode(instruction, row, split="train")
        assert example["decoder_input_ids"] == [processor.vocab.bos_id, *expected], instruction
        assert example["labels"] == [*expected, processor.vocab.eos_id]
        assert example["code_mask"] is True  # the decoder runs with OFA's 2-D code positions
        assert example["meta"]["caption"] == row["text"]
    as_array = processor.encode(T2I, {**row, "img": np.asarray(row["img"])})
    assert as_array["decoder_input_ids"][1:] == expected
    # Precomputed codes still work, and `length` cuts either form.
    codes = processor.encode("[TEXT:text] -> [IMAGE_CODE:c]", {"text": "x", "c": [3, 4, 5]})
    assert codes["labels"] == [processor.vocab.code_id(c) for c in (3, 4, 5)] + [processor.vocab.eos_id]
    short = processor.encode("[TEXT:text] -> [IMAGE_CODE:img,length=5]", row)
    assert short["decoder_input_ids"][1:] == expected[:5]
    assert plan_kinds() == {"image", "codes"} and "image" in TARGET_KINDS


def plan_kinds() -> set[str]:
    ofasys = [  # OFASys's own spellings (text-to-image, infilling): positional target columns, both attributes
        'what is the complete image? caption: [TEXT:text]"? -> [IMAGE,preprocess=image_vqgan,adaptor=image_vqgan]',
        'what is the complete image of "[IMAGE:img,mask_ratio=0.5]"? '
        "-> [IMAGE,preprocess=image_vqgan,adaptor=image_vqgan]",
    ]
    kinds = {parse_instruction(text).target_kind for text in [T2I, *ofasys]}
    return kinds | {parse_instruction("[TEXT:t] -> [IMAGE_CODE:c]").target_kind}


def test_image_target_errors_name_what_is_missing(tokenizer, processor):
    bare = OFAProcessor(OFAImageProcessor(size=32), tokenizer)
    with pytest.raises(ExampleError, match=r"row 3, column 'img'.*needs an image tokenizer.*image_tokenizer/"):
        bare.encode(T2I, rows(1)[0], row_index=3)
    with pytest.raises(ExampleError, match=r"IMAGE targets are not generated.*\[IMAGE:img,preprocess=image_vqgan\]"):
        processor.encode("[TEXT:text] -> [IMAGE:img]", rows(1)[0])
    with pytest.raises(ValueError, match="needs preprocess=image_vqgan"):
        target_kind(parse_instruction("[TEXT:text] -> [IMAGE:img]").templates[0].target_slot)
    with pytest.raises(ExampleError, match="an image target holds a picture"):
        processor.encode(T2I, {"text": "x", "img": [1, 2, 3]})
    with pytest.raises(ValueError, match="preprocess=imagenet is not supported yet; supported: image_vqgan"):
        parse_instruction("[TEXT:t] -> [IMAGE:i,preprocess=imagenet]")
    with pytest.raises(ValueError, match="'preprocess' applies only to decoder slots"):
        parse_instruction("[IMAGE:i,preprocess=image_vqgan] -> [TEXT:t]")


def test_target_codes_are_encoded_once_in_batches_over_two_epochs(processor, model, image_tokenizer, tmp_path):
    calls = []
    encode = image_tokenizer.encode

    def counting(pixel_values):
        calls.append(len(pixel_values))
        return encode(pixel_values)

    data = rows(6) * 2  # 12 rows, 6 distinct pictures
    task = Task("t2i", T2I, train_dataset=data, num_beams=1)
    args = Seq2SeqTrainingArguments(
        str(tmp_path), report_to=[], disable_tqdm=True, use_cpu=True, num_train_epochs=2,
        per_device_train_batch_size=4, save_strategy="no", learning_rate=1e-3,
    )  # fmt: skip
    trainer = MultiTaskTrainer(model=model_copy(model), args=args, tasks=[task], processor=processor)
    image_tokenizer.encode = counting
    try:
        result = trainer.train()
    finally:
        del image_tokenizer.encode
    assert result.global_step == 6  # 3 micro-batches per epoch, 2 epochs
    # One batched pre-pass over the training set, none while the epochs read their rows.
    assert calls == [6] and len(processor.image_code_cache) == 6
    assert processor.image_code_cache.encoder_calls == 1
    # Direct use: a picture seen before costs nothing, a new one one call.
    processor.encode(T2I, rows(1)[0])
    assert len(calls) == 1
    processor.encode(T2I, {"text": "x", "img": scene("blue", "circle").rotate(90)})
    assert processor.image_code_cache.encoder_calls == 2
    # A new tokenizer starts a new cache: codes of another tokenizer are not its codes.
    processor.image_tokenizer = image_tokenizer
    assert len(processor.image_code_cache) == 0


def model_copy(model):
    clone = OFAForConditionalGeneration(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def test_generation_is_exactly_the_code_grid_ranked_by_log_probability(processor, model, image_tokenizer):
    generator = AnswerGenerator(processor, T2I, batch_size=2)
    examples = generator.encode(rows(3))
    (group,) = generator.groups(examples)
    kwargs = generator.call_kwargs(group, {"num_return_sequences": 3, "top_k": NUM_CODES})
    assert kwargs["do_sample"] and kwargs["max_new_tokens"] == COUNT + 1
    assert any(isinstance(p, CodeTokenLogitsProcessor) for p in kwargs["logits_processor"])
    torch.manual_seed(3)
    answers = generator.generate_from_examples(
        model, examples, generate_kwargs={"num_return_sequences": 3, "top_k": 64}
    )
    assert len(answers) == 3
    for example, answer in zip(examples, answers):
        assert isinstance(answer["image"], Image.Image) and answer["image"].size == (32, 32)
        assert len(answer["candidates"]) == 3
        scores = [c["score"] for c in answer["candidates"]]
        assert scores == sorted(scores, reverse=True) and answer["codes"] == answer["candidates"][0]["codes"]
        for candidate in answer["candidates"]:
            codes = candidate["codes"]
            assert len(codes) == COUNT and all(0 <= c < NUM_CODES for c in codes)
            # The picture is the tokenizer's decoding of exactly these codes.
            decoded = processor.decode_image_codes([codes])[0]
            # (decoded alone rather than in the batch: a pixel may round the other way)
            difference = np.abs(np.asarray(decoded, dtype=int) - np.asarray(candidate["image"], dtype=int))
            assert difference.max() <= 1
            # The score is the model's log-probability of these codes, restricted to code tokens, under a
            # teacher-forced forward with the 2-D code positions (top_k = all codes leaves sampling unfiltered).
            ids = torch.tensor([[processor.vocab.bos_id, *(processor.vocab.code_id(c) for c in codes)]])
            batch = processor.collate([generation_inputs(example)])
            with torch.no_grad():
                logits = model(**{**batch, "decoder_input_ids": ids}).logits[0]  # (1 + COUNT, V)
            span = slice(processor.vocab.code_offset, processor.vocab.code_offset + NUM_CODES)
            log_probs = logits[:COUNT, span].log_softmax(-1)
            expected = float(log_probs.gather(1, torch.tensor(codes)[:, None]).sum())
            assert candidate["score"] == pytest.approx(expected, abs=1e-3)
        assert len({tuple(c["codes"]) for c in answer["candidates"]}) > 1  # sampled, not one repeated candidate
    # Non-degenerate: the captions give different pictures.
    assert len({tuple(a["codes"]) for a in answers}) == 3


def test_raw_generation_has_nothing_but_codes_then_eos(processor, model):
    generator = AnswerGenerator(processor, T2I)
    examples = [generation_inputs(e) for e in generator.encode(rows(2))]
    (group,) = generator.groups(examples)
    for options in ({"do_sample": False, "num_return_sequences": 1}, {"num_beams": 2, "do_sample": False}):
        kwargs = generator.call_kwargs(group, {**options, "return_dict_in_generate": True, "output_logits": True})
        with torch.no_grad():
            out = model.generate(**processor.collate(examples), **kwargs)
        rows_out = out.sequences.shape[0]
        assert out.sequences.shape == (rows_out, 1 + COUNT + 1), options
        generated = out.sequences[:, 1:]
        assert processor.vocab.is_code(generated[:, :COUNT]).all()
        assert (generated[:, COUNT] == processor.vocab.eos_id).all()
        if "output_logits" in kwargs and not options.get("num_beams"):
            # Unconstrained, the model would have picked non-code tokens: the constraint did the work.
            raw = torch.stack([step.argmax(-1) for step in out.logits[:COUNT]], dim=1)
            assert not processor.vocab.is_code(raw).all()


def test_clip_reranking_orders_candidates_by_its_scores(processor, model, monkeypatch):
    import processing.answers as answers_module

    def fake_clip(images, texts, clip):
        # A stand-in for CLIP that prefers bright pictures: the order must follow it.
        scores = torch.tensor([float(np.asarray(image).mean()) for image in images]).view(len(texts), -1)
        assert texts == ["a red circle", "a blue square"] and clip == ("model", "processor")
        return scores.argsort(dim=1, descending=True), scores

    monkeypatch.setattr(answers_module, "rank_images_with_clip", fake_clip)
    generator = AnswerGenerator(processor, T2I, clip=("model", "processor"))
    torch.manual_seed(4)
    answers = generator.generate(model, rows(2), generate_kwargs={"num_return_sequences": 4})
    for answer in answers:
        brightness = [float(np.asarray(c["image"]).mean()) for c in answer["candidates"]]
        assert brightness == sorted(brightness, reverse=True)
        assert [c["score"] for c in answer["candidates"]] == pytest.approx(brightness)


# ---------------------------------------------------------------------------------------------------------------------
# Infilling


def test_infilling_masks_the_centre_on_every_split_and_targets_the_whole_image(processor, image_tokenizer):
    instruction = 'what is the complete image of "[IMAGE:img,mask_ratio=0.5]"? -> [IMAGE:img,preprocess=image_vqgan]'
    row = rows(1)[0]
    clean = processor.encode("[IMAGE:img] -> [TEXT:text]", row)["pixel_values"]
    for split in ("train", "eval"):
        example = processor.encode(instruction, row, split=split)
        pixels = example["pixel_values"]
        # The central half of each side is blanked (0 = mid grey after normalization), the border is the picture.
        assert torch.all(pixels[:, 8:24, 8:24] == 0)
        assert torch.equal(pixels[:, :8], clean[:, :8]) and torch.equal(pixels[:, 24:], clean[:, 24:])
        assert bool((clean[:, 8:24, 8:24] != 0).any())
        # The target is the full, unmasked picture's codes.
        assert example["labels"][:-1] == [processor.vocab.code_id(c) for c in codes_of(image_tokenizer, row["img"])]
    # An IMAGE input of a text task is still masked only for training (a corruption, not the task).
    text_task = "[IMAGE:img,mask_ratio=0.5] what is it? -> [TEXT:text]"
    assert torch.equal(processor.encode(text_task, row, split="eval")["pixel_values"], clean)
    assert torch.all(processor.encode(text_task, row, split="train")["pixel_values"][:, 8:24, 8:24] == 0)


# ---------------------------------------------------------------------------------------------------------------------
# Saved folders, in a fresh interpreter


@pytest.fixture
def saved(processor, model, tmp_path) -> Path:
    folder = tmp_path / "t2i"
    processor.task_instructions = {"text_to_image": T2I}
    processor.generation_defaults = {"text_to_image": {"num_return_sequences": 2}}
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_saved_folder_reloads_with_its_image_tokenizer_in_a_fresh_interpreter(saved, processor, model, tmp_path):
    assert (saved / "image_tokenizer" / "config.json").is_file()
    assert "image_tokenizer" not in json.loads((saved / "processor_config.json").read_text())
    row = rows(2)[1]
    row["img"].save(tmp_path / "target.png")
    example = processor.encode(T2I, row)
    with torch.no_grad():
        expected = model(**processor.collate([example])).logits
    torch.save(expected, tmp_path / "expected.pt")
    run_python(
        """
        import sys, torch
        from PIL import Image
        from transformers import AutoModelForSeq2SeqLM, AutoProcessor
        import processing, modeling_ofa
        folder, tmp = sys.argv[1], sys.argv[2]
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        assert type(processor.image_tokenizer).__name__ == "OFAVQGANModel", processor.image_tokenizer
        example = processor.encode("text_to_image", {"text": "a blue square", "img": Image.open(tmp + "/target.png")})
        with torch.no_grad():
            logits = model(**processor.collate([example])).logits
        torch.testing.assert_close(logits, torch.load(tmp + "/expected.pt"), rtol=0, atol=1e-5)
        assert float(logits.std()) > 0.1
        from processing.pipeline import OFAInstructionPipeline
        from transformers import pipeline
        answer = pipeline("ofa-instruction", model=folder)({"text": "a red circle"}, instruction="text_to_image")
        assert answer["image"].size == (32, 32) and len(answer["codes"]) == 16 and len(answer["candidates"]) == 2
        print("ok")
        """,
        str(saved),
        str(tmp_path),
    )


def test_predict_script_writes_the_png_beside_its_json(saved, tmp_path):
    output = tmp_path / "out" / "picture.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "predict.py"), str(saved), "--task", "text_to_image"]
    command += ["--text", "a red circle", "--output", str(output), "--num-candidates", "3"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(output.read_text())
    assert answer["image"] == str(output.with_suffix(".png")) and len(answer["codes"]) == COUNT
    assert [Path(c["image"]).name for c in answer["candidates"]] == [
        "picture.png",
        "picture_candidate1.png",
        "picture_candidate2.png",
    ]
    for candidate in answer["candidates"]:
        with Image.open(candidate["image"]) as image:
            assert image.size == (32, 32)
    assert json.loads(result.stdout) == answer


def test_model_card_shows_the_generated_grid(saved):
    from trainers.hub import task_pipeline_tag, write_model_card

    card = write_model_card(saved).read_text()
    assert "Generated images" not in card  # no grid in the folder, none on the card
    Image.new("RGB", (64, 32)).save(saved / "generated.png")
    card = write_model_card(saved).read_text()
    assert "## Generated images" in card and "](generated.png)" in card
    assert task_pipeline_tag(T2I) == "text-to-image"
