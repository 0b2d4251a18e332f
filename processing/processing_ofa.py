"""`OFAProcessor`: an instruction plus a dataset row in, model inputs and labels out; generated ids back to answers.

Data flow (DESIGN section 3)::

    instruction --parse_instruction--> TaskPlan (once per task)
    row --encode(plan, row)--> one example: token ids, pixel values, fbank frames, ..., decoder ids and labels
    examples --collate--> BatchFeature the model takes
    generate() ids --post_process_generation--> text | closed-set label | boxes in pixels | objects | codes | images

Encoder side: every text-like slot (literal prompt text, TEXT, CATEGORY, PHONE, STRUCT, BOX, IMAGE_CODE) joins one
token sequence `<s> ... </s>`, as OFASys merges them; each token keeps its slot's modality id for modality experts.
IMAGE, VIDEO, AUDIO and MOTION slots become their own model inputs (at most one of each per template).

Decoder side: the slots before the target (literal text, `no_loss` slots) are a teacher-forced prefix without loss
(and a forced prefix at inference); the target slot is scored, then `</s>`. `decoder_input_ids` is `<s>` + prefix +
target, `labels` is -100 per prefix token + target + `</s>`.

Image targets: `[IMAGE:col,preprocess=image_vqgan]` (OFASys's form; `adaptor=image_vqgan` too) and `[IMAGE_CODE:col]`
holding a picture become VQ code tokens through the processor's `image_tokenizer` (an `OFAVQGANModel`, saved in the
`image_tokenizer/` subfolder of the processor's folder); each distinct image is encoded once (`ImageCodeCache`,
batched by `cache_image_targets`). Generated codes come back as PIL images (`{"image", "codes", "candidates"}`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.dynamic_module_utils import get_relative_import_files

from .answers import AnswerGenerator, target_kind
from .audio import OFAAudioFeatureExtractor
from .closed_set import CandidateTrie, ClosedSetLogitsProcessor
from .collator import collate_examples
from .image import OFAImageProcessor
from .image_generation import ImageCodeCache, as_target_image, codes_to_images, image_grid
from .instruction import MODALITIES, RepeatGroup, Slot, TaskPlan, Template, parse_instruction
from .location import bins_to_box, box_to_bins
from .motion import MotionPreprocessor
from .remote_code import make_code_self_contained
from .struct import StructPreprocessor
from .text import OFAVocab, TextPreprocessor
from .video import VideoPreprocessor

__all__ = ["IMAGE_TOKENIZER_FOLDER", "PROMPT_INSTRUCTIONS", "OFAProcessor", "ExampleError", "image_target_slot"]

IMAGE_TOKENIZER_FOLDER = "image_tokenizer"
"""The subfolder of a processor folder that holds its image tokenizer (an `OFAVQGANModel` folder)."""
_IMAGE_TARGET_NAME = "image_vqgan"  # the `preprocess` / `adaptor` value that makes an IMAGE target VQ codes

SPLITS = ("train", "eval", "test")  # corruptions (mask_ratio, noise_ratio) apply to "train" only
_SEPARATE_INPUTS = {"IMAGE": "pixel_values", "VIDEO": "video_pixel_values", "AUDIO": "audio_features"}
_SEPARATE_INPUTS["MOTION"] = "motion_features"


PROMPT_INSTRUCTIONS: dict[str, str] = {
    "image": "[IMAGE:image] [TEXT:prompt] -> [TEXT:answer]",
    "text": "[TEXT:prompt] -> [TEXT:answer]",
}
"""How `processor(images=..., text=...)` encodes a free prompt (with an image, or text only)."""


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ExampleError(ValueError):
    """A dataset row that cannot be encoded; the message names the task, the row and the column."""


def image_target_slot(target: Any) -> bool:
    """Whether a target slot is an image generated as VQ codes: `[IMAGE:col,preprocess=image_vqgan]` (or
    `adaptor=image_vqgan`). A plain `[IMAGE:col]` target is not (an error when encoded)."""
    return (
        isinstance(target, Slot)
        and target.modality == "IMAGE"
        and _IMAGE_TARGET_NAME in (target.attr("preprocess"), target.attr("adaptor"))
    )


class _Shared:
    """Holds a value that `copy.deepcopy` shares instead of copying: `ProcessorMixin.to_dict` deep-copies every
    attribute before it drops the ones it does not save, and the image tokenizer is a model (saved in its own
    folder)."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _where(task: str | None, row_index: int | None, column: str | None) -> str:
    parts = [f"task {task!r}" if task else None, f"row {row_index}" if row_index is not None else None]
    parts.append(f"column {column!r}" if column else None)
    return ", ".join(p for p in parts if p) or "input"


def _located(where: str, message: str) -> str:
    """`where: message`, naming the location once: preprocessors told `where` quote it themselves (in front, or as
    ` (where)` after their subject), and that copy is dropped."""
    if message.startswith(f"{where}: "):
        message = message[len(where) + 2 :]
    message = message.replace(f" ({where})", "").replace(f"({where}, ", "(").replace(f"{where}, ", "")
    return f"{where}: {message}"


def _as_text(value: Any, modality: str) -> str:
    """The text of a TEXT-like slot value, by the one conversion rule: a string as is, an int or a finite float (a
    CATEGORY label may be a number; numpy scalars included) as `str(value)`. Anything else would become the text of
    its Python repr (a list, a dict, bytes, a bool, NaN), so it is an error."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if isinstance(value, bool):
        raise ValueError(f"{modality} expects a string, got the bool {value}; write the label as text")
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f"{modality} expects a string, got {value} (a missing value?)")
    hint = "; join the items or pick one" if isinstance(value, (list, tuple)) else ""
    hint = "; decode it first, e.g. value.decode('utf-8')" if isinstance(value, (bytes, bytearray)) else hint
    raise ValueError(f"{modality} expects a string, got a {type(value).__name__} ({shown}){hint}")


def _as_codes(value: Any) -> list[int]:
    """Image code ids: integers, or floats that are whole numbers (1.0); fractions, bools and strings are errors
    rather than truncated."""
    array = np.asarray(value)
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not numeric:
        raise ValueError(f"image codes must be integers, got an array of {array.dtype} ({value!r:.60})")
    flat = array.reshape(-1)
    if np.issubdtype(flat.dtype, np.floating):
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            first = int(bad.argmax())
            raise ValueError(f"image codes must be whole numbers, got {float(flat[first])} at index {first}")
    return [int(c) for c in flat]


class OFAProcessor(ProcessorMixin):
    r"""
    Turns OFASys-style instructions and dataset rows into OFA model inputs, and generations into typed answers.

    Args:
        image_processor (`OFAImageProcessor`):
            Resizes and normalizes IMAGE slots and video frames.
        tokenizer (`PreTrainedTokenizerFast`):
            BPE tokenizer with the OFA layout: fairseq specials, BPE, `<mask>`, `<code_i>`, `<bin_i>`.
        feature_extractor (`OFAAudioFeatureExtractor`, *optional*):
            Log-mel frames for AUDIO slots (a default one is made if not given).
        max_image_size (`int`, *optional*):
            Boxes are normalized by this side before quantization (OFA pretraining: 512 with 384-px images).
            Defaults to the image processor's output side.
        max_source_length (`int`, defaults to 1024):
            Longest encoder token sequence, `<s>` and `</s>` included; longer ones are truncated.
        max_target_length (`int`, defaults to 1024):
            Longest decoder sequence; longer targets are truncated (`</s>` kept).
        video_num_frames (`int`, defaults to 4):
            Frames sampled uniformly from every VIDEO slot.
        motion_config (`dict`, *optional*):
            `MotionPreprocessor` settings for MOTION slots.
        struct_config (`dict`, *optional*):
            `StructPreprocessor` settings for STRUCT slots.
        task_instructions (`dict[str, str]`, *optional*):
            Named instructions saved with the processor, so a published model carries the tasks it was trained on.
        closed_sets (`dict[str, list[str]]`, *optional*):
            Candidate answers per task name, for `closed_set` targets.
        generation_defaults (`dict[str, dict]`, *optional*):
            `generate()` settings per task name (`num_beams`, `max_new_tokens`, ...), what the task was evaluated with;
            `pipeline("ofa-instruction")` and `scripts/predict.py` use them when given the task's name.
        image_tokenizer (`OFAVQGANModel`, *optional*):
            The VQ image tokenizer of image targets (pictures -> code tokens for training, generated codes -> PIL
            images). Saved into, and loaded from, the `image_tokenizer/` subfolder of the processor's folder.
    """

    def __init__(
        self,
        image_processor: OFAImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        feature_extractor: OFAAudioFeatureExtractor | None = None,
        max_image_size: int | None = None,
        max_source_length: int = 1024,
        max_target_length: int = 1024,
        video_num_frames: int = 4,
        motion_config: dict[str, Any] | None = None,
        struct_config: dict[str, Any] | None = None,
        task_instructions: dict[str, str] | None = None,
        closed_sets: dict[str, list[str]] | None = None,
        generation_defaults: dict[str, dict[str, Any]] | None = None,
        image_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if tokenizer is None:
            raise ValueError("OFAProcessor needs a tokenizer with the OFA vocabulary layout")
        image_processor = image_processor if image_processor is not None else OFAImageProcessor()
        feature_extractor = feature_extractor if feature_extractor is not None else OFAAudioFeatureExtractor()
        super().__init__(image_processor, tokenizer, feature_extractor, **kwargs)
        self.max_image_size = max_image_size
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.video_num_frames = video_num_frames
        self.motion_config = dict(motion_config or {})
        self.struct_config = dict(struct_config or {})
        self.task_instructions = dict(task_instructions or {})
        self.closed_sets = {k: list(v) for k, v in (closed_sets or {}).items()}
        self.generation_defaults = {k: dict(v) for k, v in (generation_defaults or {}).items()}
        self.text = TextPreprocessor(tokenizer)
        self.vocab: OFAVocab = self.text.vocab
        self.video = VideoPreprocessor(video_num_frames, image_processor)
        self.motion = MotionPreprocessor(**self.motion_config)
        self.struct = StructPreprocessor(**self.struct_config)
        self._image_state = _Shared()
        self.image_tokenizer = image_tokenizer
        for name, instruction in self.task_instructions.items():
            try:  # fail when the processor is made or loaded, not at the first example
                parse_instruction(instruction)
            except ValueError as err:
                raise ValueError(f"task_instructions[{name!r}] is malformed: {err}") from err

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """`ProcessorMixin.save_pretrained`, with the processor's code saved so that it loads without this package.

        The folder gets the processor's modules and an `auto_map` (the class is registered with
        `register_for_auto_class` on import), so `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works
        where `ofa-hf` is not installed. `push_to_hub=True` goes through `push_to_hub`, which saves with this method.
        """
        if push_to_hub:
            # transformers would upload inside its own save_pretrained, before the saved code is made self-contained.
            repo_id = kwargs.pop("repo_id", Path(save_directory).name)
            self.save_pretrained(save_directory)
            return self.push_to_hub(repo_id, **kwargs)
        saved = super().save_pretrained(save_directory, **kwargs)
        if self.image_tokenizer is not None:
            self.image_tokenizer.save_pretrained(Path(save_directory) / IMAGE_TOKENIZER_FOLDER)
        if self._auto_class is not None:
            module = Path(sys.modules[type(self).__module__].__file__)
            names = [module.name, *(Path(f).name for f in get_relative_import_files(module))]
            make_code_self_contained(save_directory, names)
        return saved

    @classmethod
    def get_attributes(cls) -> list[str]:
        """The sub-processors `ProcessorMixin` saves and loads by itself; the image tokenizer (an `__init__` argument
        whose name says "tokenizer") is a model, saved in its own subfolder by `save_pretrained`."""
        return [name for name in super().get_attributes() if name != "image_tokenizer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """`ProcessorMixin.from_pretrained`, plus the image tokenizer of the folder's `image_tokenizer/` subfolder when
        it has one (or the `image_tokenizer=` given)."""
        image_tokenizer = kwargs.pop("image_tokenizer", None)
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if image_tokenizer is None:
            image_tokenizer = _load_image_tokenizer(pretrained_model_name_or_path, kwargs)
        processor.image_tokenizer = image_tokenizer
        return processor

    # ------------------------------------------------------------------------------------------------------------
    # Image targets
    # ------------------------------------------------------------------------------------------------------------

    @property
    def image_tokenizer(self) -> Any:
        """The VQ image tokenizer (`OFAVQGANModel`) of image targets, or `None`."""
        return self._image_state.value[0]

    @image_tokenizer.setter
    def image_tokenizer(self, model: Any) -> None:
        if model is not None and not (hasattr(model, "encode") and hasattr(model, "decode")):
            raise TypeError(f"image_tokenizer must be an OFAVQGANModel, got {type(model).__name__}")
        self._image_state.value = (model, ImageCodeCache())  # codes of another tokenizer are not this one's

    @property
    def image_code_cache(self) -> ImageCodeCache:
        """The codes of the target images encoded so far (by the current `image_tokenizer`)."""
        return self._image_state.value[1]

    def _require_image_tokenizer(self, what: str) -> Any:
        if self.image_tokenizer is None:
            raise ValueError(
                f"{what} needs an image tokenizer, and the processor has none: pass OFAProcessor(..., "
                "image_tokenizer=OFAVQGANModel...) or set processor.image_tokenizer (saved processors keep it in their "
                f"{IMAGE_TOKENIZER_FOLDER}/ subfolder)"
            )
        return self.image_tokenizer

    @property
    def image_grid(self) -> tuple[int, int]:
        """The (h, w) code grid of one image target (the image tokenizer's)."""
        return image_grid(self._require_image_tokenizer("an image target"))

    def image_codes(self, images: Sequence[Any], batch_size: int = 32) -> list[list[int]]:
        """Row-major VQ codes of pictures (PIL images or uint8 (H, W, 3) arrays), through the cache: each distinct
        image is encoded once, `batch_size` at a time."""
        tokenizer = self._require_image_tokenizer("encoding an image target")
        pictures = []
        for i, image in enumerate(images):
            picture = as_target_image(image)
            if picture is None:
                raise ValueError(f"image {i} is a {type(image).__name__}, not a PIL image or a uint8 (H, W, 3) array")
            pictures.append(picture)
        return self.image_code_cache.encode(pictures, tokenizer, batch_size=batch_size)

    def decode_image_codes(self, codes: Sequence[Sequence[int]]) -> list[Any]:
        """Row-major codes of `h * w` each -> PIL images (`None` for a row of another length)."""
        import torch

        tokenizer = self._require_image_tokenizer("decoding generated image codes")
        height, width = image_grid(tokenizer)
        images: list[Any] = [None] * len(codes)
        whole = [i for i, row in enumerate(codes) if len(row) == height * width]
        if whole:
            grid = torch.tensor([list(codes[i]) for i in whole]).view(-1, height, width)  # (B, h*w) -> (B, h, w)
            for i, image in zip(whole, codes_to_images(grid, tokenizer)):
                images[i] = image
        return images

    def cache_image_targets(
        self, plan: TaskPlan | str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 32
    ) -> int:
        """Encode the target pictures of `rows` (a dataset or a list of rows) once, in batches, before training reads
        them one by one; returns how many distinct images are cached. Rows whose target holds codes are skipped."""
        plan = self.plan(plan)
        columns = {
            t.target_slot.column
            for t in plan.templates
            if isinstance(t.target_slot, Slot)
            and (image_target_slot(t.target_slot) or t.target_slot.modality == "IMAGE_CODE")
        }
        if not columns:
            return len(self.image_code_cache)
        pending: list[Any] = []
        for row in rows:
            for column in columns:
                value = row.get(column) if isinstance(row, Mapping) else None
                if as_target_image(value) is not None:
                    pending.append(value)
            if len(pending) >= batch_size:
                self.image_codes(pending, batch_size=batch_size)
                pending = []
        if pending:
            self.image_codes(pending, batch_size=batch_size)
        return len(self.image_code_cache)

    # ------------------------------------------------------------------------------------------------------------
    # Plans
    # ------------------------------------------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) images are resized to."""
        size = self.image_processor.size
        return int(size["width"]), int(size["height"])

    @property
    def box_normalizer(self) -> int:
        return self.max_image_size or max(self.image_size)

    def plan(self, instruction: str | TaskPlan) -> TaskPlan:
        """A `TaskPlan` from an instruction, a saved task name, or a plan (returned as is)."""
        if isinstance(instruction, TaskPlan):
            return instruction
        if instruction in self.task_instructions:
            instruction = self.task_instructions[instruction]
        return parse_instruction(instruction)

    # ------------------------------------------------------------------------------------------------------------
    # Encoding
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        instruction: str | TaskPlan | None = None,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        images: Any = None,
        text: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        audio: Any = None,
        videos: Any = None,
        split: str = "eval",
        seed: int = 0,
        task: str | None = None,
        with_targets: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode one row (a mapping) or a list of rows and collate them into model inputs.

        Three forms:

        - `processor(instruction, row_or_rows)`: the instruction (or a saved task name) and dataset rows.
        - `processor(instruction, images=..., text=..., audio=..., videos=...)`: the standard keyword form, as
          Florence-2's processor takes a task and its inputs. The keywords fill the encoder slots of the
          instruction's first template by modality (`images` -> IMAGE, `audio` -> AUDIO, `videos` -> VIDEO, `text`
          -> the TEXT / CATEGORY / PHONE slots in order). Each keyword is one value (one row) or a list with one
          value per row; a row's `text` is a string, or a tuple of strings for several text slots.
        - `processor(images=..., text=...)` without an instruction: the transformers processor call that
          `pipeline("image-text-to-text")` makes: each prompt (with its image, if any) is encoded with
          `PROMPT_INSTRUCTIONS` (the prompt is the encoder text, the answer free text).

        `return_tensors="pt"` and `padding` are accepted: batches are always padded tensors.
        """
        unknown = sorted(set(kwargs) - {"return_tensors", "padding"})
        if unknown or kwargs.get("return_tensors") not in (None, "pt"):
            raise TypeError(f"OFAProcessor got unsupported arguments {unknown or kwargs}; batches are torch tensors")
        inputs = {"IMAGE": images, "AUDIO": audio, "VIDEO": videos, "TEXT": text}
        if any(value is not None for value in inputs.values()):
            if rows is not None:
                raise TypeError("pass rows, or the inputs as images= / text= / audio= / videos=, not both")
            if instruction is None:
                if audio is not None or videos is not None:
                    raise TypeError("audio= and videos= fill a task's slots: pass the instruction (or task name) too")
                instruction, rows = self._prompt_rows(images, text)
            else:
                instruction = self._first_template(instruction)
                rows = self._keyword_rows(instruction, inputs)
        elif instruction is None or rows is None:
            raise TypeError("OFAProcessor needs an instruction and rows: processor(instruction, row_or_rows)")
        plan = self.plan(instruction)
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        examples = [
            self.encode(plan, row, split=split, seed=seed, row_index=i, task=task, with_targets=with_targets)
            for i, row in enumerate(rows)
        ]
        return self.collate(examples)

    def _first_template(self, instruction: str | TaskPlan) -> TaskPlan:
        plan = self.plan(instruction)
        return dataclasses.replace(plan, templates=plan.templates[:1])

    @staticmethod
    def _keyword_rows(plan: TaskPlan, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows of a keyword call (`images=`, `text=`, ...): the first template's encoder slots, by modality."""
        keyword = {"IMAGE": "images", "AUDIO": "audio", "VIDEO": "videos", "TEXT": "text"}
        text_like = ("TEXT", "CATEGORY", "PHONE")
        slots: dict[str, list[str]] = {name: [] for name in keyword}
        for slot in plan.templates[0].data_slots:
            if not slot.is_source or any(slot.column in columns for columns in slots.values()):
                continue
            group = "TEXT" if slot.modality in text_like else slot.modality
            if group not in keyword:
                raise ValueError(
                    f"the {slot.modality} slot {slot.column!r} of {plan.instruction!r} has no keyword input; pass "
                    "rows (column -> value mappings) instead"
                )
            slots[group].append(slot.column)
        per_row: dict[str, list[Any]] = {}
        for group, value in inputs.items():
            name = keyword[group]
            if value is None:
                if slots[group]:
                    raise ValueError(f"{plan.instruction!r} reads {group} slots {slots[group]}: pass {name}=")
                continue
            if not slots[group]:
                raise ValueError(f"{name}= was given but {plan.instruction!r} has no {group} slot")
            if group == "TEXT":
                values = [value] if isinstance(value, (str, tuple)) else list(value)
            elif group == "AUDIO" and isinstance(value, (list, tuple)) and value and isinstance(value[0], Real):
                values = [value]  # one waveform given as a list of samples
            else:  # a list is a batch; [[item], ...] (one item per row, as pipelines pass them) is flattened
                values = [v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v for v in _as_list(value)]
            per_row[group] = values
        sizes = {keyword[group]: len(values) for group, values in per_row.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the keyword inputs give different numbers of rows: {sizes}")
        rows: list[dict[str, Any]] = [{} for _ in range(next(iter(sizes.values())))]
        for group, values in per_row.items():
            for index, (row, value) in enumerate(zip(rows, values)):
                items = value if group == "TEXT" and isinstance(value, tuple) else (value,)
                if len(items) != len(slots[group]):
                    raise ValueError(
                        f"row {index}: {len(items)} {keyword[group]} value(s) for the {group} slots {slots[group]}"
                    )
                row.update(zip(slots[group], items))
        return rows

    @staticmethod
    def _prompt_rows(images: Any, text: str | Sequence[str] | None) -> tuple[str, list[dict[str, Any]]]:
        """The instruction and rows of a standard `images=`, `text=` call: one row per prompt."""
        if text is None:
            raise ValueError("OFA answers a prompt: pass text= (e.g. 'what does the image describe?') with the images")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a prompt string or a list of them, got {text!r}")
        if images is None:
            return PROMPT_INSTRUCTIONS["text"], [{"prompt": t} for t in texts]
        # One image per prompt; the pipeline passes nested lists ([[image], ...]) for one image per prompt.
        flat = [i[0] if isinstance(i, (list, tuple)) and len(i) == 1 else i for i in _as_list(images)]
        if len(flat) != len(texts):
            raise ValueError(f"{len(flat)} image(s) for {len(texts)} prompt(s): OFA takes one image per prompt")
        return PROMPT_INSTRUCTIONS["image"], [{"image": i, "prompt": t} for i, t in zip(flat, texts)]

    def post_process_image_text_to_text(self, generated_outputs: Any, skip_special_tokens: bool = True, **kwargs: Any):
        """Generated (or input) ids (B, T) -> one string per row, as `pipeline("image-text-to-text")` decodes them.

        OFA's special tokens (`<s>`, `</s>`, padding, location bins, image codes) are always dropped: they are not text.
        """
        rows = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        return [self.text.decode([t for t in self._target_ids(list(ids), {}) if not self._non_text(t)]) for ids in rows]

    def _non_text(self, token: int) -> bool:
        return self.vocab.is_bin(token) or self.vocab.is_code(token) or token == self.vocab.bos_id

    def collate(self, examples: Sequence[dict[str, Any]]) -> BatchFeature:
        """Pad and stack encoded examples (see `processing.collator.collate_examples`)."""
        return collate_examples(examples, self.vocab.pad_id)

    def encode(
        self,
        plan: TaskPlan | str,
        row: Mapping[str, Any],
        *,
        split: str = "eval",
        seed: int = 0,
        row_index: int | None = None,
        task: str | None = None,
        with_targets: bool | None = None,
    ) -> dict[str, Any]:
        """Encode one dataset row with one of the plan's templates (drawn from `seed` and `row_index`).

        Args:
            plan: The task's plan (or an instruction).
            row: Column name -> value. Encoder columns are required; decoder columns only for targets.
            split: `"train"` applies the corrupting attributes (`mask_ratio`, `noise_ratio`); others do not.
            seed, row_index: Make the template choice and the corruptions reproducible per example.
            task: The task's name, for error messages.
            with_targets: Encode the target (labels). Default: when the row has the target columns.

        Returns:
            A dict of per-example arrays (`input_ids`, `input_modality_ids`, `pixel_values`, ..., `decoder_input_ids`,
            `labels`) and `meta` (what post-processing needs: template, prefix length, image sizes).
        """
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        plan = self.plan(plan)
        rng = np.random.default_rng([seed, row_index if row_index is not None else 0])
        template_index = int(rng.integers(len(plan.templates)))
        template = plan.templates[template_index]
        if with_targets is None:
            with_targets = all(col in row for col in template.target_columns)
        ctx = _Context(self, row, split, rng, task, row_index)
        try:
            example = self._encode_sides(template, ctx, with_targets)
        except ExampleError:
            raise
        except (ValueError, TypeError, KeyError, OSError) as err:
            raise ExampleError(_located(_where(task, row_index, ctx.column), str(err))) from err
        example["meta"]["template_index"] = template_index
        return example

    def encode_rows(
        self,
        plan: TaskPlan | str,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> tuple[list[dict[str, Any]], int]:
        """Encode many rows; with `on_error="skip"` bad rows are skipped, counted and warned about."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r} must be 'raise' or 'skip'")
        plan, examples, skipped = self.plan(plan), [], 0
        for i, row in enumerate(rows):
            try:
                examples.append(self.encode(plan, row, row_index=i, **kwargs))
            except ExampleError as err:
                if on_error == "raise":
                    raise
                skipped += 1
                warnings.warn(f"skipped: {err}", stacklevel=2)
        return examples, skipped

    def _encode_sides(self, template: Template, ctx: _Context, with_targets: bool) -> dict[str, Any]:
        example: dict[str, Any] = {"meta": {}}
        target = template.target_slot
        ctx.infilling = image_target_slot(target) or (isinstance(target, Slot) and target.modality == "IMAGE_CODE")
        # Non-text encoder slots first: a BOX slot needs the size of the image it refers to.
        for slot in template.slots:
            if slot.is_source and slot.modality in _SEPARATE_INPUTS:
                ctx.encode_separate(slot, example)
        tokens, modality_ids = ctx.encode_text_run(template.encoder, is_source=True)
        body = tokens[: self.max_source_length - 2]
        example["input_ids"] = [self.vocab.bos_id, *body, self.vocab.eos_id]
        example["input_modality_ids"] = [0, *modality_ids[: len(body)], 0]

        target = template.target_slot
        if target is None:
            raise ValueError(f"the instruction {template.text!r} has no target slot after '->'")
        decoder = list(template.decoder)
        position = decoder.index(target)
        if any(not getattr(el, "is_plaintext", False) for el in decoder[position + 1 :]):
            raise ValueError("slots after the target slot are not supported; the target must be the last data slot")
        prefix, _ = ctx.encode_text_run(decoder[:position], is_source=False)
        target_modality = (target.data_slots[0] if isinstance(target, RepeatGroup) else target).modality
        # An image target is generated as codes: the decoder runs in image-code mode (2-D code positions).
        codes = target_modality == "IMAGE_CODE" or image_target_slot(target)
        example["decoder_modality_id"] = MODALITIES.index("IMAGE_CODE" if codes else target_modality)
        example["code_mask"] = codes
        example["meta"].update(prefix_length=len(prefix), target_modality=target_modality)
        if codes:  # what CLIP re-ranking compares the pictures with: the encoder's text values
            example["meta"]["caption"] = " ".join(
                str(ctx.row[slot.column])
                for slot in template.encoder
                if isinstance(slot, Slot)
                and slot.modality == "TEXT"
                and not slot.is_plaintext
                and slot.column in ctx.row
            )
        if not with_targets:
            example["decoder_input_ids"] = [self.vocab.bos_id, *prefix]
            return example
        target_inputs, target_labels = ctx.encode_target(target, first=not prefix)
        budget = self.max_target_length - 1 - len(prefix)
        if budget < 1:
            raise ValueError(f"the decoder prefix ({len(prefix)} tokens) leaves no room under max_target_length")
        target_inputs, target_labels = target_inputs[:budget], target_labels[:budget]
        example["decoder_input_ids"] = [self.vocab.bos_id, *prefix, *target_inputs]
        example["labels"] = [-100] * len(prefix) + [*target_labels, self.vocab.eos_id]
        return example

    # ------------------------------------------------------------------------------------------------------------
    # Generation helpers and post-processing
    # ------------------------------------------------------------------------------------------------------------

    def closed_set_trie(
        self,
        candidates: Iterable[str],
        plan: TaskPlan | str | None = None,
        *,
        template_index: int = 0,
        prefix_length: int = 0,
    ) -> CandidateTrie:
        """The trie of a closed answer set, each answer encoded exactly as the target slot encodes it in training
        (its `uncased`/`no_punctuation`/`max_length` attributes and the leading-space rule), then `</s>`."""
        target = self.plan(plan).templates[template_index].target_slot if plan is not None else None
        attrs = (
            {}
            if not isinstance(target, Slot)
            else dict(
                uncased=bool(target.attr("uncased", False)),
                no_punctuation=bool(target.attr("no_punctuation", False)),
                max_length=target.attr("max_length"),
            )
        )
        leading_space = prefix_length == 0 or not isinstance(target, Slot) or target.space_before
        if isinstance(candidates, str) or not candidates:
            raise ValueError(f"candidates must be a non-empty list of answers, got {candidates!r}")
        sequences = []
        for answer in candidates:
            try:
                sequences.append([*self.text.encode(answer, leading_space=leading_space, **attrs), self.vocab.eos_id])
            except (TypeError, ValueError) as err:
                raise ValueError(f"closed-set candidate {answer!r}: {err}") from err
        return CandidateTrie(sequences)

    def closed_set_logits_processor(
        self,
        candidates: Iterable[str],
        prefix_length: int = 0,
        *,
        plan: TaskPlan | str | None = None,
        template_index: int = 0,
    ) -> ClosedSetLogitsProcessor:
        """A `LogitsProcessor` that lets `generate()` produce only one of `candidates` (after a forced prefix of
        `prefix_length` tokens); give the task's `plan` so the answers are tokenized as its target slot is."""
        trie = self.closed_set_trie(candidates, plan, template_index=template_index, prefix_length=prefix_length)
        return ClosedSetLogitsProcessor(
            trie, eos_token_id=self.vocab.eos_id, pad_token_id=self.vocab.pad_id, prefix_length=prefix_length
        )

    def generate_answers(
        self,
        model: Any,
        task_or_plan: TaskPlan | str,
        rows: Iterable[Mapping[str, Any]],
        *,
        candidates: Iterable[str] | None = None,
        template: int | None = 0,
        batch_size: int = 8,
        progress: bool = False,
        **generate_kwargs: Any,
    ) -> list[Any]:
        """Typed answers of `rows` for a task (a saved name, an instruction or a plan), in row order.

        The one answer path ([`processing.answers.AnswerGenerator`]): rows encoded without targets, grouped by
        template and decoder prefix, a closed set constrained to `candidates` (default: the saved
        `closed_sets[task]`), `generate` in batches of `batch_size`, post-processed (see `post_process_generation`).
        A saved task's `generation_defaults` apply under `generate_kwargs`. `template=0` is OFASys's inference
        choice (the first template); `None` draws each row's template as `encode` does.
        """
        task = task_or_plan if isinstance(task_or_plan, str) and task_or_plan in self.task_instructions else None
        settings = {**self.generation_defaults.get(task, {}), **generate_kwargs} if task else dict(generate_kwargs)
        generator = AnswerGenerator(
            self, task_or_plan, task=task, candidates=candidates, template=template, batch_size=batch_size,
            generate_kwargs=settings, progress=progress,
        )  # fmt: skip
        return generator.generate(model, rows)

    def post_process_generation(
        self,
        sequences: Any,
        plan: TaskPlan | str,
        metas: Sequence[Mapping[str, Any]] | None = None,
        *,
        candidates: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Generated ids (B, T) -> one typed answer per row.

        The answer's keys follow the target slot: `{"text"}` (TEXT, STRUCT, PHONE), `{"label", "in_set"}` (closed set
        or CATEGORY), `{"box"}` (BOX, original-image pixels), `{"objects": [{"box", "label"}]}` (a repeated BOX/TEXT
        group), `{"codes"}` (IMAGE_CODE), `{"image", "codes"}` (an `image_vqgan` IMAGE target: a PIL image decoded by
        the image tokenizer, `None` when the codes do not fill its grid). `metas` are the examples' `meta` dicts
        (image sizes, prefix length, template); without them the first template, no prefix and the processor's image
        size are assumed.
        """
        plan = self.plan(plan)
        rows = sequences.tolist() if hasattr(sequences, "tolist") else [list(r) for r in sequences]
        candidate_set = set(candidates) if candidates is not None else None
        answers = []
        for i, ids in enumerate(rows):
            meta = dict(metas[i]) if metas is not None else {}
            template = plan.templates[meta.get("template_index", 0)]
            answers.append(self._answer(self._target_ids(ids, meta), template.target_slot, meta, candidate_set))
        pictures = [i for i, answer in enumerate(answers) if "image" in answer]
        if pictures:  # decoded together: one tokenizer call for the batch
            for i, image in zip(pictures, self.decode_image_codes([answers[i]["codes"] for i in pictures])):
                answers[i]["image"] = image
        return answers

    def _target_ids(self, ids: list[int], meta: Mapping[str, Any]) -> list[int]:
        """Strip `<s>`, the forced prefix, and everything from `</s>` on."""
        if ids and ids[0] == self.vocab.bos_id:
            ids = ids[1:]
        ids = ids[meta.get("prefix_length", 0) :]
        if self.vocab.eos_id in ids:
            ids = ids[: ids.index(self.vocab.eos_id)]
        return [t for t in ids if t != self.vocab.pad_id]

    def _answer(self, ids: list[int], target, meta: Mapping[str, Any], candidates: set[str] | None):
        kind = target_kind(target)  # the answer's keys, per `TARGET_KINDS`
        if kind == "objects":
            return {"objects": self._objects(ids, meta)}
        if kind == "box":
            bins = [t - self.vocab.bin_offset for t in ids if self.vocab.is_bin(t)][:4]
            return {"box": self._bins_to_box(bins, meta) if len(bins) == 4 else None}
        if kind == "codes":
            return {"codes": [t - self.vocab.code_offset for t in ids if self.vocab.is_code(t)]}
        if kind == "image":  # the picture is decoded for the whole batch in `post_process_generation`
            return {"image": None, "codes": [t - self.vocab.code_offset for t in ids if self.vocab.is_code(t)]}
        text = self.text.decode([t for t in ids if not (self.vocab.is_bin(t) or self.vocab.is_code(t))])
        if kind == "label":
            return {"label": text, "in_set": None if candidates is None else text in candidates}
        return {"text": text}

    def _bins_to_box(self, bins: list[int], meta: Mapping[str, Any]) -> list[float]:
        width, height = meta.get("image_size", self.image_size)
        box = bins_to_box(
            bins,
            image_size=(width, height),
            resized_size=meta.get("resized_size", self.image_size),
            max_image_size=self.box_normalizer,
            num_bins=self.vocab.num_bins,
        )
        return [float(v) for v in box]

    def _objects(self, ids: list[int], meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Detection output: runs of 4 bins, each followed by label tokens up to the next bin."""
        objects, i = [], 0
        while i + 4 <= len(ids):
            if not all(self.vocab.is_bin(t) for t in ids[i : i + 4]):
                i += 1
                continue
            bins = [t - self.vocab.bin_offset for t in ids[i : i + 4]]
            j = i + 4
            while j < len(ids) and not self.vocab.is_bin(ids[j]):
                j += 1
            objects.append({"box": self._bins_to_box(bins, meta), "label": self.text.decode(ids[i + 4 : j])})
            i = j
        return objects


class _Context:
    """Encoding state of one row: the processor, the row, the split, the example's random stream, error context."""

    def __init__(self, processor: OFAProcessor, row, split: str, rng, task: str | None, row_index: int | None):
        self.p, self.row, self.split, self.rng = processor, row, split, rng
        self.task, self.row_index, self.column = task, row_index, None
        self.image_size: tuple[int, int] | None = None  # (width, height) of the row's image, for BOX slots
        self.infilling = False  # the target is an image (set by `_encode_sides` before the encoder slots)

    def value(self, slot: Slot, item: int | None = None) -> Any:
        self.column = slot.column
        if slot.column not in self.row:
            raise ExampleError(
                f"{_where(self.task, self.row_index, slot.column)}: the row has no column {slot.column!r} "
                f"(it has {sorted(self.row)})"
            )
        value = self.row[slot.column]
        if item is not None:
            value = value[item]
        if value is None:
            raise ExampleError(f"{_where(self.task, self.row_index, slot.column)}: the value is None")
        return value

    @property
    def where(self) -> str:
        return _where(self.task, self.row_index, self.column)

    # Separate model inputs -------------------------------------------------------------------------------------

    def encode_separate(self, slot: Slot, example: dict[str, Any]) -> None:
        key = _SEPARATE_INPUTS[slot.modality]
        if key in example:
            raise ValueError(f"only one {slot.modality} slot per instruction is supported")
        value = self.value(slot)
        if slot.modality == "IMAGE":
            if isinstance(value, (list, tuple)):
                # The image processor would read a list as a batch, and only its first image would be used.
                raise ValueError(f"an IMAGE slot holds one image, got a {type(value).__name__} of {len(value)}")
            out = self.p.image_processor(value, where=self.where)
            example["pixel_values"] = out["pixel_values"][0]
            height, width = (int(v) for v in out["original_sizes"][0])
            self.image_size = (width, height)
            example["meta"].update(image_size=(width, height), resized_size=self.p.image_size)
            ratio = slot.attr("mask_ratio", 0.0)
            # A corruption of training inputs; with an image target (infilling) the hidden centre is the task
            # itself, so it is masked on every split.
            if ratio and (self.split == "train" or self.infilling):
                example["pixel_values"] = _mask_image_centre(example["pixel_values"], ratio)
        elif slot.modality == "VIDEO":
            out = self.p.video(value, where=self.where)
            example["video_pixel_values"] = out["pixel_values"]
            example["video_frame_indices"] = np.arange(len(out["frame_indices"]))
        elif slot.modality == "AUDIO":
            out = self.p.feature_extractor(
                [value], max_length=slot.attr("max_length"), where=self.where, return_tensors="np"
            )
            length = int(out["attention_mask"][0].sum())
            example["audio_features"] = out["input_features"][0][:length]
        else:  # MOTION
            out = self.p.motion(
                value,
                max_length=slot.attr("max_length"),
                min_length=slot.attr("min_length"),
                sample_rate=slot.attr("sample_rate"),
                soft_trim=slot.attr("soft_trim"),
                window=bool(slot.attr("window", False)),
                # Random sampling augments training; other splits see the deterministic (phase 0, centred) clip.
                rng=self.rng if self.split == "train" else None,
                where=self.where,
            )
            example["motion_features"] = out["motion_features"]

    # Token runs ------------------------------------------------------------------------------------------------

    def encode_text_run(self, elements, *, is_source: bool) -> tuple[list[int], list[int]]:
        """Concatenate the token slots of one side (skipping IMAGE/VIDEO/AUDIO/MOTION); ids and modality ids."""
        tokens: list[int] = []
        modality_ids: list[int] = []
        for element in elements:
            slots = [element] if isinstance(element, Slot) else None
            if slots is None:  # a repeat group: its slots once per item of its list columns
                for item in range(self.group_length(element)):
                    for slot in element.slots:
                        ids = self.slot_tokens(slot, first=not tokens, item=item, noisy=is_source)
                        tokens += ids
                        modality_ids += [MODALITIES.index(slot.modality)] * len(ids)
                continue
            if element.modality in _SEPARATE_INPUTS:
                if not is_source:
                    raise ValueError(f"{element.modality} slots cannot be decoder inputs")
                continue
            ids = self.slot_tokens(element, first=not tokens, noisy=is_source)
            tokens += ids
            modality_ids += [MODALITIES.index(element.modality)] * len(ids)
        return tokens, modality_ids

    def group_length(self, group: RepeatGroup) -> int:
        lengths = {}
        for slot in group.data_slots:
            value = self.value(slot)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"a repeated slot needs a list value, got {type(value).__name__}")
            lengths[slot.column] = len(value)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the lists of a repeated group differ in length: {lengths}")
        return next(iter(lengths.values()))

    def slot_tokens(self, slot: Slot, *, first: bool, item: int | None = None, noisy: bool = True) -> list[int]:
        """Token ids of one token slot (no bos/eos). `first`: the first text of its side (leading-space rule)."""
        p = self.p
        leading_space = first or slot.space_before
        if slot.is_plaintext:
            return p.text.encode(slot.text, leading_space=leading_space)
        value = self.value(slot, item)
        if slot.modality == "BOX":
            if self.image_size is None:
                raise ValueError("a BOX slot needs an IMAGE slot in the same instruction (its pixels give the box)")
            bins = box_to_bins(
                _as_box(value),
                image_size=self.image_size,
                resized_size=p.image_size,
                max_image_size=p.box_normalizer,
                num_bins=p.vocab.num_bins,
            )
            return [p.vocab.bin_id(b) for b in bins]
        if slot.modality == "IMAGE_CODE" or image_target_slot(slot):
            picture = as_target_image(value)
            if picture is None and slot.modality == "IMAGE":
                raise ValueError(
                    f"an image target holds a picture (a PIL image or a uint8 (H, W, 3) array), got a "
                    f"{type(value).__name__}"
                )
            codes = p.image_codes([picture])[0] if picture is not None else _as_codes(value)
            codes = codes[: slot.attr("length")]
            return [p.vocab.code_id(c) for c in codes]
        if slot.modality == "STRUCT":
            value = p.struct.linearize(value, uncased=bool(slot.attr("uncased", False)), where=self.where)
        else:
            value = _as_text(value, slot.modality)
        ids = p.text.encode(
            value,
            uncased=bool(slot.attr("uncased", False)),
            no_punctuation=bool(slot.attr("no_punctuation", False)),
            max_length=slot.attr("max_length"),
            leading_space=leading_space,
        )
        if noisy and self.split == "train":
            if slot.attr("mask_ratio"):
                ids = p.text.mask_spans(ids, slot.attr("mask_ratio"), self.rng)
            if slot.attr("noise_ratio"):
                ids = p.text.add_noise(ids, slot.attr("noise_ratio"), self.rng)
        return ids

    def encode_target(self, target, *, first: bool) -> tuple[list[int], list[int]]:
        """Decoder inputs and labels of the target slot; `noise_ratio` noises the inputs only (OFASys)."""
        if isinstance(target, RepeatGroup):
            tokens, _ = self.encode_text_run([target], is_source=False)
            return tokens, tokens
        if target.modality in _SEPARATE_INPUTS and not image_target_slot(target):
            hint = (
                f"[IMAGE:{target.column},preprocess=image_vqgan] (VQ codes of the picture) or [IMAGE_CODE:column]"
                if target.modality == "IMAGE"
                else "[IMAGE_CODE:column] (VQ code ids) or [IMAGE:column,preprocess=image_vqgan]"
            )
            raise ValueError(f"{target.modality} targets are not generated by this model; image targets are {hint}")
        labels = self.slot_tokens(target, first=first, noisy=False)
        inputs = labels
        if self.split == "train" and target.attr("noise_ratio"):
            inputs = self.p.text.add_noise(labels, target.attr("noise_ratio"), self.rng)
        return inputs, labels


def _as_box(value: Any) -> list[float]:
    """A box from a sequence of four numbers or an OFASys string `"x0,y0,x1,y1"`."""
    if isinstance(value, str):
        value = value.replace(" ", "").split(",")
    if isinstance(value, (bytes, Mapping)) or any(isinstance(v, (bool, np.bool_)) for v in value):
        raise ValueError(f"a box is four numbers (x0, y0, x1, y1) or 'x0,y0,x1,y1', got {value!r:.60}")
    return [float(v) for v in value]


def _mask_image_centre(pixels, ratio: float):
    """Image infilling: zero the central `ratio` of each side (OFASys `mask_ratio` on IMAGE slots)."""
    pixels = pixels.clone()
    _, height, width = pixels.shape
    h, w = int(height * ratio), int(width * ratio)
    top, left = (height - h) // 2, (width - w) // 2
    pixels[:, top : top + h, left : left + w] = 0
    return pixels


def _load_image_tokenizer(path: str | os.PathLike, kwargs: Mapping[str, Any]) -> Any:
    """The image tokenizer saved in `path`'s `image_tokenizer/` subfolder (a local folder or a Hub repository), or
    `None` when there is none."""
    from transformers.utils import cached_file

    options = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    config = cached_file(
        path,
        "config.json",
        subfolder=IMAGE_TOKENIZER_FOLDER,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **options,
    )
    if config is None:
        return None
    try:
        from modeling_ofa.modeling_vqgan import OFAVQGANModel
    except ImportError:  # a folder loaded with its saved code, where this package is not installed
        from transformers import AutoModel

        return AutoModel.from_pretrained(
            Path(config).parent, trust_remote_code=bool(kwargs.get("trust_remote_code", False))
        ).eval()
    return OFAVQGANModel.from_pretrained(Path(config).parent).eval()
