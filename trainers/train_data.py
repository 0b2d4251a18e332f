# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""The training data of `MultiTaskTrainer`: the sampling strategy it resolves and the DataLoader of one rank.

The DataLoader is over a [`MultiTaskDataset`]: the micro-batches of *this* rank, chosen by a `MultiTaskBatchSchedule`
that is identical on every rank and reads a disjoint shard of every task. It is deliberately not passed through
`accelerator.prepare`, which would shard (or dispatch) the already per-rank stream a second time; `Trainer` moves each
batch to the device itself (`_prepare_inputs`).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .data import MicroBatchInfo, MultiTaskDataset, is_streaming
from .sampling import STRATEGIES
from .task import Task

__all__ = ["non_finite_loss_error", "resolve_sampling", "train_dataloader", "training_arguments"]


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
    """A DataLoader of this rank's encoded micro-batches, with the worker settings of `args`.

    Target pictures of image tasks are encoded into VQ codes here, once and in batches (`cache_image_targets`), so
    the micro-batches (and DataLoader workers, which inherit the cache) read them instead of encoding them one by one,
    every epoch."""
    for task in train_tasks:
        if task.target_kind in ("image", "codes") and not is_streaming(task.train_dataset):
            if data.processor.image_tokenizer is not None:
                data.processor.cache_image_targets(task.plan, task.train_dataset)
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


def training_arguments(
    args: TrainingArguments | None, sampling: str, train_tasks: Sequence[Task]
) -> tuple[TrainingArguments, int, int | None]:
    """The copy of `args` the trainer runs with, the micro-batches per task of an optimizer step, and the user's
    `save_total_limit` (applied by the checkpoint callback once a new checkpoint is complete; `None` in the copy).

    The copy sets `ignore_data_skip` (the schedule state restored from a checkpoint already positions the data;
    `Trainer` skipping the first batches of the resumed epoch as well would skip them twice) and, for `all_tasks`,
    multiplies `gradient_accumulation_steps` by the number of training tasks (one step holds every task).
    """
    args = copy.copy(args) if args is not None else Seq2SeqTrainingArguments(output_dir="tmp_trainer")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        # torchrun / accelerate launch on CPUs without `use_cpu`: Trainer sets up no DDP, and every process would
        # silently train the whole run on its own.
        raise ValueError(
            f"this process is one of {launched} launched (WORLD_SIZE={launched}), but the training arguments set "
            "up no data parallelism, so each process would train the whole run alone; on CPU processes pass "
            "use_cpu=True (scripts/train.py does so itself)"
        )
    args.ignore_data_skip = True
    save_total_limit, args.save_total_limit = args.save_total_limit, None
    per_task = args.gradient_accumulation_steps
    if sampling == "all_tasks" and train_tasks:
        args.gradient_accumulation_steps *= len(train_tasks)
    return args, per_task, save_total_limit


def non_finite_loss_error(loss: torch.Tensor, info: MicroBatchInfo, step: int) -> RuntimeError:
    """The error of a non-finite training loss, naming the task, the training step and the micro-batch's examples."""
    shown = list(info.example_indices[:8]) + (["..."] if len(info.example_indices) > 8 else [])
    return RuntimeError(
        f"non-finite loss ({loss.detach().float().mean().item()}) on task {info.task!r} at training step {step} "
        f"(micro-batch {info.micro_index} of schedule step {info.optimizer_step}, examples {shown}); lower the "
        "learning rate, clip gradients (max_grad_norm) or check this task's data"
    )
