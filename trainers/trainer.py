# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""`MultiTaskTrainer`: `Seq2SeqTrainer` over several [`Task`]s.

```python
trainer = MultiTaskTrainer(model=model, args=Seq2SeqTrainingArguments("out", max_steps=1000), tasks=[caption, vqa],
                           processor=processor, sampling="temperature", temperature=2.0)
trainer.train()
trainer.evaluate()                        # {"eval_caption_cider": ..., "eval_vqa_accuracy": ..., "eval_loss": ...}
trainer.predict("vqa", test_rows)         # PredictionOutput; .predictions = [{"label": "two", "in_set": True}, ...]
```

What it adds to `Seq2SeqTrainer`, and how it stays a `Trainer`:

- **Data.** `get_train_dataloader` returns a DataLoader over a [`MultiTaskDataset`]: the micro-batches of *this* rank,
  chosen by a [`MultiTaskBatchSchedule`] that is identical on every rank and reads a disjoint shard of every task. The
  DataLoader is deliberately not passed through `accelerator.prepare`, which would shard (or dispatch) the already
  per-rank stream a second time; `Trainer` moves each batch to the device itself (`_prepare_inputs`).
- **Scheduling.** `sampling` picks the strategy ([`STRATEGIES`]) and `mode` the micro-batch layout ([`MODES`]). For
  `all_tasks` (OFASys) one optimizer step accumulates `gradient_accumulation_steps` micro-batches of *every* task, so
  the trainer's own `args.gradient_accumulation_steps` becomes that times the number of tasks; `Trainer` then passes
  the number of target tokens of the whole step as `num_items_in_batch`, and the model divides the summed loss by it:
  the step's loss is normalized by its total token count, as in OFASys.
- **Resume.** Each checkpoint holds the schedule state after the last consumed micro-batch (`multitask_schedule.json`);
  `train(resume_from_checkpoint=...)` restores it, so the resumed run sees exactly the batches the uninterrupted run
  would have. `Trainer`'s own batch skipping is off (`ignore_data_skip`), since it would skip twice.
  `resume_from_checkpoint=True` takes the newest *complete* checkpoint: each checkpoint is vouched for by a marker
  written last (`checkpoint_complete.json`, with every file's size), so one killed while saving, or a file truncated
  since, is passed over with a warning that names it. Older checkpoints are rotated out only after the new one is
  complete. The DataLoader has its own seed generator, so the torch RNG that dropout draws from continues exactly.
- **Logs.** Every training log gets `loss_<task>` (token negative log-likelihood of that task's micro-batches since
  the last log, over all ranks), `sampled_<task>` (share of micro-batches so far) and, for mixture-of-experts models,
  router statistics (`moe/...`). They go through `Trainer.log`, so every reporter and the progress bar see them.
- **Faults.** A non-finite loss raises a `RuntimeError` naming the task, the step and the examples.
- **Evaluation.** `evaluate` generates for every task with an `eval_dataset` (closed-set targets constrained to their
  candidates by a trie), computes the task's metrics and reports `eval_<task>_<metric>`, `eval_<task>_loss` and
  `eval_loss` (token-weighted over tasks). `predict(task, dataset)` returns the typed answers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    TrainingArguments,
)
from transformers.distributed.fsdp import is_fsdp_managed_module
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    rotate_checkpoints,
    speed_metrics,
)

from modeling_ofa import TaskAdapters, collect_moe_stats, micro_batch_share
from processing import ExampleError, OFAProcessor

from .data import INFO_KEY, TASK_KEY, MicroBatchInfo, MultiTaskDataset, column_names, is_streaming, iter_rows
from .metrics import compute_metrics, malformed_boxes, score_metric_function
from .sampling import STRATEGIES
from .task import Task

__all__ = ["CHECKPOINT_COMPLETE_NAME", "SCHEDULE_STATE_NAME", "MultiTaskTrainer", "checkpoint_problem"]

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


MOE_LOG_LEVELS = ("none", "summary", "all")
_MOE_EXPERT_KEY = re.compile(r"moe/.+/(expert_\d+_fraction)$")


@dataclass
class _TaskRun:
    """One task's generations over a dataset, gathered from every rank in dataset order."""

    indices: list[int]
    answers: list[dict[str, Any]]
    references: list[Any]
    nll: float
    tokens: int
    skipped: int


@dataclass
class _LocalRun:
    """One rank's share of a task's evaluation, before gathering.

    Args:
        rows: `(row index, encoded example, reference)` per encoded row.
        skipped: Rows that could not be encoded.
        nll, tokens: Sums of the token negative log-likelihood and of the scored tokens (scalar tensors).
        answers: Typed answer per position in `rows`.
    """

    rows: list[tuple[int, dict[str, Any], Any]]
    skipped: int
    nll: torch.Tensor
    tokens: torch.Tensor
    answers: dict[int, dict[str, Any]]


def _moe_summary(stats: Mapping[str, float]) -> dict[str, float]:
    """Means over MoE blocks: the pooled router statistics plus each expert's share of tokens."""
    out = {key: value for key, value in stats.items() if key.count("/") == 1}
    shares: dict[str, list[float]] = {}
    for key, value in stats.items():
        match = _MOE_EXPERT_KEY.fullmatch(key)
        if match:
            shares.setdefault(match.group(1), []).append(value)
    out.update({f"moe/{name}_mean": sum(v) / len(v) for name, v in sorted(shares.items())})
    return out


class MultiTaskTrainer(Seq2SeqTrainer):
    r"""
    `Seq2SeqTrainer` that trains and evaluates several [`Task`]s at once (see the module docstring).

    Args:
        model (`OFAForConditionalGeneration`, *optional*):
            The model (or give `model_init`).
        args (`Seq2SeqTrainingArguments`, *optional*):
            Usual training arguments. The trainer works on a copy: it sets `ignore_data_skip=True` and, for the
            `all_tasks` strategy, multiplies `gradient_accumulation_steps` by the number of training tasks.
            `per_device_train_batch_size` is the micro-batch size of tasks without their own `batch_size`;
            `data_seed` (else `seed`) seeds the schedule; `generation_max_length` / `generation_num_beams` are
            defaults for every task's generation.
        tasks (`list[Task]`):
            The tasks, in order (the order of `all_tasks` steps and of the logs). Names must be unique.
        processor (`OFAProcessor`):
            Encodes rows and post-processes generations. It is the trainer's `processing_class`, so it is saved (and
            pushed) with the model, together with every task's instruction and closed set.
        sampling (`str`, *optional*):
            One of `STRATEGIES`. Default: `"explicit"` when some task has a weight other than 1, else
            `"proportional"`, or `"uniform"` (logged) when a training task streams (its size is unknown). Task weights
            are only used by `"explicit"`.
        temperature (`float`, defaults to 1.0):
            For `sampling="temperature"`.
        mode (`str`, *optional*):
            `"homogeneous"` (every micro-batch of an optimizer step from one task, the default) or `"mixed"` (each
            micro-batch draws its task); fixed for `all_tasks`.
        moe_logging (`str`, defaults to `"summary"`):
            Router statistics in the training logs: `"none"`, `"summary"` (means over blocks) or `"all"` (every block).
        task_adapters (`modeling_ofa.TaskAdapters`, *optional*):
            One LoRA adapter per task on the model (`model=task_adapters.model`, every task with an adapter): each
            micro-batch activates its task's adapter before the forward pass, so each task trains its own adapter and
            the others do not move; evaluation and `predict` of a task run through its adapter.
        compute_metrics (`Callable[[EvalPrediction], dict[str, float]]`, *optional*):
            As for `Trainer`, called once per task with `EvalPrediction(predictions, label_ids)`: the task's answer
            values (texts, labels, boxes) and references; its scores are logged as `eval_<task>_<name>`.
        processing_class, model_init, compute_loss_func, callbacks, optimizers:
            As for `Trainer` (`processing_class` is an alias of `processor`).
    """

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        tasks: Sequence[Task] | None = None,
        processor: OFAProcessor | None = None,
        *,
        sampling: str | None = None,
        temperature: float = 1.0,
        mode: str | None = None,
        moe_logging: str = "summary",
        task_adapters: TaskAdapters | None = None,
        processing_class: OFAProcessor | None = None,
        model_init: Callable[..., PreTrainedModel] | None = None,
        compute_loss_func: Callable[..., torch.Tensor] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None] = (None, None),
    ) -> None:
        if processor is not None and processing_class is not None and processor is not processing_class:
            raise ValueError("give the processor as `processor` or as `processing_class`, not two different ones")
        processor = processor if processor is not None else processing_class
        if not isinstance(processor, OFAProcessor):
            raise TypeError(f"MultiTaskTrainer needs an OFAProcessor as `processor`, got {type(processor).__name__}")
        self.tasks = self._check_tasks(tasks)
        self.processor = processor
        if task_adapters is not None:
            missing = [task.name for task in self.tasks if task.name not in task_adapters]
            if missing:
                raise ValueError(f"tasks {missing} have no adapter in task_adapters (tasks: {task_adapters.tasks})")
            if model is not task_adapters.model:
                raise ValueError("with task_adapters, train the adapters' model: pass model=task_adapters.model")
        self.task_adapters = task_adapters
        self.train_tasks = [task for task in self.tasks if task.train_dataset is not None]
        if sampling is None:
            streaming = [task.name for task in self.train_tasks if task.num_train_examples is None]
            if any(task.weight != 1.0 for task in self.tasks):
                sampling = "explicit"
            elif streaming:
                # A stream has no size, which "proportional" needs: every task gets an equal share instead.
                sampling = "uniform"
                warnings.warn(
                    f"sampling='uniform' (equal shares): tasks {streaming} stream, so their sizes (what the default "
                    "'proportional' needs) are unknown; set Task weights with sampling='explicit' to choose the shares",
                    stacklevel=2,
                )
            else:
                sampling = "proportional"
        if sampling not in STRATEGIES:
            raise ValueError(f"Unknown sampling strategy {sampling!r}; known strategies: {', '.join(STRATEGIES)}")
        if sampling != "explicit":
            weighted = [task.name for task in self.tasks if task.weight != 1.0]
            if weighted:
                raise ValueError(
                    f"tasks {weighted} have weights, which sampling={sampling!r} ignores; use sampling='explicit'"
                )
        if moe_logging not in MOE_LOG_LEVELS:
            raise ValueError(f"moe_logging must be one of {MOE_LOG_LEVELS}, got {moe_logging!r}")
        self.sampling, self.temperature, self.mode, self.moe_logging = sampling, temperature, mode, moe_logging

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
        # The schedule state restored from a checkpoint already positions the data; Trainer skipping the first
        # batches of the resumed epoch as well would skip them twice.
        args.ignore_data_skip = True
        self.task_gradient_accumulation_steps = args.gradient_accumulation_steps
        if sampling == "all_tasks" and self.train_tasks:
            args.gradient_accumulation_steps *= len(self.train_tasks)

        eval_datasets = {task.name: task.eval_dataset for task in self.tasks if task.eval_dataset is not None}
        super().__init__(
            model=model,
            args=args,
            eval_dataset=eval_datasets or None,
            processing_class=processor,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # Published models carry their tasks: the processor config saves instructions and closed sets.
        for task in self.tasks:
            processor.task_instructions[task.name] = task.instruction
            if task.closed_set:
                processor.closed_sets[task.name] = task.candidates()
            # ... and the generate() settings it is evaluated with (the pipeline and predict.py reuse them); only
            # values a JSON config can hold (a logits processor in generation_kwargs stays with the Task).
            kwargs = task.generate_kwargs(self._generation_base())
            scalars = {key: value for key, value in kwargs.items() if isinstance(value, (bool, int, float, str))}
            processor.generation_defaults[task.name] = scalars

        self._resume_state: dict[str, Any] | None = None  # schedule state of the checkpoint being resumed
        self._consumed_state: dict[str, Any] | None = None  # schedule state after the last trained micro-batch
        self._train_data: MultiTaskDataset | None = None
        self._current: MicroBatchInfo | None = None
        self._task_index = {task.name: i for i, task in enumerate(self.tasks)}
        # (NLL sum, scored tokens) per task since the last log; on the device, so logging costs no sync per batch.
        self._task_stats: torch.Tensor | None = None
        if self.train_tasks:
            self._build_train_data()  # a bad schedule configuration fails here, before training

    @staticmethod
    def _check_tasks(tasks: Sequence[Task] | None) -> list[Task]:
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
        return list(tasks)

    def task(self, name: str) -> Task:
        """The task called `name`."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r}; tasks: {[task.name for task in self.tasks]}")

    # ------------------------------------------------------------------------------------------------------------
    # Training data
    # ------------------------------------------------------------------------------------------------------------

    def _build_train_data(self) -> MultiTaskDataset:
        if not self.train_tasks:
            raise ValueError("no task has a train_dataset; give at least one task training data to train")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._train_data = MultiTaskDataset(
            self.train_tasks,
            self.processor,
            batch_size=self._train_batch_size,
            strategy=self.sampling,
            mode=self.mode,
            gradient_accumulation_steps=self.task_gradient_accumulation_steps,
            temperature=self.temperature,
            seed=seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            state=self._resume_state,
        )
        return self._train_data

    def get_train_dataloader(self) -> DataLoader:
        """A DataLoader of this rank's encoded micro-batches (not prepared by accelerate: it is already per rank)."""
        # Called once per training attempt (again after an auto_find_batch_size retry): start where train() said.
        data = self._build_train_data()
        self._consumed_state = self._resume_state
        workers = self.args.dataloader_num_workers
        if workers and any(is_streaming(task.train_dataset) for task in self.train_tasks):
            # A datasets.IterableDataset shards itself over DataLoader workers, which would break the per-rank
            # stream order; streams are read in the main process.
            warnings.warn("a task streams its training data: using dataloader_num_workers=0", stacklevel=2)
            workers = 0
        accelerator_available = torch.accelerator.is_available() if hasattr(torch, "accelerator") else False
        # Each `iter(DataLoader)` draws a base seed for its workers; from the global torch RNG, that draw would come
        # after `Trainer` restored a checkpoint's RNG state on resume (with `ignore_data_skip` the state is restored
        # before the epoch's iterator is created), leaving dropout one draw ahead of the uninterrupted run. The
        # loader's own generator keeps the global RNG out of it (the micro-batches are seeded by the schedule).
        generator = torch.Generator().manual_seed(data.seed)
        return DataLoader(
            data,
            batch_size=None,  # the dataset yields collated micro-batches
            generator=generator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and accelerator_available,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            multiprocessing_context=self.args.dataloader_multiprocessing_context if workers > 0 else None,
        )

    def num_examples(self, dataloader: DataLoader) -> int:
        dataset = getattr(dataloader, "dataset", None)
        if isinstance(dataset, MultiTaskDataset) and dataset.examples_per_epoch is not None:
            return dataset.examples_per_epoch
        return super().num_examples(dataloader)

    # ------------------------------------------------------------------------------------------------------------
    # Training step, loss, logs
    # ------------------------------------------------------------------------------------------------------------

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """`Trainer.training_step` on the model inputs; the task name and schedule position are taken off first."""
        inputs = dict(inputs)
        inputs.pop(TASK_KEY, None)
        info = inputs.pop(INFO_KEY, None)
        if info is not None and self.task_adapters is not None:
            self.task_adapters.activate(info.task)  # the micro-batch trains its own task's adapter, and only that one
        if info is not None:
            self._consumed_state = info.state
            if self._train_data is not None:
                # Non-persistent DataLoader workers of the next epoch start from the main-process copy.
                self._train_data.state = info.state
        self._current = info
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._current = None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """`Trainer.compute_loss`, plus the non-finite check and the per-task NLL bookkeeping of training batches."""
        info = self._current
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux_loss = outputs.get("aux_loss") if isinstance(outputs, Mapping) else None
        if aux_loss is not None and labels is not None and "labels" not in inputs and model.training:
            # `Trainer` took the labels off to compute the token loss itself (`label_smoothing_factor`,
            # `compute_loss_func`), so the model's loss, which includes the router loss, was not used: add it here.
            loss = loss + micro_batch_share(aux_loss, labels, num_items_in_batch)
        if info is not None and labels is not None:
            if not bool(torch.isfinite(loss.detach()).all()):
                shown = list(info.example_indices[:8]) + (["..."] if len(info.example_indices) > 8 else [])
                raise RuntimeError(
                    f"non-finite loss ({loss.detach().float().mean().item()}) on task {info.task!r} at training step "
                    f"{self.state.global_step + 1} (micro-batch {info.micro_index} of schedule step "
                    f"{info.optimizer_step}, examples {shown}); lower the learning rate, clip gradients "
                    "(max_grad_norm) or check this task's data"
                )
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
            with torch.no_grad():
                nll = F.cross_entropy(
                    logits.detach().float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
                tokens = labels.ne(-100).sum()
            if self._task_stats is None or self._task_stats.device != nll.device:
                self._task_stats = torch.zeros(len(self.tasks), 2, device=nll.device)
            self._task_stats[self._task_index[info.task]] += torch.stack([nll, tokens.float()])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log`, with per-task losses, sampling shares and MoE router statistics added to training logs."""
        if "loss" in logs and self._consumed_state is not None:
            if self._task_stats is None:
                self._task_stats = torch.zeros(len(self.tasks), 2, device=self.args.device)
            stats = self._task_stats.to(self.args.device)
            if self.args.world_size > 1:
                # Every rank logs at the same steps (as for Trainer's own loss gather), so this collective matches.
                stats = self.accelerator.reduce(stats, reduction="sum")
            for task, (nll, tokens) in zip(self.tasks, stats.tolist()):
                if tokens > 0:
                    logs[f"loss_{task.name}"] = nll / tokens
            self._task_stats.zero_()
            consumed = self._consumed_state["consumed_batches"]
            total = sum(consumed.values())
            for name, count in consumed.items():
                logs[f"sampled_{name}"] = count / total if total else 0.0
            if self.moe_logging != "none":
                moe = collect_moe_stats(self.model)
                logs.update(moe if self.moe_logging == "all" else _moe_summary(moe))
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints and resume
    # ------------------------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """`Trainer`'s checkpoint plus the schedule state, made atomic by a completion marker written last.

        A checkpoint without a valid marker ([`checkpoint_problem`]) is never resumed from by
        `resume_from_checkpoint=True`. Old checkpoints are rotated out (`save_total_limit`) only after the new one is
        complete, so a crash while saving always leaves the previous complete checkpoint in place.
        """
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            # A marker left by an earlier run at this step (an overwritten output_dir) must not vouch for new files.
            if os.path.isfile(os.path.join(folder, CHECKPOINT_COMPLETE_NAME)):
                os.remove(os.path.join(folder, CHECKPOINT_COMPLETE_NAME))
            if self._consumed_state is not None:
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, SCHEDULE_STATE_NAME)
                with open(path + ".tmp", "w") as handle:
                    json.dump(self._consumed_state, handle, indent=1)
                os.replace(path + ".tmp", path)
        save_total_limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotation waits for the marker (below)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        # Every rank has written its files (its RNG state) before the main process vouches for the folder.
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(folder):
            marker = os.path.join(folder, CHECKPOINT_COMPLETE_NAME)
            content = {"global_step": self.state.global_step, "files": _folder_files(folder)}
            with open(marker + ".tmp", "w") as handle:
                json.dump(content, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(marker + ".tmp", marker)
            rotate_checkpoints(
                output_dir=self._get_output_dir(trial=trial),
                save_total_limit=save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    @staticmethod
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
            warnings.warn(f"skipping incomplete checkpoint {folder}: {problem}", stacklevel=2)
        return None

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """`Trainer.train`; a resumed run continues the task schedule exactly where the checkpoint left it."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self.last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir!r}")
        if resume_from_checkpoint:
            path = os.path.join(resume_from_checkpoint, SCHEDULE_STATE_NAME)
            if not os.path.isfile(path):
                raise ValueError(
                    f"checkpoint {resume_from_checkpoint!r} has no {SCHEDULE_STATE_NAME}: it was not saved by "
                    "MultiTaskTrainer, or was interrupted while saving"
                )
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(
                    f"checkpoint {resume_from_checkpoint!r} cannot be resumed from: {problem}; pass "
                    "resume_from_checkpoint=True to take the newest complete checkpoint"
                )
            with open(path) as handle:
                self._resume_state = json.load(handle)
        else:
            self._resume_state = None
            resume_from_checkpoint = None
        self._task_stats = None
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation and prediction
    # ------------------------------------------------------------------------------------------------------------

    def _eval_selection(self, eval_dataset: Any) -> list[tuple[Task, Any]]:
        if eval_dataset is None:
            selected = [(task, task.eval_dataset) for task in self.tasks if task.eval_dataset is not None]
            if not selected:
                raise ValueError("no task has an eval_dataset; give tasks eval data or pass eval_dataset")
            return selected
        if isinstance(eval_dataset, Mapping):
            return [(self.task(name), dataset) for name, dataset in eval_dataset.items()]
        if len(self.tasks) == 1:
            return [(self.tasks[0], eval_dataset)]
        raise ValueError(
            "with several tasks, pass eval_dataset as {task_name: dataset} (or None for every task's eval_dataset)"
        )

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
        **gen_kwargs: Any,
    ) -> dict[str, float]:
        """Generate and score every task with evaluation data.

        Args:
            eval_dataset: `None` (every task's `eval_dataset`), `{task_name: dataset}`, or a dataset when there is a
                single task.
            ignore_keys: Unused (kept for `Trainer` compatibility).
            metric_key_prefix: Prefix of the metric names.
            gen_kwargs: `generate()` arguments for every task (override the tasks' settings).

        Returns:
            `{prefix}_{task}_{metric}` for each task's metrics, `{prefix}_{task}_loss` (token negative
            log-likelihood) when the rows have targets, `{prefix}_loss` (over all tasks' tokens) and speed metrics.
        """
        start = time.time()
        metrics: dict[str, float] = {}
        nll = tokens = samples = 0.0
        for task, dataset in self._eval_selection(eval_dataset):
            run = self._run_task(task, dataset, gen_kwargs)
            metrics.update(self._score(task, run, f"{metric_key_prefix}_{task.name}"))
            nll, tokens, samples = nll + run.nll, tokens + run.tokens, samples + len(run.answers)
        if tokens:
            metrics[f"{metric_key_prefix}_loss"] = nll / tokens
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=int(samples)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(
        self,
        task: str | Task,
        test_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
        **gen_kwargs: Any,
    ) -> PredictionOutput:
        """Answers of one task on a dataset (default: the task's `eval_dataset`).

        Args:
            task: A task name of this trainer, or any `Task` (e.g. a new one with the same instruction).
            test_dataset: Rows with the task's input columns; targets are optional (metrics are computed if present).
            ignore_keys: Unused (kept for `Trainer` compatibility).
            metric_key_prefix: Prefix of the metric names (`test_<task>_<metric>`).
            gen_kwargs: `generate()` arguments (override the task's settings).

        Returns:
            `PredictionOutput` whose `predictions` is the list of typed answers in dataset order (see `TARGET_KINDS`),
            `label_ids` the references (or `None` without targets) and `metrics` the task's metrics.
        """
        if isinstance(task, str):
            task = self.task(task)
        elif not isinstance(task, Task):
            raise TypeError(f"predict() needs a task name or a Task first, got {type(task).__name__}")
        dataset = test_dataset if test_dataset is not None else task.eval_dataset
        if dataset is None:
            raise ValueError(f"task {task.name!r} has no eval_dataset; pass test_dataset")
        columns = column_names(dataset)
        if columns is not None:
            task.plan.check_columns(columns, task=task.name, require_targets=False)
        start = time.time()
        run = self._run_task(task, dataset, gen_kwargs)
        metrics = self._score(task, run, f"{metric_key_prefix}_{task.name}")
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(run.answers)))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        has_references = any(reference is not None for reference in run.references)
        return PredictionOutput(
            predictions=run.answers, label_ids=run.references if has_references else None, metrics=metrics
        )

    def _score(self, task: Task, run: _TaskRun, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if run.tokens:
            out[f"{prefix}_loss"] = run.nll / run.tokens
        predictions, references = task.scored_pairs(run.answers, run.references)
        if task.metrics and predictions:
            for name, value in compute_metrics(task.metrics, predictions, references).items():
                out[f"{prefix}_{name}"] = value
        if predictions:  # the task's own metric functions, then the trainer's compute_metrics (as Trainer's)
            for name, metric in task.metric_functions.items():
                for key, value in score_metric_function(name, metric, predictions, references).items():
                    out[f"{prefix}_{key}"] = value
            if self.compute_metrics is not None:
                scores = self.compute_metrics(EvalPrediction(predictions=predictions, label_ids=references))
                for key, value in scores.items():
                    out[f"{prefix}_{key}"] = float(value)
        if run.skipped:
            out[f"{prefix}_skipped"] = float(run.skipped)
        if task.target_kind == "box":  # scored as empty boxes above; counted here, never silently
            out[f"{prefix}_malformed_boxes"] = float(malformed_boxes(run.answers))
        return out

    def _generation_base(self) -> dict[str, Any]:
        return {
            "max_length": getattr(self.args, "generation_max_length", None),
            "num_beams": getattr(self.args, "generation_num_beams", None),
        }

    def _synced_count(self, count: int) -> int:
        """The largest `count` over ranks (sharded models must run the same number of forwards on every rank)."""
        if self.args.world_size == 1:
            return count
        value = torch.tensor([count], device=self.args.device)
        return int(self.accelerator.gather(value).max().item())

    def _generate_task(self, task: Task, dataset: Any, gen_kwargs: Mapping[str, Any]) -> _LocalRun:
        """This rank's share of `dataset`: encode, compute the loss where there are targets, generate."""
        processor, args, model = self.processor, self.args, self.model
        local: list[tuple[int, dict[str, Any], Any]] = []
        skipped = 0
        for index, row in iter_rows(dataset, args.process_index, args.world_size):
            try:
                example = processor.encode(
                    task.plan, row, split="eval", seed=args.seed, row_index=index, task=task.name
                )
            except ExampleError as error:
                if task.on_error == "raise":
                    raise
                skipped += 1
                warnings.warn(f"skipped: {error}", stacklevel=2)
                continue
            local.append((index, example, task.reference(row, example["meta"]["template_index"])))

        synced = is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model)
        batch_size = args.per_device_eval_batch_size
        nll = torch.zeros((), dtype=torch.float64, device=args.device)
        tokens = torch.zeros((), dtype=torch.float64, device=args.device)
        with_labels = [example for _, example, _ in local if "labels" in example]
        loss_batches = [with_labels[i : i + batch_size] for i in range(0, len(with_labels), batch_size)]
        with torch.no_grad():
            for number in range(self._synced_count(len(loss_batches)) if synced else len(loss_batches)):
                batch = loss_batches[min(number, len(loss_batches) - 1)] if loss_batches else None
                if batch is None:
                    raise RuntimeError(f"task {task.name!r}: rank {args.process_index} has no evaluation rows")
                inputs = self._prepare_inputs(dict(processor.collate(batch)))
                logits = model(**inputs).logits
                if number < len(loss_batches):  # repeats only keep sharded ranks in step
                    labels = inputs["labels"]
                    nll += F.cross_entropy(
                        logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                    ).double()
                    tokens += labels.ne(-100).sum().double()

        # Generation inputs: the decoder prompt only; rows of one prompt length share a batch.
        groups: dict[int, list[int]] = {}
        for position, (_, example, _) in enumerate(local):
            groups.setdefault(example["meta"]["prefix_length"], []).append(position)
        work = [
            (prefix, positions[i : i + batch_size])
            for prefix, positions in sorted(groups.items())
            for i in range(0, len(positions), batch_size)
        ]
        candidates = task.candidates()
        kwargs = task.generate_kwargs(self._generation_base(), gen_kwargs)
        if candidates is not None and "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            trie = processor.closed_set_trie(candidates, task.plan)
            kwargs["max_new_tokens"] = max(len(answer) for answer in trie)  # the longest answer and its </s>
        if synced:
            kwargs.setdefault("synced_gpus", True)
        extra_processors = list(kwargs.pop("logits_processor", None) or [])
        answers: dict[int, dict[str, Any]] = {}
        with torch.no_grad():
            for number in range(self._synced_count(len(work)) if synced else len(work)):
                if not work:
                    raise RuntimeError(f"task {task.name!r}: rank {args.process_index} has no evaluation rows")
                prefix, positions = work[min(number, len(work) - 1)]
                examples = []
                for position in positions:
                    example = {k: v for k, v in local[position][1].items() if k != "labels"}
                    example["decoder_input_ids"] = example["decoder_input_ids"][: 1 + prefix]
                    examples.append(example)
                inputs = self._prepare_inputs(dict(processor.collate(examples)))
                processors = LogitsProcessorList(extra_processors)
                if candidates is not None:
                    template = examples[0]["meta"]["template_index"]
                    processors.append(
                        processor.closed_set_logits_processor(
                            candidates, prefix_length=prefix, plan=task.plan, template_index=template
                        )
                    )
                sequences = model.generate(**inputs, **kwargs, logits_processor=processors)
                if number >= len(work):
                    continue
                metas = [example["meta"] for example in examples]
                results = processor.post_process_generation(sequences, task.plan, metas, candidates=candidates)
                for position, answer in zip(positions, results):
                    answers[position] = answer
        return _LocalRun(local, skipped, nll, tokens, answers)

    def _run_task(self, task: Task, dataset: Any, gen_kwargs: Mapping[str, Any]) -> _TaskRun:
        """Generate for `dataset` on every rank and gather the answers, references and loss sums in dataset order."""
        args, model = self.args, self.model
        if self.task_adapters is not None:
            self.task_adapters.activate(task.name)
        was_training = model.training
        model.eval()
        try:
            run = self._generate_task(task, dataset, gen_kwargs)
        finally:
            model.train(was_training)
        mine = [(index, run.answers[p], reference) for p, (index, _, reference) in enumerate(run.rows)]
        gathered = sorted(gather_object(mine), key=lambda item: item[0])
        skipped = torch.tensor(float(run.skipped), dtype=torch.float64, device=args.device)
        totals = torch.stack([run.nll, run.tokens, skipped])
        if args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        total_nll, total_tokens, total_skipped = totals.tolist()
        return _TaskRun(
            indices=[index for index, _, _ in gathered],
            answers=[answer for _, answer, _ in gathered],
            references=[reference for _, _, reference in gathered],
            nll=total_nll,
            tokens=int(total_tokens),
            skipped=int(total_skipped),
        )
