# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""The training data of `MultiTaskTrainer`: the sampling strategy it resolves and the DataLoader of one rank.

The DataLoader is over a [`MultiTaskDataset`]: the micro-batches of *this* rank, chosen by a `MultiTaskBatchSchedule`
that is identical on every rank and reads a disjoint shard of every task. It is deliberately not passed through
`accelerator.prepare`, which would shard (or dispatch) the already per-rank stream a second time; `Trainer` moves each
batch to the device itself (`_prepare_inputs`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from transformers import TrainingArguments

from .data import MultiTaskDataset, is_streaming
from .sampling import STRATEGIES
from .task import Task

__all__ = ["resolve_sampling", "train_dataloader"]


def resolve_sampling(tasks: Sequence[Task], train_tasks: Sequence[Task], sampling: str | None) -> str:
    """The sampling strategy: the one given (checked), else `"explicit"` when some task has a weight other than 1,
    `"uniform"` (with a warning) when a training task streams (its size is unknown), else `"proportional"`."""
    if sampling is None:
        streaming = [task.name for task in train_tasks if task.num_train_examples is None]
        if any(task.weight != 1.0 for task in tasks):
            sampling = "explicit"
        elif streaming:
            # A stream has no size, which "proportional" needs: every task gets an equal share instead.
            sampling = "uniform"
            warnings.warn(
                f"sampling='uniform' (equal shares): tasks {streaming} stream, so their sizes (what the default "
                "'proportional' needs) are unknown; set Task weights with sampling='explicit' to choose the shares",
                stacklevel=3,
            )
        else:
            sampling = "proportional"
    if sampling not in STRATEGIES:
        raise ValueError(f"Unknown sampling strategy {sampling!r}; known strategies: {', '.join(STRATEGIES)}")
    if sampling != "explicit":
        weighted = [task.name for task in tasks if task.weight != 1.0]
        if weighted:
            raise ValueError(
                f"tasks {weighted} have weights, which sampling={sampling!r} ignores; use sampling='explicit'"
            )
    return sampling


def train_dataloader(data: MultiTaskDataset, args: TrainingArguments, train_tasks: Sequence[Task]) -> DataLoader:
    """A DataLoader of this rank's encoded micro-batches, with the worker settings of `args`."""
    workers = args.dataloader_num_workers
    if workers and any(is_streaming(task.train_dataset) for task in train_tasks):
        # A datasets.IterableDataset shards itself over DataLoader workers, which would break the per-rank stream
        # order; streams are read in the main process.
        warnings.warn("a task streams its training data: using dataloader_num_workers=0", stacklevel=3)
        workers = 0
    accelerator_available = torch.accelerator.is_available() if hasattr(torch, "accelerator") else False
    # Each `iter(DataLoader)` draws a base seed for its workers; from the global torch RNG, that draw would come after
    # `Trainer` restored a checkpoint's RNG state on resume (with `ignore_data_skip` the state is restored before the
    # epoch's iterator is created), leaving dropout one draw ahead of the uninterrupted run. The loader's own
    # generator keeps the global RNG out of it (the micro-batches are seeded by the schedule).
    generator = torch.Generator().manual_seed(data.seed)
    return DataLoader(
        data,
        batch_size=None,  # the dataset yields collated micro-batches
        generator=generator,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory and accelerator_available,
        persistent_workers=args.dataloader_persistent_workers and workers > 0,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        multiprocessing_context=args.dataloader_multiprocessing_context if workers > 0 else None,
    )
