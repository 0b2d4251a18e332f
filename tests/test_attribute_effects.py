"""Every slot attribute the grammar accepts changes what the processor produces.

One case per (attribute, modality, side) that `ATTRIBUTES` allows: the same row is encoded with and without the
attribute, and the case checks the difference the attribute promises (truncated ids, lower-cased ids, masked or noised
inputs with clean labels, zeroed pixels, a rejected short clip, a typed answer, ...). `test_the_cases_cover_the_table`
checks the cases against the table, so an attribute cannot be accepted without a case showing its effect. The
attributes OFASys reads but this processor does not implement are rejected at parse time (`tests/test_instruction.py`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from processing import ExampleError, OFAImageProcessor, OFAProcessor, parse_instruction, train_demo_tokenizer
from processing.instruction import ATTRIBUTES, MODALITIES

WORDS = (
    "the red blue green circle square triangle and are in image one two three name color what is a of text "
    "walk jump sentence label yes no"
)
# Modalities the processor feeds to the encoder only (as features, not tokens); as decoder slots they are an error.
ENCODER_ONLY = {"IMAGE", "VIDEO", "AUDIO", "MOTION"}

# Values that every text-like attribute can act on: capitals, punctuation, more than two tokens, several words.
VALUES = {
    "TEXT": "The Red, Circle! and the blue square are in the image",
    "CATEGORY": "Red, Circle! and Blue",
    "PHONE": "one two three red blue green one two three",
    "STRUCT": [["Name", "Color"], ["One", "Red, Blue!"], ["Two", "green circle"], ["Three", "the square"]],
}
PLAIN = {
    "TEXT": "The Red Circle and the blue square are in the image",
    "CATEGORY": "Red Circle and Blue",
}
LOWER = {
    "TEXT": VALUES["TEXT"].lower(),
    "CATEGORY": VALUES["CATEGORY"].lower(),
    "STRUCT": [[cell.lower() for cell in row] for row in VALUES["STRUCT"]],
}


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    tokenizer = train_demo_tokenizer([WORDS] * 30, vocab_size=400, num_codes=16, num_bins=50)
    return OFAProcessor(
        OFAImageProcessor(size=16), tokenizer, video_num_frames=2, motion_config={"num_coords": 2}, max_image_size=16
    )


def encode(processor, instruction, row, split="train", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an attribute that is accepted is never a warned-about no-op
        plan = parse_instruction(instruction)
    return processor.encode(plan, row, split=split, seed=3, row_index=0, **kwargs)


def slot_ids(processor, modality, side, attr, value):
    """The ids of one text-like slot holding `value`: its encoder tokens, or its labels as the target."""
    if side == "encoder":
        example = encode(processor, f"[{modality}:v{attr}] -> [TEXT:t]", {"v": value, "t": "yes"}, split="eval")
        return example["input_ids"][1:-1]  # without <s> ... </s>
    example = encode(processor, f"[TEXT:t] -> [{modality}:v{attr}]", {"v": value, "t": "yes"}, split="eval")
    return example["labels"][:-1]  # without </s>


# -- token attributes of text-like slots ----------------------------------------------------------------------------


def check_max_length(processor, modality, side):
    full = slot_ids(processor, modality, side, "", VALUES[modality])
    cut = slot_ids(processor, modality, side, ",max_length=2", VALUES[modality])
    assert len(full) > 2 and cut == full[:2]


def check_uncased(processor, modality, side):
    cased = slot_ids(processor, modality, side, "", VALUES[modality])
    uncased = slot_ids(processor, modality, side, ",uncased", VALUES[modality])
    assert uncased != cased and uncased == slot_ids(processor, modality, side, "", LOWER[modality])


def check_no_punctuation(processor, modality, side):
    written = slot_ids(processor, modality, side, "", VALUES[modality])
    stripped = slot_ids(processor, modality, side, ",no_punctuation", VALUES[modality])
    assert stripped != written and stripped == slot_ids(processor, modality, side, "", PLAIN[modality])


def check_mask_ratio_tokens(processor, modality, side):
    row = {"v": VALUES[modality], "t": "yes"}
    masked = encode(processor, f"[{modality}:v,mask_ratio=0.5] -> [TEXT:t]", row)
    clean = encode(processor, f"[{modality}:v] -> [TEXT:t]", row)
    mask = processor.vocab.mask_id
    assert mask in masked["input_ids"] and mask not in clean["input_ids"]
    assert len(masked["input_ids"]) < len(clean["input_ids"])  # each masked span becomes one <mask>
    assert masked["labels"] == clean["labels"]
    # Corruption is a training augmentation: other splits see the clean slot.
    assert encode(processor, f"[{modality}:v,mask_ratio=0.5] -> [TEXT:t]", row, split="eval") == clean


def check_noise_ratio(processor, modality, side):
    row = {"v": VALUES[modality], "t": "yes"}
    if side == "encoder":
        noisy = encode(processor, f"[{modality}:v,noise_ratio=0.9] -> [TEXT:t]", row)
        clean = encode(processor, f"[{modality}:v] -> [TEXT:t]", row)
        changed = np.not_equal(noisy["input_ids"], clean["input_ids"]).sum()
        assert len(noisy["input_ids"]) == len(clean["input_ids"]) and changed >= 3
        assert noisy["labels"] == clean["labels"]
        assert encode(processor, f"[{modality}:v,noise_ratio=0.9] -> [TEXT:t]", row, split="eval") == clean
        return
    noisy = encode(processor, f"[TEXT:t] -> [{modality}:v,noise_ratio=0.9]", row)
    clean = encode(processor, f"[TEXT:t] -> [{modality}:v]", row)
    # The teacher-forced decoder input is noised; the labels (what is scored) stay clean.
    assert np.not_equal(noisy["decoder_input_ids"], clean["decoder_input_ids"]).sum() >= 3
    assert noisy["labels"] == clean["labels"]


# -- slot kinds and other modalities --------------------------------------------------------------------------------


def check_no_loss(processor, modality, side):
    values = {
        "TEXT": "red circle",
        "CATEGORY": "red",
        "PHONE": "one two",
        "STRUCT": [["name", "color"], ["one", "red"]],
        "BOX": [1.0, 2.0, 10.0, 12.0],
        "IMAGE_CODE": [3, 1, 4],
    }
    instruction = f"[IMAGE:img] -> [{modality}:p,no_loss] [TEXT:y]"
    row = {"img": Image.new("RGB", (16, 16), (200, 30, 30)), "p": values[modality], "y": "yes"}
    plan = parse_instruction(instruction)
    # A no_loss slot is an input at inference (a forced prefix), not a target ...
    assert "p" in plan.inference_columns() and "p" not in plan.target_columns
    example = encode(processor, instruction, row)
    prefix = example["meta"]["prefix_length"]
    # ... teacher-forced but not scored: -100 labels over it, the target after it.
    assert prefix > 0 and example["labels"][:prefix] == [-100] * prefix
    assert (
        example["decoder_input_ids"][1 : 1 + prefix]
        == encode(processor, instruction, {"img": row["img"], "p": row["p"]})["decoder_input_ids"][1:]
    )
    # Without it, OFASys would score the slot; that is not supported, so the instruction is rejected.
    with pytest.raises(ValueError, match="mark it 'no_loss'"):
        parse_instruction(f"[IMAGE:img] -> [{modality}:p] [TEXT:y]")


def check_closed_set(processor, modality, side):
    ids = [[processor.vocab.bos_id, *slot_ids(processor, "TEXT", "decoder", "", "red circle"), processor.vocab.eos_id]]
    closed = processor.post_process_generation(ids, f"[TEXT:q] -> [{modality}:a,closed_set]", candidates=["red circle"])
    opened = processor.post_process_generation(ids, f"[TEXT:q] -> [{modality}:a]", candidates=["red circle"])
    assert closed == [{"label": "red circle", "in_set": True}]
    if modality == "TEXT":
        assert opened == [{"text": "red circle"}]
    else:
        # A CATEGORY target is a label either way; closed_set makes the answer path constrain decoding to the
        # candidates (`plan` targets that are closed_set get a trie), which the plan reports:
        assert opened == closed
        targets = [t.target_slot for t in parse_instruction(f"[TEXT:q] -> [{modality}:a,closed_set]").templates]
        assert all(t.closed_set for t in targets)
        assert not parse_instruction(f"[TEXT:q] -> [{modality}:a]").templates[0].target_slot.closed_set


def check_length(processor, modality, side):
    codes = [3, 1, 4, 1, 5]
    if side == "encoder":
        full = encode(processor, "[IMAGE_CODE:c] -> [TEXT:t]", {"c": codes, "t": "yes"})["input_ids"]
        cut = encode(processor, "[IMAGE_CODE:c,length=2] -> [TEXT:t]", {"c": codes, "t": "yes"})["input_ids"]
    else:
        full = encode(processor, "[TEXT:t] -> [IMAGE_CODE:c]", {"c": codes, "t": "yes"})["labels"]
        cut = encode(processor, "[TEXT:t] -> [IMAGE_CODE:c,length=2]", {"c": codes, "t": "yes"})["labels"]
    expected = [processor.vocab.code_id(c) for c in codes]
    assert [t for t in full if processor.vocab.is_code(t)] == expected
    assert [t for t in cut if processor.vocab.is_code(t)] == expected[:2]


def check_mask_ratio_image(processor, modality, side):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    row = {"img": Image.fromarray(pixels), "t": "yes"}
    masked = encode(processor, "[IMAGE:img,mask_ratio=0.5] -> [TEXT:t]", row)["pixel_values"]
    clean = encode(processor, "[IMAGE:img] -> [TEXT:t]", row)["pixel_values"]
    centre = (slice(None), slice(4, 12), slice(4, 12))  # the central half of each side of the 16x16 image
    assert (masked[centre] == 0).all() and (clean[centre] != 0).any()
    outside = np.ones(tuple(clean.shape), bool)
    outside[centre] = False
    assert np.array_equal(np.asarray(masked)[outside], np.asarray(clean)[outside])
    assert np.array_equal(
        encode(processor, "[IMAGE:img,mask_ratio=0.5] -> [TEXT:t]", row, split="eval")["pixel_values"], clean
    )


def check_max_length_motion(processor, modality, side):
    row = {"m": np.arange(8 * 3 * 2, dtype=float).reshape(8, 3, 2), "t": "walk"}
    assert len(encode(processor, "[MOTION:m] -> [TEXT:t]", row)["motion_features"]) == 8
    assert len(encode(processor, "[MOTION:m,max_length=3] -> [TEXT:t]", row)["motion_features"]) == 3


def check_min_length(processor, modality, side):
    row = {"m": np.arange(3 * 3 * 2, dtype=float).reshape(3, 3, 2), "t": "walk"}
    assert len(encode(processor, "[MOTION:m] -> [TEXT:t]", row)["motion_features"]) == 3
    with pytest.raises(ExampleError, match="fewer than min_length=5"):
        encode(processor, "[MOTION:m,min_length=5] -> [TEXT:t]", row)


def check_max_length_audio(processor, modality, side):
    t = np.arange(8000) / 16000
    row = {"wav": {"array": np.sin(2 * np.pi * 440 * t).astype(np.float32), "sampling_rate": 16000}, "t": "one"}
    full = encode(processor, "[AUDIO:wav] -> [TEXT:t]", row)["audio_features"]
    cut = encode(processor, "[AUDIO:wav,max_length=5] -> [TEXT:t]", row)["audio_features"]
    assert len(full) > 5 and len(cut) == 5  # (the values differ too: the features are normalized per clip)


def motion_row(num_frames=20):
    return {"m": np.random.default_rng(1).normal(size=(num_frames, 3, 2)), "t": "walk"}


def motion_steps(processor, instruction, row, split, row_index=0):
    example = processor.encode(parse_instruction(instruction), row, split=split, seed=3, row_index=row_index)
    return np.asarray(example["motion_features"])


def same_as_clip(processor, features, frames) -> bool:
    expected = processor.motion(frames)["motion_features"]
    return features.shape == expected.shape and np.allclose(features, expected)


def check_sample_rate(processor, modality, side):
    row = motion_row()
    clip = row["m"]
    assert len(motion_steps(processor, "[MOTION:m] -> [TEXT:t]", row, "train")) == 20
    # Evaluation keeps every 2nd frame from frame 0; training draws the phase per example.
    assert same_as_clip(
        processor, motion_steps(processor, "[MOTION:m,sample_rate=2] -> [TEXT:t]", row, "eval"), clip[::2]
    )
    phases = set()
    for index in range(12):
        steps = motion_steps(processor, "[MOTION:m,sample_rate=2] -> [TEXT:t]", row, "train", row_index=index)
        phase = [p for p in (0, 1) if same_as_clip(processor, steps, clip[p::2])]
        assert len(phase) == 1
        phases.add(phase[0])
    assert phases == {0, 1}


def check_soft_trim(processor, modality, side):
    row = motion_row(40)
    clip = row["m"]
    evaluated = motion_steps(processor, "[MOTION:m,soft_trim=0.5] -> [TEXT:t]", row, "eval")
    assert same_as_clip(processor, evaluated, clip[10:30])  # margins of 0.5 * 40 / 2
    lengths = {
        len(motion_steps(processor, "[MOTION:m,soft_trim=0.5] -> [TEXT:t]", row, "train", row_index=i))
        for i in range(8)
    }
    assert max(lengths) < 40 and len(lengths) > 1


def check_window(processor, modality, side):
    row = motion_row()
    clip = row["m"]
    evaluated = motion_steps(processor, "[MOTION:m,window,max_length=6] -> [TEXT:t]", row, "eval")
    assert same_as_clip(processor, evaluated, clip[7:13])  # the centred window; without `window`, frames 0..5
    assert same_as_clip(
        processor, motion_steps(processor, "[MOTION:m,max_length=6] -> [TEXT:t]", row, "eval"), clip[:6]
    )
    lengths = {
        len(motion_steps(processor, "[MOTION:m,window,min_length=2,max_length=6] -> [TEXT:t]", row, "train", i))
        for i in range(16)
    }
    assert lengths <= set(range(2, 7)) and len(lengths) > 2


TOKEN_MODALITIES = {
    "max_length": ("TEXT", "STRUCT", "PHONE", "CATEGORY"),
    "uncased": ("TEXT", "CATEGORY", "STRUCT"),
    "no_punctuation": ("TEXT", "CATEGORY"),
    "noise_ratio": ("TEXT", "STRUCT"),
}
CASES = {
    **{
        (name, modality, side): check
        for name, check in (
            ("max_length", check_max_length),
            ("uncased", check_uncased),
            ("no_punctuation", check_no_punctuation),
            ("noise_ratio", check_noise_ratio),
        )
        for modality in TOKEN_MODALITIES[name]
        for side in ("encoder", "decoder")
    },
    **{("mask_ratio", modality, "encoder"): check_mask_ratio_tokens for modality in ("TEXT", "STRUCT", "PHONE")},
    ("mask_ratio", "IMAGE", "encoder"): check_mask_ratio_image,
    **{
        ("no_loss", modality, "decoder"): check_no_loss
        for modality in ("TEXT", "CATEGORY", "BOX", "PHONE", "STRUCT", "IMAGE_CODE")
    },
    ("closed_set", "TEXT", "decoder"): check_closed_set,
    ("closed_set", "CATEGORY", "decoder"): check_closed_set,
    ("length", "IMAGE_CODE", "encoder"): check_length,
    ("length", "IMAGE_CODE", "decoder"): check_length,
    ("max_length", "MOTION", "encoder"): check_max_length_motion,
    ("max_length", "AUDIO", "encoder"): check_max_length_audio,
    ("min_length", "MOTION", "encoder"): check_min_length,
    ("sample_rate", "MOTION", "encoder"): check_sample_rate,
    ("soft_trim", "MOTION", "encoder"): check_soft_trim,
    ("window", "MOTION", "encoder"): check_window,
}


def test_the_cases_cover_the_table():
    allowed = {
        (name, modality, side)
        for name, spec in ATTRIBUTES.items()
        if spec.supported and not spec.deprecated
        for modality in MODALITIES
        if spec.modalities is None or modality in spec.modalities
        for side in spec.sides
        if not (side == "decoder" and modality in ENCODER_ONLY)
    }
    assert set(CASES) == allowed


@pytest.mark.parametrize("case", sorted(CASES), ids=["-".join(case) for case in sorted(CASES)])
def test_the_attribute_changes_the_encoding(processor, case):
    CASES[case](processor, case[1], case[2])


def test_deprecated_attributes_are_dropped_with_a_warning(processor):
    row = {"s": "red circle", "t": "yes"}
    with pytest.warns(FutureWarning, match="'add_(bos|eos)' is ignored") as caught:
        plan = parse_instruction("[TEXT:s,add_bos] -> [TEXT:t,add_eos]")
    assert len(caught) == 2
    assert all(slot.attrs == () for slot in plan.templates[0].data_slots)
    assert processor.encode(plan, row) == encode(processor, "[TEXT:s] -> [TEXT:t]", row, split="eval")
