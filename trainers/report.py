"""Run reports: per-task results beside their chance baselines, and the points of the loss/metric curves
(drawn by `trainers.plots`).

A test split of a hundred examples moves a metric by several points between equally good models, so a result
carries a percentile-bootstrap interval over its test examples, and a task counts as beating chance only when
the whole interval lies on the right side of the chance score: "clearly above chance", not "above by luck".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TaskResult",
    "below_chance",
    "bootstrap_interval",
    "curve_series",
    "results_markdown",
    "results_table",
    "split_metric_key",
]

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95


def bootstrap_interval(
    fn: Callable[[Sequence[Any], Sequence[Any]], float],
    predictions: Sequence[Any],
    references: Sequence[Any],
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of a corpus metric: `fn` on `samples` resamples (with replacement) of the
    examples, the central `level` share of the scores.

    Args:
        fn: `fn(predictions, references) -> score`, a corpus-level metric (`trainers.metrics.METRICS[name].fn`).
        predictions: One prediction per example.
        references: One reference per example, aligned with `predictions`.
        samples: Number of resamples.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of the resampling, so the interval is reproducible.

    Returns:
        `(low, high)`; both NaN when there are no examples.
    """
    if len(predictions) != len(references):
        raise ValueError(f"bootstrap_interval: {len(predictions)} predictions but {len(references)} references")
    if not 0 < level < 1 or samples < 1:
        raise ValueError(f"bootstrap_interval needs 0 < level < 1 and samples >= 1, got level={level}, {samples=}")
    if not predictions:
        return math.nan, math.nan
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(predictions)
    scores = []
    for _ in range(samples):
        index = rng.integers(0, n, size=n)
        scores.append(fn([predictions[i] for i in index], [references[i] for i in index]))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class TaskResult:
    """One task's test metric beside the chance-level value of the same metric.

    Args:
        task: Task name.
        metric: Metric name (`trainers.metrics.METRICS`).
        value: The model's score on the test split.
        chance: The score of the best trivial predictor (a constant answer, a fixed box), computed on the same data.
        higher_is_better: Direction of the metric (False for WER).
        instruction: The task's instruction, for the tables.
        low: Lower end of the value's bootstrap interval over the test examples (`bootstrap_interval`), or NaN.
        high: Upper end of that interval, or NaN.
    """

    task: str
    metric: str
    value: float
    chance: float
    higher_is_better: bool = True
    instruction: str = ""
    low: float = math.nan
    high: float = math.nan

    @property
    def margin(self) -> float:
        """How far the model beats chance, in the metric's own units (positive = better than chance)."""
        return self.value - self.chance if self.higher_is_better else self.chance - self.value

    @property
    def beats_chance(self) -> bool:
        """True when the model is clearly better than chance: its whole bootstrap interval is on the better side of
        the chance score (without an interval, the value alone must be)."""
        if not (math.isfinite(self.value) and math.isfinite(self.chance)):
            return False
        if math.isnan(self.low) or math.isnan(self.high):
            return self.margin > 0
        worst = self.low if self.higher_is_better else self.high
        return (worst > self.chance) if self.higher_is_better else (worst < self.chance)

    @property
    def has_chance(self) -> bool:
        """Whether a chance level is known (the demo's tasks; a user's own task has none, so no verdict)."""
        return math.isfinite(self.chance)

    @property
    def verdict(self) -> str:
        """`"yes"` / `"NO"` for "clearly above chance", `"-"` when no chance level is known."""
        if not self.has_chance:
            return "-"
        return "yes" if self.beats_chance else "NO"

    @property
    def interval(self) -> str:
        return "" if math.isnan(self.low) else f"[{self.low:.3f}, {self.high:.3f}]"


def below_chance(results: Sequence[TaskResult]) -> list[TaskResult]:
    """The results whose chance level is known and that are not clearly above it (a run's failures)."""
    return [r for r in results if r.has_chance and not r.beats_chance]


def _fixed(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def results_table(results: Sequence[TaskResult]) -> str:
    """A fixed-width table for the terminal. Without a chance level (a user's own task), chance, margin and the
    verdict are dashes: there is nothing to beat."""
    level = f"{BOOTSTRAP_LEVEL:.0%} interval"
    header = f"{'task':<17}{'metric':<16}{'model':>7}  {level:<16}{'chance':>7}{'margin':>8}  clearly above chance"
    lines = [header, "-" * len(header)]
    for r in results:
        arrow = "" if r.higher_is_better else " (lower is better)"
        lines.append(
            f"{r.task:<17}{r.metric:<16}{r.value:>7.3f}  {r.interval:<16}{_fixed(r.chance, '.3f'):>7}"
            f"{_fixed(r.margin, '+.3f'):>8}  {r.verdict}{arrow}"
        )
    if results and not any(r.has_chance for r in results):
        lines.append("(no chance levels are known for these tasks: the metrics are reported without a verdict)")
    return "\n".join(lines)


def results_markdown(results: Sequence[TaskResult], int8: Sequence[TaskResult] | None = None) -> str:
    """The same results as a Markdown table (README, model card, `results.md`); with `int8` (the same tasks scored
    with int8 linear layers, in the same order), an int8 column."""
    if int8 is not None and [(r.task, r.metric) for r in int8] != [(r.task, r.metric) for r in results]:
        raise ValueError("results_markdown: the int8 results must be the same (task, metric) rows in the same order")
    level = f"{BOOTSTRAP_LEVEL:.0%} interval"
    columns = ["task", "instruction", "metric", "model", level, "chance", *(["int8"] if int8 else []), "above chance"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, r in enumerate(results):
        metric = r.metric + ("" if r.higher_is_better else " (lower is better)")
        instruction = r.instruction.replace("|", "\\|")
        cells = [r.task, f"`{instruction}`", metric, f"{r.value:.3f}", r.interval or "-", _fixed(r.chance, ".3f")]
        if int8:
            cells.append(f"{int8[index].value:.3f}")
        cells.append(r.verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_metric_key(key: str, tasks: Sequence[str], prefix: str = "eval") -> tuple[str, str] | None:
    """`(task, metric)` of a per-task metric key `<prefix>_<task>_<metric>`, as the trainer writes it; None for any
    other key (`eval_loss`, `eval_runtime`, a task not in `tasks`).

    Task and metric names may both contain `_` (`motion_class`, `exact_match`, and `motion` beside `motion_class`), so
    the key is split at the longest task name of `tasks` it starts with, never at an underscore.

    Args:
        key: A log key, e.g. `"eval_motion_class_accuracy"`.
        tasks: The run's task names.
        prefix: The key's prefix (`"eval"` during training, `"test"` for `predict`, `"loss"` for training losses).
    """
    head = f"{prefix}_"
    if not key.startswith(head):
        return None
    rest = key[len(head) :]
    for task in sorted(tasks, key=len, reverse=True):
        if rest.startswith(f"{task}_"):
            metric = rest[len(task) + 1 :]
            return (task, metric) if metric else None  # the longest match decides, even when its metric is empty
    return None


def curve_series(
    log_history: Sequence[Mapping[str, Any]], tasks: Sequence[str]
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """The points `plot_curves` draws: ({task: [(step, loss)]}, {"<task> <metric>": [(step, value)]}).

    Keys are `loss_<task>` (training) and `eval_<task>_<metric>` (evaluation, split by `split_metric_key`).
    """
    losses: dict[str, list[tuple[int, float]]] = {}
    metrics: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("loss_") and key[len("loss_") :] in tasks:
                losses.setdefault(key[len("loss_") :], []).append((step, float(value)))
            elif (split := split_metric_key(key, tasks)) is not None and split[1] not in ("loss", "runtime"):
                metrics.setdefault(f"{split[0]} {split[1]}", []).append((step, float(value)))
    return losses, metrics
