"""Bad values in dataset rows: converted by a documented rule or rejected with one clear message naming the task, the
row and the column, through `OFAProcessor.encode` and through training. Never a silently wrong tensor."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from processing import ExampleError, OFAImageProcessor, OFAProcessor, parse_instruction, train_demo_tokenizer
from trainers import MultiTaskDataset, Task

COLORS = ["red", "blue", "green"]
WHERE = "task 'probe', row 7"


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    tokenizer = train_demo_tokenizer(["a red circle a blue square what 3 2.5"] * 20, vocab_size=300, num_codes=8)
    return OFAProcessor(OFAImageProcessor(size=16), tokenizer, motion_config={"num_coords": 2, "num_joints": 3})


def encode(processor, instruction: str, row: dict, **kwargs) -> dict:
    return processor.encode(parse_instruction(instruction), row, split="train", row_index=7, task="probe", **kwargs)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (["a red circle", "a blue square"], r"TEXT expects a string, got a list .*join the items"),
        (b"a red", r"TEXT expects a string, got a bytes .*decode it first"),
        ({"text": "red"}, r"TEXT expects a string, got a dict"),
        (float("nan"), r"TEXT expects a string, got nan \(a missing value\?\)"),
        (float("inf"), r"TEXT expects a string, got inf"),
        (True, r"TEXT expects a string, got the bool True"),
    ],
)
@pytest.mark.parametrize("side", ["source", "target"])
def test_text_values_that_are_not_text_are_errors(processor, value, match, side):
    row = {"a": value, "b": "red"} if side == "source" else {"a": "red", "b": value}
    column = "a" if side == "source" else "b"
    with pytest.raises(ExampleError, match=rf"^{WHERE}, column '{column}': {match}"):
        encode(processor, "what [TEXT:a] -> [TEXT:b]", row)


def test_numbers_are_text_by_their_str(processor):
    # The documented rule: an int or a finite float is written as str(value) (CATEGORY labels may be numbers).
    for value, text in ((3, "3"), (2.5, "2.5"), (np.int64(3), "3"), (np.float32(2.5), "2.5")):
        got = encode(processor, "what -> [TEXT:b]", {"b": value})["labels"]
        assert got == encode(processor, "what -> [TEXT:b]", {"b": text})["labels"]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_pil_modes_are_refused_not_saturated(processor, mode):
    image = Image.new(mode, (8, 8), 1000 if mode != "F" else 0.5)
    with pytest.raises(ExampleError, match=rf"^{WHERE}, column 'img': Image has PIL mode '{mode}'.*scale it to 8 bits"):
        encode(processor, "[IMAGE:img] what -> [TEXT:b]", {"img": image, "b": "red"})
    encode(processor, "[IMAGE:img] what -> [TEXT:b]", {"img": Image.new("L", (8, 8)), "b": "red"})  # 8-bit is fine


@pytest.mark.parametrize(
    ("codes", "match"),
    [([1.7, 2.2], r"whole numbers, got 1\.7 at index 0"), ([True, False], r"integers"), (["1"], r"integers")],
)
def test_image_codes_are_never_truncated(processor, codes, match):
    with pytest.raises(ExampleError, match=rf"^{WHERE}, column 'codes': image codes must be {match}"):
        encode(processor, "what -> [IMAGE_CODE:codes]", {"codes": codes})
    whole = encode(processor, "what -> [IMAGE_CODE:codes]", {"codes": [1.0, 2.0]})
    assert whole["labels"] == encode(processor, "what -> [IMAGE_CODE:codes]", {"codes": [1, 2]})["labels"]


@pytest.mark.parametrize(
    ("instruction", "row", "message"),
    [
        (
            "[IMAGE:img] what -> [TEXT:b]",
            {"img": b"", "b": "x"},
            "Cannot read image <0 bytes>: the image bytes are empty",
        ),
        (
            "[IMAGE:img] what -> [TEXT:b]",
            {"img": b"GIF", "b": "x"},
            "not an image format Pillow knows (it starts with b'GIF')",
        ),
        ("[AUDIO:wav] what -> [TEXT:b]", {"wav": np.zeros(0, np.float32), "b": "x"}, "audio is empty (0 samples)"),
        ("[AUDIO:wav] what -> [TEXT:b]", {"wav": "missing.wav", "b": "x"}, "audio must be a 1-D float array"),
        ("[MOTION:m] what -> [TEXT:b]", {"m": np.zeros((2, 5)), "b": "x"}, ""),
        ("what [STRUCT:t] -> [TEXT:b]", {"t": 5, "b": "x"}, ""),
    ],
)
def test_each_location_is_named_once(processor, instruction, row, message):
    column = parse_instruction(instruction).templates[0].data_slots[0].column
    with pytest.raises(ExampleError) as info:
        encode(processor, instruction, row)
    text = str(info.value)
    assert text.startswith(f"{WHERE}, column {column!r}: ") and text.count("row 7") == 1, text
    assert message in text and "BytesIO" not in text and " at 0x" not in text


def batches(task: Task, processor: OFAProcessor, batch_size: int = 2) -> list[dict]:
    data = MultiTaskDataset([task], processor, batch_size=batch_size, seed=0)
    return list(data)


def shape_rows(n: int) -> list[dict]:
    return [{"text": f"a {COLORS[i % 3]} circle", "color": COLORS[i % 3]} for i in range(n)]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_row_missing_its_target_deep_in_the_data_is_named(processor, batch_size):
    rows = shape_rows(8)
    del rows[5]["color"]  # the 6th row: Task only looks at the first to check the columns
    task = Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color]', rows, metrics=["exact_match"])
    with pytest.raises(ExampleError, match=r"^task 'color', row 5, column 'color': the row has no column 'color'"):
        batches(task, processor, batch_size)
    if batch_size == 1:
        return  # a micro-batch of only the skipped row cannot train (an error of its own, naming the rows)
    skipping = Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color]', rows, on_error="skip")
    with pytest.warns(UserWarning, match="skipped: task 'color', row 5"):
        produced = batches(skipping, processor, batch_size)
    assert sum(len(b["multitask_info"].example_indices) for b in produced) == 8
    assert sum(b["multitask_info"].skipped for b in produced) == 1


def test_closed_set_answers_outside_the_given_candidates_are_errors(processor):
    rows = shape_rows(6)
    task = Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color,closed_set]', rows, candidates=["red", "blue"])
    with pytest.raises(ExampleError, match=r"^task 'color', row 2, column 'color': the answer 'green' is not one of"):
        batches(task, processor)


# ---------------------------------------------------------------------------------------------------------------------
# Property test: any value in any slot gives a well-formed example or one clear ExampleError

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=5),
    st.dictionaries(st.text(max_size=4), _SCALARS, max_size=3),
    st.lists(st.lists(st.floats(-2, 2), min_size=1, max_size=6), min_size=1, max_size=4),
    st.sampled_from(
        [
            np.zeros((4, 4), np.uint8),
            np.full((4, 4, 3), 300, np.int32),
            np.full((4, 4), np.nan),
            np.zeros((3, 6), np.float32),
            np.zeros(0),
            np.array(["a", "b"]),
            np.zeros((2, 3, 2)),
            np.float64(1.5),
            np.int64(2),
            Image.new("I;16", (4, 4)),
            Image.new("RGB", (4, 4)),
            torch.ones(4, 4),
        ]
    ),
)
_INSTRUCTIONS = {
    "TEXT": "what [TEXT:v] -> [TEXT:t]",
    "TEXT target": "what [TEXT:s] -> [TEXT:v]",
    "CATEGORY": "what [TEXT:s] -> [CATEGORY:v]",
    "IMAGE": "[IMAGE:v] what -> [TEXT:t]",
    "BOX": "[IMAGE:i] where [BOX:v] -> [TEXT:t]",
    "BOX target": "[IMAGE:i] where -> [BOX:v]",
    "IMAGE_CODE": "what -> [IMAGE_CODE:v]",
    "STRUCT": "what [STRUCT:v] -> [TEXT:t]",
    "AUDIO": "[AUDIO:v] what -> [TEXT:t]",
    "VIDEO": "[VIDEO:v] what -> [TEXT:t]",
    "MOTION": "[MOTION:v] what -> [TEXT:t]",
    "GROUP": "[IMAGE:i] what -> ( [BOX:v] [TEXT:l] )*",
}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slot=st.sampled_from(sorted(_INSTRUCTIONS)), value=_VALUES)
def test_any_value_in_any_slot_is_encoded_or_a_clear_error(processor, slot, value):
    row = {"s": "a red circle", "t": "red", "i": Image.new("RGB", (8, 8)), "l": ["red"], "v": value}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = encode(processor, _INSTRUCTIONS[slot], row)
    except ExampleError as error:
        text = str(error)
        assert text.startswith(f"{WHERE}, column ") and text.count("row 7") == 1, text
        assert " object at 0x" not in text, text
        return
    vocab = len(processor.tokenizer)
    for key in ("input_ids", "decoder_input_ids"):
        assert all(isinstance(i, int) and 0 <= i < vocab for i in example[key]), (key, example[key])
    assert all(isinstance(i, int) and (i == -100 or 0 <= i < vocab) for i in example["labels"])
    for key, array in example.items():
        if isinstance(array, torch.Tensor):
            array = array.numpy()
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating):
            assert np.isfinite(array).all(), key
    if slot in ("TEXT", "TEXT target", "CATEGORY"):
        # A value that encoded is a string or a number, tokenized as its str().
        assert isinstance(value, (str, int, float, np.generic)) and not isinstance(value, bool)
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_malformed_generated_boxes_are_counted(processor, tmp_path):
    from conftest import tiny_config_kwargs
    from transformers import LogitsProcessor, Seq2SeqTrainingArguments

    from modeling_ofa import OFAConfig, OFAForConditionalGeneration
    from trainers import MultiTaskTrainer

    class TextNotBins(LogitsProcessor):
        """Forces a text token where the box's bins belong, so no answer is four <bin_i> tokens."""

        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -float("inf"))
            forced[:, processor.tokenizer.convert_tokens_to_ids("Ġred")] = 0.0
            return forced

    rows = [{"img": Image.new("RGB", (20, 10), "red"), "phrase": "red", "box": "0,0,20,10"}] * 3
    grounding = Task("ground", '[IMAGE:img] which region " [TEXT:phrase] "? -> [BOX:box]', None, rows)
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(processor.tokenizer))))
    args = Seq2SeqTrainingArguments(str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = MultiTaskTrainer(model=model, args=args, tasks=[grounding], processor=processor)
    output = trainer.predict(task="ground", logits_processor=[TextNotBins()], num_beams=1)
    assert output.predictions == [{"box": None}] * 3
    assert output.metrics["test_ground_iou_accuracy"] == 0.0 and output.metrics["test_ground_malformed_boxes"] == 3


@pytest.mark.parametrize("box", [[True, False, True, True], b"0,0,5,5", {"x0": 0}])
def test_boxes_that_are_not_numbers_are_errors(processor, box):
    with pytest.raises(ExampleError, match=rf"^{WHERE}, column 'v': a box is four numbers"):
        encode(processor, "[IMAGE:i] where -> [BOX:v]", {"i": Image.new("RGB", (20, 10)), "v": box})


def test_an_empty_image_path_is_a_clear_error():
    # Pillow 10.0 (the oldest stack) fails on an empty path with an AttributeError rather than FileNotFoundError;
    # the property test above found it there.
    from processing.image import load_image

    with pytest.raises(ValueError, match="the path is empty"):
        load_image("")
