# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""`Task`: one task of multi-task training, declared with a name and a one-line OFASys instruction.

```python
caption = Task("caption", "[IMAGE:img] what does the image describe? -> [TEXT:cap]", train_dataset=ds,
               metrics=["cider"], num_beams=5)
vqa = Task("vqa", "[IMAGE:image] [TEXT:question] -> [TEXT:answer,closed_set]", train_dataset=vqa_train,
           eval_dataset=vqa_val, weight=2.0)
```

A task is plain data: no registry to edit, no subclass to write. The instruction is parsed once; the columns it reads
are checked against the datasets when the task is made, so a typo fails here rather than at the first batch.

What a task's target slot produces decides its answers, its references and the metrics that fit ([`TARGET_KINDS`]):
`closed_set` (and `CATEGORY`) targets are labels decoded inside their candidate set, `BOX` targets are boxes, a
repeated `( [BOX] [TEXT] )*` group is a list of objects, `IMAGE_CODE` targets are code sequences, everything else is
text.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from transformers import Seq2SeqTrainingArguments

from processing import ExampleError, Slot, TaskPlan, parse_instruction, undecoded_audio
from processing.answers import TARGET_KINDS, plan_target_kind

from .data import check_dataset, column_names, dataset_size, is_streaming
from .metrics import METRIC_ALIASES, METRICS, metric_function_name

__all__ = [
    "DEFAULT_METRICS",
    "GENERATION_DEFAULTS",
    "TARGET_KINDS",
    "Task",
    "check_tasks",
    "generation_base",
    "processor_with_tasks",
]

# Reference types of `trainers.metrics.METRICS` that make sense for each kind of target.
_METRIC_REFERENCES: dict[str, frozenset[str]] = {
    "text": frozenset({"str", "list[str]"}),
    "label": frozenset({"label", "str", "list[str]"}),
    "box": frozenset({"box"}),
    "objects": frozenset({"objects"}),
    "codes": frozenset(),
    "image": frozenset({"image"}),
}

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "text": (),
    "label": ("accuracy",),
    "box": ("iou_accuracy",),
    "objects": ("object_accuracy",),
    "codes": (),
    "image": (),
}
"""Metrics a task computes when `metrics` is not given, per target kind (text tasks must choose theirs)."""

GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    # OFASys `generator_args`: beam 5, max_len_b 32, no_repeat_ngram_size 3.
    "text": {"num_beams": 5, "max_new_tokens": 32, "no_repeat_ngram_size": 3},
    # Closed sets decode greedily in OFASys; max_new_tokens comes from the longest candidate.
    "label": {"num_beams": 1},
    # OFASys fixes BOX generation to exactly four tokens.
    "box": {"num_beams": 5, "max_new_tokens": 4, "min_new_tokens": 4},
    "objects": {"num_beams": 5, "max_new_tokens": 128},
    "codes": {"num_beams": 1, "max_new_tokens": 1024},
    # Sampled as OFA does (top-k 256, 24 candidates: `processing.answers.IMAGE_GENERATION_DEFAULTS`), as long as the
    # code grid (the answer path sets the length).
    "image": {"num_beams": 1},
}
"""`generate()` keyword arguments per target kind; `Task` settings, `TrainingArguments.generation_*` and the keyword
arguments of `evaluate`/`predict` override them."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ON_ERROR = ("raise", "skip")


def _as_box(value: Any, where: str) -> list[float]:
    """A reference box from four numbers or an OFASys string `"x0,y0,x1,y1"`."""
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    if len(parts) != 4:
        raise ValueError(f"{where}: a box needs 4 numbers (x0, y0, x1, y1), got {value!r}")
    return [float(v) for v in parts]


class Task:
    r"""
    One task of multi-task training: a name, an instruction, data, a sampling weight, metrics and generation settings.

    Args:
        name (`str`):
            Unique name (letters, digits, `_`, `.`, `-`); it keys the logs (`loss_<name>`, `eval_<name>_<metric>`).
        instruction (`str` or `TaskPlan`):
            OFASys instruction, e.g. `"[IMAGE:img] what does the image describe? -> [TEXT:cap]"`, or a parsed plan.
        train_dataset (*optional*):
            Training rows: a `datasets.Dataset`, a `datasets.IterableDataset` (streaming), a list of dicts, or any
            object with `__len__` and `__getitem__` returning dict rows (or a re-iterable stream of dict rows).
        eval_dataset (*optional*):
            Evaluation rows, same kinds. They need the target columns (or `reference_column`) for metrics.
        column_mapping (`dict[str, str]`, *optional*):
            Instruction column -> dataset column, for datasets whose column names differ from the instruction's,
            e.g. `{"img": "image", "cap": "caption"}`.
        weight (`float`, defaults to 1.0):
            Sampling weight (used by the `explicit` strategy). Must be finite and > 0.
        metrics (`str`, callable, or a list or `{name: metric}` mapping of them, *optional*):
            Names from `trainers.metrics.METRICS` (or OFASys aliases), and your own metrics: callables
            `fn(predictions, references) -> float | dict[str, float]` (logged under `fn.__name__` or the mapping's
            key) or loaded `evaluate` modules (`evaluate.load("bleu")`, logged under their `name`). Default:
            [`DEFAULT_METRICS`] for the target kind (accuracy for labels, Acc@0.5 for boxes, none for text).
        batch_size (`int`, *optional*):
            Micro-batch size per device for this task; default `per_device_train_batch_size`.
        candidates (`list[str]`, *optional*):
            The closed set of a `closed_set` target. Default: the distinct values of the target column of
            `train_dataset` (which must then be map-style).
        num_beams (`int`, *optional*), max_new_tokens (`int`, *optional*):
            Generation settings for evaluation and prediction.
        generation_kwargs (`dict`, *optional*):
            Further `generate()` keyword arguments (e.g. `{"no_repeat_ngram_size": 0, "length_penalty": 1.0}`).
        reference_column (`str`, *optional*):
            Evaluation column holding the references when they are not the target column, e.g. the list of human
            answers for `vqa_accuracy` or several captions for `cider`.
        on_error (`str`, defaults to `"raise"`):
            A row that cannot be encoded stops training (`"raise"`) or is skipped with a warning (`"skip"`).
    """

    def __init__(
        self,
        name: str,
        instruction: str | TaskPlan,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        *,
        column_mapping: Mapping[str, str] | None = None,
        weight: float = 1.0,
        metrics: str | Callable[..., Any] | Sequence[Any] | Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        candidates: Iterable[str] | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        generation_kwargs: Mapping[str, Any] | None = None,
        reference_column: str | None = None,
        on_error: str = "raise",
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"Task name {name!r} must be letters, digits, '_', '.' or '-' (not starting with them)")
        self.name = name
        where = f"Task {name!r}"
        if isinstance(instruction, TaskPlan):
            plan = instruction
        elif isinstance(instruction, str):
            plan = parse_instruction(instruction)
        else:
            raise TypeError(f"{where}: instruction must be a str or a TaskPlan, got {type(instruction).__name__}")
        self.column_mapping = dict(column_mapping or {})
        if self.column_mapping:
            try:
                plan = plan.rename_columns(self.column_mapping)
            except ValueError as error:
                raise ValueError(f"{where}: column_mapping: {error}") from error
        self.plan = plan
        try:
            self.target_kind: str = plan_target_kind(plan)  # one of TARGET_KINDS
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        self.closed_set = any(isinstance(t.target_slot, Slot) and t.target_slot.closed_set for t in plan.templates)

        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"{where}: weight must be a number, got {type(weight).__name__}")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{where}: weight must be finite and > 0, got {weight}")
        self.weight = float(weight)
        for label, value in (("batch_size", batch_size), ("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{where}: {label} must be a positive int, got {value!r}")
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = dict(generation_kwargs or {})
        if on_error not in _ON_ERROR:
            raise ValueError(f"{where}: on_error must be one of {_ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.reference_column = reference_column
        # Built-in metric names (what reports and bootstrap intervals look up), and the user's own metrics by name.
        self.metrics, self.metric_functions = self._check_metrics(metrics)

        # datasets' Audio() decoding needs torchcodec; the processor decodes {bytes, path} itself.
        audio = sorted({s.column for t in plan.templates for s in t.data_slots if s.modality == "AUDIO"})
        self.train_dataset = undecoded_audio(train_dataset, audio)
        self.eval_dataset = undecoded_audio(eval_dataset, audio)
        if train_dataset is not None:
            self._check_data(self.train_dataset, "train_dataset", require_targets=True)
        if eval_dataset is not None:
            self._check_data(self.eval_dataset, "eval_dataset", require_targets=reference_column is None)
            if reference_column is not None:
                columns = column_names(eval_dataset)
                if columns is not None and reference_column not in columns:
                    raise ValueError(
                        f"{where}: reference_column {reference_column!r} is not a column of eval_dataset "
                        f"(columns: {sorted(columns)})"
                    )

        self._candidates: list[str] | None = None
        if candidates is not None:
            if not self.closed_set:
                raise ValueError(
                    f"{where}: candidates are given but the target slot is not closed_set; mark it, e.g. "
                    "[TEXT:answer,closed_set]"
                )
            self._candidates = self._clean_candidates(candidates, "candidates")
        elif self.closed_set and (train_dataset is None or is_streaming(train_dataset)):
            raise ValueError(
                f"{where}: the target is closed_set but no candidates are given and they cannot be collected from a "
                f"{'streaming ' if train_dataset is not None else 'missing '}train_dataset; pass candidates=[...]"
            )

    # -- checks -------------------------------------------------------------------------------------------------------

    def _check_metrics(self, metrics: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
        metrics = DEFAULT_METRICS[self.target_kind] if metrics is None else metrics
        if isinstance(metrics, Mapping):
            entries = list(metrics.items())
        else:
            single = isinstance(metrics, str) or callable(metrics) or hasattr(metrics, "compute")
            entries = [(None, metric) for metric in ((metrics,) if single else tuple(metrics))]
        names: list[str] = []
        functions: dict[str, Any] = {}
        for key, metric in entries:
            if not isinstance(metric, str):
                if not (callable(metric) or hasattr(metric, "compute")):
                    raise TypeError(
                        f"Task {self.name!r}: a metric is a name, a callable fn(predictions, references) or an "
                        f"evaluate module, got {type(metric).__name__}"
                    )
                try:
                    name = key if key is not None else metric_function_name(metric)
                except ValueError as error:
                    raise ValueError(f"Task {self.name!r}: {error}") from error
                if not isinstance(name, str) or not name or name in functions or name in METRICS:
                    raise ValueError(f"Task {self.name!r}: metric name {name!r} is empty, repeated or built in")
                functions[name] = metric
                continue
            names.append(metric)
        allowed = _METRIC_REFERENCES[self.target_kind]
        for metric in names:
            spec = METRICS.get(METRIC_ALIASES.get(metric, metric))
            if spec is None:
                known = ", ".join(sorted(METRICS.keys() | METRIC_ALIASES.keys()))
                raise ValueError(f"Task {self.name!r}: unknown metric {metric!r}; known metrics: {known}")
            if spec.reference_type not in allowed:
                fitting = sorted(m for m, s in METRICS.items() if s.reference_type in allowed)
                raise ValueError(
                    f"Task {self.name!r}: metric {metric!r} compares {spec.reference_type} references, which a "
                    f"{self.target_kind} target does not produce; metrics for {self.target_kind} targets: "
                    f"{', '.join(fitting) or 'none yet'}"
                )
        return tuple(names), functions

    def _check_data(self, dataset: Any, what: str, *, require_targets: bool) -> None:
        where = f"Task {self.name!r}: {what}"
        check_dataset(dataset, where)
        size = dataset_size(dataset)
        if size == 0:
            raise ValueError(f"{where} is empty")
        columns = column_names(dataset)
        if columns is None:
            if is_streaming(dataset):
                raise ValueError(f"{where} is empty (the stream yielded no row)")
            return
        self.plan.check_columns(columns, task=self.name, require_targets=require_targets)

    def _clean_candidates(self, values: Iterable[Any], what: str) -> list[str]:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"Task {self.name!r}: {what} must be a list of answers, got {type(values).__name__}")
        seen: dict[str, None] = {}
        for value in values:
            if isinstance(value, (list, tuple, dict)) or value is None:
                raise ValueError(f"Task {self.name!r}: {what} must be single answers, got {value!r}")
            text = str(value).strip()
            if not text:
                raise ValueError(f"Task {self.name!r}: {what} contain an empty answer")
            seen.setdefault(text, None)
        if not seen:
            raise ValueError(f"Task {self.name!r}: {what} are empty")
        return list(seen)

    # -- properties ---------------------------------------------------------------------------------------------------

    @property
    def instruction(self) -> str:
        """The instruction as the plan reads it (after `column_mapping`)."""
        return self.plan.instruction

    @property
    def num_train_examples(self) -> int | None:
        """Size of the training set (`None` when streaming)."""
        return None if self.train_dataset is None else dataset_size(self.train_dataset)

    def candidates(self) -> list[str] | None:
        """The closed set of a `closed_set` target (given, or collected once from the training data); else `None`."""
        if not self.closed_set:
            return None
        if self._candidates is None:
            columns = sorted({t.target_slot.column for t in self.plan.templates if t.target_slot.closed_set})
            values: list[Any] = []
            for column in columns:
                unique = getattr(self.train_dataset, "unique", None)
                if callable(unique):
                    values += list(unique(column))
                else:
                    values += [self.train_dataset[i][column] for i in range(len(self.train_dataset))]
            # Sorted so that the set (and the processor config it is saved into) does not depend on row order.
            self._candidates = sorted(self._clean_candidates(values, f"the values of train column(s) {columns}"))
        return list(self._candidates)

    def check_training_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise an `ExampleError` (naming the task, row and column) for a training row the task must not train on.

        Today: a `closed_set` answer outside the explicitly given `candidates`, which closed-set decoding could never
        produce. (Missing or malformed values are found by `OFAProcessor.encode`.)
        """
        if self._candidates is None or not self.closed_set:
            return
        allowed = set(self._candidates)
        for template in self.plan.templates:
            target = template.target_slot
            if not isinstance(target, Slot) or not target.closed_set or target.column not in row:
                continue
            value = row[target.column]
            answer = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
            if answer is not None and answer not in allowed:
                shown = ", ".join(repr(c) for c in self._candidates[:5]) + (", ..." if len(allowed) > 5 else "")
                raise ExampleError(
                    f"task {self.name!r}, row {index}, column {target.column!r}: the answer {answer!r} is not one of "
                    f"the task's candidates ({shown}); closed-set decoding could never produce it"
                )

    def generate_kwargs(
        self, base: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """`generate()` keyword arguments: [`GENERATION_DEFAULTS`] < `base` (e.g. `TrainingArguments.generation_*`)
        < the task's settings < `overrides`. `None` values do not override."""
        task = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, **self.generation_kwargs}
        explicit: dict[str, Any] = {}
        for layer in (base or {}, task, overrides or {}):
            explicit.update({key: value for key, value in layer.items() if value is not None})
        defaults = dict(GENERATION_DEFAULTS[self.target_kind])
        if "max_length" in explicit:
            defaults.pop("max_new_tokens", None)  # an explicit total length replaces the default budget
        if explicit.get("num_beams", defaults.get("num_beams", 1)) == 1:
            defaults.pop("no_repeat_ngram_size", None)  # OFASys blocks repeated n-grams only in beam search
        return {**defaults, **explicit}

    def reference(self, row: Mapping[str, Any], template_index: int = 0) -> Any:
        """The metric reference of an evaluation row (per [`TARGET_KINDS`]); `None` when the row has no target."""
        where = f"Task {self.name!r}"
        if self.reference_column is not None:
            return row.get(self.reference_column)
        target = self.plan.templates[template_index].target_slot
        if self.target_kind == "objects":
            slots = {slot.modality: slot.column for slot in target.data_slots}
            if "BOX" not in slots or any(c not in row for c in slots.values()):
                return None
            labels = row[slots["TEXT"]] if "TEXT" in slots else [""] * len(row[slots["BOX"]])
            return [{"box": _as_box(box, where), "label": str(label)} for box, label in zip(row[slots["BOX"]], labels)]
        value = row.get(target.column)
        if value is None:
            return None
        if self.target_kind == "box":
            return _as_box(value, where)
        if self.target_kind == "codes":
            return [int(v) for v in value]
        if self.target_kind == "image":
            return value  # the picture itself (image metrics analyse it)
        return str(value).strip()

    def prediction(self, answer: Mapping[str, Any]) -> Any:
        """The value of a typed answer that metrics compare (the label, the text, the box, ...)."""
        if self.target_kind == "box":
            return answer["box"] if answer["box"] is not None else [0.0, 0.0, 0.0, 0.0]  # IoU 0 with any box
        key = {"text": "text", "label": "label", "objects": "objects", "codes": "codes", "image": "image"}
        key = key[self.target_kind]
        return answer[key]

    def scored_pairs(
        self, answers: Sequence[Mapping[str, Any]], references: Sequence[Any] | None
    ) -> tuple[list[Any], list[Any]]:
        """The `(predictions, references)` that metrics score: each answer's `prediction` beside its reference, rows
        without a reference left out (two empty lists when there are no references)."""
        pairs = [(self.prediction(a), r) for a, r in zip(answers, references or []) if r is not None]
        return [p for p, _ in pairs], [r for _, r in pairs]

    def __repr__(self) -> str:
        train = "none" if self.train_dataset is None else (self.num_train_examples or "streaming")
        evaluation = "none" if self.eval_dataset is None else (dataset_size(self.eval_dataset) or "streaming")
        return (
            f"Task({self.name!r}, {self.instruction!r}, target={self.target_kind}, train={train}, eval={evaluation}, "
            f"weight={self.weight}, metrics={[*self.metrics, *self.metric_functions]})"
        )


def processor_with_tasks(processor: Any, tasks: Sequence[Task], generation_base: Mapping[str, Any] | None = None):
    """A copy of `processor` that carries `tasks`: each task's instruction, closed set and the scalar `generate()`
    settings it is evaluated with, in the config fields `save_pretrained` writes (`task_instructions`, `closed_sets`,
    `generation_defaults`), so a saved model carries the tasks it was trained on and the pipeline, `predict.py` and
    the Hub card read them back. The processor given is left as it is."""
    out = copy.copy(processor)
    out.task_instructions = {**processor.task_instructions}
    out.closed_sets = {name: list(values) for name, values in processor.closed_sets.items()}
    out.generation_defaults = {name: dict(values) for name, values in processor.generation_defaults.items()}
    for task in tasks:
        out.task_instructions[task.name] = task.instruction
        if task.closed_set:
            out.closed_sets[task.name] = task.candidates()
        # Only values a JSON config can hold (a logits processor in generation_kwargs stays with the Task).
        kwargs = task.generate_kwargs(generation_base)
        out.generation_defaults[task.name] = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str))}
    return out


def check_tasks(tasks: Sequence[Task] | None, task_adapters: Any = None, model: Any = None) -> list[Task]:
    """The trainer's tasks as a list, checked: `Task`s with unique names and, with per-task LoRA adapters, an
    adapter for every task on the model being trained."""
    if tasks is None or isinstance(tasks, (Task, str)) or not isinstance(tasks, Sequence):
        raise TypeError(f"`tasks` must be a list of Task, got {type(tasks).__name__}")
    if not tasks:
        raise ValueError("`tasks` is empty: at least one Task is needed")
    for index, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise TypeError(f"tasks[{index}] must be a Task, got {type(task).__name__}")
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"task names must be unique; repeated: {duplicates}")
    if task_adapters is not None:
        missing = [name for name in names if name not in task_adapters]
        if missing:
            raise ValueError(f"tasks {missing} have no adapter in task_adapters (tasks: {task_adapters.tasks})")
        if model is not task_adapters.model:
            raise ValueError("with task_adapters, train the adapters' model: pass model=task_adapters.model")
    return list(tasks)


def generation_base(args: Any) -> dict[str, Any]:
    """`Seq2SeqTrainingArguments.generation_*`: defaults of every task's generation (plain `TrainingArguments` have
    none)."""
    if not isinstance(args, Seq2SeqTrainingArguments):
        return {}
    return {"max_length": args.generation_max_length, "num_beams": args.generation_num_beams}
