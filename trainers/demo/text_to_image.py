# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""The demo's text-to-image task: captions of two-object scenes -> the scene, generated as VQ codes.

```text
text_to_image   what is the complete image? caption: [TEXT:caption] -> [IMAGE:image,preprocess=image_vqgan]
```

- Data (`build_text_to_image_datasets`): two shapes of different colours on the corpus's dark noisy background
  (`trainers.demo.corpus` draws them), captioned left to right, `"a red circle and a blue square"`; drawn from the
  seed, no scene twice across splits.
- Image tokenizer (`demo_image_tokenizer`): the tiny VQGAN preset (64 px -> an 8 x 8 grid of 256 codes) trained on
  the training scenes for a fixed number of steps, cached in the data folder under a fingerprint of those scenes and
  of the training settings, so a rerun on the same corpus loads it instead of training it again.
- Metric (`scene_match`): a deterministic reading of a picture (`read_scene`: pixels are assigned to the nearest
  palette colour, each colour's pixels form an object, and its shape is the one of the three that, drawn as the
  corpus draws it in the object's bounding box, overlaps its pixels best). An example scores the caption's objects
  found with their colour and shape, divided by the larger of the caption's and the picture's object counts (extra
  objects cost). Its chance level is the same score of the reference scene of another caption (an input-blind
  generator of real scenes); the reading of the references themselves is the metric's ceiling, reported beside it.
- `generated_grid`: the test captions, their reference scenes and the generated pictures, as one PNG.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .corpus import (
    _BACKGROUND_MAX,
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    _draw_shape_in_box,
    _key_rng,
    _key_text,
    _place_objects,
    _scene,
    _split_rng,
)

__all__ = [
    "TEXT_TO_IMAGE_DEFAULTS",
    "TEXT_TO_IMAGE_INSTRUCTION",
    "TEXT_TO_IMAGE_SIZES",
    "TEXT_TO_IMAGE_TASK",
    "VQ_TOKENIZER_STEPS",
    "build_text_to_image_datasets",
    "demo_image_tokenizer",
    "generated_grid",
    "prepare_text_to_image",
    "read_scene",
    "scene_match",
    "scene_match_chance",
    "text_to_image_results",
]

TEXT_TO_IMAGE_TASK = "text_to_image"
TEXT_TO_IMAGE_INSTRUCTION = (
    "what is the complete image? caption: [TEXT:caption] -> [IMAGE:image,preprocess=image_vqgan]"
)
TEXT_TO_IMAGE_SIZES: dict[str, int] = {"train": 1200, "test": 100}
"""Scenes per split. Under the demo's temperature sampling (size ** 1/2) 1200 training scenes give the task about 12%
of the steps beside the other tasks' 600 each; 100 test captions, as the other tasks' test splits (generating them
takes seconds), the first 12 of them drawn in the grid."""

_MIN_AREA = 40  # pixels of one colour that make an object (the smallest drawn triangle has about 160)
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (K, 3)
_COLOR_NAMES = tuple(COLORS)


def _caption(objects: Sequence[Sequence[Any]]) -> str:
    return " and ".join(f"a {color} {shape}" for color, shape, *_ in objects)


def _sample(rng: np.random.Generator) -> list[Any]:
    colors = rng.choice(len(_COLOR_NAMES), size=2, replace=False)
    classes = [(_COLOR_NAMES[int(c)], SHAPES[int(rng.integers(len(SHAPES)))]) for c in colors]
    objects = _place_objects(rng, classes)
    objects.sort(key=lambda obj: (obj[2], obj[3]))  # the caption reads left to right
    return [int(rng.integers(0, _BACKGROUND_MAX + 1)), objects]


def build_text_to_image_datasets(seed: int = 0, sizes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """`{"train", "test"}` `datasets.Dataset`s of `{"caption", "image", "objects"}` (objects as JSON
    `[[color, shape, x0, y0, size], ...]`), a pure function of `seed` and `sizes`; test scenes are drawn first."""
    import datasets

    sizes = dict(TEXT_TO_IMAGE_SIZES if sizes is None else sizes)
    seen: set[str] = set()
    out = {}
    for split in ("test", "train"):
        rng = _split_rng(seed, TEXT_TO_IMAGE_TASK, split)
        rows: dict[str, list[Any]] = {"caption": [], "image": [], "objects": []}
        while len(rows["caption"]) < sizes.get(split, 0):
            key = _sample(rng)
            text = _key_text(key)
            if text in seen:
                continue
            seen.add(text)
            background, objects = key
            rows["caption"].append(_caption(objects))
            rows["image"].append(_scene(objects, background, _key_rng(text)))
            rows["objects"].append(json.dumps(objects))
        features = datasets.Features(
            caption=datasets.Value("string"), image=datasets.Image(), objects=datasets.Value("string")
        )
        out[split] = datasets.Dataset.from_dict(rows, features=features)
    return {"train": out["train"], "test": out["test"]}


# ----------------------------------------------------------------------------------------------------------------------
# The image tokenizer, trained once per corpus

VQ_TOKENIZER_STEPS = 1800
"""Steps of batch 8 the demo trains its tokenizer for. Measured on held-out scenes (`scene_match` of its
reconstructions; 1.0 for the scenes themselves, 0.17 by chance): 0.41 after 450 steps, 0.55 after 900, 0.66 after
1200, 0.74 after 1800 (two batch orders: 0.74, 0.73); about 0.15 s of CPU a step on one thread, 280 s in all (191 s on
2 cores); trained once and reused while the corpus is unchanged."""


def _fingerprint(images: Sequence[PIL.Image.Image], settings: Mapping[str, Any]) -> str:
    digest = hashlib.blake2b(json.dumps(dict(settings), sort_keys=True).encode(), digest_size=12)
    for image in images:
        digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def demo_image_tokenizer(
    images: Sequence[PIL.Image.Image],
    cache_dir: str | Path,
    *,
    steps: int = VQ_TOKENIZER_STEPS,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """The demo's VQ tokenizer (tiny preset) trained on `images` with `train_vq_tokenizer`'s recipe (its output bias
    started at the images' mean colour), or loaded from `cache_dir` when a tokenizer was trained there on the same
    images with the same settings. Returns `(model, info)`: `info` has `trained` (bool), `seconds`,
    `reconstruction_error` (mean absolute error in [-1, 1] pixel units on `images`) and `folder`."""
    import time

    import torch

    from modeling_ofa.configuration_vqgan import OFAVQGANConfig
    from modeling_ofa.modeling_vqgan import OFAVQGANModel, train_vq_tokenizer

    # "recipe" names the training loss and schedule, so tokenizers trained by an older recipe are not reused.
    settings = {"preset": "tiny", "steps": steps, "batch_size": batch_size, "seed": seed, "recipe": 2}
    folder = Path(cache_dir) / f"vq_tokenizer-{_fingerprint(images, settings)}"
    started = time.perf_counter()
    if (folder / "config.json").is_file():
        model = OFAVQGANModel.from_pretrained(folder).eval()
        info = json.loads((folder / "training.json").read_text())
        return model, {**info, "trained": False, "seconds": time.perf_counter() - started, "folder": str(folder)}
    torch.manual_seed(seed)
    model = OFAVQGANModel(OFAVQGANConfig.from_preset("tiny"))
    result = train_vq_tokenizer(
        model, list(images), steps=steps, batch_size=batch_size, seed=seed, init_output_bias=True
    )
    seconds = time.perf_counter() - started
    info = {
        "reconstruction_error": result.error_after,
        "error_before": result.error_before,
        "training_seconds": seconds,
    }
    model.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps(info, indent=2))
    return model, {**info, "trained": True, "seconds": seconds, "folder": str(folder)}


# ----------------------------------------------------------------------------------------------------------------------
# Reading a picture: which coloured shapes it shows


def _shape_of(mask: np.ndarray) -> str:
    """The shape (of `SHAPES`) whose drawing in the bounding box of `mask` (H, W) has the highest intersection over
    union with it. The overlap, unlike the share of the box an object fills, stays with the right shape when the
    object's edges are blurred: a square with rounded corners is still nearer the square than the circle."""
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = PIL.Image.new("1", (mask.shape[1], mask.shape[0]), 0)
        _draw_shape_in_box(PIL.ImageDraw.Draw(template), 1, shape, box)
        drawn = np.asarray(template, dtype=bool)
        iou = float((mask & drawn).sum()) / float((mask | drawn).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def read_scene(image: PIL.Image.Image) -> list[tuple[str, str]]:
    """The `(color, shape)` objects a picture shows, by a fixed rule: a pixel belongs to the palette colour nearest
    to it unless it is closer to its own grey (the background), every colour with at least `_MIN_AREA` pixels is an
    object, and its shape is the one that, drawn as the corpus draws it in the object's bounding box, overlaps the
    object's pixels best (`_shape_of`). Sorted left to right."""
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float32)  # (H, W, 3)
    flat = pixels.reshape(-1, 3)  # (H*W, 3)
    to_palette = np.linalg.norm(flat[:, None, :] - _PALETTE[None], axis=-1)  # (H*W, K)
    grey = flat.mean(axis=1, keepdims=True)
    to_grey = np.linalg.norm(flat - grey, axis=-1)
    nearest = to_palette.argmin(axis=1)
    coloured = to_palette.min(axis=1) < to_grey
    objects = []
    for index, name in enumerate(_COLOR_NAMES):
        mask = (coloured & (nearest == index)).reshape(pixels.shape[:2])
        if int(mask.sum()) < _MIN_AREA:
            continue
        objects.append((float(np.nonzero(mask)[1].mean()), name, _shape_of(mask)))
    return [(name, shape) for _, name, shape in sorted(objects)]


def _caption_objects(caption: str) -> list[tuple[str, str]]:
    objects = []
    for part in caption.split(" and "):
        words = part.split()
        objects.append((words[-2], words[-1]))
    return objects


def scene_match(images: Sequence[PIL.Image.Image | None], captions: Sequence[str]) -> float:
    """Mean over examples of the caption's objects that the picture shows with their colour and shape, divided by
    the larger of the two object counts (an unreadable or missing picture scores 0)."""
    if len(images) != len(captions) or not captions:
        raise ValueError(
            f"scene_match needs as many pictures as captions (>= 1), got {len(images)} and {len(captions)}"
        )
    scores = []
    for image, caption in zip(images, captions):
        wanted = _caption_objects(caption)
        found = read_scene(image) if image is not None else []
        hits = len(set(wanted) & set(found))
        scores.append(hits / max(len(wanted), len(found), 1))
    return float(np.mean(scores))


def scene_match_chance(images: Sequence[PIL.Image.Image], captions: Sequence[str]) -> float:
    """`scene_match` of each caption against the reference scene of the next caption (cyclically): what a generator
    that ignores its caption but draws real scenes scores."""
    shifted = list(images[1:]) + list(images[:1])
    return scene_match(shifted, captions)


# ----------------------------------------------------------------------------------------------------------------------
# The grid picture


def generated_grid(
    captions: Sequence[str],
    references: Sequence[PIL.Image.Image],
    generated: Sequence[PIL.Image.Image | None],
    path: str | Path,
    *,
    scale: int = 2,
    columns: int = 4,
) -> Path:
    """A PNG of `columns` examples per row: each the caption, the reference scene and the generated picture beside
    it (`None`: a blank panel), shown `scale` times enlarged."""
    side = IMAGE_SIZE * scale
    cell_w, text_h, gap = 2 * side + 6, 28, 8
    rows = math.ceil(len(captions) / columns)
    header = 18
    sheet = PIL.Image.new("RGB", (columns * (cell_w + gap) + gap, header + rows * (side + text_h + gap) + gap), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    draw.text((gap, 4), "each pair: reference (left) | generated (right)", fill=(0, 0, 0))
    for index, (caption, reference, image) in enumerate(zip(captions, references, generated)):
        x = gap + (index % columns) * (cell_w + gap)
        y = header + gap + (index // columns) * (side + text_h + gap)
        words = caption.split(" and ")
        draw.text((x, y), words[0] + (" and" if len(words) > 1 else ""), fill=(0, 0, 0))
        draw.text((x, y + 12), " and ".join(words[1:]), fill=(0, 0, 0))
        sheet.paste(reference.convert("RGB").resize((side, side), PIL.Image.NEAREST), (x, y + text_h))
        if image is not None:
            sheet.paste(image.convert("RGB").resize((side, side), PIL.Image.NEAREST), (x + side + 6, y + text_h))
    path = Path(path)
    sheet.save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# In the main job (`trainers.recipe.run` with a `text_to_image` config section)

TEXT_TO_IMAGE_DEFAULTS: dict[str, Any] = {
    **TEXT_TO_IMAGE_SIZES,
    "vq_steps": VQ_TOKENIZER_STEPS,
    "num_candidates": 4,
    "grid": 12,
}
"""The config section's defaults: training scenes and test captions (`TEXT_TO_IMAGE_SIZES`), VQ tokenizer steps
(`VQ_TOKENIZER_STEPS`), candidates sampled per caption and test captions drawn in the grid picture."""


def prepare_text_to_image(settings: Mapping[str, Any], root: str | Path, seed: int, processor: Any) -> tuple:
    """The text-to-image task of the main job: `(Task, test split, tokenizer info)`. Trains (or loads, for an
    unchanged corpus) the VQ tokenizer under `root` and gives it to `processor`; the task has no validation split (its
    pictures are scored once, on the test captions, by `text_to_image_results`)."""
    from ..task import Task

    settings = {**TEXT_TO_IMAGE_DEFAULTS, **dict(settings)}
    unknown = sorted(set(settings) - set(TEXT_TO_IMAGE_DEFAULTS))
    if unknown:
        raise ValueError(f"text_to_image: unknown keys {unknown}; known: {sorted(TEXT_TO_IMAGE_DEFAULTS)}")
    if settings["grid"] < 1:
        raise ValueError(
            f"text_to_image: grid is the number of test captions drawn and must be >= 1, got {settings['grid']}"
        )
    codes = int(processor.vocab.num_codes)
    if codes < 256:  # the tiny VQ preset's codebook
        raise ValueError(
            f"text_to_image: the tokenizer has {codes} <code_i> tokens and the image tokenizer 256 codes; set "
            "tokenizer.demo.num_codes to 256"
        )
    data = build_text_to_image_datasets(seed, {"train": settings["train"], "test": settings["test"]})
    images = [row["image"] for row in data["train"]]
    tokenizer, info = demo_image_tokenizer(images, root, steps=settings["vq_steps"], seed=seed)
    processor.image_tokenizer = tokenizer
    length = tokenizer.config.grid_size**2 + 1
    if processor.max_target_length < length + 1:
        raise ValueError(
            f"text_to_image: a picture is {length - 1} codes and </s>, over processor.max_target_length="
            f"{processor.max_target_length}; set processor.max_target_length to at least {length + 1}"
        )
    task = Task(
        TEXT_TO_IMAGE_TASK,
        TEXT_TO_IMAGE_INSTRUCTION,
        data["train"],
        generation_kwargs={"num_return_sequences": settings["num_candidates"]},
    )
    info["num_candidates"], info["grid"] = settings["num_candidates"], settings["grid"]
    return task, data["test"], info


def text_to_image_results(
    model: Any, processor: Any, test: Any, info: Mapping[str, Any], grid_path: str | Path | None = None
) -> list[Any]:
    """`TaskResult`s of the text-to-image task: `scene_match` of the best generated candidate per test caption beside
    its chance level, and the VQ tokenizer's reconstruction error on the test scenes beside the error of replacing
    each scene by its mean colour. With `grid_path`, the first `info["grid"]` captions, their references and
    pictures as a PNG grid."""
    import torch

    from modeling_ofa.modeling_vqgan import images_to_pixel_values, reconstruction_error

    from ..report import TaskResult, bootstrap_interval

    captions = [row["caption"] for row in test]
    references = [row["image"] for row in test]
    torch.manual_seed(0)
    answers = processor.generate_answers(
        model,
        TEXT_TO_IMAGE_INSTRUCTION,
        [{"caption": caption} for caption in captions],
        batch_size=4,
        num_return_sequences=int(info["num_candidates"]),
    )
    generated = [answer["image"] for answer in answers]
    if grid_path is not None:
        shown = int(info["grid"])
        generated_grid(captions[:shown], references[:shown], generated[:shown], grid_path)
    # Each picture is read once: the value is the mean of the per-caption scores, the interval resamples them.
    scores = [scene_match([image], [caption]) for image, caption in zip(generated, captions)]
    value = float(np.mean(scores))
    low, high = bootstrap_interval(lambda p, _: float(np.mean(p)), scores, scores)
    pixels = images_to_pixel_values(references, size=processor.image_tokenizer.config.resolution)
    error = reconstruction_error(processor.image_tokenizer, pixels)
    flat = float((pixels - pixels.mean(dim=(2, 3), keepdim=True)).abs().mean())
    return [
        TaskResult(TEXT_TO_IMAGE_TASK, "scene_match", value, scene_match_chance(references, captions), True,
                   TEXT_TO_IMAGE_INSTRUCTION, low, high),
        TaskResult(TEXT_TO_IMAGE_TASK, "vq_reconstruction_l1", error, flat, False, "VQ tokenizer: decode(encode(x))"),
    ]  # fmt: skip
