"""Multi-task training for OFA: tasks, task-weighted sampling, the trainer and per-task metrics.

`import trainers` stays light: the sampler and the metric table load at once, while `Task`, `MultiTaskTrainer` and
the data pipeline (which import `processing`, `transformers`' Trainer and `accelerate`) load on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .metrics import METRIC_ALIASES, METRICS, MetricSpec, compute_metrics, normalize_vqa_answer
from .sampling import (
    MODES,
    STRATEGIES,
    MicroBatch,
    MultiTaskBatchSchedule,
    ShardedTaskIterator,
    TaskSchedule,
    shard_stream,
    task_probabilities,
)

if TYPE_CHECKING:
    from .callbacks import TaskLogCallback
    from .checkpoint import SCHEDULE_STATE_NAME, CheckpointExtrasCallback
    from .data import MicroBatchInfo, MultiTaskDataset
    from .task import DEFAULT_METRICS, GENERATION_DEFAULTS, TARGET_KINDS, Task, processor_with_tasks
    from .trainer import MultiTaskTrainer

# Lazily imported name -> module.
_LAZY = {
    "Task": ".task",
    "TARGET_KINDS": ".task",
    "DEFAULT_METRICS": ".task",
    "GENERATION_DEFAULTS": ".task",
    "MicroBatchInfo": ".data",
    "MultiTaskDataset": ".data",
    "processor_with_tasks": ".task",
    "MultiTaskTrainer": ".trainer",
    "SCHEDULE_STATE_NAME": ".checkpoint",
    "CheckpointExtrasCallback": ".checkpoint",
    "TaskLogCallback": ".callbacks",
}

__all__ = [
    "DEFAULT_METRICS",
    "GENERATION_DEFAULTS",
    "METRICS",
    "METRIC_ALIASES",
    "MODES",
    "SCHEDULE_STATE_NAME",
    "STRATEGIES",
    "TARGET_KINDS",
    "CheckpointExtrasCallback",
    "MetricSpec",
    "MicroBatch",
    "MicroBatchInfo",
    "MultiTaskBatchSchedule",
    "MultiTaskDataset",
    "MultiTaskTrainer",
    "ShardedTaskIterator",
    "Task",
    "TaskLogCallback",
    "TaskSchedule",
    "compute_metrics",
    "normalize_vqa_answer",
    "processor_with_tasks",
    "shard_stream",
    "task_probabilities",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
