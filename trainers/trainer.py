# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""`MultiTaskTrainer`: `Seq2SeqTrainer` over several [`Task`]s.

```python
trainer = MultiTaskTrainer(model=model, args=Seq2SeqTrainingArguments("out", max_steps=1000), tasks=[caption, vqa],
                           processor=processor, sampling="temperature", temperature=2.0)
trainer.train()
trainer.evaluate()                        # {"eval_caption_cider": ..., "eval_vqa_accuracy": ..., "eval_loss": ...}
trainer.predict(test_rows, task="vqa")    # PredictionOutput; .predictions = [{"label": "two", "in_set": True}, ...]
```

What it adds to `Seq2SeqTrainer`, one module per concern, each through `Trainer`'s public hooks:

- **Data** (`trainers.train_data`, `trainers.data`): `get_train_dataloader` yields this rank's micro-batches of a
  [`MultiTaskDataset`]; `sampling` picks the strategy ([`STRATEGIES`]), `mode` the micro-batch layout ([`MODES`]). For
  `all_tasks` (OFASys) one optimizer step accumulates `gradient_accumulation_steps` micro-batches of *every* task, and
  `Trainer` passes the step's target-token count as `num_items_in_batch`: the loss is normalized as in OFASys.
- **Resume** (`trainers.checkpoint`, a `TrainerCallback`): every checkpoint holds the schedule state and a completion
  marker written last; a resumed run sees exactly the batches the uninterrupted run would have.
- **Logs** (`trainers.callbacks`, a `TrainerCallback`): `loss_<task>`, `sampled_<task>` and `moe/...` in training logs.
- **Faults**: a non-finite loss raises a `RuntimeError` naming the task, the step and the examples.
- **Evaluation** (`trainers.evaluation`, through the answer path `processing.answers.AnswerGenerator`): `evaluate`
  reports `eval_<task>_<metric>`, `eval_<task>_loss` and `eval_loss`; `predict(test_dataset, task=...)` keeps
  `Trainer.predict`'s contract (the dataset first; `task` may be left out with one task).
- **Saved tasks**: `processing_class` is a copy of the processor carrying every task's instruction, closed set and
  generation settings ([`processor_with_tasks`]), which `save_model` writes; the processor passed in is not changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Seq2SeqTrainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalPrediction, PredictionOutput, TrainOutput, speed_metrics

from modeling_ofa import TaskAdapters, micro_batch_share
from processing import OFAProcessor

from .callbacks import TaskLogCallback, TaskLossTracker
from .checkpoint import (
    CHECKPOINT_COMPLETE_NAME,
    SCHEDULE_STATE_NAME,
    CheckpointExtrasCallback,
    checkpoint_problem,
    last_complete_checkpoint,
    read_schedule_state,
)
from .data import INFO_KEY, TASK_KEY, MicroBatchInfo, MultiTaskDataset
from .evaluation import predict_selection, run_task, score_task, select_eval_datasets
from .task import Task, check_tasks, generation_base, processor_with_tasks
from .train_data import non_finite_loss_error, resolve_sampling, train_dataloader, training_arguments

__all__ = ["CHECKPOINT_COMPLETE_NAME", "SCHEDULE_STATE_NAME", "MultiTaskTrainer", "checkpoint_problem"]


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
            `save_total_limit` is applied once a new checkpoint is complete; `data_seed` (else `seed`) seeds the
            schedule; `generation_max_length` / `generation_num_beams` are
            defaults for every task's generation.
        tasks (`list[Task]`):
            The tasks, in order (the order of `all_tasks` steps and of the logs). Names must be unique.
        processor (`OFAProcessor`):
            Encodes rows and post-processes generations. The trainer's `processing_class` is a copy of it that
            carries every task's instruction, closed set and generation settings, so `save_model` (and
            `push_to_hub`) saves them with the model; the processor given is not changed.
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
        self.tasks = check_tasks(tasks, task_adapters, model)
        self.task_adapters = task_adapters
        self.train_tasks = [task for task in self.tasks if task.train_dataset is not None]
        self.sampling = resolve_sampling(self.tasks, self.train_tasks, sampling)
        self.temperature, self.mode, self.moe_logging = temperature, mode, moe_logging
        self.task_losses = TaskLossTracker([task.name for task in self.tasks])
        log_callback = TaskLogCallback(self.task_losses, moe_logging, self._sum_over_ranks)  # checks moe_logging
        args, self.task_gradient_accumulation_steps, save_total_limit = training_arguments(
            args, self.sampling, self.train_tasks
        )
        # Published models carry their tasks: the saved processor config holds them (the caller's stays as it is).
        self.processor = processor_with_tasks(processor, self.tasks, generation_base(args))
        eval_datasets = {task.name: task.eval_dataset for task in self.tasks if task.eval_dataset is not None}
        super().__init__(
            model=model,
            args=args,
            eval_dataset=eval_datasets or None,
            processing_class=self.processor,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.callback_handler.callbacks.insert(0, log_callback)  # first: every reporter after it sees its keys
        self.add_callback(
            CheckpointExtrasCallback(
                lambda: self.task_losses.consumed_state, save_total_limit, self.accelerator.wait_for_everyone
            )
        )
        self._resume_state: dict[str, Any] | None = None  # schedule state of the checkpoint being resumed
        self._train_data: MultiTaskDataset | None = None
        self._current: MicroBatchInfo | None = None
        if self.train_tasks:
            self._build_train_data()  # a bad schedule configuration fails here, before training

    def task(self, name: str) -> Task:
        """The task called `name`."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r}; tasks: {[task.name for task in self.tasks]}")

    # -- training data and resume ------------------------------------------------------------------------------------

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
        self.task_losses.consumed_state = self._resume_state
        return train_dataloader(data, self.args, self.train_tasks)

    def num_examples(self, dataloader: DataLoader) -> int:
        dataset = dataloader.dataset
        if isinstance(dataset, MultiTaskDataset) and dataset.examples_per_epoch is not None:
            return dataset.examples_per_epoch
        return super().num_examples(dataloader)

    last_complete_checkpoint = staticmethod(last_complete_checkpoint)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """`Trainer.train`; a resumed run continues the task schedule exactly where the checkpoint left it."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir!r}")
        self._resume_state = read_schedule_state(resume_from_checkpoint) if resume_from_checkpoint else None
        self.task_losses.reset()
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint or None,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )

    # -- training step and loss --------------------------------------------------------------------------------------

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
            self.task_losses.consumed_state = info.state
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
                raise non_finite_loss_error(loss, info, self.state.global_step + 1)
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
            self.task_losses.add_batch(info.task, logits, labels)
        return (loss, outputs) if return_outputs else loss

    # -- evaluation and prediction (trainers.evaluation) -------------------------------------------------------------

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
        for task, dataset in select_eval_datasets(self.tasks, eval_dataset, self.task):
            run = run_task(self, task, dataset, gen_kwargs)
            metrics.update(score_task(task, run, f"{metric_key_prefix}_{task.name}", self.compute_metrics))
            nll, tokens, samples = nll + run.nll, tokens + run.tokens, samples + len(run.answers)
        if tokens:
            metrics[f"{metric_key_prefix}_loss"] = nll / tokens
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=int(samples)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(
        self,
        test_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
        *,
        task: str | Task | None = None,
        **gen_kwargs: Any,
    ) -> PredictionOutput:
        """Answers of one task on a dataset, with `Trainer.predict`'s contract (the dataset first).

        Args:
            test_dataset: Rows with the task's input columns; targets are optional (metrics are computed if
                present). Default: the task's `eval_dataset`.
            ignore_keys: Unused (kept for `Trainer` compatibility).
            metric_key_prefix: Prefix of the metric names (`test_<task>_<metric>`).
            task: A task name of this trainer, or any `Task` (e.g. a new one with the same instruction); may be left
                out when the trainer has one task.
            gen_kwargs: `generate()` arguments (override the task's settings).

        Returns:
            `PredictionOutput` whose `predictions` is the list of typed answers in dataset order (see `TARGET_KINDS`),
            `label_ids` the references (or `None` without targets) and `metrics` the task's metrics.
        """
        task, dataset = predict_selection(self.tasks, test_dataset, task, self.task)
        start = time.time()
        run = run_task(self, task, dataset, gen_kwargs)
        metrics = score_task(task, run, f"{metric_key_prefix}_{task.name}", self.compute_metrics)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(run.answers)))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        has_references = any(reference is not None for reference in run.references)
        return PredictionOutput(
            predictions=run.answers, label_ids=run.references if has_references else None, metrics=metrics
        )

    def generation_base(self) -> dict[str, Any]:
        """The generation defaults of `args` (`generation_max_length`, `generation_num_beams`)."""
        return generation_base(self.args)

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.args.world_size > 1 else tensor
