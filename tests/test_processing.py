"""OFAProcessor end to end: instruction -> plan -> batch -> model -> (fake) generation -> typed answer."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image
from transformers import AutoProcessor

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import ExampleError, OFAImageProcessor, OFAProcessor, parse_instruction, train_demo_tokenizer

WORDS = (
    "a red blue green circle square triangle what does the image describe which region text is in yes no maybe "
    "can image and text1 imply text2 sentiment of positive negative summary article table color shape name voice "
    "corresponding video motion action walk jump are objects one two three complete"
)


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    tokenizer = train_demo_tokenizer([WORDS] * 30, vocab_size=420, num_codes=32, num_bins=100)
    return OFAProcessor(
        OFAImageProcessor(size=32), tokenizer, video_num_frames=2, motion_config={"num_coords": 2}, max_image_size=32
    )


@pytest.fixture(scope="module")
def model(processor) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    config = OFAConfig(
        **tiny_config_kwargs(
            vocab_size=len(processor.tokenizer),
            extra_modalities=["AUDIO", "VIDEO", "MOTION"],
            motion_feature_size=6,
            max_video_frames=4,
            moe_type="modality",
        )
    )
    return OFAForConditionalGeneration(config).eval()


def image(color=(200, 30, 30), size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def tone(seconds=0.3, freq=700.0) -> dict:
    t = np.arange(int(16000 * seconds)) / 16000
    return {"array": np.sin(2 * np.pi * freq * t).astype(np.float32), "sampling_rate": 16000}


TASKS = {
    "caption": ("[IMAGE:img] what does the image describe? -> [TEXT:cap]", {"img": image(), "cap": "a red circle"}),
    "vqa": ("[IMAGE:img] [TEXT:q] -> [TEXT:answer,closed_set]", {"img": image(), "q": "what color?", "answer": "red"}),
    "grounding": (
        '[IMAGE:img] which region does the text " [TEXT:phrase] " describe? -> [BOX:box]',
        {"img": image(), "phrase": "red circle", "box": [6.0, 4.0, 30.0, 28.0]},
    ),
    "grounded_caption": (
        "[IMAGE:img] what does the region describe? region: [BOX:box] -> [TEXT:cap]",
        {"img": image(), "box": "6,4,30,28", "cap": "a red circle"},
    ),
    "itm": (
        '[IMAGE:img] does the image describe " [TEXT:cap] "? -> [TEXT:label,closed_set]',
        {"img": image(), "cap": "a red circle", "label": "yes"},
    ),
    "detection": (
        "[IMAGE:img] what are the objects in the image? -> ( [BOX:boxes] [TEXT:labels] )*",
        {"img": image(), "boxes": [[2, 2, 20, 20], [24, 10, 46, 38]], "labels": ["red circle", "blue square"]},
    ),
    "snli_ve": (
        '[IMAGE:img] can image and text1 " [TEXT:cap] " imply text2 " [TEXT:hyp] "? -> can image and text1 " '
        '[TEXT:cap,no_loss] " imply text2 " [TEXT:hyp,no_loss] "? [TEXT:label,closed_set]',
        {"img": image(), "cap": "a red circle", "hyp": "a circle", "label": "yes"},
    ),
    "sst2": (
        'is the sentiment of text " [TEXT:sentence] " positive or negative? -> is the sentiment of text " '
        '[TEXT:sentence,no_loss] " positive or negative? [TEXT:label,closed_set]',
        {"sentence": "a red circle is positive", "label": "positive"},
    ),
    "summarization": (
        'what is the summary of article " [TEXT:src] "? -> [TEXT:tgt,noise_ratio=0.2]',
        {"src": "the red circle and the blue square are in the image", "tgt": "a red circle"},
    ),
    "text_infilling": (
        'what is the complete text of " [TEXT:text,mask_ratio=0.3] "? -> [TEXT:text]',
        {"text": "the red circle and the blue square are in the image"},
    ),
    "asr": (
        "[AUDIO:wav] what is the text corresponding to the voice? -> [TEXT:text]",
        {"wav": tone(), "text": "one two"},
    ),
    "video_caption": (
        "[VIDEO:video] what does the video describe? -> [TEXT:cap]",
        {"video": np.zeros((5, 24, 24, 3), np.uint8), "cap": "a red circle"},
    ),
    "table2text": (
        "structured knowledge: [STRUCT:table] . how to describe the table? -> [TEXT:tgt]",
        {"table": [["name", "color"], ["one", "red"]], "tgt": "one is red"},
    ),
    "motion": (
        "[MOTION:motion] what is the action? -> [TEXT:action,closed_set]",
        {"motion": np.ones((8, 3, 2)), "action": "walk"},
    ),
    "text_to_image": (
        "what is the complete image? caption: [TEXT:text] -> [IMAGE_CODE:codes]",
        {"text": "a red circle", "codes": [3, 1, 4, 1, 5]},
    ),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_round_trip(name, processor, model):
    instruction, row = TASKS[name]
    plan = parse_instruction(instruction)
    example = processor.encode(plan, row, split="train", task=name, row_index=0)
    batch = processor.collate([example, processor.encode(plan, row, split="eval", task=name, row_index=1)])
    # The model accepts the batch and trains on it.
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    assert batch["labels"].shape == batch["decoder_input_ids"].shape
    # "Generation" that reproduces the eval example's target: <s> + decoder inputs after <s> + </s>.
    eval_example = processor.encode(plan, row, split="eval", row_index=1)
    labels = [t for t in eval_example["labels"] if t != -100]
    prefix = eval_example["decoder_input_ids"][: 1 + eval_example["meta"]["prefix_length"]]
    answer = processor.post_process_generation([prefix + labels], plan, [eval_example["meta"]])[0]
    check_answer(name, row, answer, processor)


def check_answer(name, row, answer, processor):
    half_bin = processor.box_normalizer / (processor.vocab.num_bins - 1) * (48 / 32)  # widest original/resized ratio
    if name == "grounding":
        assert np.allclose(answer["box"], row["box"], atol=half_bin)
    elif name == "detection":
        assert [o["label"] for o in answer["objects"]] == row["labels"]
        assert np.allclose([o["box"] for o in answer["objects"]], row["boxes"], atol=half_bin)
    elif name == "text_to_image":
        assert answer == {"codes": row["codes"]}
    elif name in {"vqa", "itm", "snli_ve", "sst2", "motion"}:
        label = row.get("answer", row.get("label", row.get("action")))
        assert answer["label"] == label
    else:
        target = {"caption": "cap", "grounded_caption": "cap", "summarization": "tgt", "text_infilling": "text"}
        target.update(asr="text", video_caption="cap", table2text="tgt")
        assert answer["text"] == row[target[name]]


def test_encoder_layout_and_modalities(processor):
    instruction, row = TASKS["grounded_caption"]
    example = processor.encode(instruction, row)
    vocab = processor.vocab
    ids = example["input_ids"]
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    bins = [i for i, t in enumerate(ids) if vocab.is_bin(t)]
    assert len(bins) == 4 and bins == list(range(bins[0], bins[0] + 4))
    box_id = 2  # MODALITIES.index("BOX")
    assert [example["input_modality_ids"][i] for i in bins] == [box_id] * 4
    # OFA's prompt convention: " what does the region describe? region:" with a leading space.
    prompt = processor.tokenizer.decode(ids[1 : bins[0]])
    assert prompt == " what does the region describe? region:"
    assert example["meta"]["image_size"] == (48, 40)


def test_no_loss_prefix_is_forced_and_unscored(processor):
    instruction, row = TASKS["snli_ve"]
    example = processor.encode(instruction, row)
    prefix_length = example["meta"]["prefix_length"]
    assert prefix_length > 5
    assert example["labels"][:prefix_length] == [-100] * prefix_length
    assert example["labels"][prefix_length:] == example["decoder_input_ids"][prefix_length + 1 :] + [2]
    inference = processor.encode(instruction, {k: v for k, v in row.items() if k != "label"})
    assert "labels" not in inference and len(inference["decoder_input_ids"]) == 1 + prefix_length


def test_corruptions_only_in_training(processor):
    instruction, row = TASKS["text_infilling"]
    train = processor.encode(instruction, row, split="train", row_index=3)
    evaluation = processor.encode(instruction, row, split="eval", row_index=3)
    assert processor.vocab.mask_id in train["input_ids"] and processor.vocab.mask_id not in evaluation["input_ids"]
    assert train["labels"] == evaluation["labels"]  # the target stays the full text
    assert train == processor.encode(instruction, row, split="train", row_index=3)  # reproducible per row


def test_alternative_templates_are_drawn_per_row(processor):
    instruction = "[IMAGE:img] what does the image describe? -> [TEXT:cap] ||| [IMAGE:img] describe it -> [TEXT:cap]"
    row = TASKS["caption"][1]
    chosen = {processor.encode(instruction, row, row_index=i)["meta"]["template_index"] for i in range(20)}
    assert chosen == {0, 1}


def test_mixed_batch_of_modalities(processor, model):
    rows = [TASKS["caption"], TASKS["sst2"], TASKS["asr"], TASKS["motion"], TASKS["video_caption"]]
    examples = [processor.encode(ins, row, row_index=i) for i, (ins, row) in enumerate(rows)]
    batch = processor.collate(examples)
    assert batch["patch_masks"].tolist() == [True, False, False, False, False]
    assert batch["audio_masks"].tolist() == [False, False, True, False, False]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_closed_set_generation_stays_in_the_set(processor, model):
    instruction, row = TASKS["vqa"]
    batch = processor(instruction, [{k: v for k, v in row.items() if k != "answer"}] * 2)
    candidates = ["red", "blue", "green circle"]
    out = model.generate(
        **batch, logits_processor=[processor.closed_set_logits_processor(candidates)], max_new_tokens=6, num_beams=2
    )
    answers = processor.post_process_generation(out, instruction, candidates=candidates)
    assert all(a["label"] in candidates and a["in_set"] for a in answers)


def test_save_and_load_round_trip(tmp_path, processor):
    processor.task_instructions["caption"] = TASKS["caption"][0]
    processor.closed_sets["vqa"] = ["red", "blue"]
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, OFAProcessor)
    assert reloaded.task_instructions == processor.task_instructions and reloaded.closed_sets == {
        "vqa": ["red", "blue"]
    }
    assert reloaded.image_size == (32, 32) and reloaded.video_num_frames == 2 and reloaded.max_image_size == 32
    row = TASKS["caption"][1]
    a, b = processor("caption", row), reloaded("caption", row)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "processor_config.json").read_text())["task_instructions"]["caption"]


BAD_ROWS = {
    "missing column": (TASKS["caption"][0], {"img": image()}, "column 'cap'", True),
    "empty text": (TASKS["caption"][0], {"img": image(), "cap": "   "}, "empty", False),
    "unreadable image": (TASKS["caption"][0], {"img": b"not an image", "cap": "a"}, "column 'img'", False),
    "zero-length audio": (
        TASKS["asr"][0],
        {"wav": {"array": np.zeros(0, np.float32), "sampling_rate": 16000}, "text": "a"},
        "wav",
        False,
    ),
    "box outside image": (
        TASKS["grounding"][0],
        {"img": image(), "phrase": "a", "box": [60, 60, 70, 70]},
        "box",
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_name_task_row_and_column(case, processor):
    instruction, row, expected, needs_target = BAD_ROWS[case]
    with pytest.raises(ExampleError) as info:
        processor.encode(instruction, row, task="demo", row_index=7, with_targets=True if needs_target else None)
    message = str(info.value)
    assert "task 'demo'" in message and "row 7" in message and expected in message


def test_skipping_bad_rows_is_counted(processor):
    instruction, good = TASKS["caption"]
    bad = {"img": io.BytesIO(b"junk").getvalue(), "cap": "a"}
    with pytest.warns(UserWarning, match="skipped"):
        examples, skipped = processor.encode_rows(instruction, [good, bad, good], on_error="skip")
    assert len(examples) == 2 and skipped == 1


def test_unsupported_layouts_are_errors(processor):
    with pytest.raises(ExampleError, match="only one IMAGE slot"):
        processor.encode("[IMAGE:a] [IMAGE:b] -> [TEXT:c]", {"a": image(), "b": image(), "c": "x"})
    with pytest.raises(ExampleError, match="IMAGE_CODE"):
        processor.encode("[TEXT:a] -> [IMAGE:b]", {"a": "x", "b": image()})
    with pytest.raises(ExampleError, match="needs an IMAGE slot"):
        processor.encode("[BOX:b] -> [TEXT:c]", {"b": [1, 2, 3, 4], "c": "x"})


@pytest.mark.parametrize(
    "instruction",
    [
        "[TEXT:q] -> [TEXT:a,closed_set]",
        "[TEXT:q] -> answer: [TEXT:a,closed_set]",
        "[TEXT:q] -> answer:[TEXT:a,closed_set,uncased]",  # no space before the target, lower-cased
    ],
)
def test_closed_set_trie_matches_the_training_target(instruction, processor):
    example = processor.encode(instruction, {"q": "what color", "a": "Red"})
    prefix = example["meta"]["prefix_length"]
    target = example["labels"][prefix:]  # the answer's ids and </s>
    trie = processor.closed_set_trie(["Red", "blue"], instruction, prefix_length=prefix)
    assert tuple(target) in trie
