# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""From task datasets to the encoded micro-batches one rank trains on.

[`MultiTaskDataset`] is a `torch.utils.data.IterableDataset` over already-collated micro-batches: it runs a
[`MultiTaskBatchSchedule`] for one rank (`rank`, `world_size`), reads the scheduled rows of each task's dataset,
encodes them with the task's plan through `OFAProcessor.encode` and collates them. Every micro-batch is a dict of
model inputs plus two entries the trainer removes before calling the model:

- `"task"` (`TASK_KEY`): the task's name, for per-task loss logging;
- `"multitask_info"` (`INFO_KEY`): a [`MicroBatchInfo`] with the schedule position, the example indices and the
  schedule state *after* this micro-batch, so a checkpoint records exactly what was consumed even when batches are
  prefetched.

Datasets may be map-style (`datasets.Dataset`, a list of dicts, anything with `__len__` and `__getitem__`) or streams
(`datasets.IterableDataset`, any re-iterable object). Map-style tasks are sampled by index (disjoint shards per rank,
see `ShardedTaskIterator`); streams are read in order and sharded item by item (`shard_stream`), restarting when they
end.

With DataLoader workers, worker `w` of `n` encodes micro-batches `w, w + n, w + 2n, ...` of the epoch; the DataLoader
returns them in that order, so the batch sequence does not depend on the number of workers.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from processing import ExampleError, OFAProcessor

from .sampling import MicroBatch, MultiTaskBatchSchedule, shard_stream

if TYPE_CHECKING:
    from .task import Task

__all__ = [
    "INFO_KEY",
    "TASK_KEY",
    "MicroBatchInfo",
    "MultiTaskDataset",
    "StreamReader",
    "column_names",
    "dataset_size",
    "is_streaming",
    "iter_rows",
    "read_rows",
]

TASK_KEY = "task"
"""Batch key holding the micro-batch's task name (removed before the model is called)."""

INFO_KEY = "multitask_info"
"""Batch key holding the micro-batch's [`MicroBatchInfo`] (removed before the model is called)."""


# ---------------------------------------------------------------------------------------------------------------------
# Dataset access: map-style (indexable) or stream


def is_streaming(dataset: Any) -> bool:
    """Whether `dataset` is read as a stream (no length or no random access) rather than by index."""
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(dataset, datasets.IterableDataset):
        return True
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    return not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"))


def check_dataset(dataset: Any, what: str) -> None:
    """Raise a `TypeError` when `dataset` is neither indexable by row nor a re-iterable stream of rows.

    Args:
        dataset: The dataset to check.
        what: How to name it in the message, e.g. `"task 'caption': train_dataset"`.
    """
    if isinstance(dataset, (str, bytes)):
        raise TypeError(f"{what} must be a dataset of rows, got a {type(dataset).__name__}")
    if isinstance(dataset, Mapping):
        raise TypeError(
            f"{what} is a mapping (columns?); pass rows: e.g. datasets.Dataset.from_dict(...) or a list of dicts"
        )
    if is_streaming(dataset):
        if not isinstance(dataset, Iterable):
            raise TypeError(f"{what} ({type(dataset).__name__}) is neither indexable nor iterable")
        if iter(dataset) is dataset:
            raise TypeError(
                f"{what} is a one-shot iterator ({type(dataset).__name__}), which cannot be read again for a second "
                "epoch or a resume; pass a re-iterable object such as a datasets.IterableDataset"
            )


def dataset_size(dataset: Any) -> int | None:
    """Number of rows of a map-style dataset; `None` for a stream."""
    return None if is_streaming(dataset) else len(dataset)


def column_names(dataset: Any) -> tuple[str, ...] | None:
    """The dataset's column names, or `None` when they cannot be known without reading a whole stream.

    Uses `column_names` when the dataset declares it (`datasets`), else the keys of the first row.
    """
    declared = getattr(dataset, "column_names", None)
    if declared is not None:
        return tuple(declared)
    if is_streaming(dataset):
        first = next(iter(dataset), None)
    else:
        first = dataset[0] if len(dataset) else None
    if first is None:
        return None
    if not isinstance(first, Mapping):
        raise TypeError(f"dataset rows must be mappings from column name to value, got {type(first).__name__}")
    return tuple(first)


def read_rows(dataset: Any, indices: Sequence[int]) -> list[Mapping[str, Any]]:
    """Rows `indices` of a map-style dataset, in order."""
    return [dataset[int(i)] for i in indices]


def iter_rows(dataset: Any, rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """`(index, row)` for this rank's share of `dataset`: rows `rank, rank + world_size, ...` (one pass)."""
    if is_streaming(dataset):
        yield from zip(range(rank, sys.maxsize, world_size), shard_stream(dataset, rank, world_size))
    else:
        for index in range(rank, len(dataset), world_size):
            yield index, dataset[index]


class StreamReader:
    """Sequential reader of one rank's shard of a stream, by position, restarting the stream when it ends.

    Position `p` is the `p`-th item this rank takes (`shard_stream`), counted across passes: when the stream ends,
    it is reopened (after `set_epoch(pass)` if the dataset has it, so shuffled streams reshuffle) and positions
    continue. Reading position `p` after a resume reads the stream from its start, as streams cannot seek.

    Args:
        dataset: A re-iterable stream of rows.
        rank: This process's rank.
        world_size: Number of data-parallel processes.
        task: The task's name, for error messages.
    """

    def __init__(self, dataset: Any, rank: int, world_size: int, task: str) -> None:
        self.dataset, self.rank, self.world_size, self.task = dataset, rank, world_size, task
        self.position = 0
        self.passes = 0
        self._iterator: Iterator[Any] | None = None

    def _open(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.passes)
        self._iterator = iter(shard_stream(self.dataset, self.rank, self.world_size))

    def _next(self) -> Any:
        if self._iterator is None:
            self._open()
        for attempt in range(2):
            try:
                item = next(self._iterator)
            except StopIteration:
                if attempt == 1:
                    break
                self.passes += 1
                self._open()
                continue
            self.position += 1
            return item
        raise ValueError(
            f"task {self.task!r}: the streaming train dataset yielded no rows for rank {self.rank} of "
            f"{self.world_size} (it has fewer rows than ranks, or is empty)"
        )

    def read(self, positions: Sequence[int], keep: bool = True) -> list[Any]:
        """The rows at `positions` (consecutive, not before the current position); `keep=False` only skips them."""
        if not positions:
            return []
        start = int(positions[0])
        if start < self.position:
            raise ValueError(f"task {self.task!r}: stream position {start} was already read (now at {self.position})")
        while self.position < start:
            self._next()
        rows = [self._next() for _ in positions]
        return rows if keep else []


# ---------------------------------------------------------------------------------------------------------------------
# The multi-task micro-batch stream


@dataclass(frozen=True)
class MicroBatchInfo:
    """Where a micro-batch comes from (travels with the batch under `INFO_KEY`).

    Args:
        task: Task name.
        optimizer_step: Schedule step the micro-batch belongs to.
        micro_index: Index of the micro-batch within its step.
        example_indices: Row indices (map-style task) or this rank's stream positions (streaming task).
        state: `MultiTaskBatchSchedule.state_dict()` right after this micro-batch: what a checkpoint taken after it
            must record.
        skipped: Rows of the micro-batch dropped because they could not be encoded (`Task(on_error="skip")`).
    """

    task: str
    optimizer_step: int
    micro_index: int
    example_indices: tuple[int, ...]
    state: dict[str, Any] = field(repr=False, compare=False)
    skipped: int = 0


def _encode_seed(seed: int, task_index: int, epoch: int) -> int:
    # A different seed per task and epoch, so corruptions (mask_ratio, noise_ratio) and template draws vary between
    # epochs while staying reproducible.
    return int(np.random.SeedSequence([seed, task_index, epoch]).generate_state(1)[0])


class MultiTaskDataset(torch.utils.data.IterableDataset):
    """Encoded, collated micro-batches of several tasks for one rank, following a [`MultiTaskBatchSchedule`].

    Iterating yields one epoch (see `steps_per_epoch`) starting from `state`; each new iteration continues where the
    previous one ended. Set `state` (e.g. from a checkpoint's [`MicroBatchInfo.state`]) to continue elsewhere.

    Args:
        tasks: The tasks, in schedule order; each needs a `train_dataset`.
        processor: Encodes rows (`OFAProcessor`).
        batch_size: Default micro-batch size per rank (a task's own `batch_size` wins).
        strategy: Sampling strategy (`STRATEGIES`).
        mode: Micro-batch mode (`MODES`), `None` for the strategy's default.
        gradient_accumulation_steps: Micro-batches per optimizer step (per task for `all_tasks`).
        temperature: Temperature of the `temperature` strategy.
        seed: Seed of the schedule, the shuffles and the encodings.
        rank: This process's data-parallel rank.
        world_size: Number of data-parallel processes.
        state: Schedule state to start from (default: the beginning).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        processor: OFAProcessor,
        *,
        batch_size: int,
        strategy: str = "proportional",
        mode: str | None = None,
        gradient_accumulation_steps: int = 1,
        temperature: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        missing = [task.name for task in tasks if task.train_dataset is None]
        if missing:
            raise ValueError(f"tasks {missing} have no train_dataset; every training task needs one")
        self.tasks = list(tasks)
        self.processor = processor
        self.rank, self.world_size = rank, world_size
        sizes = {task.name: task.num_train_examples for task in self.tasks}
        self._schedule_kwargs: dict[str, Any] = {
            "sizes": sizes,
            "batch_size": {task.name: task.batch_size or batch_size for task in self.tasks},
            "strategy": strategy,
            "mode": mode,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "weights": {task.name: task.weight for task in self.tasks} if strategy == "explicit" else None,
            "temperature": temperature,
            "seed": seed,
            "rank": rank,
            "world_size": world_size,
            # Truncating each epoch to a multiple of world_size keeps the rank shards disjoint: no example is seen
            # twice in an epoch (a different handful is left out each epoch when shuffling).
            "drop_last": True,
        }
        schedule = self.new_schedule()  # validates the configuration now, before any training
        self.seed = schedule.seed
        self.probabilities = schedule.probabilities
        self.micro_batches_per_step = schedule.micro_batches_per_step
        self.state: dict[str, Any] = schedule.state_dict()
        if state is not None:
            self.load_state_dict(state)

    def new_schedule(self) -> MultiTaskBatchSchedule:
        """A fresh schedule at the beginning, for this rank."""
        return MultiTaskBatchSchedule(**self._schedule_kwargs)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a schedule state (checked against this configuration)."""
        schedule = self.new_schedule()
        schedule.load_state_dict(state)
        if schedule.micro_index != 0:
            raise ValueError(
                f"the schedule state is in the middle of optimizer step {schedule.optimizer_step} (micro-batch "
                f"{schedule.micro_index}); checkpoints are taken between optimizer steps"
            )
        self.state = schedule.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per nominal epoch, or `None` when a task streams (unknown size).

        For the sampling strategies an epoch has as many micro-batches as one pass over every task's shard takes in
        total (each task is covered about once, in expectation, under `proportional`); for `all_tasks` it lasts until
        the largest task has been covered once (smaller tasks wrap around, as in OFASys). Tasks roll over to their
        next pass independently of this count; it only sets what `Trainer` calls an epoch.
        """
        batches = []
        for task in self.tasks:
            size = task.num_train_examples
            if size is None:
                return None
            per_rank = size // self.world_size
            batches.append(math.ceil(per_rank / self._schedule_kwargs["batch_size"][task.name]))
        accumulation = self._schedule_kwargs["gradient_accumulation_steps"]
        if self.micro_batches_per_step != accumulation:  # all_tasks: every task advances every step
            return max(1, math.ceil(max(batches) / accumulation))
        return max(1, math.ceil(sum(batches) / accumulation))

    def __len__(self) -> int:
        steps = self.steps_per_epoch
        if steps is None:
            raise TypeError("a multi-task stream with a streaming task has no length; set max_steps")
        return steps * self.micro_batches_per_step

    @property
    def examples_per_epoch(self) -> int | None:
        """Training examples over all tasks and ranks (what `Trainer` reports as the number of examples)."""
        sizes = [task.num_train_examples for task in self.tasks]
        return None if any(size is None for size in sizes) else sum(sizes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        schedule = self.new_schedule()
        schedule.load_state_dict(self.state)
        steps = self.steps_per_epoch
        stop_step = None if steps is None else (schedule.optimizer_step // steps + 1) * steps
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        readers = {
            task.name: StreamReader(task.train_dataset, self.rank, self.world_size, task.name)
            for task in self.tasks
            if task.num_train_examples is None
        }
        by_name = {task.name: (index, task) for index, task in enumerate(self.tasks)}
        number = 0
        while stop_step is None or schedule.optimizer_step < stop_step:
            before = schedule.state_dict()
            micro = next(schedule)
            mine = number % num_workers == worker_id
            number += 1
            task_index, task = by_name[micro.task_name]
            if task.name in readers:
                rows = readers[task.name].read(micro.example_indices, keep=mine)
                epoch = 0  # stream positions never repeat
            else:
                rows = read_rows(task.train_dataset, micro.example_indices) if mine else []
                epoch = before["tasks"][task.name]["epoch"]
            if not mine:
                continue
            info_state = schedule.state_dict()
            yield self._encode(task, task_index, micro, rows, epoch, info_state)
        # Only a completed epoch moves the start state: in a worker (or the main process) this is the copy that the
        # next epoch starts from; mid-epoch progress is recorded by the trainer from `MicroBatchInfo.state`.
        self.state = schedule.state_dict()

    def _encode(
        self,
        task: Task,
        task_index: int,
        micro: MicroBatch,
        rows: Sequence[Mapping[str, Any]],
        epoch: int,
        state: dict[str, Any],
    ) -> dict[str, Any]:
        seed = _encode_seed(self.seed, task_index, epoch)
        examples, skipped = [], 0
        for index, row in zip(micro.example_indices, rows):
            try:
                task.check_training_row(row, index)
                # Targets are required in training: a row without one is an error naming it here, not a collator
                # failure ("cannot batch examples with targets together with examples without") batches later.
                examples.append(
                    self.processor.encode(
                        task.plan, row, split="train", seed=seed, row_index=index, task=task.name, with_targets=True
                    )
                )
            except ExampleError as error:
                if task.on_error == "raise":
                    raise
                skipped += 1
                warnings.warn(f"skipped: {error}", stacklevel=2)
        if not examples:
            raise ValueError(
                f"task {task.name!r}: no row of the micro-batch at step {micro.optimizer_step} (rows "
                f"{list(micro.example_indices)}) could be encoded"
            )
        batch = dict(self.processor.collate(examples))
        batch[TASK_KEY] = task.name
        batch[INFO_KEY] = MicroBatchInfo(
            task=task.name,
            optimizer_step=micro.optimizer_step,
            micro_index=micro.micro_index,
            example_indices=tuple(micro.example_indices),
            state=state,
            skipped=skipped,
        )
        return batch
