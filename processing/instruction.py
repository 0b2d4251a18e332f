# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""OFASys-compatible one-line task instructions, parsed into a `TaskPlan`.

An instruction says what a task feeds the encoder and what the decoder must produce, for example::

    [IMAGE:img] what does the image describe? -> [TEXT:cap]

Grammar (everything not listed here is literal prompt text, tokenized as text):

- `input -> output`: exactly one `->` per template. One side may be empty (encoder-only or decoder-only use, as in
  OFASys), not both. `|||` separates alternative templates; one is drawn per example (`TaskPlan.choose`).
- A slot is `[MODALITY]`, `[MODALITY:column]` or `[MODALITY:column,attr,attr=value,...]`. MODALITY is one of
  `MODALITIES` (upper-case). The column matches `[_A-Za-z0-9]+`; without one, the column is the slot's position
  among the template's elements (literal pieces included) as a string, as OFASys numbers them. Attributes are listed
  in `ATTRIBUTES` (one table: type, valid range, sides and modalities, meaning); values are typed.
- Literal text between slots is stripped at its ends (its inner spacing is kept) and becomes a plain-text slot.
  `Slot.space_before` records whether whitespace preceded an element, so the text tokenizer can apply the BPE
  leading-space convention and join pieces exactly as written.
- A repeat group `( ... )*` holds one or more slots and optional literal text, e.g. `-> ( [BOX:boxes] [TEXT:labels] )*`
  for detection: every column in the group holds a list, all of equal length, and the group is repeated once per
  element. Whitespace may separate `)` and `*`. Groups work on both sides; they cannot nest, must contain a data slot,
  and a column is either always inside groups (a list) or never. Parentheses not closed by `)*` are literal text.

Stricter than OFASys, which keeps anything its slot regex does not match as literal text (so typos silently become
prompt words):

- `[` followed by a word that is a modality name, or by an upper-case word and then `:`, `,` or `]`, starts a slot;
  a malformed one (`[IMAG:x]`, `[IMAGE:x`, `[TEXT:a b]`, `[TEXT:x,]`, `[text:x]`, `[BOUNDING_BOX]`, `[SEP]`) is an
  error. Other bracketed text, such as `[table name]`, stays literal if its brackets balance and hold no slot.
- Unbalanced `[` or `]` is an error, as is `*` right after a slot (write `( [BOX] )*`), `-->`, and a run of four or
  more `|`.
- Unknown attributes, duplicated attributes, values of the wrong type or out of range, flags given a value and valued
  attributes given none are errors; so is an attribute on a side or modality where no preprocessor reads it. The
  OFASys attributes this processor does not implement (`ATTRIBUTES[name].not_supported` says why) are errors too,
  "attribute 'x' is not supported yet", rather than accepted and ignored: every attribute a plan carries has an effect.
  `closed_set` is valid only on the target slot (the last decoder data slot or group) and the target slot cannot be
  `no_loss`; a decoder data slot before the target must be `no_loss` (only the target is scored here, whereas OFASys
  also scores unmarked ones). `add_bos`/`add_eos` are accepted with a `FutureWarning` and dropped, since OFASys
  ignores them.
- Escapes: a backslash makes the next character literal if it is one of ``\\ [ ] ( ) * | - >``, so `\\[SEP\\]`,
  `\\(a\\)*` and `a \\-> b` are literal text. Any other backslash is itself literal.

Every malformed instruction raises `InstructionError` (a `ValueError`) whose message quotes the instruction with a
caret under the offending character: the quoted line ends at any line break `str.splitlines` knows (`\\r`,
`\\u2028`, ...), invisible characters are escaped and a long line is cut to a window around the caret. Parsing takes
time linear in the length of the instruction (literal text is lexed in runs; no check compares all pairs).
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# Slot modalities: OFASys's nine `ModalityType` names in their enum order, then IMAGE_CODE (VQ image codes). The
# model numbers positions by the same table, so it lives with the model's configuration.
from modeling_ofa.configuration_ofa import MODALITIES

__all__ = [
    "ATTRIBUTES",
    "MODALITIES",
    "AttributeSpec",
    "InstructionError",
    "RepeatGroup",
    "Slot",
    "TaskPlan",
    "Template",
    "parse_instruction",
]


AttrValue = bool | int | float | str

_ENCODER = "encoder"
_DECODER = "decoder"
_BOTH_SIDES = frozenset({_ENCODER, _DECODER})
_TEXT_GROUP = frozenset({"TEXT", "BOX", "PHONE", "STRUCT", "CATEGORY"})  # merged into one token sequence by OFASys


@dataclass(frozen=True)
class AttributeSpec:
    """One slot attribute: how its value is typed, where it may appear and what it means.

    Args:
        name: The attribute as written in a slot.
        type: `bool` for a bare flag (`no_loss`), else `int`, `float` or `str` for `name=value`.
        doc: One line on what the attribute does.
        modalities: Modalities whose slots may carry it; `None` means every modality.
        sides: `"encoder"` and/or `"decoder"`: the sides of `->` where it may appear.
        minimum: Smallest valid value for numbers (inclusive unless `exclusive_minimum`).
        maximum: Largest valid value for numbers (inclusive unless `exclusive_maximum`).
        exclusive_minimum: Whether `minimum` itself is invalid.
        exclusive_maximum: Whether `maximum` itself is invalid.
        deprecated: Accepted for OFASys compatibility, warned about and dropped from the plan.
        values: For `str` attributes, the names accepted (e.g. a registered preprocessor); `None` accepts any name.
        not_supported: Why this processor does not implement the attribute yet; set, the parser rejects the attribute
            wherever it is written, so an instruction never carries an attribute that nothing reads. `None` for the
            implemented ones.
    """

    name: str
    type: type
    doc: str
    modalities: frozenset[str] | None = None
    sides: frozenset[str] = _BOTH_SIDES
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    deprecated: bool = False
    values: frozenset[str] | None = None
    not_supported: str | None = None

    @property
    def supported(self) -> bool:
        """Whether slots may carry the attribute (implemented, or deprecated and dropped with a warning)."""
        return self.not_supported is None

    @property
    def is_flag(self) -> bool:
        return self.type is bool

    def range_text(self) -> str:
        """The valid range in interval notation, e.g. `[0, 1]` or `>= 1`."""
        if self.minimum is not None and self.maximum is not None:
            lo = "(" if self.exclusive_minimum else "["
            hi = ")" if self.exclusive_maximum else "]"
            return f"{lo}{self.minimum:g}, {self.maximum:g}{hi}"
        if self.minimum is not None:
            return f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            return f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}"
        return "any"


def _spec(name: str, type_: type, doc: str, modalities: Iterable[str] | None = None, **kwargs: Any) -> AttributeSpec:
    return AttributeSpec(name, type_, doc, None if modalities is None else frozenset(modalities), **kwargs)


_DECODER_ONLY = frozenset({_DECODER})
_ENCODER_ONLY = frozenset({_ENCODER})

ATTRIBUTES: dict[str, AttributeSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "preprocess",
            str,
            "use this registered preprocessor instead of the modality's default; `image_vqgan` on an IMAGE target: "
            "the image becomes VQ code tokens (image generation)",
            {"IMAGE"},
            sides=_DECODER_ONLY,
            values=frozenset({"image_vqgan"}),
        ),
        _spec(
            "adaptor",
            str,
            "use this registered adaptor (embedding module) instead of the modality's default; `image_vqgan` on an "
            "IMAGE target: generated as VQ code tokens, decoded to pixels by the image tokenizer",
            {"IMAGE"},
            sides=_DECODER_ONLY,
            values=frozenset({"image_vqgan"}),
        ),
        _spec(
            "no_loss",
            bool,
            "teacher-forced but not scored; a forced decoder prefix at inference",
            {"TEXT", "CATEGORY", "BOX", "PHONE", "STRUCT", "IMAGE_CODE"},
            sides=_DECODER_ONLY,
        ),
        _spec(
            "closed_set",
            bool,
            "the target may only be one of a known set of answers (trie-constrained); target slot only",
            {"TEXT", "CATEGORY"},
            sides=_DECODER_ONLY,
        ),
        _spec(
            "mask_ratio",
            float,
            "corruption ratio (train split): whole-word span masking of text, centre masking of images, phone noise",
            {"TEXT", "STRUCT", "PHONE", "IMAGE"},
            sides=_ENCODER_ONLY,  # decoder slots are encoded clean; masking them is not implemented
            minimum=0.0,
            maximum=1.0,
        ),
        _spec(
            "noise_ratio",
            float,
            "replace this fraction of input tokens at random (train split; on the decoder, the target slot only: its "
            "teacher-forced input is noised, its labels stay clean)",
            {"TEXT", "STRUCT"},
            minimum=0.0,
            maximum=1.0,
        ),
        _spec(
            "max_length",
            int,
            "truncate the slot to at most this many tokens or frames",
            {"TEXT", "STRUCT", "PHONE", "CATEGORY", "MOTION", "AUDIO"},
            minimum=1,
        ),
        _spec(
            "min_length",
            int,
            "reject clips with fewer motion steps than this",
            {"MOTION"},
            sides=_ENCODER_ONLY,
            minimum=1,
        ),
        _spec("length", int, "truncate the image-code sequence to this many codes", {"IMAGE_CODE"}, minimum=1),
        _spec("uncased", bool, "lower-case the value before tokenizing", {"TEXT", "CATEGORY", "STRUCT"}),
        _spec("no_punctuation", bool, "strip punctuation from the value before tokenizing", {"TEXT", "CATEGORY"}),
        _spec(
            "disable_auto_boseos",
            bool,
            "do not wrap this run of text-like slots in BOS/EOS",
            _TEXT_GROUP,
            not_supported="every encoder run and the decoder input are wrapped in BOS/EOS",
        ),
        _spec(
            "n_frames_per_step",
            int,
            "pack this many fbank frames per decoder step (speech targets)",
            {"AUDIO"},
            sides=_DECODER_ONLY,
            minimum=1,
            not_supported="AUDIO targets (speech synthesis) are not generated by this model",
        ),
        _spec(
            "use_mask",
            bool,
            "apply span masking to the audio features",
            {"AUDIO"},
            sides=_ENCODER_ONLY,
            not_supported="span masking of audio features (speech pre-training) is not implemented",
        ),
        _spec(
            "sample_rate",
            int,
            "keep every N-th motion frame, from a random phase",
            {"MOTION"},
            minimum=1,
        ),
        _spec(
            "soft_trim",
            float,
            "trim a random margin, of this fraction on average, from both ends of the motion clip",
            {"MOTION"},
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
            exclusive_maximum=True,
        ),
        _spec(
            "window",
            bool,
            "crop a random window of min_length..max_length motion frames (OFASys only tests its presence)",
            {"MOTION"},
        ),
        _spec(
            "anchor_frame",
            int,
            "align the motion's orientation and position to this frame",
            {"MOTION"},
            minimum=0,
            not_supported="OFASys aligns the root rotation of BVH clips; clips here are joint positions, which carry "
            "no root orientation",
        ),
        _spec(
            "is_label",
            bool,
            "documented by OFASys, read by none of its code",
            sides=_DECODER_ONLY,
            not_supported="OFASys documents it but no OFASys code reads it; the target is always the last decoder slot",
        ),
        _spec("add_bos", bool, "ignored, as by OFASys (BOS is added automatically); warned about", deprecated=True),
        _spec("add_eos", bool, "ignored, as by OFASys (EOS is added automatically); warned about", deprecated=True),
    )
}
"""Every slot attribute OFASys reads, as data: name -> `AttributeSpec`. Those with `not_supported` set are rejected."""


# ----------------------------------------------------------------------------------------------------------------------
# Errors


def _display_width_prefix(text: str) -> str:
    """Whitespace as wide as `text` on a terminal, so a caret printed after it lines up under the next character."""
    out = []
    for ch in text:
        if ch == "\t":
            out.append("\t")
        elif unicodedata.east_asian_width(ch) in ("W", "F"):
            out.append("  ")
        elif unicodedata.combining(ch):
            continue
        else:
            out.append(" ")
    return "".join(out)


# Everything `str.splitlines` breaks on: a terminal may start a new line (or return to its start) at any of them.
_LINE_BREAK_RE = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# Control, format, separator and surrogate characters move the cursor, print nothing, or cannot be printed.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_EXCERPT_CHARS = 100  # a longer line is shown as a window around the caret


def _shown(text: str) -> str:
    """`text` as the excerpt prints it: invisible or cursor-moving characters escaped (tabs kept), the rest as is."""
    return "".join(
        ascii(ch)[1:-1] if ch != "\t" and unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text
    )


def _caret_excerpt(text: str, position: int) -> str:
    """The line of `text` holding `position`, indented, with a `^` under that character.

    Lines end at every line break `str.splitlines` knows (`\\r`, `\\u2028`, ...), so the caret line always follows
    the quoted line directly; characters that a terminal would not print as themselves are escaped, and a long line
    is cut to a window around the caret.
    """
    line_start, line_end, on_break = 0, len(text), None
    line_number = 1
    for match in _LINE_BREAK_RE.finditer(text):
        if match.end() <= position:
            line_start, line_number = match.end(), line_number + 1
        elif match.start() <= position:
            line_end, on_break = match.start(), match  # the caret is on the line break itself
            break
        else:
            line_end = match.start()
            break
    lo, hi = line_start, line_end
    if hi - lo > _EXCERPT_CHARS:
        lo = max(line_start, min(position - _EXCERPT_CHARS // 2, line_end - _EXCERPT_CHARS))
        hi = min(line_end, lo + _EXCERPT_CHARS)
    before = ("..." if lo > line_start else "") + _shown(text[lo : min(position, hi)])
    line = before + _shown(text[min(position, hi) : hi]) + ("..." if hi < line_end else "")
    if on_break is not None:
        line += _shown(on_break.group())
        before += _shown(text[on_break.start() : position])
    where = f" (line {line_number})" if _LINE_BREAK_RE.search(text) else ""
    return f"    {line}{where}\n    {_display_width_prefix(before)}^"


class InstructionError(ValueError):
    """A malformed instruction, or a plan that does not fit its data.

    The message quotes the instruction with a caret under `position`. The parts stay available as attributes.

    Args:
        instruction: The full instruction string.
        position: Index of the offending character in `instruction` (may equal its length: "at the end").
        reason: What is wrong, in a short sentence.
    """

    def __init__(self, instruction: str, position: int, reason: str) -> None:
        self.instruction = instruction
        self.position = max(0, min(position, len(instruction)))
        self.reason = reason
        super().__init__(f"{reason}\n{_caret_excerpt(instruction, self.position)}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through `self.args` by default, which holds the formatted message, not our three arguments.
        return (type(self), (self.instruction, self.position, self.reason))


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Slot:
    """One element of a template: a data slot (`[MODALITY:column,...]`) or a piece of literal prompt text.

    Args:
        modality: One of `MODALITIES`; literal text is `"TEXT"`.
        column: The data column that fills the slot; `None` for literal text.
        text: The literal text (escapes resolved, stripped at the ends); `None` for a data slot.
        attrs: Typed attributes as `(name, value)` pairs sorted by name; flags have the value `True`.
        is_source: `True` left of `->` (encoder), `False` right of it (decoder).
        span: `(start, end)` of the element in the instruction string.
        space_before: Whether whitespace preceded the element on its side of `->` (never for the first element).
        positional: Whether `column` is the slot's position because the slot named no column.
    """

    modality: str
    column: str | None
    text: str | None
    attrs: tuple[tuple[str, AttrValue], ...]
    is_source: bool
    span: tuple[int, int]
    space_before: bool = False
    positional: bool = False

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"Slot modality must be one of {MODALITIES}, got {self.modality!r}")
        if (self.column is None) == (self.text is None):
            raise ValueError(
                f"A Slot has either a column or literal text, got column={self.column!r}, text={self.text!r}"
            )

    @property
    def is_plaintext(self) -> bool:
        """Whether this is literal prompt text rather than a slot filled from data."""
        return self.column is None

    def attr(self, name: str, default: AttrValue | None = None) -> AttrValue | None:
        """The value of attribute `name` (`True` for a present flag), or `default` when absent.

        Raises:
            ValueError: `name` is not a known attribute (a typo in the caller).
        """
        if name not in ATTRIBUTES:
            raise ValueError(f"Unknown slot attribute {name!r}{_did_you_mean(name, ATTRIBUTES)}")
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    @property
    def kwargs(self) -> dict[str, AttrValue]:
        """The attributes as a dict."""
        return dict(self.attrs)

    @property
    def no_loss(self) -> bool:
        return bool(self.attr("no_loss", False))

    @property
    def closed_set(self) -> bool:
        return bool(self.attr("closed_set", False))

    def __str__(self) -> str:
        if self.is_plaintext:
            return json.dumps(self.text, ensure_ascii=False)
        parts = [self.modality if self.positional else f"{self.modality}:{self.column}"]
        parts += [name if value is True else f"{name}={value}" for name, value in self.attrs]
        return "[" + ",".join(parts) + "]"


@dataclass(frozen=True)
class RepeatGroup:
    """A `( ... )*` group: its slots repeat once per element of the (list-valued, equal-length) columns inside it.

    Args:
        slots: The group's elements in order, literal text included.
        is_source: Side of `->` the group is on.
        span: `(start, end)` in the instruction, from `(` through `*`.
        space_before: Whether whitespace preceded the group.
    """

    slots: tuple[Slot, ...]
    is_source: bool
    span: tuple[int, int]
    space_before: bool = False

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(slot for slot in self.slots if not slot.is_plaintext)

    @property
    def columns(self) -> tuple[str, ...]:
        """The group's data columns, sorted; each holds one list per example."""
        return tuple(sorted({slot.column for slot in self.data_slots}))

    @property
    def is_plaintext(self) -> bool:
        return False

    def __str__(self) -> str:
        return "( " + " ".join(str(slot) for slot in self.slots) + " )*"


Element = Slot | RepeatGroup


def _flatten(elements: Iterable[Element]) -> tuple[Slot, ...]:
    out: list[Slot] = []
    for element in elements:
        out.extend(element.slots if isinstance(element, RepeatGroup) else (element,))
    return tuple(out)


def _modalities_of(slots: Iterable[Slot]) -> tuple[str, ...]:
    present = {slot.modality for slot in slots}
    return tuple(m for m in MODALITIES if m in present)


@dataclass(frozen=True)
class Template:
    """One alternative of an instruction: the encoder elements and the decoder elements.

    Args:
        text: The template as written (stripped), escapes not resolved.
        span: `(start, end)` of the template in the instruction.
        encoder: Elements left of `->`.
        decoder: Elements right of `->`.
    """

    text: str
    span: tuple[int, int]
    encoder: tuple[Element, ...]
    decoder: tuple[Element, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        """Every slot in order (encoder then decoder), literal text and group members included."""
        return _flatten(self.encoder + self.decoder)

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(slot for slot in self.slots if not slot.is_plaintext)

    @property
    def target_slot(self) -> Slot | RepeatGroup | None:
        """The element the decoder is trained to produce: the last decoder data slot or group (as OFASys)."""
        for element in reversed(self.decoder):
            if not element.is_plaintext:
                return element
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        """All data columns of the template, sorted."""
        return tuple(sorted({slot.column for slot in self.data_slots}))

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Columns of encoder slots, sorted."""
        return tuple(sorted({s.column for s in _flatten(self.encoder) if not s.is_plaintext}))

    @property
    def decoder_columns(self) -> tuple[str, ...]:
        """Columns of all decoder slots (scored or `no_loss` prefixes), sorted."""
        return tuple(sorted({s.column for s in _flatten(self.decoder) if not s.is_plaintext}))

    @property
    def target_columns(self) -> tuple[str, ...]:
        """Columns of the scored decoder slots (not `no_loss`): what the model learns to produce, sorted."""
        return tuple(sorted({s.column for s in _flatten(self.decoder) if not s.is_plaintext and not s.no_loss}))

    @property
    def repeated_columns(self) -> tuple[str, ...]:
        """Columns used inside `( ... )*` groups (each holds a list per example), sorted."""
        groups = [e for e in self.encoder + self.decoder if isinstance(e, RepeatGroup)]
        return tuple(sorted({column for group in groups for column in group.columns}))

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present (literal text counts as TEXT), in `MODALITIES` order."""
        return _modalities_of(self.slots)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TaskPlan:
    """A parsed instruction: one or more alternative templates. Immutable, hashable, comparable, serializable.

    Build it with `parse_instruction` (or `TaskPlan.parse`).

    Args:
        instruction: The instruction string as given.
        templates: The `|||`-separated alternatives, in order.
    """

    instruction: str
    templates: tuple[Template, ...]

    FORMAT_VERSION: ClassVar[int] = 1

    @classmethod
    def parse(cls, instruction: str) -> TaskPlan:
        """Same as `parse_instruction(instruction)`."""
        return parse_instruction(instruction)

    @property
    def target_kind(self) -> str:
        """What the target produces, one of `processing.answers.TARGET_KINDS` (the same for every template)."""
        from .answers import plan_target_kind  # answers.py builds on this module: imported when asked

        return plan_target_kind(self)

    # -- column and modality summaries ---------------------------------------------------------------------------------

    def _union(self, attribute: str) -> tuple[str, ...]:
        return tuple(sorted({c for template in self.templates for c in getattr(template, attribute)}))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every data column of every template, sorted."""
        return self._union("columns")

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Columns the encoder reads in any template, sorted."""
        return self._union("source_columns")

    @property
    def decoder_columns(self) -> tuple[str, ...]:
        """Columns of any decoder slot (scored or `no_loss`), sorted."""
        return self._union("decoder_columns")

    @property
    def target_columns(self) -> tuple[str, ...]:
        """Columns of scored decoder slots in any template, sorted: absent at inference."""
        return self._union("target_columns")

    @property
    def repeated_columns(self) -> tuple[str, ...]:
        """Columns used inside `( ... )*` groups, sorted: each holds a list per example."""
        return self._union("repeated_columns")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities used by any template (literal text counts as TEXT), in `MODALITIES` order."""
        return _modalities_of(slot for template in self.templates for slot in template.slots)

    def inference_columns(self) -> tuple[str, ...]:
        """Columns needed without targets: encoder columns plus decoder `no_loss` prefixes, sorted."""
        needed = set(self.source_columns)
        for template in self.templates:
            needed.update(s.column for s in _flatten(template.decoder) if not s.is_plaintext and s.no_loss)
        return tuple(sorted(needed))

    # -- use ---------------------------------------------------------------------------------------------------------

    def choose(
        self,
        rng: int | random.Random | np.random.Generator | None = None,
        *,
        index: int | None = None,
    ) -> Template:
        """Pick the template for one example.

        Args:
            rng: An integer seed (the same seed always gives the same template, on every platform and Python
                version), a `random.Random` or a `numpy.random.Generator` (one draw is taken from it when there is
                more than one template). `None` with no `index` gives the first template, as OFASys does at inference.
            index: Pick this template explicitly instead (negative values count from the end).

        Returns:
            The chosen `Template`.
        """
        count = len(self.templates)
        if index is not None:
            if rng is not None:
                raise TypeError("choose() takes either rng or index, not both")
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise TypeError(f"index must be an int, got {type(index).__name__}")
            if not -count <= index < count:
                raise IndexError(f"template index {index} out of range for {count} template(s)")
            return self.templates[index]
        if rng is None or count == 1:
            if rng is not None:
                _check_rng(rng)
            return self.templates[0]
        if isinstance(rng, random.Random):
            return self.templates[rng.randrange(count)]
        if isinstance(rng, np.random.Generator):
            return self.templates[int(rng.integers(count))]
        _check_rng(rng)
        return self.templates[_splitmix64(int(rng)) % count]

    def check_columns(self, available: Iterable[str], *, task: str | None = None, require_targets: bool = True) -> None:
        """Raise if the data lacks a column the instruction reads.

        Args:
            available: Column names of the dataset (e.g. `dataset.column_names`).
            task: Task name, for the error message.
            require_targets: Whether scored decoder columns must be present (`False` for inference data).

        Raises:
            InstructionError: Naming the task, the missing columns and the instruction, with a caret under the first
                slot that reads a missing column.
        """
        if isinstance(available, str):
            raise TypeError("available must be an iterable of column names, not a single string")
        have = set(available)
        needed = self.columns if require_targets else self.inference_columns()
        missing = [column for column in needed if column not in have]
        if not missing:
            return
        first = next(s for t in self.templates for s in t.data_slots if s.column in missing)
        hints = "".join(_did_you_mean(column, have) for column in missing[:1])
        who = f"Task {task!r}: " if task else ""
        plural = "s" if len(missing) > 1 else ""
        shown = ", ".join(repr(c) for c in sorted(have)[:20]) + (", ..." if len(have) > 20 else "")
        raise InstructionError(
            self.instruction,
            first.span[0],
            f"{who}column{plural} {', '.join(repr(c) for c in missing)} used by the instruction "
            f"missing from the data{hints}; available: {shown or 'none'}",
        )

    def rename_columns(self, mapping: Mapping[str, str]) -> TaskPlan:
        """A new plan whose instruction reads renamed columns (all renames apply at once, so swaps work).

        Args:
            mapping: Old column name -> new name. A positional column (e.g. `"3"` for `[IMAGE]`) becomes named.

        Raises:
            ValueError: An old name is not a column of the plan, a new name is not `[_A-Za-z0-9]+`, or two columns
                would end up with the same name.
        """
        columns = set(self.columns)
        for old, new in mapping.items():
            if old not in columns:
                raise ValueError(
                    f"Cannot rename column {old!r}: not used by {self.instruction!r}{_did_you_mean(old, columns)}; "
                    f"columns: {sorted(columns)}"
                )
            if not isinstance(new, str) or not _NAME_RE.fullmatch(new):
                raise ValueError(f"New column name {new!r} (for {old!r}) must match [_A-Za-z0-9]+")
        final: dict[str, str] = {}
        for column in columns:
            target = mapping.get(column, column)
            if target in final:
                raise ValueError(f"Renaming would merge columns {final[target]!r} and {column!r} into {target!r}")
            final[target] = column
        edits: list[tuple[int, int, str]] = []
        for template in self.templates:
            for slot in template.data_slots:
                if slot.column not in mapping:
                    continue
                name_start = slot.span[0] + 1 + len(slot.modality)
                if slot.positional:
                    edits.append((name_start, name_start, ":" + mapping[slot.column]))
                else:
                    edits.append((name_start + 1, name_start + 1 + len(slot.column), mapping[slot.column]))
        text = self.instruction
        for start, end, replacement in sorted(edits, reverse=True):
            text = text[:start] + replacement + text[end:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the original parse already warned about this instruction
            return parse_instruction(text)

    # -- serialization -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict holding the instruction and the full parsed structure."""
        return {
            "format_version": self.FORMAT_VERSION,
            "instruction": self.instruction,
            "templates": [
                {
                    "text": template.text,
                    "span": list(template.span),
                    "encoder": [_element_to_dict(e) for e in template.encoder],
                    "decoder": [_element_to_dict(e) for e in template.decoder],
                }
                for template in self.templates
            ],
        }

    def to_json(self, **kwargs: Any) -> str:
        """`to_dict()` as JSON; keyword arguments go to `json.dumps` (default `indent=2`)."""
        kwargs.setdefault("indent", 2)
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskPlan:
        """Rebuild a plan from `to_dict()` output.

        The structure is rebuilt as stored and then checked against a fresh parse of the stored instruction, so a
        hand-edited or stale file fails loudly instead of disagreeing with its instruction.

        Raises:
            ValueError: Missing or unknown keys, wrong types, or a structure that does not match the instruction.
        """
        _expect_keys(data, {"format_version", "instruction", "templates"}, "plan")
        if data["format_version"] != cls.FORMAT_VERSION:
            raise ValueError(f"Unsupported TaskPlan format_version {data['format_version']!r}, expected 1")
        instruction = data["instruction"]
        if not isinstance(instruction, str):
            raise ValueError(f"plan 'instruction' must be a string, got {type(instruction).__name__}")
        if not isinstance(data["templates"], list):
            raise ValueError(f"plan 'templates' must be a list, got {type(data['templates']).__name__}")
        templates = []
        try:
            for raw in data["templates"]:
                _expect_keys(raw, {"text", "span", "encoder", "decoder"}, "template")
                templates.append(
                    Template(
                        text=raw["text"],
                        span=_span_from(raw["span"]),
                        encoder=tuple(_element_from_dict(e) for e in raw["encoder"]),
                        decoder=tuple(_element_from_dict(e) for e in raw["decoder"]),
                    )
                )
        except (TypeError, AttributeError, KeyError) as error:
            # Tampered values of the wrong type (a number where a list or a mapping belongs): the promised ValueError.
            raise ValueError(f"malformed serialized TaskPlan: {type(error).__name__}: {error}") from None
        plan = cls(instruction=instruction, templates=tuple(templates))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reparsed = parse_instruction(instruction)
        if reparsed != plan:
            raise ValueError(
                f"Serialized TaskPlan does not match its instruction {instruction!r}: it was edited by hand or "
                "written by an incompatible version. Re-create it with parse_instruction()."
            )
        return plan

    @classmethod
    def from_json(cls, text: str) -> TaskPlan:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    # -- display -------------------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"TaskPlan.parse({self.instruction!r})"

    def __str__(self) -> str:
        count = len(self.templates)
        lines = [f"TaskPlan ({count} template{'s' if count > 1 else ''})"]
        lines.append(f"  source columns: {', '.join(self.source_columns) or '-'}")
        lines.append(f"  target columns: {', '.join(self.target_columns) or '-'}")
        if self.repeated_columns:
            lines.append(f"  repeated columns: {', '.join(self.repeated_columns)}")
        for number, template in enumerate(self.templates):
            lines.append(f"  template {number}: {template.text}")
            target = template.target_slot
            for side, elements in (("encoder", template.encoder), ("decoder", template.decoder)):
                label = f"    {side}:"
                if not elements:
                    lines.append(f"{label} (empty)")
                for element in elements:
                    mark = "   <- target" if element is target else ""
                    lines.append(f"{label:<13}{_describe(element)}{mark}")
                    label = ""
        return "\n".join(lines)


def _describe(element: Element) -> str:
    if isinstance(element, RepeatGroup):
        return "( " + "  ".join(_describe(slot) for slot in element.slots) + " )*"
    if element.is_plaintext:
        return f"TEXT {json.dumps(element.text, ensure_ascii=False)}"
    attrs = "".join(f",{k}" if v is True else f",{k}={v}" for k, v in element.attrs)
    return f"{element.modality}:{element.column}{' (positional)' if element.positional else ''}{attrs}"


def _check_rng(rng: Any) -> None:
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer, random.Random, np.random.Generator)):
        raise TypeError(f"rng must be an int seed, random.Random or numpy Generator, got {type(rng).__name__}")


def _splitmix64(seed: int) -> int:
    """SplitMix64 of a seed: a fixed, well-mixed hash, so seed -> template never changes between Python versions."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


# -- (de)serialization helpers -----------------------------------------------------------------------------------------

_SLOT_KEYS = {"kind", "modality", "column", "text", "attrs", "is_source", "span", "space_before", "positional"}
_GROUP_KEYS = {"kind", "slots", "is_source", "span", "space_before"}


def _expect_keys(data: Any, keys: set[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"serialized {what} must be a mapping, got {type(data).__name__}")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(set(data) - keys)
        raise ValueError(f"serialized {what} has missing keys {missing} / unknown keys {extra}")


def _span_from(raw: Any) -> tuple[int, int]:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(type(v) is int for v in raw)):
        raise ValueError(f"a span must be two integers, got {raw!r}")
    return (raw[0], raw[1])


def _slot_to_dict(slot: Slot) -> dict[str, Any]:
    return {
        "kind": "slot",
        "modality": slot.modality,
        "column": slot.column,
        "text": slot.text,
        "attrs": dict(slot.attrs),
        "is_source": slot.is_source,
        "span": list(slot.span),
        "space_before": slot.space_before,
        "positional": slot.positional,
    }


def _element_to_dict(element: Element) -> dict[str, Any]:
    if isinstance(element, RepeatGroup):
        return {
            "kind": "group",
            "slots": [_slot_to_dict(slot) for slot in element.slots],
            "is_source": element.is_source,
            "span": list(element.span),
            "space_before": element.space_before,
        }
    return _slot_to_dict(element)


def _slot_from_dict(raw: Any) -> Slot:
    _expect_keys(raw, _SLOT_KEYS, "slot")
    if raw["kind"] != "slot" or not isinstance(raw["attrs"], Mapping):
        raise ValueError(f"malformed serialized slot {raw!r}")
    return Slot(
        modality=raw["modality"],
        column=raw["column"],
        text=raw["text"],
        attrs=tuple(raw["attrs"].items()),
        is_source=raw["is_source"],
        span=_span_from(raw["span"]),
        space_before=raw["space_before"],
        positional=raw["positional"],
    )


def _element_from_dict(raw: Any) -> Element:
    if isinstance(raw, Mapping) and raw.get("kind") == "group":
        _expect_keys(raw, _GROUP_KEYS, "group")
        return RepeatGroup(
            slots=tuple(_slot_from_dict(s) for s in raw["slots"]),
            is_source=raw["is_source"],
            span=_span_from(raw["span"]),
            space_before=raw["space_before"],
        )
    return _slot_from_dict(raw)


# ----------------------------------------------------------------------------------------------------------------------
# The parser

_NAME_RE = re.compile(r"[_A-Za-z0-9]+")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPPER_WORD_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_VALUE_RE = re.compile(r"[^\s,\[\]=]+")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPABLE = frozenset("\\[]()*|->")
_SLOT_CLOSERS = frozenset(":,]")
_BOS_EOS_RE = re.compile(r"<[BE]OS>")
_MAX_INT_DIGITS = 18  # far beyond any valid attribute value, far below Python's int-conversion limit
_ESCAPE = r"\\[\\\[\]()*|\->]"
_SEPARATOR_RE = re.compile(_ESCAPE + r"|\|+")  # an escape, or a run of '|'
_ARROW_RE = re.compile(_ESCAPE + r"|->")  # an escape, or an arrow
_SPECIAL_RE = re.compile(r"[\\\[\]()]")  # where a literal run ends in `lex`


@dataclass(slots=True)
class _Lit:
    """A run of literal text and where it came from: verbatim source text, or one escaped character.

    Literal runs are lexed in one piece (not character by character), so parsing stays linear and fast in the length
    of the instruction. For a verbatim run `text == instruction[start:end]`; an escape is two source characters.
    """

    start: int
    end: int
    text: str
    verbatim: bool = True

    def source_span(self, offset: int) -> tuple[int, int]:
        """Where the character at `offset` in `text` is in the instruction (two characters for an escape)."""
        return (self.start + offset, self.start + offset + 1) if self.verbatim else (self.start, self.end)


@dataclass(slots=True)
class _RawSlot:
    """A slot as lexed, before it gets its position and spacing."""

    modality: str
    column: str | None
    attrs: tuple[tuple[str, AttrValue], ...]
    span: tuple[int, int]
    attr_positions: dict[str, int]


@dataclass(slots=True)
class _Paren:
    """A `(` or a `)`/`)*` outside slots; `star_end` is set for a group closer `)*`."""

    char: str
    start: int
    star_end: int | None = None


class _Parser:
    def __init__(self, instruction: str) -> None:
        self.text = instruction
        self.warnings: list[str] = []
        self.attr_positions: dict[int, dict[str, int]] = {}  # id() of a built Slot -> attribute -> position
        self.position = 0  # OFASys-style global index of elements within the current template

    def error(self, position: int, reason: str) -> InstructionError:
        return InstructionError(self.text, position, f"Invalid instruction: {reason}")

    # -- top level -----------------------------------------------------------------------------------------------------

    def parse(self) -> TaskPlan:
        s = self.text
        if not s.strip():
            raise self.error(0, "the instruction is empty; expected 'input -> output'")
        templates = [self.parse_template(lo, hi) for lo, hi in self.split_alternatives()]
        self.check_repeated_columns(templates)
        return TaskPlan(instruction=s, templates=tuple(templates))

    def split_alternatives(self) -> list[tuple[int, int]]:
        """Spans of the `|||`-separated templates, stripped of surrounding whitespace."""
        s = self.text
        bounds: list[tuple[int, int, int]] = []  # (start, end, position to blame if empty)
        start = 0
        for match in _SEPARATOR_RE.finditer(s):
            if match.group()[0] != "|":
                continue  # an escape
            i, run = match.start(), len(match.group())
            if run > 3:
                raise self.error(i, f"a run of {run} '|'; alternative templates are separated by exactly '|||'")
            if run == 3:
                bounds.append((start, i, i))
                start = i + 3
        bounds.append((start, len(s), max(start - 3, 0)))
        spans = []
        for lo, hi, blame in bounds:
            while lo < hi and s[lo].isspace():
                lo += 1
            while hi > lo and s[hi - 1].isspace():
                hi -= 1
            if lo == hi:
                raise self.error(blame, "empty alternative next to '|||'")
            spans.append((lo, hi))
        return spans

    def find_arrow(self, lo: int, hi: int) -> int:
        s = self.text
        arrows = []
        for match in _ARROW_RE.finditer(s, lo, hi):
            if match.group() == "->":
                arrows.append(match.start())
                if len(arrows) > 1:
                    break
        if not arrows:
            raise self.error(lo, "no '->' separating the input (encoder) from the output (decoder)")
        if len(arrows) > 1:
            raise self.error(arrows[1], "more than one '->' in a template (write '\\->' for a literal arrow)")
        arrow = arrows[0]
        before_escaped = arrow - 2 >= lo and s[arrow - 2] == "\\"
        if (arrow > lo and s[arrow - 1] in "-<" and not before_escaped) or (arrow + 2 < hi and s[arrow + 2] == ">"):
            raise self.error(arrow, "ambiguous arrow; write exactly '->' between input and output")
        return arrow

    def parse_template(self, lo: int, hi: int) -> Template:
        self.position = 0
        arrow = self.find_arrow(lo, hi)
        encoder = self.parse_side(lo, arrow, is_source=True)
        decoder = self.parse_side(arrow + 2, hi, is_source=False)
        if not encoder and not decoder:
            raise self.error(arrow, "both sides of '->' are empty")
        template = Template(text=self.text[lo:hi], span=(lo, hi), encoder=encoder, decoder=decoder)
        self.check_template(template)
        return template

    # -- one side of '->' ----------------------------------------------------------------------------------------------

    def parse_side(self, lo: int, hi: int, *, is_source: bool) -> tuple[Element, ...]:
        s = self.text
        while lo < hi and s[lo].isspace():
            lo += 1
        while hi > lo and s[hi - 1].isspace():
            hi -= 1
        tokens = self.lex(lo, hi, is_source=is_source)
        group_of = self.match_groups(tokens)
        return self.build(tokens, group_of, is_source=is_source)

    def lex(self, lo: int, hi: int, *, is_source: bool) -> list[_Lit | _RawSlot | _Paren]:
        """Split a side into literal runs, slots and parentheses; check literal brackets balance.

        Consecutive literal text, literal brackets included, is one `_Lit` (and so is a `)` that no `(` before it
        could pair with), so the work per character stays small however the instruction is made.
        """
        s = self.text
        tokens: list[_Lit | _RawSlot | _Paren] = []
        brackets: list[int] = []  # positions of open literal '['
        open_parens = 0  # '(' tokens that a later ')' or ')*' may still pair with (as `match_groups` pairs them)
        run_start = -1  # start of the verbatim literal run being collected, -1 when none

        def end_run(position: int) -> None:
            nonlocal run_start
            if run_start >= 0:
                tokens.append(_Lit(run_start, position, s[run_start:position]))
                run_start = -1

        i = lo
        while i < hi:
            ch = s[i]
            if ch == "\\" and i + 1 < hi and s[i + 1] in _ESCAPABLE:
                end_run(i)
                tokens.append(_Lit(i, i + 2, s[i + 1], verbatim=False))
                i += 2
            elif ch == "[":
                raw = self.lex_slot(i, hi, is_source=is_source)
                if raw is None:
                    brackets.append(i)
                    run_start = i if run_start < 0 else run_start
                    i += 1
                    continue
                if brackets:
                    raise self.error(
                        brackets[-1],
                        "a slot cannot sit inside literal brackets; for a repeated group write '( [BOX] [TEXT] )*', "
                        "for a literal bracket write '\\['",
                    )
                end = raw.span[1]
                if end < hi and s[end] == "*":
                    raise self.error(end, "'*' after a slot; to repeat slots write a group: '( [BOX] [TEXT] )*'")
                end_run(i)
                tokens.append(raw)
                i = end
            elif ch == "]":
                if not brackets:
                    raise self.error(i, "unbalanced ']' (write '\\]' for a literal bracket)")
                brackets.pop()
                run_start = i if run_start < 0 else run_start
                i += 1
            elif ch == "(":
                end_run(i)
                tokens.append(_Paren("(", i))
                open_parens += 1
                i += 1
            elif ch == ")":
                j = i + 1
                while j < hi and s[j].isspace():
                    j += 1
                if j < hi and s[j] == "*":
                    end_run(i)
                    tokens.append(_Paren(")", i, star_end=j + 1))
                    open_parens = max(open_parens - 1, 0)
                    i = j + 1
                elif open_parens:
                    end_run(i)
                    tokens.append(_Paren(")", i))
                    open_parens -= 1
                    i += 1
                else:  # nothing to close: literal text
                    run_start = i if run_start < 0 else run_start
                    i += 1
            else:
                # A run up to the next character with a meaning (a lone backslash is literal: one character).
                special = _SPECIAL_RE.search(s, i + 1, hi)
                run_start = i if run_start < 0 else run_start
                i = special.start() if special else hi
        end_run(hi)
        if brackets:
            raise self.error(brackets[-1], "unbalanced '[' (write '\\[' for a literal bracket)")
        return tokens

    def lex_slot(self, start: int, hi: int, *, is_source: bool) -> _RawSlot | None:
        """Parse the slot opening at `start`, `None` if the bracket is literal text, or raise if it is malformed."""
        s = self.text
        word_match = _WORD_RE.match(s, start + 1, hi)
        if word_match is None:
            return None
        word = word_match.group()
        after = s[word_match.end()] if word_match.end() < hi else ""
        if word not in MODALITIES:
            if after and after in _SLOT_CLOSERS:
                if _UPPER_WORD_RE.fullmatch(word):
                    raise self.error(
                        start + 1,
                        f"unknown modality {word!r}{_did_you_mean(word, MODALITIES)}; modalities: "
                        f"{', '.join(MODALITIES)} (write '\\[' for a literal bracket)",
                    )
                if word.upper() in MODALITIES:
                    raise self.error(start + 1, f"modality names are upper-case: write {word.upper()!r}")
            return None
        k = word_match.end()
        column = None
        if k < hi and s[k] == ":":
            name_match = _NAME_RE.match(s, k + 1, hi)
            if name_match is None:
                if k + 1 >= hi:
                    raise self.error(start, f"slot '{s[start:hi]}' is not closed with ']'")
                raise self.error(k + 1, "expected a column name ([_A-Za-z0-9]+) after ':'")
            column = name_match.group()
            k = name_match.end()
        raw_attrs: list[tuple[str, int, str | None, int]] = []  # (name, name position, value, value position)
        while True:
            if k >= hi:
                raise self.error(start, f"slot '{s[start:hi]}' is not closed with ']'")
            ch = s[k]
            if ch == "]":
                k += 1
                break
            if ch != ",":
                hint = " (slots cannot contain spaces; is a ']' missing?)" if ch.isspace() else ""
                raise self.error(k, f"unexpected {ch!r} in slot {word}; expected ',' or ']'{hint}")
            name_match = _NAME_RE.match(s, k + 1, hi)
            if name_match is None:
                raise self.error(k + 1, "expected an attribute name after ','")
            k = name_match.end()
            value_text, value_pos = None, k
            if k < hi and s[k] == "=":
                value_match = _VALUE_RE.match(s, k + 1, hi)
                if value_match is None:
                    raise self.error(k + 1, f"expected a value after '{name_match.group()}='")
                value_text, value_pos = value_match.group(), value_match.start()
                k = value_match.end()
            raw_attrs.append((name_match.group(), name_match.start(), value_text, value_pos))
        # Check meaning only once the slot is known to be well-formed, so syntax errors are reported first.
        attrs: dict[str, AttrValue] = {}
        positions: dict[str, int] = {}
        for name, name_pos, value_text, value_pos in raw_attrs:
            if name in positions:
                raise self.error(name_pos, f"attribute {name!r} given twice")
            positions[name] = name_pos
            value = self.attribute_value(word, name, name_pos, value_text, value_pos, is_source=is_source)
            if value is not None:
                attrs[name] = value
        return _RawSlot(word, column, tuple(sorted(attrs.items())), (start, k), positions)

    def attribute_value(
        self,
        modality: str,
        name: str,
        name_pos: int,
        value_text: str | None,
        value_pos: int,
        *,
        is_source: bool,
    ) -> AttrValue | None:
        """The typed value of one attribute, checked against `ATTRIBUTES`; `None` for a dropped deprecated one."""
        spec = ATTRIBUTES.get(name)
        if spec is None:
            raise self.error(
                name_pos,
                f"unknown attribute {name!r}{_did_you_mean(name, ATTRIBUTES)}; supported: "
                f"{', '.join(sorted(n for n, spec in ATTRIBUTES.items() if spec.supported))}",
            )
        if spec.not_supported is not None:
            raise self.error(name_pos, f"attribute {name!r} is not supported yet: {spec.not_supported}")
        side = _ENCODER if is_source else _DECODER
        if side not in spec.sides:
            where = "decoder slots (right of '->')" if _DECODER in spec.sides else "encoder slots (left of '->')"
            raise self.error(name_pos, f"{name!r} applies only to {where}")
        if spec.modalities is not None and modality not in spec.modalities:
            allowed = ", ".join(m for m in MODALITIES if m in spec.modalities)
            raise self.error(name_pos, f"{name!r} does not apply to {modality} slots (only to {allowed})")
        if spec.is_flag:
            if value_text is not None:
                raise self.error(value_pos - 1, f"{name!r} is a flag and takes no value; write just '{name}'")
            if spec.deprecated:
                self.warnings.append(f"slot attribute {name!r} is ignored ({spec.doc}) in {self.text!r}")
                return None
            return True
        if value_text is None:
            raise self.error(name_pos, f"{name!r} needs a value, e.g. '{name}=<{spec.type.__name__}>'")
        value: AttrValue
        shown = value_text if len(value_text) <= 40 else value_text[:37] + "..."
        if spec.type is int:
            if not _INT_RE.fullmatch(value_text):
                raise self.error(value_pos, f"{name!r} expects an integer, got {shown!r}")
            if len(value_text.lstrip("+-").lstrip("0")) > _MAX_INT_DIGITS:
                # Python refuses to convert very long digit strings (a bare ValueError without the caret).
                raise self.error(value_pos, f"{name}={shown} is out of range; valid: {spec.range_text()}")
            value = int(value_text)
        elif spec.type is float:
            if not _FLOAT_RE.fullmatch(value_text):
                raise self.error(value_pos, f"{name!r} expects a number, got {shown!r}")
            value = float(value_text)
            if not math.isfinite(value):
                raise self.error(value_pos, f"{name}={shown} is out of range; valid: {spec.range_text()}")
        else:
            if not _IDENT_RE.fullmatch(value_text):
                raise self.error(value_pos, f"{name!r} expects a name ([A-Za-z_][A-Za-z0-9_]*), got {value_text!r}")
            if spec.values is not None and value_text not in spec.values:
                supported = ", ".join(sorted(spec.values)) or "none"
                raise self.error(value_pos, f"{name}={value_text} is not supported yet; supported: {supported}")
            value = value_text
        if isinstance(value, (int, float)) and not self.in_range(spec, value):
            raise self.error(value_pos, f"{name}={shown} is out of range; valid: {spec.range_text()}")
        return value

    @staticmethod
    def in_range(spec: AttributeSpec, value: float) -> bool:
        if spec.minimum is not None and (value <= spec.minimum if spec.exclusive_minimum else value < spec.minimum):
            return False
        if spec.maximum is not None and (value >= spec.maximum if spec.exclusive_maximum else value > spec.maximum):
            return False
        return True

    def match_groups(self, tokens: list[_Lit | _RawSlot | _Paren]) -> dict[int, int]:
        """Pair each `)*` with its `(`: returns token index of `(` -> token index of `)*`. Other parens are literal."""
        stack: list[int] = []
        groups: dict[int, int] = {}
        for index, token in enumerate(tokens):
            if not isinstance(token, _Paren):
                continue
            if token.char == "(":
                stack.append(index)
            elif token.star_end is None:
                if stack:
                    stack.pop()
            else:
                if not stack:
                    raise self.error(token.start, "')*' closes a repeat group, but no '(' opens it")
                groups[stack.pop()] = index
        # Groups pair like brackets, so two of them are nested or disjoint: one pass in order of their openers finds
        # the first group that opens inside another (an all-pairs check is quadratic in the number of groups).
        enclosing_close = -1
        for open_index in sorted(groups):
            if open_index < enclosing_close:
                raise self.error(tokens[open_index].start, "repeat groups '( ... )*' cannot be nested")
            enclosing_close = max(enclosing_close, groups[open_index])
        return groups

    def build(
        self, tokens: list[_Lit | _RawSlot | _Paren], groups: dict[int, int], *, is_source: bool
    ) -> tuple[Element, ...]:
        """Turn tokens into elements: literal runs become stripped plain-text slots, groups become RepeatGroups."""
        elements: list[Element] = []
        inner: list[Slot] | None = None  # members of the open group, if any
        group_open: tuple[int, bool] | None = None  # (start position, space_before) of the open group
        chars: list[_Lit] = []  # the literal run being collected
        pending_space = False  # whether whitespace precedes the next element
        close_at = -1

        def flush() -> None:
            nonlocal pending_space
            slot, pending_space = self.literal_slot(chars, pending_space, is_source=is_source)
            if slot is not None:
                (inner if inner is not None else elements).append(slot)
            chars.clear()

        for index, token in enumerate(tokens):
            if isinstance(token, _Lit):
                chars.append(token)
            elif isinstance(token, _Paren) and index in groups:
                flush()
                inner, group_open, close_at = [], (token.start, pending_space), groups[index]
                pending_space = False
            elif isinstance(token, _Paren) and index == close_at:
                flush()
                assert inner is not None and group_open is not None
                if not any(not slot.is_plaintext for slot in inner):
                    raise self.error(group_open[0], "repeat group '( ... )*' holds no slot (write '\\(' for text)")
                elements.append(
                    RepeatGroup(
                        slots=tuple(inner),
                        is_source=is_source,
                        span=(group_open[0], token.star_end),
                        space_before=group_open[1],
                    )
                )
                inner, group_open, close_at = None, None, -1
                pending_space = False
            elif isinstance(token, _Paren):
                chars.append(_Lit(token.start, token.start + 1, token.char))
            else:
                flush()
                (inner if inner is not None else elements).append(self.data_slot(token, pending_space, is_source))
                pending_space = False
        flush()
        return tuple(elements)

    def literal_slot(self, chars: list[_Lit], pending_space: bool, *, is_source: bool) -> tuple[Slot | None, bool]:
        """The plain-text slot of a literal run (None for an empty or all-whitespace run) and whether whitespace
        follows it."""
        if not chars:
            return None, pending_space
        joined = "".join(piece.text for piece in chars)
        text = joined.strip()  # str.strip and str.isspace agree on what whitespace is
        if not text:
            return None, True

        def source_span(offset: int) -> tuple[int, int]:
            """Where character `offset` of the joined run is in the instruction."""
            for piece in chars:
                if offset < len(piece.text):
                    return piece.source_span(offset)
                offset -= len(piece.text)
            raise AssertionError("offset beyond the literal run")

        lo = len(joined) - len(joined.lstrip())
        hi = lo + len(text)
        if _BOS_EOS_RE.search(text):
            self.warnings.append(
                f"{text!r} contains <BOS>/<EOS>: kept as literal text (BOS/EOS are added automatically)"
            )
        slot = Slot(
            modality="TEXT",
            column=None,
            text=text,
            attrs=(),
            is_source=is_source,
            span=(source_span(lo)[0], source_span(hi - 1)[1]),
            space_before=pending_space or lo > 0,
        )
        self.position += 1
        return slot, hi < len(joined)

    def data_slot(self, token: _RawSlot, space_before: bool, is_source: bool) -> Slot:
        """The slot of a `[MODALITY:column,...]` token; a slot without a column reads the column named by its
        position (OFASys's positional form)."""
        positional = token.column is None
        slot = Slot(
            modality=token.modality,
            column=str(self.position) if positional else token.column,
            text=None,
            attrs=token.attrs,
            is_source=is_source,
            span=token.span,
            space_before=space_before,
            positional=positional,
        )
        self.attr_positions[id(slot)] = token.attr_positions
        self.position += 1
        return slot

    # -- checks that need a whole template or plan ---------------------------------------------------------------------

    def attr_position(self, slot: Slot, name: str) -> int:
        return self.attr_positions[id(slot)].get(name, slot.span[0])

    def check_template(self, template: Template) -> None:
        target = template.target_slot
        target_slots = (target,) if isinstance(target, Slot) else target.data_slots if target is not None else ()
        for slot in template.data_slots:
            if slot.closed_set and slot not in target_slots:
                raise self.error(
                    self.attr_position(slot, "closed_set"),
                    "'closed_set' applies only to the target slot (the last decoder slot or group)",
                )
            if not slot.is_source and slot.attr("noise_ratio") is not None and slot is not target:
                raise self.error(
                    self.attr_position(slot, "noise_ratio"),
                    "'noise_ratio' on the decoder side applies only to the target slot (the last decoder slot, "
                    "not a repeat group): other decoder slots are encoded clean",
                )
            minimum, maximum = slot.attr("min_length"), slot.attr("max_length")
            if minimum is not None and maximum is not None and minimum > maximum:
                raise self.error(self.attr_position(slot, "min_length"), "min_length is larger than max_length")
        no_loss_modalities = ATTRIBUTES["no_loss"].modalities or frozenset(MODALITIES)
        for element in template.decoder:
            if element is target or element.is_plaintext:
                continue
            members = element.data_slots if isinstance(element, RepeatGroup) else (element,)
            for slot in members:
                # OFASys scores such a slot unless it is no_loss; here only the target slot is scored, so an unmarked
                # one would silently differ from OFASys (and its column would be missing from `inference_columns`).
                if not slot.no_loss and slot.modality in no_loss_modalities:
                    raise self.error(
                        slot.span[0],
                        "a decoder slot before the target is a teacher-forced prefix and is not scored here (scoring "
                        "it, as OFASys does, is not supported yet): mark it 'no_loss'",
                    )
        if target_slots and all(slot.no_loss for slot in target_slots):
            raise self.error(
                self.attr_position(target_slots[-1], "no_loss"),
                "the target slot (the last decoder slot or group) cannot be 'no_loss': nothing would be trained",
            )

    def check_repeated_columns(self, templates: list[Template]) -> None:
        """A column holds a list (inside groups) or a single value (outside), the same in every template."""
        inside: dict[str, bool] = {}
        for template in templates:
            for element in template.encoder + template.decoder:
                members = element.data_slots if isinstance(element, RepeatGroup) else (element,)
                for slot in members:
                    if slot.is_plaintext:
                        continue
                    in_group = isinstance(element, RepeatGroup)
                    seen = inside.setdefault(slot.column, in_group)
                    if seen != in_group:
                        raise self.error(
                            slot.span[0],
                            f"column {slot.column!r} is used both inside a repeat group (a list per example) "
                            "and outside one (a single value)",
                        )


def parse_instruction(instruction: str) -> TaskPlan:
    """Parse an OFASys-style instruction into a `TaskPlan` (see the module docstring for the grammar).

    Args:
        instruction: e.g. `"[IMAGE:img] what does the image describe? -> [TEXT:cap]"`; `|||` separates alternatives.

    Returns:
        The immutable plan.

    Raises:
        TypeError: `instruction` is not a string.
        InstructionError: (a `ValueError`) the instruction is malformed; the message points at the offending character.
    """
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    parser = _Parser(instruction)
    plan = parser.parse()
    for message in parser.warnings:
        warnings.warn(message, FutureWarning, stacklevel=2)
    return plan
