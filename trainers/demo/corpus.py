# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""A small, learnable, fully synthetic multimodal corpus: one or more tasks per modality, built from a seed.

The demo has to train offline, in minutes, on a CPU, with a tiny model (64 x 64 images, 2 + 2 layers). So every task
has a small closed vocabulary (four colours, three shapes, four directions, ten digits, four actions), short targets
and a signal that a model can learn from a few hundred examples; and every task's test metric has an honest
chance-level baseline to beat.

| task | modality | metric | chance |
|---|---|---|---|
| `caption` | IMAGE -> TEXT | exact_match | 1/12 = 0.083 |
| `vqa` | IMAGE + TEXT -> TEXT (closed set) | accuracy | 7/24 = 0.292 |
| `grounding` | IMAGE + TEXT -> BOX | iou_accuracy | data: 0.13 |
| `detection` | IMAGE -> (BOX TEXT)* | object_accuracy (`trainers.metrics`) | data: 0.035 |
| `itm` | IMAGE + TEXT -> TEXT (closed set) | accuracy | 1/2 = 0.5 |
| `asr` | AUDIO -> TEXT | wer (lower is better) | data: 0.84 |
| `video_direction` | VIDEO -> TEXT (closed set) | accuracy | 1/4 = 0.25 |
| `table_qa` | STRUCT + TEXT -> TEXT | exact_match | 1/4 = 0.25 |
| `motion_class` | MOTION -> TEXT (closed set) | accuracy | 1/4 = 0.25 |
| `summarization` | TEXT -> TEXT | rouge | data: 0.45 |

Instructions (OFASys grammar, `processing.instruction`):

```text
caption          [IMAGE:image] what does the image describe? -> [TEXT:caption]
vqa              [IMAGE:image] [TEXT:question] -> [TEXT:answer,closed_set]
grounding        [IMAGE:image] which region does the text " [TEXT:phrase] " describe? -> [BOX:box]
detection        [IMAGE:image] what are the objects in the image? -> ( [BOX:boxes] [TEXT:labels] )*
itm              [IMAGE:image] does the image describe " [TEXT:caption] "? -> [TEXT:label,closed_set]
asr              [AUDIO:audio] what is the text corresponding to the voice? -> [TEXT:text]
video_direction  [VIDEO:video] which way does the object move? -> [TEXT:direction,closed_set]
table_qa         [STRUCT:table] what is the color of [TEXT:name]? -> [TEXT:answer]
motion_class     [MOTION:motion] what is the action? -> [TEXT:action,closed_set]
summarization    what is the summary of article " [TEXT:article] "? -> [TEXT:summary]
```

The tasks (`DEMO_TASKS` holds the same table as data):

- `caption`: one shape (circle, square or triangle, 18-28 px) in one of four colours on a dark noisy background;
  the target names both, `"a red circle"`. The 12 classes are balanced.
- `vqa`: two shapes with different colours and different shapes; `"what color is the square?"` (answer: a colour) or
  `"what shape is the red object?"` (answer: a shape), half of each, answers balanced within each question type.
- `grounding`: two shapes (distinct colour-shape pairs); the phrase names one, `"red circle"`; the target is its box.
- `detection`: one or two shapes; targets are their boxes and labels (`"red circle"`), listed left to right.
- `itm`: one shape and a caption that matches it or not (wrong colour, shape or both); labels `yes` / `no`, balanced.
- `asr`: 3-4 digits as DTMF tone pairs (the telephone keypad frequencies), 120-170 ms per digit, 40-60 ms gaps,
  light noise, 16 kHz, at most 0.96 s; the target is the digits as words, `"four one seven"`.
- `video_direction`: a shape moving 8-12 px per frame left, right, up or down over 4 frames of 64 x 64 px.
- `table_qa`: a table `name | color | shape` of three people; the question names one; the answer is its colour.
- `motion_class`: 20 frames of a 6-joint 2-D skeleton (pelvis, head, hands, feet; y up) that walks (left or right),
  jumps, waves or claps, with a random position, size, tempo and phase plus noise.
- `summarization`: a templated sentence with filler around its subject, `"after the rain , the red fox swam by the
  river . nobody expected that ."`; the summary is `"the red fox swam"`.

Chance baselines (`chance_baseline` computes each on a split; the table's "data" values are on the test split of
`build_demo_datasets(seed=0)`). Where a baseline is searched for, it is fitted on the split it scores, so it is an
upper bound of what an input-blind model fitted on other data can reach:

- closed-set and exact-match tasks: the majority target's rate, which is 1/K for K balanced classes (classes are
  stratified, so e.g. a test split of 100 has exactly 25 examples per direction). For `vqa`, the best answer given
  the question type (a blind model that reads the question): 1/2 * 1/4 + 1/2 * 1/3 = 7/24.
- `grounding`: Acc@0.5 of the best fixed box (searched among the split's own boxes and their median).
- `detection`: the best fixed list of (box, label) pairs under `detection_accuracy`.
- `asr`: the lowest corpus WER of a constant transcript (the empty one, repeats of the most frequent word, the
  per-position majority words, the most frequent transcripts).
- `summarization`: the best ROUGE-L F of a constant summary (the most frequent summaries and the per-position
  majority words).

Detection is scored per object by `detection_accuracy`: the i-th predicted object against the i-th reference object
(references are sorted left to right), a hit when the labels are equal and IoU >= 0.5; an example scores
hits / max(#predicted, #reference), so missing and extra objects both cost; the score is the mean over examples.

Splits. `DEFAULT_SIZES` is train 600, validation 50, test 100 examples per task (`scale` multiplies it). The test
split is drawn first, then validation, then train, each from its own seed (`seed`, task, split), and an example whose
content key (the JSON list of its generating parameters, kept in the `key` column) was already drawn is redrawn: no
example appears twice, within or across splits. Pixels, samples and joints, noise included, are a pure function of
the key, so equal keys mean equal examples and different keys differ in their parameters. The test split depends
only on the seed and its own size.

Storage (round-trips through `save_to_disk` / `load_from_disk` without any decoder library): images are
`datasets.Image()` (PNG, decoded to PIL); videos are lists of such images; audio is a dict
`{"array": float32 list, "sampling_rate": 16000}` as `datasets.Audio` decodes to (but stored as plain values); motion
is an `Array3D` (20, 6, 2) float32; tables are lists of rows of strings, header first; boxes are pixel
`[x0, y0, x1, y1]` in the 64 x 64 image.

```python
from trainers.demo import build_demo_datasets, chance_baseline, DEMO_TASKS

data = build_demo_datasets(seed=0)                 # {"caption": DatasetDict(train/validation/test), ...}
for task in DEMO_TASKS:
    print(task.name, task.metric, chance_baseline(task, data[task.name]["test"]))
```

This module imports only numpy, Pillow and the standard library; `datasets` (the training extra) is imported by the
functions that build, save or load `DatasetDict`s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

if TYPE_CHECKING:
    import datasets

__all__ = [
    "ACTIONS",
    "COLORS",
    "DEFAULT_SIZES",
    "DEMO_TASKS",
    "DEMO_TASK_NAMES",
    "DEMO_VERSION",
    "DIGIT_WORDS",
    "DIRECTIONS",
    "DTMF_FREQUENCIES",
    "IMAGE_SIZE",
    "JOINTS",
    "MOTION_FRAMES",
    "SAMPLING_RATE",
    "SHAPES",
    "SPLITS",
    "VIDEO_FRAMES",
    "DemoTask",
    "build_demo_datasets",
    "chance_baseline",
    "demo_text_corpus",
    "detection_accuracy",
    "get_demo_task",
    "load_demo_datasets",
    "save_demo_datasets",
]

DEMO_VERSION = 1
"""Bumped whenever generation changes, so that saved corpora made by older code are regenerated."""

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SIZES: dict[str, int] = {"train": 600, "validation": 50, "test": 100}
"""Examples per task and split."""

IMAGE_SIZE = 64
SAMPLING_RATE = 16000
VIDEO_FRAMES = 4
MOTION_FRAMES = 20

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
}
"""Object colours and their RGB values: saturated and far apart, on a background no lighter than grey 60."""
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DTMF_FREQUENCIES: dict[str, tuple[int, int]] = {
    "1": (697, 1209),
    "2": (697, 1336),
    "3": (697, 1477),
    "4": (770, 1209),
    "5": (770, 1336),
    "6": (770, 1477),
    "7": (852, 1209),
    "8": (852, 1336),
    "9": (852, 1477),
    "0": (941, 1336),
}
"""Telephone keypad tones: (row, column) frequencies in Hz of each digit."""
ACTIONS: tuple[str, ...] = ("walk", "jump", "wave", "clap")
JOINTS: tuple[str, ...] = ("pelvis", "head", "left_hand", "right_hand", "left_foot", "right_foot")
"""Skeleton joints in order; joint 0 is the root, as `MotionPreprocessor` expects."""

_COLOR_NAMES = tuple(COLORS)
_OBJECT_CLASSES = tuple((color, shape) for color in _COLOR_NAMES for shape in SHAPES)
_NAMES = ("anna", "ben", "carl", "dora", "eli", "fay")
_TABLE_HEADER = ("name", "color", "shape")
_TABLE_ROWS = 3
_ANIMALS = ("fox", "dog", "cat", "bird", "horse")
_VERBS = ("ran", "jumped", "slept", "sang", "swam")
_OPENINGS = ("", "yesterday ,", "this morning ,", "in the park ,", "after the rain ,", "on a sunny day ,")
_PLACES = ("near the old barn", "by the river", "under a big tree", "for a long time", "with great joy", "at noon")
_CLOSINGS = (
    "",
    "everyone was surprised .",
    "it was a quiet day .",
    "the neighbours watched .",
    "nobody expected that .",
)

# Object sizes in pixels: large enough that a 4 x 4 grid of 16 px patches and coarse location bins can place them.
_OBJECT_SIZE = (18, 28)
_VIDEO_OBJECT_SIZE = (14, 20)
_VIDEO_STEP = (8, 12)
_BACKGROUND_MAX = 60
_PIXEL_NOISE = 5
_OBJECT_GAP = 2
_AUDIO_NOISE_STD = 0.01
_RAMP_SECONDS = 0.005
_MOTION_NOISE_STD = 0.01
_MAX_REDRAWS = 1000

_METRICS = (
    "accuracy",
    "exact_match",
    "bleu",
    "rouge",
    "wer",
    "iou_accuracy",
    "object_accuracy",
    "cider",
    "vqa_accuracy",
)
_LOWER_IS_BETTER = frozenset({"wer"})
_BASELINES = ("majority", "majority_by_answer_type", "constant_wer", "constant_rouge", "fixed_box", "fixed_objects")


# ----------------------------------------------------------------------------------------------------------------------
# The task table


@dataclass(frozen=True)
class DemoTask:
    """One demo task, as data.

    Args:
        name: The task and dataset name.
        modality: Input and output modalities, e.g. `"IMAGE + TEXT -> BOX"`.
        instruction: The OFASys-style instruction (see `processing.instruction`).
        metric: The evaluation metric's name in `trainers.metrics` (`detection` uses `detection_accuracy`).
        chance: The chance-level score by design (1/K for K balanced classes), or `None` when only the data can
            tell (then see `chance_baseline`).
        baseline: How `chance_baseline` computes the chance score from a split (one of the rules in the module
            docstring).
        target: The column the decoder must produce (for detection, the boxes; the labels go with them).
        columns: Every column the instruction reads.
        labels: The closed set of target values, when the target is a label.
        description: One sentence on the data.
    """

    name: str
    modality: str
    instruction: str
    metric: str
    chance: float | None
    baseline: str
    target: str
    columns: tuple[str, ...]
    labels: tuple[str, ...] | None
    description: str

    def __post_init__(self) -> None:
        if self.metric not in _METRICS:
            raise ValueError(f"DemoTask {self.name!r}: metric must be one of {_METRICS}, got {self.metric!r}")
        if self.baseline not in _BASELINES:
            raise ValueError(f"DemoTask {self.name!r}: baseline must be one of {_BASELINES}, got {self.baseline!r}")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric value is better (`False` for WER)."""
        return self.metric not in _LOWER_IS_BETTER


def _captions() -> tuple[str, ...]:
    return tuple(f"a {color} {shape}" for color, shape in _OBJECT_CLASSES)


DEMO_TASKS: tuple[DemoTask, ...] = (
    DemoTask(
        name="caption",
        modality="IMAGE -> TEXT",
        instruction="[IMAGE:image] what does the image describe? -> [TEXT:caption]",
        metric="exact_match",
        chance=1 / len(_OBJECT_CLASSES),
        baseline="majority",
        target="caption",
        columns=("image", "caption"),
        labels=_captions(),
        description="one coloured shape; the caption names its colour and shape",
    ),
    DemoTask(
        name="vqa",
        modality="IMAGE + TEXT -> TEXT",
        instruction="[IMAGE:image] [TEXT:question] -> [TEXT:answer,closed_set]",
        metric="accuracy",
        chance=0.5 / len(COLORS) + 0.5 / len(SHAPES),
        baseline="majority_by_answer_type",
        target="answer",
        columns=("image", "question", "answer"),
        labels=_COLOR_NAMES + SHAPES,
        description="two shapes; asks the colour of a named shape or the shape of a named colour",
    ),
    DemoTask(
        name="grounding",
        modality="IMAGE + TEXT -> BOX",
        instruction='[IMAGE:image] which region does the text " [TEXT:phrase] " describe? -> [BOX:box]',
        metric="iou_accuracy",
        chance=None,
        baseline="fixed_box",
        target="box",
        columns=("image", "phrase", "box"),
        labels=None,
        description="two shapes; the box of the one the phrase names",
    ),
    DemoTask(
        name="detection",
        modality="IMAGE -> (BOX TEXT)*",
        instruction="[IMAGE:image] what are the objects in the image? -> ( [BOX:boxes] [TEXT:labels] )*",
        metric="object_accuracy",
        chance=None,
        baseline="fixed_objects",
        target="boxes",
        columns=("image", "boxes", "labels"),
        labels=None,
        description="one or two shapes; their boxes and labels, left to right, scored by object_accuracy",
    ),
    DemoTask(
        name="itm",
        modality="IMAGE + TEXT -> TEXT",
        instruction='[IMAGE:image] does the image describe " [TEXT:caption] "? -> [TEXT:label,closed_set]',
        metric="accuracy",
        chance=0.5,
        baseline="majority",
        target="label",
        columns=("image", "caption", "label"),
        labels=("yes", "no"),
        description="one shape and a caption that matches it or not",
    ),
    DemoTask(
        name="asr",
        modality="AUDIO -> TEXT",
        instruction="[AUDIO:audio] what is the text corresponding to the voice? -> [TEXT:text]",
        metric="wer",
        chance=None,
        baseline="constant_wer",
        target="text",
        columns=("audio", "text"),
        labels=None,
        description="three or four DTMF digits; the transcript spells them as words",
    ),
    DemoTask(
        name="video_direction",
        modality="VIDEO -> TEXT",
        instruction="[VIDEO:video] which way does the object move? -> [TEXT:direction,closed_set]",
        metric="accuracy",
        chance=1 / len(DIRECTIONS),
        baseline="majority",
        target="direction",
        columns=("video", "direction"),
        labels=DIRECTIONS,
        description="four frames of a shape moving left, right, up or down",
    ),
    DemoTask(
        name="table_qa",
        modality="STRUCT + TEXT -> TEXT",
        instruction="[STRUCT:table] what is the color of [TEXT:name]? -> [TEXT:answer]",
        metric="exact_match",
        chance=1 / len(COLORS),
        baseline="majority",
        target="answer",
        columns=("table", "name", "answer"),
        labels=_COLOR_NAMES,
        description="a name | color | shape table of three people; the colour of the named one",
    ),
    DemoTask(
        name="motion_class",
        modality="MOTION -> TEXT",
        instruction="[MOTION:motion] what is the action? -> [TEXT:action,closed_set]",
        metric="accuracy",
        chance=1 / len(ACTIONS),
        baseline="majority",
        target="action",
        columns=("motion", "action"),
        labels=ACTIONS,
        description="a 2-D six-joint skeleton that walks, jumps, waves or claps",
    ),
    DemoTask(
        name="summarization",
        modality="TEXT -> TEXT",
        instruction='what is the summary of article " [TEXT:article] "? -> [TEXT:summary]',
        metric="rouge",
        chance=None,
        baseline="constant_rouge",
        target="summary",
        columns=("article", "summary"),
        labels=None,
        description="a templated sentence with filler; the summary is its subject and verb",
    ),
)
"""Every demo task, in a fixed order."""

DEMO_TASK_NAMES: tuple[str, ...] = tuple(task.name for task in DEMO_TASKS)
_TASKS_BY_NAME = {task.name: task for task in DEMO_TASKS}


def get_demo_task(task: str | DemoTask) -> DemoTask:
    """The `DemoTask` named `task` (a `DemoTask` is returned as is).

    Raises:
        ValueError: No demo task has that name.
        TypeError: `task` is neither a string nor a `DemoTask`.
    """
    if isinstance(task, DemoTask):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name (str) or a DemoTask, got {type(task).__name__}")
    if task not in _TASKS_BY_NAME:
        raise ValueError(f"Unknown demo task {task!r}; demo tasks: {', '.join(DEMO_TASK_NAMES)}")
    return _TASKS_BY_NAME[task]


# ----------------------------------------------------------------------------------------------------------------------
# Deterministic randomness


def _key_text(key: Sequence[Any]) -> str:
    """The canonical JSON text of a content key (tuples become lists)."""
    return json.dumps(key, separators=(",", ":"))


def _key_rng(key_text: str) -> np.random.Generator:
    """A generator seeded by the key alone, so noise is part of the content the key names."""
    digest = hashlib.blake2b(key_text.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _split_rng(seed: int, task: str, split: str) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process, and the data must not change between runs.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(task.encode()), SPLITS.index(split)]))


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _randint(rng: np.random.Generator, low: int, high: int) -> int:
    """A uniform integer in `[low, high]` (both included)."""
    return int(rng.integers(low, high + 1))


# ----------------------------------------------------------------------------------------------------------------------
# Drawing shapes


def _place_objects(rng: np.random.Generator, classes: Sequence[tuple[str, str]]) -> list[list[Any]]:
    """Sizes and positions for objects of the given classes, not overlapping: `[color, shape, x0, y0, size]` each."""
    while True:
        placed: list[list[Any]] = []
        for color, shape in classes:
            for _ in range(100):
                size = _randint(rng, *_OBJECT_SIZE)
                x0, y0 = _randint(rng, 0, IMAGE_SIZE - size), _randint(rng, 0, IMAGE_SIZE - size)
                if all(_apart((x0, y0, size), (o[2], o[3], o[4])) for o in placed):
                    placed.append([color, shape, x0, y0, size])
                    break
            else:
                break  # this layout left no room: start the scene over
        if len(placed) == len(classes):
            return placed


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two squares `(x0, y0, size)` are separated by at least `_OBJECT_GAP` pixels on some axis."""
    ax, ay, asize = a
    bx, by, bsize = b
    return (
        ax + asize + _OBJECT_GAP <= bx
        or bx + bsize + _OBJECT_GAP <= ax
        or ay + asize + _OBJECT_GAP <= by
        or by + bsize + _OBJECT_GAP <= ay
    )


def _box(obj: Sequence[Any]) -> list[float]:
    """The pixel box `[x0, y0, x1, y1]` of `[color, shape, x0, y0, size]`: it covers pixels x0 .. x1 - 1."""
    _, _, x0, y0, size = obj
    return [float(x0), float(y0), float(x0 + size), float(y0 + size)]


def _draw_shape(draw: PIL.ImageDraw.ImageDraw, color: str, shape: str, x0: int, y0: int, size: int) -> None:
    # PIL's drawing boxes include their last pixel
    _draw_shape_in_box(draw, COLORS[color], shape, (x0, y0, x0 + size - 1, y0 + size - 1))


def _draw_shape_in_box(
    draw: PIL.ImageDraw.ImageDraw, fill: Any, shape: str, box: tuple[float, float, float, float]
) -> None:
    """Draw `shape` filling the box `(x0, y0, x1, y1)` (last pixel included) the way the corpus draws its objects:
    a circle is the inscribed ellipse, a triangle has its apex at the top centre."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; shapes: {SHAPES}")


def _scene(objects: Sequence[Sequence[Any]], background: int, rng: np.random.Generator) -> PIL.Image.Image:
    """A 64 x 64 RGB image: a grey background, the objects, and small integer pixel noise everywhere."""
    image = PIL.Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (background,) * 3)
    draw = PIL.ImageDraw.Draw(image)
    for color, shape, x0, y0, size in objects:
        _draw_shape(draw, color, shape, x0, y0, size)
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, size=pixels.shape, dtype=np.int16)
    return PIL.Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _label(color: str, shape: str) -> str:
    return f"{color} {shape}"


# ----------------------------------------------------------------------------------------------------------------------
# Per-task generators: `sample(rng, index)` draws a content key (JSON-able, integers and strings only), and
# `render(key, rng)` builds the example from it, with `rng` seeded by the key. `index` stratifies balanced classes.


# Strata: the class of the example at index i is strata[i % len(strata)]. The orders interleave colours, shapes and
# question types so that even a short prefix (a tiny split) is nearly balanced; a full cycle is exactly balanced.
# (colour i % 4, shape i % 3) runs through all 12 pairs since 4 and 3 are coprime.
_CLASS_STRATA = tuple((_COLOR_NAMES[i % len(COLORS)], SHAPES[i % len(SHAPES)]) for i in range(len(_OBJECT_CLASSES)))
# Question types alternate; colour answers cycle with period 4 and shape answers with period 3 within their type, so
# 24 examples hold each colour answer 3 times and each shape answer 4 times.
_VQA_STRATA = tuple(
    ("color", _COLOR_NAMES[(i // 2) % len(COLORS)]) if i % 2 == 0 else ("shape", SHAPES[(i // 2) % len(SHAPES)])
    for i in range(2 * len(_OBJECT_CLASSES))
)


def _sample_caption(rng: np.random.Generator, index: int) -> list[Any]:
    color, shape = _CLASS_STRATA[index % len(_CLASS_STRATA)]
    return [_randint(rng, 0, _BACKGROUND_MAX), _place_objects(rng, [(color, shape)])[0]]


def _render_caption(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, obj = key
    return {"image": _scene([obj], background, rng), "caption": f"a {obj[0]} {obj[1]}", "box": _box(obj)}


def _sample_vqa(rng: np.random.Generator, index: int) -> list[Any]:
    answer_type, answer = _VQA_STRATA[index % len(_VQA_STRATA)]
    if answer_type == "color":
        target = (answer, _pick(rng, SHAPES))
    else:
        target = (_pick(rng, _COLOR_NAMES), answer)
    other = (_pick(rng, [c for c in _COLOR_NAMES if c != target[0]]), _pick(rng, [s for s in SHAPES if s != target[1]]))
    objects = _place_objects(rng, [target, other])
    return [_randint(rng, 0, _BACKGROUND_MAX), answer_type, objects]


def _render_vqa(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, answer_type, objects = key
    color, shape = objects[0][0], objects[0][1]
    if answer_type == "color":
        question, answer = f"what color is the {shape}?", color
    else:
        question, answer = f"what shape is the {color} object?", shape
    return {
        "image": _scene(objects, background, rng),
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
    }


def _distinct_classes(rng: np.random.Generator, count: int, first: tuple[str, str] | None = None) -> list[tuple]:
    classes = [first] if first is not None else []
    while len(classes) < count:
        candidate = _pick(rng, _OBJECT_CLASSES)
        if candidate not in classes:
            classes.append(candidate)
    return classes


def _sample_grounding(rng: np.random.Generator, index: int) -> list[Any]:
    target = _CLASS_STRATA[index % len(_CLASS_STRATA)]
    objects = _place_objects(rng, _distinct_classes(rng, 2, target))
    return [_randint(rng, 0, _BACKGROUND_MAX), objects]


def _render_grounding(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, objects = key
    target = objects[0]
    return {"image": _scene(objects, background, rng), "phrase": _label(target[0], target[1]), "box": _box(target)}


def _sample_detection(rng: np.random.Generator, index: int) -> list[Any]:
    objects = _place_objects(rng, _distinct_classes(rng, 1 + index % 2))
    # Left to right (then top to bottom): the target order is a function of the image, so it can be learned.
    objects.sort(key=lambda obj: (obj[2], obj[3]))
    return [_randint(rng, 0, _BACKGROUND_MAX), objects]


def _render_detection(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, objects = key
    return {
        "image": _scene(objects, background, rng),
        "boxes": [_box(obj) for obj in objects],
        "labels": [_label(obj[0], obj[1]) for obj in objects],
    }


def _sample_itm(rng: np.random.Generator, index: int) -> list[Any]:
    match = index % 2 == 0
    obj = _place_objects(rng, [_pick(rng, _OBJECT_CLASSES)])[0]
    if match:
        claimed = (obj[0], obj[1])
    else:
        claimed = _pick(rng, [c for c in _OBJECT_CLASSES if c != (obj[0], obj[1])])
    return [_randint(rng, 0, _BACKGROUND_MAX), obj, list(claimed)]


def _render_itm(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, obj, (color, shape) = key
    label = "yes" if (color, shape) == (obj[0], obj[1]) else "no"
    return {"image": _scene([obj], background, rng), "caption": f"a {color} {shape}", "label": label}


def _sample_asr(rng: np.random.Generator, index: int) -> list[Any]:
    digits = "".join(_pick(rng, "0123456789") for _ in range(_randint(rng, 3, 4)))
    # Timing in milliseconds and level in percent of full scale, all integers so that the key is exact.
    return [digits, _randint(rng, 120, 170), _randint(rng, 40, 60), _randint(rng, 20, 50), _randint(rng, 30, 60)]


def _render_asr(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    digits, tone_ms, gap_ms, lead_ms, level_pct = key
    tone, gap, lead = (_samples(ms) for ms in (tone_ms, gap_ms, lead_ms))
    total = 2 * lead + len(digits) * tone + (len(digits) - 1) * gap
    wave = np.zeros(total, dtype=np.float64)
    t = np.arange(tone) / SAMPLING_RATE
    ramp = _samples(_RAMP_SECONDS * 1000)
    envelope = np.ones(tone)
    # Raised-cosine edges keep clicks (broadband energy) from blurring the tone pair in the spectrum.
    envelope[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[-ramp:] = envelope[:ramp][::-1]
    for position, digit in enumerate(digits):
        low, high = DTMF_FREQUENCIES[digit]
        start = lead + position * (tone + gap)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        pair = 0.5 * (np.sin(2 * np.pi * low * t + phase[0]) + np.sin(2 * np.pi * high * t + phase[1]))
        wave[start : start + tone] = level_pct / 100 * envelope * pair
    wave += rng.normal(0.0, _AUDIO_NOISE_STD, size=total)
    return {
        "audio": {"array": np.clip(wave, -1.0, 1.0).astype(np.float32), "sampling_rate": SAMPLING_RATE},
        "text": " ".join(DIGIT_WORDS[int(d)] for d in digits),
        "digits": digits,
    }


def _samples(milliseconds: float) -> int:
    return int(round(milliseconds * SAMPLING_RATE / 1000))


_DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _sample_video(rng: np.random.Generator, index: int) -> list[Any]:
    direction = DIRECTIONS[index % len(DIRECTIONS)]
    color, shape = _pick(rng, _OBJECT_CLASSES)
    size, step = _randint(rng, *_VIDEO_OBJECT_SIZE), _randint(rng, *_VIDEO_STEP)
    travel = step * (VIDEO_FRAMES - 1)
    start = []
    for axis_step in _DIRECTION_VECTORS[direction]:
        # The whole track stays inside the frame: the start leaves room for the travel on the moving axis.
        low = travel if axis_step < 0 else 0
        high = IMAGE_SIZE - size - (travel if axis_step > 0 else 0)
        start.append(_randint(rng, low, high))
    return [_randint(rng, 0, _BACKGROUND_MAX), direction, color, shape, size, step, start[0], start[1]]


def _render_video(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    background, direction, color, shape, size, step, x0, y0 = key
    dx, dy = _DIRECTION_VECTORS[direction]
    frames = [
        _scene([[color, shape, x0 + dx * step * t, y0 + dy * step * t, size]], background, rng)
        for t in range(VIDEO_FRAMES)
    ]
    return {"video": frames, "direction": direction}


def _sample_table(rng: np.random.Generator, index: int) -> list[Any]:
    answer = _COLOR_NAMES[index % len(_COLOR_NAMES)]
    names = [str(n) for n in rng.permutation(_NAMES)[:_TABLE_ROWS]]
    rows = [[name, _pick(rng, _COLOR_NAMES), _pick(rng, SHAPES)] for name in names]
    asked = _randint(rng, 0, _TABLE_ROWS - 1)
    rows[asked][1] = answer
    return [rows, asked]


def _render_table(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    rows, asked = key
    return {
        "table": [list(_TABLE_HEADER)] + [list(row) for row in rows],
        "name": rows[asked][0],
        "answer": rows[asked][1],
    }


def _sample_motion(rng: np.random.Generator, index: int) -> list[Any]:
    action = ACTIONS[index % len(ACTIONS)]
    # Parameters an action does not use are 0, so two keys never describe the same clean clip.
    side = _pick(rng, (-1, 1)) if action in ("walk", "wave") else 0
    speed = _randint(rng, 4, 8) if action == "walk" else 0  # hundredths of a unit per frame
    amplitude = _randint(rng, 25, 50) if action in ("jump", "clap") else 0  # hundredths
    period = _randint(rng, 6, 10)  # frames
    phase = _randint(rng, 0, 11)  # twelfths of a turn
    offset = [_randint(rng, -100, 100), _randint(rng, -100, 100)]  # hundredths
    scale = _randint(rng, 80, 120)  # percent
    return [action, side, speed, amplitude, period, phase, offset, scale]


_SKELETON = np.array([[0.0, 0.0], [0.0, 0.6], [-0.3, 0.1], [0.3, 0.1], [-0.15, -0.8], [0.15, -0.8]])


def _render_motion(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    action, side, speed, amplitude, period, phase, offset, scale = key
    steps = np.arange(MOTION_FRAMES)
    angle = 2 * np.pi * steps / period + 2 * np.pi * phase / 12
    wave = np.sin(angle)
    pose = np.repeat(_SKELETON[None], MOTION_FRAMES, axis=0)
    root = np.zeros((MOTION_FRAMES, 2))
    left_hand, right_hand, left_foot, right_foot = 2, 3, 4, 5
    if action == "walk":
        root[:, 0] = side * speed / 100 * steps
        root[:, 1] = 0.02 * np.abs(wave)
        pose[:, left_foot, 0] += side * 0.15 * wave
        pose[:, right_foot, 0] -= side * 0.15 * wave
        pose[:, left_hand, 0] -= side * 0.1 * wave
        pose[:, right_hand, 0] += side * 0.1 * wave
    elif action == "jump":
        root[:, 1] = amplitude / 100 * np.maximum(wave, 0.0)
        pose[:, (left_hand, right_hand), 1] += 0.2 * np.maximum(wave, 0.0)[:, None]
    elif action == "wave":
        hand = right_hand if side > 0 else left_hand
        pose[:, hand, 0] = side * 0.35 + 0.15 * wave
        pose[:, hand, 1] = 0.7 + 0.05 * np.cos(angle)
    elif action == "clap":
        # The hands meet in front of the chest once per period.
        gap = 0.05 + amplitude / 100 * (1 + wave) / 2
        pose[:, left_hand] = np.stack([-gap, np.full(MOTION_FRAMES, 0.2)], axis=1)
        pose[:, right_hand] = np.stack([gap, np.full(MOTION_FRAMES, 0.2)], axis=1)
    else:
        raise ValueError(f"Unknown action {action!r}; actions: {ACTIONS}")
    clip = (pose + root[:, None]) * scale / 100 + np.array(offset) / 100
    clip += rng.normal(0.0, _MOTION_NOISE_STD, size=clip.shape)
    return {"motion": clip.astype(np.float32), "action": action}


def _sample_summary(rng: np.random.Generator, index: int) -> list[Any]:
    return [
        _pick(rng, _OPENINGS),
        _pick(rng, _COLOR_NAMES),
        _pick(rng, _ANIMALS),
        _pick(rng, _VERBS),
        _pick(rng, _PLACES),
        _pick(rng, _CLOSINGS),
    ]


def _render_summary(key: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    opening, color, animal, verb, place, closing = key
    summary = f"the {color} {animal} {verb}"
    article = " ".join(part for part in (opening, summary, place, ".", closing) if part)
    return {"article": article, "summary": summary}


@dataclass(frozen=True)
class _Generator:
    sample: Callable[[np.random.Generator, int], list[Any]]
    render: Callable[[list[Any], np.random.Generator], dict[str, Any]]
    features: Callable[[Any], dict[str, Any]]  # datasets module -> {column: feature} for the rendered columns


def _string(ds: Any) -> Any:
    return ds.Value("string")


_GENERATORS: dict[str, _Generator] = {
    "caption": _Generator(
        _sample_caption,
        _render_caption,
        lambda ds: {"image": ds.Image(), "caption": _string(ds), "box": ds.List(ds.Value("float32"), length=4)},
    ),
    "vqa": _Generator(
        _sample_vqa,
        _render_vqa,
        lambda ds: {"image": ds.Image(), "question": _string(ds), "answer": _string(ds), "answer_type": _string(ds)},
    ),
    "grounding": _Generator(
        _sample_grounding,
        _render_grounding,
        lambda ds: {"image": ds.Image(), "phrase": _string(ds), "box": ds.List(ds.Value("float32"), length=4)},
    ),
    "detection": _Generator(
        _sample_detection,
        _render_detection,
        lambda ds: {
            "image": ds.Image(),
            "boxes": ds.List(ds.List(ds.Value("float32"), length=4)),
            "labels": ds.List(_string(ds)),
        },
    ),
    "itm": _Generator(
        _sample_itm,
        _render_itm,
        lambda ds: {"image": ds.Image(), "caption": _string(ds), "label": _string(ds)},
    ),
    "asr": _Generator(
        _sample_asr,
        _render_asr,
        lambda ds: {
            "audio": {"array": ds.List(ds.Value("float32")), "sampling_rate": ds.Value("int32")},
            "text": _string(ds),
            "digits": _string(ds),
        },
    ),
    "video_direction": _Generator(
        _sample_video,
        _render_video,
        lambda ds: {"video": ds.List(ds.Image()), "direction": _string(ds)},
    ),
    "table_qa": _Generator(
        _sample_table,
        _render_table,
        lambda ds: {"table": ds.List(ds.List(_string(ds))), "name": _string(ds), "answer": _string(ds)},
    ),
    "motion_class": _Generator(
        _sample_motion,
        _render_motion,
        lambda ds: {
            "motion": ds.Array3D(shape=(MOTION_FRAMES, len(JOINTS), 2), dtype="float32"),
            "action": _string(ds),
        },
    ),
    "summarization": _Generator(
        _sample_summary,
        _render_summary,
        lambda ds: {"article": _string(ds), "summary": _string(ds)},
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Building the corpus


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _resolve_sizes(sizes: Mapping[str, int] | None, scale: float) -> dict[str, int]:
    """Examples per split: `DEFAULT_SIZES` times `scale` (at least 1), overridden by `sizes`."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    resolved = {split: max(1, round(n * scale)) for split, n in DEFAULT_SIZES.items()}
    if sizes is None:
        return resolved
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a dict of split -> number of examples, got {type(sizes).__name__}")
    for split, n in sizes.items():
        if split not in SPLITS:
            raise ValueError(f"sizes has unknown split {split!r}; splits: {', '.join(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"sizes[{split!r}] must be an int >= 1, got {n!r}")
        resolved[split] = int(n)
    return resolved


def _resolve_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return DEMO_TASK_NAMES
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be an iterable of task names, not a single string; did you mean [{tasks!r}]?")
    names = []
    for task in tasks:
        name = get_demo_task(task).name
        if name in names:
            raise ValueError(f"tasks lists {name!r} twice")
        names.append(name)
    if not names:
        raise ValueError(f"tasks is empty; demo tasks: {', '.join(DEMO_TASK_NAMES)}")
    return tuple(names)


def _draw_keys(task: str, seed: int, size: int, split: str, seen: set[str]) -> list[str]:
    """`size` content keys not in `seen` (which they are added to), in a shuffled order."""
    rng = _split_rng(seed, task, split)
    sample = _GENERATORS[task].sample
    keys: list[str] = []
    for index in range(size):
        for _ in range(_MAX_REDRAWS):
            key = _key_text(sample(rng, index))
            if key not in seen:
                break
        else:
            raise ValueError(
                f"Task {task!r}: could not draw {size} distinct {split} examples after {_MAX_REDRAWS} redraws; "
                "the task has too few distinct examples for the requested sizes"
            )
        seen.add(key)
        keys.append(key)
    # Strata cycle with the index; shuffling keeps equal labels from sitting next to each other.
    return [keys[i] for i in rng.permutation(size)]


def _render_rows(task: str, keys: Sequence[str]) -> dict[str, list[Any]]:
    render = _GENERATORS[task].render
    columns: dict[str, list[Any]] = {"key": list(keys)}
    for key in keys:
        row = render(json.loads(key), _key_rng(key))
        for column, value in row.items():
            columns.setdefault(column, []).append(value)
    return columns


def _generate_task(task: str, seed: int, sizes: Mapping[str, int]) -> datasets.DatasetDict:
    import datasets

    features = datasets.Features({**_GENERATORS[task].features(datasets), "key": datasets.Value("string")})
    seen: set[str] = set()
    splits = {}
    # Test first: it then depends only on the seed and its own size, whatever the other splits ask for.
    for split in ("test", "validation", "train"):
        keys = _draw_keys(task, seed, sizes[split], split, seen)
        splits[split] = datasets.Dataset.from_dict(_render_rows(task, keys), features=features)
    return datasets.DatasetDict({split: splits[split] for split in SPLITS})


def build_demo_datasets(
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    tasks: Iterable[str] | None = None,
    *,
    scale: float = 1.0,
) -> dict[str, datasets.DatasetDict]:
    """Generate the demo corpus in memory.

    Args:
        seed: Non-negative integer; the same seed gives identical datasets.
        sizes: Examples per split, e.g. `{"train": 200}`; splits not given use `DEFAULT_SIZES` times `scale`.
        tasks: Task names to build (default: all of `DEMO_TASK_NAMES`), in the order given.
        scale: Multiplier of the default sizes (each rounded, at least 1).

    Returns:
        Task name -> `DatasetDict` with `train`, `validation` and `test` splits. Each has the columns its instruction
        reads, a `key` column (the JSON content key) and a few columns describing the content (e.g. `box`,
        `answer_type`, `digits`).

    Raises:
        ValueError: A bad seed, size, scale or task name; or sizes larger than a task's space of distinct examples.
        TypeError: An argument of the wrong type.
    """
    seed = _check_seed(seed)
    resolved = _resolve_sizes(sizes, scale)
    return {task: _generate_task(task, seed, resolved) for task in _resolve_tasks(tasks)}


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading

_MANIFEST = "demo_manifest.json"
_MANIFEST_FORMAT = "ofa-hf-demo-corpus"


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence `datasets` progress bars while saving or loading a dozen small datasets, then restore the setting."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _read_manifest(root: str) -> dict[str, Any] | None:
    path = os.path.join(root, _MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read the demo corpus manifest {path}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a demo corpus manifest (expected format {_MANIFEST_FORMAT!r})")
    return manifest


def save_demo_datasets(
    root: str | os.PathLike[str],
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    tasks: Iterable[str] | None = None,
    *,
    scale: float = 1.0,
    overwrite: bool = False,
) -> dict[str, datasets.DatasetDict]:
    """Generate the demo corpus into `root` (one `save_to_disk` folder per task), or load it if already there.

    A manifest (`demo_manifest.json`: generator version, seed, sizes, tasks) is written last. When it matches the
    request, nothing is generated and the saved datasets are loaded; when it differs, the folders it lists are
    replaced.

    Args:
        root: Folder to hold the corpus; created if missing. It must be empty or hold a demo corpus.
        seed, sizes, tasks, scale: As for `build_demo_datasets`.
        overwrite: Regenerate even when the manifest matches.

    Returns:
        Task name -> `DatasetDict`, loaded from `root` (memory-mapped).

    Raises:
        ValueError: Bad arguments (see `build_demo_datasets`), or `root` is a non-empty folder without a manifest.
    """
    seed = _check_seed(seed)
    resolved = _resolve_sizes(sizes, scale)
    names = _resolve_tasks(tasks)
    root = os.fspath(root)
    wanted = {"format": _MANIFEST_FORMAT, "version": DEMO_VERSION, "seed": seed, "sizes": resolved, "tasks": names}
    wanted = json.loads(json.dumps(wanted))  # tuples to lists, as a manifest read back has them
    manifest = _read_manifest(root) if os.path.isdir(root) else None
    if manifest == wanted and not overwrite:
        return load_demo_datasets(root)
    if manifest is None and os.path.isdir(root) and os.listdir(root):
        raise ValueError(
            f"{root} is not empty and holds no demo corpus ({_MANIFEST} is missing); pick an empty or new folder"
        )
    os.makedirs(root, exist_ok=True)
    if manifest is not None:
        # Remove the manifest first: if generation is interrupted, the folder must not look complete.
        os.remove(os.path.join(root, _MANIFEST))
        for old in manifest.get("tasks", []):
            if old in _TASKS_BY_NAME and os.path.isdir(os.path.join(root, old)):
                shutil.rmtree(os.path.join(root, old))
    with _quiet_progress_bars():
        for name in names:
            _generate_task(name, seed, resolved).save_to_disk(os.path.join(root, name))
    temporary = os.path.join(root, _MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(wanted, handle, indent=2)
    os.replace(temporary, os.path.join(root, _MANIFEST))
    return load_demo_datasets(root)


def load_demo_datasets(root: str | os.PathLike[str]) -> dict[str, datasets.DatasetDict]:
    """Load a corpus written by `save_demo_datasets`.

    Raises:
        FileNotFoundError: `root` holds no manifest, or a task folder it lists is missing.
        ValueError: The manifest is unreadable or was written by another generator version.
    """
    import datasets

    root = os.fspath(root)
    manifest = _read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"No demo corpus in {root}: {_MANIFEST} is missing (create it with save_demo_datasets)")
    if manifest.get("version") != DEMO_VERSION:
        raise ValueError(
            f"The demo corpus in {root} was made by generator version {manifest.get('version')!r}, this is "
            f"{DEMO_VERSION}; regenerate it with save_demo_datasets"
        )
    loaded = {}
    with _quiet_progress_bars():
        for name in manifest["tasks"]:
            path = os.path.join(root, name)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"The demo corpus in {root} lists task {name!r} but {path} is missing")
            loaded[name] = datasets.load_from_disk(path)
    return loaded


# ----------------------------------------------------------------------------------------------------------------------
# Text for the demo tokenizer


def demo_text_corpus(datasets: Mapping[str, Any]) -> Iterator[str]:
    """All text of the corpus, for training the demo BPE tokenizer.

    Yields the literal prompt text of every task's instruction, then, for every split and example, the values of the
    instruction's TEXT slots (questions, phrases, captions, targets, labels) and its STRUCT slots linearized as the
    STRUCT preprocessor does (`"name : color : shape | anna : red : circle | ..."`). Images, audio, video and motion
    are not read (not even decoded).

    Args:
        datasets: Task name -> `DatasetDict` (or a dict of split -> `Dataset`), as `build_demo_datasets` returns.
    """
    from processing.instruction import parse_instruction
    from processing.struct import StructPreprocessor

    if not isinstance(datasets, Mapping):
        raise TypeError(f"datasets must be a dict of task name -> DatasetDict, got {type(datasets).__name__}")
    struct = StructPreprocessor()
    for name, splits in datasets.items():
        task = get_demo_task(name)
        plan = parse_instruction(task.instruction)
        text_columns, struct_columns = set(), set()
        for template in plan.templates:
            for slot in template.slots:
                if slot.is_plaintext:
                    yield slot.text
                elif slot.modality == "TEXT":
                    text_columns.add(slot.column)
                elif slot.modality == "STRUCT":
                    struct_columns.add(slot.column)
        for split in splits.values():
            missing = (text_columns | struct_columns) - set(split.column_names)
            if missing:
                raise ValueError(f"Task {name!r}: columns {sorted(missing)} are missing from the data")
            for column in sorted(text_columns):
                for value in split[column]:
                    if isinstance(value, str):
                        yield value
                    else:
                        yield from value  # a repeated column (detection labels) holds a list
            for column in sorted(struct_columns):
                for value in split[column]:
                    yield struct.linearize(value)


# ----------------------------------------------------------------------------------------------------------------------
# Scores and chance baselines


def _column(data: Any, name: str) -> list[Any]:
    """One column of a `datasets.Dataset` or a dict of columns, as a list."""
    try:
        return list(data[name])
    except (KeyError, ValueError) as err:
        raise ValueError(f"The data has no column {name!r}") from err


def _iou_matrix(candidates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """IoU of every candidate box (C, 4) against every reference box (N, 4): a (C, N) array."""
    a, b = candidates[:, None, :], references[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = width * height
    union = (
        (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    )
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)


def _box_array(values: Sequence[Any], what: str) -> np.ndarray:
    """An (N, 4) float array of boxes (N may be 0)."""
    if len(values) == 0:
        return np.zeros((0, 4))
    try:
        boxes = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of [x0, y0, x1, y1] boxes, got {values!r:.80}") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ValueError(f"{what} must be a list of [x0, y0, x1, y1] boxes of finite numbers, got {values!r:.80}")
    return boxes


def detection_accuracy(
    predicted_boxes: Sequence[Sequence[Sequence[float]]],
    predicted_labels: Sequence[Sequence[str]],
    reference_boxes: Sequence[Sequence[Sequence[float]]],
    reference_labels: Sequence[Sequence[str]],
) -> float:
    """The `detection` task's score: objects compared in order, a hit needing the same label and IoU >= 0.5.

    Each example scores `hits / max(#predicted, #reference)` (1 when both are empty), so a missing or an extra object
    costs as much as a wrong one; the result is the mean over examples.

    Args:
        predicted_boxes: Per example, the predicted `[x0, y0, x1, y1]` boxes in order.
        predicted_labels: Per example, one label per predicted box.
        reference_boxes: Per example, the reference boxes (left to right in the demo data).
        reference_labels: Per example, one label per reference box.

    Returns:
        0..1.
    """
    count = len(reference_boxes)
    if not len(predicted_boxes) == len(predicted_labels) == count == len(reference_labels):
        raise ValueError(
            f"detection_accuracy needs one entry per example in each argument, got {len(predicted_boxes)} predicted "
            f"box lists, {len(predicted_labels)} predicted label lists, {count} reference box lists and "
            f"{len(reference_labels)} reference label lists"
        )
    if count == 0:
        raise ValueError("detection_accuracy got no examples")
    from trainers.metrics import object_accuracy  # the metric the trainer reports for this task

    def objects(boxes, labels, what: str) -> list[list[dict[str, Any]]]:
        out = []
        for index, (example_boxes, example_labels) in enumerate(zip(boxes, labels)):
            array = _box_array(example_boxes, f"{what}_boxes[{index}]")
            if len(array) != len(example_labels):
                raise ValueError(f"Example {index}: the number of boxes and of labels differ")
            out.append([{"box": box.tolist(), "label": label} for box, label in zip(array, example_labels)])
        return out

    return object_accuracy(
        objects(predicted_boxes, predicted_labels, "predicted"), objects(reference_boxes, reference_labels, "reference")
    )


def _majority(targets: list[Any]) -> float:
    return Counter(targets).most_common(1)[0][1] / len(targets)


def _majority_by(targets: list[Any], groups: list[Any]) -> float:
    """The rate of the best prediction given the group alone: sum over groups of their majority count."""
    by_group: dict[Any, Counter] = {}
    for target, group in zip(targets, groups):
        by_group.setdefault(group, Counter())[target] += 1
    return sum(counts.most_common(1)[0][1] for counts in by_group.values()) / len(targets)


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of word lists (equal to rouge_score's for lower-case alphanumeric words, as in the demo)."""
    common = _lcs(candidate, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def _constant_candidates(references: list[list[str]]) -> set[tuple[str, ...]]:
    """Constant predictions worth trying: the frequent targets, repeats of the top word, per-position majorities."""
    candidates = {()}
    candidates.update(tuple(words) for words, _ in Counter(map(tuple, references)).most_common(5))
    longest = max(len(words) for words in references)
    top_word = Counter(word for words in references for word in words).most_common(1)[0][0]
    positional = [
        Counter(words[i] for words in references if len(words) > i).most_common(1)[0][0] for i in range(longest)
    ]
    for length in range(1, longest + 1):
        candidates.add((top_word,) * length)
        candidates.add(tuple(positional[:length]))
    return candidates


def _constant_wer(targets: list[str]) -> float:
    references = [target.split() for target in targets]
    total = sum(len(words) for words in references)
    if total == 0:
        raise ValueError("Every transcript is empty: the word error rate is undefined")
    candidates = _constant_candidates(references)
    return min(sum(_edit_distance(c, r) for r in references) / total for c in candidates)


def _constant_rouge(targets: list[str]) -> float:
    references = [target.split() for target in targets]
    candidates = _constant_candidates(references) - {()}
    return max(float(np.mean([_rouge_l(c, r) for r in references])) for c in candidates)


def _box_candidates(boxes: np.ndarray) -> np.ndarray:
    """The distinct boxes of the split plus their median, as fixed predictions to try."""
    return np.unique(np.concatenate([boxes, np.median(boxes, axis=0, keepdims=True)]), axis=0)


def _fixed_box(boxes: list[Any]) -> float:
    references = _box_array(boxes, "box column")
    hits = _iou_matrix(_box_candidates(references), references) >= 0.5
    return float(hits.mean(axis=1).max())


def _fixed_objects(boxes: list[Any], labels: list[Any]) -> float:
    """The best `detection_accuracy` of one fixed list of (box, label) pairs predicted for every example."""
    references = [(_box_array(b, "boxes column"), list(names)) for b, names in zip(boxes, labels)]
    most = max(len(names) for _, names in references)
    best = 0.0
    for count in range(1, most + 1):
        total = 0.0
        # Positions are scored independently, so the best list is the best (box, label) at each position.
        for pos in range(count):
            rows = [(b[pos], names[pos], 1 / max(count, len(names))) for b, names in references if len(names) > pos]
            if not rows:
                continue
            ref_boxes = np.stack([row[0] for row in rows])
            label_set = sorted({row[1] for row in rows})
            onehot = np.array([[row[1] == name for name in label_set] for row in rows], dtype=np.float64)
            weights = np.array([row[2] for row in rows])
            hits = _iou_matrix(_box_candidates(ref_boxes), ref_boxes) >= 0.5
            total += float(((hits * weights) @ onehot).max())
        best = max(best, total / len(references))
    return best


def chance_baseline(task: str | DemoTask, dataset_split: Any) -> float:
    """The chance-level score of `task`'s metric on one split, computed from its targets (see the module docstring).

    Args:
        task: A task name or `DemoTask`.
        dataset_split: A `datasets.Dataset` of the task, or a dict of columns (only the target columns are read).

    Returns:
        The score of the best blind (input-ignoring) prediction rule of the task's baseline kind; for WER, lower is
        better, so it is the lowest WER.
    """
    task = get_demo_task(task)
    targets = _column(dataset_split, task.target)
    if not targets:
        raise ValueError(f"Task {task.name!r}: the split is empty")
    if task.baseline == "majority":
        return _majority(targets)
    if task.baseline == "majority_by_answer_type":
        return _majority_by(targets, _column(dataset_split, "answer_type"))
    if task.baseline == "constant_wer":
        return _constant_wer(targets)
    if task.baseline == "constant_rouge":
        return _constant_rouge(targets)
    if task.baseline == "fixed_box":
        return _fixed_box(targets)
    return _fixed_objects(targets, _column(dataset_split, "labels"))
