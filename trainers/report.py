"""Run reports: per-task results beside their chance baselines, and loss/metric curves as a PNG.

A test split of a hundred examples moves a metric by several points between equally good models, so a result
carries a percentile-bootstrap interval over its test examples, and a task counts as beating chance only when
the whole interval lies on the right side of the chance score: "clearly above chance", not "above by luck".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TaskResult", "bootstrap_interval", "curve_series", "plot_curves", "results_markdown", "results_table"]

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
    def interval(self) -> str:
        return "" if math.isnan(self.low) else f"[{self.low:.3f}, {self.high:.3f}]"


def results_table(results: Sequence[TaskResult]) -> str:
    """A fixed-width table for the terminal."""
    level = f"{BOOTSTRAP_LEVEL:.0%} interval"
    header = f"{'task':<17}{'metric':<16}{'model':>7}  {level:<16}{'chance':>7}{'margin':>8}  clearly above chance"
    lines = [header, "-" * len(header)]
    for r in results:
        arrow = "" if r.higher_is_better else " (lower is better)"
        lines.append(
            f"{r.task:<17}{r.metric:<16}{r.value:>7.3f}  {r.interval:<16}{r.chance:>7.3f}{r.margin:>+8.3f}  "
            f"{'yes' if r.beats_chance else 'NO'}{arrow}"
        )
    return "\n".join(lines)


def results_markdown(results: Sequence[TaskResult]) -> str:
    """The same results as a Markdown table (README, model card)."""
    lines = [
        f"| task | instruction | metric | model | {BOOTSTRAP_LEVEL:.0%} interval | chance |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        metric = r.metric + ("" if r.higher_is_better else " (lower is better)")
        instruction = r.instruction.replace("|", "\\|")
        lines.append(
            f"| {r.task} | `{instruction}` | {metric} | {r.value:.3f} | {r.interval or '-'} | {r.chance:.3f} |"
        )
    return "\n".join(lines)


def curve_series(
    log_history: Sequence[Mapping[str, Any]], tasks: Sequence[str]
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """The points `plot_curves` draws: ({task: [(step, loss)]}, {"<task> <metric>": [(step, value)]}).

    Keys are `loss_<task>` (training) and `eval_<task>_<metric>` (evaluation). Task names may contain `_`
    (`motion_class`), so an evaluation key is split at the longest task name it starts with, not at an underscore.
    """
    by_length = sorted(tasks, key=len, reverse=True)
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
            elif key.startswith("eval_"):
                task = next((t for t in by_length if key.startswith(f"eval_{t}_")), None)
                metric = key[len(f"eval_{task}_") :] if task else ""
                if task and metric not in ("", "loss", "runtime"):
                    metrics.setdefault(f"{task} {metric}", []).append((step, float(value)))
    return losses, metrics


def plot_curves(log_history: Sequence[Mapping[str, Any]], path: str | Path, tasks: Sequence[str]) -> Path:
    """Plot per-task training loss and evaluation metrics against the step, into one PNG with two panels.

    `log_history` is `trainer.state.log_history`: entries with `step` and keys `loss_<task>` (training) and
    `eval_<task>_<metric>` (evaluation); `curve_series` picks the points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, metrics = curve_series(log_history, tasks)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    for name, points in sorted(losses.items()):
        left.plot(*zip(*points), label=name)
    left.set(title="training loss per task", xlabel="optimizer step", ylabel="token cross-entropy")
    for name, points in sorted(metrics.items()):
        right.plot(*zip(*points), marker="o", label=name)
    right.set(title="validation metric per task", xlabel="optimizer step", ylabel="metric")
    for ax in (left, right):
        if ax.lines:
            # Below the panel: inside it, the legend hides whichever curves run where it is placed.
            ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
