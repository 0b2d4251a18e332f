# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of one task: this rank's shard of the rows through the answer path, gathered over ranks, scored.

`MultiTaskTrainer.evaluate` and `predict` call [`run_task`] per task and [`score_task`] on the gathered run. The
answers come from `processing.answers.AnswerGenerator`, the path the pipeline and `scripts/predict.py` take too; what
is added here is distributed evaluation (rows `rank, rank + world_size, ...`, gathered back in dataset order), the
token loss of rows that have targets, and the metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from transformers.distributed.fsdp import is_fsdp_managed_module
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import EvalPrediction

from processing import ExampleError
from processing.answers import AnswerGenerator

from .data import column_names, iter_rows
from .metrics import compute_metrics, malformed_boxes, score_metric_function
from .task import Task

if TYPE_CHECKING:
    from .trainer import MultiTaskTrainer

__all__ = ["TaskRun", "predict_selection", "run_task", "score_task", "select_eval_datasets"]


@dataclass
class TaskRun:
    """One task's answers over a dataset, gathered from every rank in dataset order.

    Args:
        indices: Dataset index of each answer.
        answers: Typed answers (`processing.answers.TARGET_KINDS`).
        references: Metric reference per answer (`None` for rows without targets).
        nll, tokens: Token negative log-likelihood sum and scored tokens of the rows with targets.
        skipped: Rows that could not be encoded (`Task(on_error="skip")`).
    """

    indices: list[int]
    answers: list[dict[str, Any]]
    references: list[Any]
    nll: float
    tokens: int
    skipped: int


def select_eval_datasets(tasks: list[Task], eval_dataset: Any, lookup: Callable[[str], Task]) -> list[tuple[Task, Any]]:
    """`(task, dataset)` pairs to evaluate: every task's `eval_dataset`, a `{task_name: dataset}` mapping, or one
    dataset when there is one task."""
    if eval_dataset is None:
        selected = [(task, task.eval_dataset) for task in tasks if task.eval_dataset is not None]
        if not selected:
            raise ValueError("no task has an eval_dataset; give tasks eval data or pass eval_dataset")
        return selected
    if isinstance(eval_dataset, Mapping):
        return [(lookup(name), dataset) for name, dataset in eval_dataset.items()]
    if len(tasks) == 1:
        return [(tasks[0], eval_dataset)]
    raise ValueError(
        "with several tasks, pass eval_dataset as {task_name: dataset} (or None for every task's eval_dataset)"
    )


def predict_selection(
    tasks: list[Task], test_dataset: Any, task: str | Task | None, lookup: Callable[[str], Task]
) -> tuple[Task, Any]:
    """The task and dataset of `predict(test_dataset, task=...)`: `task` a name of the trainer's, any `Task`, or left
    out with one task; the dataset defaults to the task's `eval_dataset`, and its columns are checked."""
    if isinstance(test_dataset, (str, Task)):
        name = test_dataset.name if isinstance(test_dataset, Task) else test_dataset
        raise TypeError(
            f"predict() takes the dataset first, as Trainer.predict does: write predict(dataset, task={name!r})"
        )
    if task is None:
        if len(tasks) != 1:
            names = [t.name for t in tasks]
            raise ValueError(f"with several tasks, name the task: predict(dataset, task=one of {names})")
        task = tasks[0]
    elif isinstance(task, str):
        task = lookup(task)
    elif not isinstance(task, Task):
        raise TypeError(f"predict(task=...) needs a task name or a Task, got {type(task).__name__}")
    dataset = test_dataset if test_dataset is not None else task.eval_dataset
    if dataset is None:
        raise ValueError(f"task {task.name!r} has no eval_dataset; pass test_dataset")
    columns = column_names(dataset)
    if columns is not None:
        task.plan.check_columns(columns, task=task.name, require_targets=False)
    return task, dataset


def _synced_count(trainer: MultiTaskTrainer, count: int) -> int:
    """The largest `count` over ranks (sharded models must run the same number of forwards on every rank)."""
    if trainer.args.world_size == 1:
        return count
    value = torch.tensor([count], device=trainer.args.device)
    return int(trainer.accelerator.gather(value).max().item())


def _encode_shard(trainer: MultiTaskTrainer, task: Task, dataset: Any) -> tuple[list[tuple[int, dict, Any]], int]:
    """`(index, example, reference)` of this rank's rows (encoded with targets where the row has them), skipped."""
    args, local, skipped = trainer.args, [], 0
    for index, row in iter_rows(dataset, args.process_index, args.world_size):
        try:
            example = trainer.processor.encode(
                task.plan, row, split="eval", seed=args.seed, row_index=index, task=task.name
            )
        except ExampleError as error:
            if task.on_error == "raise":
                raise
            skipped += 1
            warnings.warn(f"skipped: {error}", stacklevel=3)
            continue
        local.append((index, example, task.reference(row, example["meta"]["template_index"])))
    return local, skipped


def _token_loss(trainer: MultiTaskTrainer, task: Task, examples: list[dict], num_calls) -> torch.Tensor:
    """`[nll sum, scored tokens]` (float64) of the examples that have labels, teacher-forced."""
    args, model, size = trainer.args, trainer.model, trainer.args.per_device_eval_batch_size
    totals = torch.zeros(2, dtype=torch.float64, device=args.device)
    batches = [examples[i : i + size] for i in range(0, len(examples), size)]
    calls = num_calls(len(batches)) if num_calls is not None else len(batches)
    if calls and not batches:
        raise RuntimeError(f"task {task.name!r}: rank {args.process_index} has no evaluation rows")
    with torch.no_grad():
        for number in range(calls):
            inputs = trainer._prepare_inputs(dict(trainer.processor.collate(batches[min(number, len(batches) - 1)])))
            logits = model(**inputs).logits
            if number < len(batches):  # repeats only keep sharded ranks in step
                labels = inputs["labels"]
                nll = F.cross_entropy(
                    logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
                totals += torch.stack([nll.double(), labels.ne(-100).sum().double()])
    return totals


def run_task(trainer: MultiTaskTrainer, task: Task, dataset: Any, gen_kwargs: Mapping[str, Any]) -> TaskRun:
    """Answers, references and loss of `task` on `dataset`: each rank takes its shard, results gathered in order."""
    args, model = trainer.args, trainer.model
    if trainer.task_adapters is not None:
        trainer.task_adapters.activate(task.name)
    synced = is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model)
    num_calls = (lambda count: _synced_count(trainer, count)) if synced else None
    kwargs = task.generate_kwargs(trainer.generation_base(), gen_kwargs)
    if synced:
        kwargs.setdefault("synced_gpus", True)
    # The row's template is the one `encode` draws from (seed, index), as in training: every template is evaluated.
    answers = AnswerGenerator(
        trainer.processor, task.plan, task=task.name, candidates=task.candidates(), template=None,
        batch_size=args.per_device_eval_batch_size, generate_kwargs=kwargs, progress=not args.disable_tqdm,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        local, skipped = _encode_shard(trainer, task, dataset)
        examples = [example for _, example, _ in local]
        totals = _token_loss(trainer, task, [e for e in examples if "labels" in e], num_calls)
        generated = answers.generate_from_examples(
            model, examples, prepare_inputs=lambda batch: trainer._prepare_inputs(dict(batch)), num_calls=num_calls
        )
    finally:
        model.train(was_training)
    mine = [(index, answer, reference) for (index, _, reference), answer in zip(local, generated)]
    gathered = sorted(gather_object(mine), key=lambda item: item[0])
    totals = torch.cat([totals, torch.tensor([float(skipped)], dtype=torch.float64, device=args.device)])
    if args.world_size > 1:
        totals = trainer.accelerator.reduce(totals, reduction="sum")
    nll, tokens, skipped_total = totals.tolist()
    return TaskRun(
        indices=[index for index, _, _ in gathered],
        answers=[answer for _, answer, _ in gathered],
        references=[reference for _, _, reference in gathered],
        nll=nll,
        tokens=int(tokens),
        skipped=int(skipped_total),
    )


def score_task(
    task: Task,
    run: TaskRun,
    prefix: str,
    compute_metrics_fn: Callable[[EvalPrediction], Mapping[str, float]] | None = None,
) -> dict[str, float]:
    """`{prefix}_loss`, the task's metrics, its metric functions and `compute_metrics_fn` as `{prefix}_{name}`; the
    skipped rows and (box tasks) malformed boxes are counted, never silent."""
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
        if compute_metrics_fn is not None:
            scores = compute_metrics_fn(EvalPrediction(predictions=predictions, label_ids=references))
            for key, value in scores.items():
                out[f"{prefix}_{key}"] = float(value)
    if run.skipped:
        out[f"{prefix}_skipped"] = float(run.skipped)
    if task.target_kind == "box":  # scored as empty boxes above; counted here, never silently
        out[f"{prefix}_malformed_boxes"] = float(malformed_boxes(run.answers))
    return out
