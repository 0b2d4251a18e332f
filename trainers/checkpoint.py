# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""Checkpoint extras of `MultiTaskTrainer`: the schedule state, a completion marker, resume.

Each checkpoint holds the schedule state after the last consumed micro-batch ([`SCHEDULE_STATE_NAME`]), so a resumed
run sees exactly the batches the uninterrupted run would have, and a completion marker written last
([`CHECKPOINT_COMPLETE_NAME`], with every file's size). [`CheckpointExtrasCallback`] writes both in `on_save`, after
`Trainer` has written its own files, and only then rotates old checkpoints out (`save_total_limit`), so a crash while
saving always leaves the previous complete checkpoint in place. [`last_complete_checkpoint`] passes over incomplete
or damaged checkpoints with a warning that names the problem.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

__all__ = [
    "CHECKPOINT_COMPLETE_NAME",
    "SCHEDULE_STATE_NAME",
    "CheckpointExtrasCallback",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "read_schedule_state",
]

SCHEDULE_STATE_NAME = "multitask_schedule.json"
"""File in each checkpoint holding the schedule state after the last consumed micro-batch."""

CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"
"""Completion marker of a checkpoint, written last: the global step and the size of every file of the checkpoint."""


def _folder_files(folder: str) -> dict[str, int]:
    """`{relative path: size in bytes}` of every file under `folder` except the completion marker."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != CHECKPOINT_COMPLETE_NAME:
                sizes[relative] = os.path.getsize(path)
    return sizes


def _write_json(path: str, content: Any, *, sync: bool = False) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as handle:
        json.dump(content, handle, indent=1)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)


def checkpoint_problem(folder: str) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from (naming the file), or `None` when it is complete.

    Complete means: the completion marker ([`CHECKPOINT_COMPLETE_NAME`], written after every other file) is there,
    every file it lists has the recorded size, and the Trainer and schedule states parse as JSON.
    """
    marker = os.path.join(folder, CHECKPOINT_COMPLETE_NAME)
    if not os.path.isfile(marker):
        return f"no {CHECKPOINT_COMPLETE_NAME} (interrupted while saving, or not saved by MultiTaskTrainer)"
    try:
        with open(marker) as handle:
            files = json.load(handle)["files"]
        expected = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{CHECKPOINT_COMPLETE_NAME} is damaged ({error})"
    for name, size in sorted(expected.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} were written (truncated or overwritten)"
    for name in (TRAINER_STATE_NAME, SCHEDULE_STATE_NAME):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        try:
            with open(path) as handle:
                json.load(handle)
        except (OSError, ValueError) as error:
            return f"{name} is not valid JSON ({error})"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` folder of `output_dir` (see [`checkpoint_problem`]), or `None`.

    Every newer checkpoint passed over is named in a warning with what is wrong with it.
    """
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = sorted(
        ((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name))), reverse=True
    )
    for _, name in found:
        folder = os.path.join(output_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        warnings.warn(f"skipping incomplete checkpoint {folder}: {problem}", stacklevel=3)
    return None


def read_schedule_state(checkpoint: str) -> dict[str, Any]:
    """The schedule state saved in `checkpoint`, after checking the checkpoint is complete (a clear error if not)."""
    path = os.path.join(checkpoint, SCHEDULE_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint {checkpoint!r} has no {SCHEDULE_STATE_NAME}: it was not saved by MultiTaskTrainer, or was "
            "interrupted while saving"
        )
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ValueError(
            f"checkpoint {checkpoint!r} cannot be resumed from: {problem}; pass resume_from_checkpoint=True to take "
            "the newest complete checkpoint"
        )
    with open(path) as handle:
        return json.load(handle)


class CheckpointExtrasCallback(TrainerCallback):
    """Writes the schedule state and the completion marker into every checkpoint, then rotates old ones out.

    The trainer gives `Trainer` a `save_total_limit` of `None` (its own rotation would delete the previous checkpoint
    before the new one is vouched for) and this callback the user's limit.

    Args:
        schedule_state (`Callable[[], dict | None]`): The schedule state after the last consumed micro-batch.
        save_total_limit (`int`, *optional*): The user's `save_total_limit`.
        wait_for_everyone (`Callable[[], None]`): A barrier over ranks: every rank's files (its RNG state) are
            written before the main process vouches for the folder.
    """

    def __init__(
        self,
        schedule_state: Callable[[], dict[str, Any] | None],
        save_total_limit: int | None,
        wait_for_everyone: Callable[[], None],
    ) -> None:
        self.schedule_state, self.save_total_limit, self.wait_for_everyone = (
            schedule_state,
            save_total_limit,
            wait_for_everyone,
        )

    @staticmethod
    def _folder(args: TrainingArguments, state: TrainerState) -> str:
        return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _before_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        # A marker left by an earlier run at this step (an overwritten output_dir) must not vouch for new files.
        if control.should_save and args.should_save:
            marker = os.path.join(self._folder(args, state), CHECKPOINT_COMPLETE_NAME)
            if os.path.isfile(marker):
                os.remove(marker)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._before_save(args, state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._before_save(args, state, control)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = self._folder(args, state)
        schedule = self.schedule_state()
        if args.should_save and schedule is not None and os.path.isdir(folder):
            _write_json(os.path.join(folder, SCHEDULE_STATE_NAME), schedule)
        self.wait_for_everyone()
        if args.should_save and os.path.isdir(folder):
            content = {"global_step": state.global_step, "files": _folder_files(folder)}
            _write_json(os.path.join(folder, CHECKPOINT_COMPLETE_NAME), content, sync=True)
            rotate_checkpoints(
                output_dir=args.output_dir,
                save_total_limit=self.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=True,
            )
