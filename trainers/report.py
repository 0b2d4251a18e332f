"""Run reports: per-task results beside their chance baselines, and loss/metric curves as a PNG."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TaskResult", "plot_curves", "results_markdown", "results_table"]


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
    """

    task: str
    metric: str
    value: float
    chance: float
    higher_is_better: bool = True
    instruction: str = ""

    @property
    def margin(self) -> float:
        """How far the model beats chance, in the metric's own units (positive = better than chance)."""
        return self.value - self.chance if self.higher_is_better else self.chance - self.value

    @property
    def beats_chance(self) -> bool:
        return math.isfinite(self.value) and self.margin > 0


def results_table(results: Sequence[TaskResult]) -> str:
    """A fixed-width table for the terminal."""
    header = f"{'task':<18}{'metric':<14}{'model':>9}{'chance':>9}{'margin':>9}  beats chance"
    lines = [header, "-" * len(header)]
    for r in results:
        arrow = "" if r.higher_is_better else " (lower is better)"
        lines.append(
            f"{r.task:<18}{r.metric:<14}{r.value:>9.3f}{r.chance:>9.3f}{r.margin:>+9.3f}  "
            f"{'yes' if r.beats_chance else 'NO'}{arrow}"
        )
    return "\n".join(lines)


def results_markdown(results: Sequence[TaskResult]) -> str:
    """The same results as a Markdown table (README, model card)."""
    lines = ["| task | instruction | metric | model | chance |", "|---|---|---|---|---|"]
    for r in results:
        metric = r.metric + ("" if r.higher_is_better else " (lower is better)")
        instruction = r.instruction.replace("|", "\\|")
        lines.append(f"| {r.task} | `{instruction}` | {metric} | {r.value:.3f} | {r.chance:.3f} |")
    return "\n".join(lines)


_LOSS_KEY = re.compile(r"^loss_(?P<task>.+)$")
_EVAL_KEY = re.compile(r"^eval_(?P<task>.+?)_(?P<metric>[a-z0-9_]+)$")


def plot_curves(log_history: Sequence[Mapping[str, Any]], path: str | Path, tasks: Sequence[str]) -> Path:
    """Plot per-task training loss and evaluation metrics against the step, into one PNG with two panels.

    `log_history` is `trainer.state.log_history`: entries with `step` and keys `loss_<task>` (training) and
    `eval_<task>_<metric>` (evaluation).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses: dict[str, list[tuple[int, float]]] = {}
    metrics: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or step is None:
                continue
            if (m := _LOSS_KEY.match(key)) and m["task"] in tasks:
                losses.setdefault(m["task"], []).append((step, float(value)))
            elif (m := _EVAL_KEY.match(key)) and m["task"] in tasks and m["metric"] not in ("loss", "runtime"):
                metrics.setdefault(f"{m['task']} {m['metric']}", []).append((step, float(value)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, points in sorted(losses.items()):
        left.plot(*zip(*points), label=name)
    left.set(title="training loss per task", xlabel="optimizer step", ylabel="token cross-entropy")
    for name, points in sorted(metrics.items()):
        right.plot(*zip(*points), marker="o", label=name)
    right.set(title="validation metric per task", xlabel="optimizer step", ylabel="metric")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
