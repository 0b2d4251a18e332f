"""Tests for the synthetic demo corpus: determinism, disjoint splits, instructions, chance baselines, real signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("datasets")

from processing.instruction import parse_instruction  # noqa: E402
from trainers.demo import (  # noqa: E402
    COLORS,
    DEMO_TASK_NAMES,
    DEMO_TASKS,
    DIGIT_WORDS,
    DTMF_FREQUENCIES,
    SAMPLING_RATE,
    SPLITS,
    DemoTask,
    build_demo_datasets,
    chance_baseline,
    demo_text_corpus,
    detection_accuracy,
    get_demo_task,
    load_demo_datasets,
    save_demo_datasets,
)
from trainers.demo import corpus as demo_data  # noqa: E402

SMALL = {"train": 20, "validation": 5, "test": 5}
# 24 is a whole number of cycles of every task's strata, so balanced tasks are exactly balanced.
BALANCED = {"train": 24, "validation": 12, "test": 24}
PALETTE = np.array(list(COLORS.values()), dtype=np.float64)
COLOR_NAMES = list(COLORS)


@pytest.fixture(scope="module")
def data():
    return build_demo_datasets(seed=0, sizes=BALANCED)


def _tables(dataset_dict):
    return {split: dataset_dict[split].data.table for split in SPLITS}


def _nearest_color(pixel) -> str:
    return COLOR_NAMES[int(np.argmin(((PALETTE - np.asarray(pixel, dtype=np.float64)) ** 2).sum(axis=1)))]


def _is_background(pixel) -> bool:
    pixel = np.asarray(pixel, dtype=np.int64)
    return int(pixel.max() - pixel.min()) <= 12 and int(pixel.max()) <= 70


# ----------------------------------------------------------------------------------------------------------------------
# The task table


@pytest.mark.parametrize("task", DEMO_TASKS, ids=lambda t: t.name)
def test_instruction_parses_and_reads_the_declared_columns(task, data):
    plan = parse_instruction(task.instruction)
    assert set(plan.columns) == set(task.columns)
    assert task.target in plan.target_columns
    for split in SPLITS:
        plan.check_columns(data[task.name][split].column_names, task=task.name)
        assert "key" in data[task.name][split].column_names


@pytest.mark.parametrize("task", [t for t in DEMO_TASKS if t.labels is not None], ids=lambda t: t.name)
def test_labels_cover_the_targets(task, data):
    seen = {value for split in SPLITS for value in data[task.name][split][task.target]}
    assert seen <= set(task.labels)
    assert seen == set(task.labels)  # 24 training examples cover every class of every closed-set task


def test_module_imports_without_datasets_or_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('demo_data', {demo_data.__file__!r})\n"
        "module = sys.modules['demo_data'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert len(module.DEMO_TASKS) >= 9\n"
        "print(sorted(name for name in ('datasets', 'torch', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_task_table_is_consistent():
    assert len(set(DEMO_TASK_NAMES)) == len(DEMO_TASKS) >= 9
    modalities = {m for task in DEMO_TASKS for m in parse_instruction(task.instruction).modalities}
    assert {"TEXT", "IMAGE", "BOX", "AUDIO", "VIDEO", "STRUCT", "MOTION"} <= modalities
    assert get_demo_task("asr").higher_is_better is False
    assert get_demo_task("caption").higher_is_better is True
    assert get_demo_task(DEMO_TASKS[0]) is DEMO_TASKS[0]
    with pytest.raises(ValueError, match="metric must be one of"):
        DemoTask("x", "TEXT -> TEXT", "[TEXT:a] -> [TEXT:b]", "f1", None, "majority", "b", ("a", "b"), None, "x")
    with pytest.raises(ValueError, match="Unknown demo task 'captions'"):
        get_demo_task("captions")
    with pytest.raises(TypeError, match="task name"):
        get_demo_task(3)


# ----------------------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_same_seed_gives_identical_datasets_and_another_seed_different_ones(data):
    again = build_demo_datasets(seed=0, sizes=BALANCED)
    other = build_demo_datasets(seed=1, sizes=BALANCED)
    for name in DEMO_TASK_NAMES:
        for split in SPLITS:
            assert data[name][split].data.table.equals(again[name][split].data.table), (name, split)
            # Another seed draws other examples (a few may coincide by chance in the smaller key spaces).
            shared = set(data[name][split]["key"]) & set(other[name][split]["key"])
            assert len(shared) <= BALANCED[split] // 4, (name, split)


@pytest.mark.parametrize("name", DEMO_TASK_NAMES)
def test_splits_are_disjoint_by_content_key(name, data):
    keys = {split: data[name][split]["key"] for split in SPLITS}
    for split in SPLITS:
        assert len(set(keys[split])) == len(keys[split]) == BALANCED[split]
    assert set(keys["train"]).isdisjoint(keys["validation"])
    assert set(keys["train"]).isdisjoint(keys["test"])
    assert set(keys["validation"]).isdisjoint(keys["test"])


def test_test_split_does_not_depend_on_the_other_sizes():
    small = build_demo_datasets(seed=3, sizes={"train": 5, "validation": 2, "test": 6}, tasks=["caption", "asr"])
    large = build_demo_datasets(seed=3, sizes={"train": 30, "validation": 9, "test": 6}, tasks=["asr", "caption"])
    assert list(large) == ["asr", "caption"]
    for name in ("caption", "asr"):
        assert small[name]["test"].data.table.equals(large[name]["test"].data.table)


def test_scale_multiplies_the_default_sizes():
    built = build_demo_datasets(tasks=["summarization"], scale=0.05)
    sizes = {split: len(built["summarization"][split]) for split in SPLITS}
    assert sizes == {split: max(1, round(n * 0.05)) for split, n in demo_data.DEFAULT_SIZES.items()}
    built = build_demo_datasets(tasks=["summarization"], scale=0.05, sizes={"test": 7})
    assert len(built["summarization"]["test"]) == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"sizes": {"training": 3}}, ValueError, "unknown split 'training'"),
        ({"sizes": {"train": 0}}, ValueError, r"sizes\['train'\] must be an int >= 1"),
        ({"sizes": {"train": 2.5}}, ValueError, r"sizes\['train'\] must be an int >= 1"),
        ({"sizes": [("train", 3)]}, TypeError, "sizes must be a dict"),
        ({"tasks": "caption"}, TypeError, "not a single string"),
        ({"tasks": ["caption", "nope"]}, ValueError, "Unknown demo task 'nope'"),
        ({"tasks": []}, ValueError, "tasks is empty"),
        ({"tasks": ["asr", "asr"]}, ValueError, "lists 'asr' twice"),
        ({"scale": 0}, ValueError, "scale must be a positive finite number"),
        ({"scale": float("nan")}, ValueError, "scale must be a positive finite number"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_demo_datasets(**kwargs)


def test_too_few_distinct_examples_is_an_error(monkeypatch):
    constant = demo_data._Generator(
        lambda rng, index: ["same"], lambda key, rng: {"article": "a", "summary": "b"}, lambda ds: {}
    )
    monkeypatch.setitem(demo_data._GENERATORS, "summarization", constant)
    with pytest.raises(ValueError, match="could not draw 2 distinct test examples"):
        build_demo_datasets(sizes={"test": 2}, tasks=["summarization"])


# ----------------------------------------------------------------------------------------------------------------------
# Chance baselines


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("caption", 1 / 12),
        ("vqa", 7 / 24),
        ("itm", 0.5),
        ("video_direction", 0.25),
        ("table_qa", 0.25),
        ("motion_class", 0.25),
    ],
)
def test_balanced_tasks_have_their_designed_chance(name, expected, data):
    task = get_demo_task(name)
    assert task.chance == pytest.approx(expected)
    for split in ("train", "test"):  # 24 examples: whole cycles of the strata, so exactly balanced
        assert chance_baseline(task, data[name][split]) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "columns", "expected"),
    [
        ("caption", {"caption": ["a", "b", "a", "a"]}, 0.75),
        ("vqa", {"answer": ["red", "blue", "circle", "red"], "answer_type": ["c", "c", "s", "c"]}, 0.75),
        # "one two" costs 0 + 1 substitution over 4 reference words; "" would cost 1.0, "one" 0.5.
        ("asr", {"text": ["one two", "one three"]}, 0.25),
        # "the red fox ran" scores 1 and 2 * (1/4 * 1/4) / (1/4 + 1/4) = 1/4: mean 0.625.
        ("summarization", {"summary": ["the red fox ran", "the blue cat sat"]}, 0.625),
        ("grounding", {"box": [[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]]}, 0.75),
        # Best fixed list: one object, box [0, 0, 10, 10] labelled "red circle": example 1 scores 1, example 2
        # scores 1/2 (one of two objects), example 3 0 (wrong label).
        (
            "detection",
            {
                "boxes": [[[0, 0, 10, 10]], [[0, 0, 10, 10], [40, 40, 60, 60]], [[1, 0, 10, 10]]],
                "labels": [["red circle"], ["red circle", "blue square"], ["green square"]],
            },
            0.5,
        ),
    ],
)
def test_chance_baseline_golden(name, columns, expected):
    assert chance_baseline(name, columns) == pytest.approx(expected)


def test_chance_baseline_rejects_missing_columns_and_empty_splits():
    with pytest.raises(ValueError, match="no column 'caption'"):
        chance_baseline("caption", {"text": ["a"]})
    with pytest.raises(ValueError, match="split is empty"):
        chance_baseline("caption", {"caption": []})


def test_data_dependent_baselines_agree_with_the_metric_libraries(data):
    metrics = pytest.importorskip("trainers.metrics")
    pytest.importorskip("jiwer")
    pytest.importorskip("rouge_score")
    texts = data["asr"]["test"]["text"]
    wer = chance_baseline("asr", data["asr"]["test"])
    assert 0.6 < wer < 1.0
    for constant in ["", "one", "one one one", "zero one two three", texts[0], texts[1]]:
        library = metrics.word_error_rate([constant] * len(texts), texts)
        edits = sum(demo_data._edit_distance(constant.split(), t.split()) for t in texts)
        assert edits / sum(len(t.split()) for t in texts) == pytest.approx(library)
        assert library >= wer - 1e-12  # no constant tried here beats the baseline
    summaries = data["summarization"]["test"]["summary"]
    rouge = chance_baseline("summarization", data["summarization"]["test"])
    assert 0.25 <= rouge < 0.7
    for constant in summaries[:6] + ["the red fox", "the the the the"]:
        library = metrics.rouge_l([constant] * len(summaries), summaries)
        ours = np.mean([demo_data._rouge_l(constant.split(), s.split()) for s in summaries])
        assert ours == pytest.approx(library)
        assert library <= rouge + 1e-12
    boxes = data["grounding"]["test"]["box"]
    fixed = chance_baseline("grounding", data["grounding"]["test"])
    assert fixed == pytest.approx(max(metrics.iou_accuracy([b] * len(boxes), boxes) for b in boxes))
    assert fixed < 0.5


def test_detection_accuracy_scores_objects_in_order():
    box_a, box_b = [0, 0, 10, 10], [20, 20, 40, 40]
    refs_boxes, refs_labels = [[box_a, box_b]], [["red circle", "blue square"]]
    assert detection_accuracy([[box_a, box_b]], [["red circle", "blue square"]], refs_boxes, refs_labels) == 1.0
    assert detection_accuracy([[box_a]], [["red circle"]], refs_boxes, refs_labels) == 0.5  # a missing object
    assert detection_accuracy([[box_b, box_a]], [["blue square", "red circle"]], refs_boxes, refs_labels) == 0.0
    assert detection_accuracy([[box_a, box_b]], [["red circle", "red square"]], refs_boxes, refs_labels) == 0.5
    extra = detection_accuracy([[box_a, box_b, box_b]], [["red circle", "blue square", "x"]], refs_boxes, refs_labels)
    assert extra == pytest.approx(2 / 3)
    assert detection_accuracy([[]], [[]], [[]], [[]]) == 1.0
    with pytest.raises(ValueError, match="one entry per example"):
        detection_accuracy([], [], refs_boxes, refs_labels)
    with pytest.raises(ValueError, match="number of boxes and of labels differ"):
        detection_accuracy([[box_a]], [[]], refs_boxes, refs_labels)
    with pytest.raises(ValueError, match="boxes"):
        detection_accuracy([[[0, 0, 1]]], [["a"]], refs_boxes, refs_labels)


# ----------------------------------------------------------------------------------------------------------------------
# Real signal


@pytest.mark.parametrize("name", ["caption", "grounding", "detection"])
def test_colour_at_the_box_centre_is_the_named_colour(name, data):
    split = data[name]["test"]
    for example in split:
        pixels = np.asarray(example["image"])
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        if name == "detection":
            boxes, labels = example["boxes"], example["labels"]
            assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # left to right
        elif name == "grounding":
            boxes, labels = [example["box"]], [example["phrase"]]
        else:
            boxes, labels = [example["box"]], [example["caption"].removeprefix("a ")]
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            color, shape = label.split()
            assert 18 <= x1 - x0 <= 28 and 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64
            assert _nearest_color(pixels[int(y0 + y1) // 2, int(x0 + x1) // 2]) == color
            # A square fills its top-left corner; a circle or a triangle leaves it as background.
            corner = pixels[int(y0) + 1, int(x0) + 1]
            assert _is_background(corner) == (shape != "square")
        if name != "grounding":  # every object is listed: outside their boxes is background
            assert _is_background(pixels[0, 0]) or any(b[0] <= 1 and b[1] <= 1 for b in boxes)


def test_vqa_and_itm_answers_match_the_image(data):
    for example in data["vqa"]["test"]:
        pixels = np.asarray(example["image"]).astype(np.int64)
        present = {c for c in COLOR_NAMES if (np.abs(pixels - COLORS[c]).max(axis=2) < 20).sum() > 100}
        assert len(present) == 2
        if example["answer_type"] == "color":
            assert example["answer"] in present
    for example in data["itm"]["test"]:
        pixels = np.asarray(example["image"]).astype(np.int64)
        drawn = max(COLOR_NAMES, key=lambda c: (np.abs(pixels - COLORS[c]).max(axis=2) < 20).sum())
        claimed = example["caption"].split()[1]
        if example["label"] == "yes":
            assert claimed == drawn
        # A "no" may keep the colour and change the shape, so only "yes" pins the colour.


def _tone_segments(wave: np.ndarray) -> list[tuple[int, int]]:
    frame = SAMPLING_RATE // 100
    energy = np.array([np.mean(wave[i : i + frame] ** 2) for i in range(0, len(wave) - frame + 1, frame)])
    loud = energy > 10 * np.median(np.sort(energy)[: max(1, len(energy) // 4)]) + 1e-4
    segments, start = [], None
    for index, on in enumerate(np.append(loud, False)):
        if on and start is None:
            start = index
        elif not on and start is not None:
            segments.append((start * frame, index * frame))
            start = None
    return segments


def test_dtmf_audio_encodes_the_transcript(data):
    for example in data["asr"]["test"]:
        audio = example["audio"]
        assert audio["sampling_rate"] == SAMPLING_RATE
        wave = np.asarray(audio["array"], dtype=np.float64)
        assert 0.5 <= len(wave) / SAMPLING_RATE <= 1.0 and np.abs(wave).max() <= 1.0
        digits = example["digits"]
        assert example["text"] == " ".join(DIGIT_WORDS[int(d)] for d in digits)
        segments = _tone_segments(wave)
        assert len(segments) == len(digits) in (3, 4)
        for (start, end), digit in zip(segments, digits):
            chunk = wave[start:end] * np.hanning(end - start)
            spectrum = np.abs(np.fft.rfft(chunk, n=SAMPLING_RATE))  # 1 Hz bins
            low, high = DTMF_FREQUENCIES[digit]
            low_peak = int(np.argmax(spectrum[600:1050])) + 600
            high_peak = int(np.argmax(spectrum[1150:1550])) + 1150
            assert abs(low_peak - low) <= 15 and abs(high_peak - high) <= 15, (digit, low_peak, high_peak)
            # The two DTMF tones dominate the whole spectrum.
            assert spectrum[low_peak] > 5 * np.median(spectrum[100:4000])


_DIRECTION_SIGN = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def test_video_object_moves_in_the_labelled_direction(data):
    for example in data["video_direction"]["test"]:
        frames = [np.asarray(frame).astype(np.int64) for frame in example["video"]]
        assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
        centroids = []
        for pixels in frames:
            ys, xs = np.nonzero(pixels.max(axis=2) - pixels.min(axis=2) > 60)  # saturated object pixels
            assert len(xs) > 50
            centroids.append((xs.mean(), ys.mean()))
        steps = np.diff(np.array(centroids), axis=0)
        dx, dy = _DIRECTION_SIGN[example["direction"]]
        moving, still = (steps[:, 0], steps[:, 1]) if dx else (steps[:, 1], steps[:, 0])
        assert np.all(moving * (dx or dy) >= 6) and np.all(np.abs(still) < 1.5)


def _classify_motion(clip: np.ndarray) -> str:
    """A trivial rule: walkers travel, jumpers bob, wavers raise a hand, clappers do none of these."""
    root = clip[:, 0]
    hands_up = (clip[:, 2:4, 1] - root[:, None, 1]).max()
    if abs(root[-1, 0] - root[0, 0]) > 0.4:
        return "walk"
    if np.ptp(root[:, 1]) > 0.12:
        return "jump"
    if hands_up > 0.45:
        return "wave"
    return "clap"


def test_motion_classes_are_separable_by_a_trivial_feature(data):
    examples = list(data["motion_class"]["train"]) + list(data["motion_class"]["test"])
    for example in examples:
        clip = np.asarray(example["motion"])
        assert clip.shape == (20, 6, 2) and np.isfinite(clip).all()
    accuracy = np.mean([_classify_motion(np.asarray(e["motion"])) == e["action"] for e in examples])
    assert accuracy >= 0.95


def test_table_and_summary_targets_follow_from_the_input(data):
    for example in data["table_qa"]["test"]:
        header, *rows = example["table"]
        assert header == ["name", "color", "shape"] and len(rows) == 3
        assert len({row[0] for row in rows}) == 3
        assert example["answer"] == next(row[1] for row in rows if row[0] == example["name"])
    for example in data["summarization"]["test"]:
        assert f" {example['summary']} " in f" {example['article']} "
        assert len(example["summary"].split()) == 4


def test_round_tripped_values_feed_the_preprocessors(data):
    pytest.importorskip("torch")
    from processing.audio import OFAAudioFeatureExtractor
    from processing.image import OFAImageProcessor
    from processing.motion import MotionPreprocessor
    from processing.struct import StructPreprocessor
    from processing.video import VideoPreprocessor

    images = OFAImageProcessor(size={"height": 64, "width": 64})
    assert tuple(images(data["caption"]["test"][0]["image"], return_tensors="pt")["pixel_values"].shape) == (
        1,
        3,
        64,
        64,
    )
    video = VideoPreprocessor(num_frames=4, image_processor=images)(data["video_direction"]["test"][0]["video"])
    assert tuple(video["pixel_values"].shape) == (4, 3, 64, 64)
    fbank = OFAAudioFeatureExtractor()(data["asr"]["test"][0]["audio"], return_tensors="np")
    assert fbank["input_features"].shape[-1] == 80 and fbank["input_features"].shape[1] >= 50
    motion = MotionPreprocessor(num_coords=2)(data["motion_class"]["test"][0]["motion"])
    assert motion["motion_features"].shape == (20, 12)
    table = StructPreprocessor()(data["table_qa"]["test"][0]["table"])
    assert table.startswith("name : color : shape | ") and table.count(" | ") == 3


# ----------------------------------------------------------------------------------------------------------------------
# Text corpus, saving and loading


def test_demo_text_corpus_holds_prompts_targets_and_tables(data):
    corpus = list(demo_text_corpus(data))
    assert "what does the image describe?" in corpus
    assert 'which region does the text "' in corpus
    assert any(text.startswith("name : color : shape | ") for text in corpus)
    words = {word for text in corpus for word in text.split()}
    for task in DEMO_TASKS:
        for label in task.labels or ():
            assert set(label.split()) <= words
    assert set(DIGIT_WORDS) <= words
    assert not any(text.startswith("[") for text in corpus)  # keys are not text to learn
    with pytest.raises(ValueError, match="Unknown demo task"):
        list(demo_text_corpus({"nope": {}}))


def test_save_load_round_trip_reuses_and_regenerates(tmp_path):
    root = tmp_path / "demo"
    saved = save_demo_datasets(root, seed=0, sizes=SMALL, tasks=["caption", "motion_class"])
    built = build_demo_datasets(seed=0, sizes=SMALL, tasks=["caption", "motion_class"])
    loaded = load_demo_datasets(root)
    assert list(loaded) == ["caption", "motion_class"]
    for name in loaded:
        for split in SPLITS:
            assert loaded[name][split].data.table.equals(built[name][split].data.table)
            assert saved[name][split]["key"] == built[name][split]["key"]
    manifest = root / "demo_manifest.json"
    stamp = os.stat(manifest).st_mtime_ns
    save_demo_datasets(root, seed=0, sizes=SMALL, tasks=["caption", "motion_class"])
    assert os.stat(manifest).st_mtime_ns == stamp  # matching manifest: nothing regenerated

    regenerated = save_demo_datasets(root, seed=1, sizes=SMALL, tasks=["caption"])
    assert list(regenerated) == ["caption"]
    assert not (root / "motion_class").exists()
    assert set(regenerated["caption"]["test"]["key"]).isdisjoint(built["caption"]["test"]["key"])
    assert json.loads(manifest.read_text())["seed"] == 1


def test_save_and_load_refuse_foreign_or_stale_folders(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no demo corpus"):
        save_demo_datasets(foreign, sizes=SMALL, tasks=["itm"])
    with pytest.raises(FileNotFoundError, match="demo_manifest.json is missing"):
        load_demo_datasets(tmp_path / "nothing")
    root = tmp_path / "demo"
    save_demo_datasets(root, sizes=SMALL, tasks=["itm"])
    manifest = root / "demo_manifest.json"
    stale = json.loads(manifest.read_text())
    stale["version"] = 0
    manifest.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="generator version 0"):
        load_demo_datasets(root)
    assert save_demo_datasets(root, sizes=SMALL, tasks=["itm"])["itm"]["test"].num_rows == SMALL["test"]
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the demo corpus manifest"):
        load_demo_datasets(root)
