"""Compact terminal output of a multi-task run, as a `TrainerCallback`; the full logs go to a JSON-lines file.

`Trainer`'s own printer writes every log entry as one dict: with ten tasks and MoE router statistics that is a line of
~800 characters and 30 keys every `logging_steps`. `ConsoleCallback` replaces it (and the progress bar) with:

- one short line per training log: step, loss, learning rate, gradient norm, elapsed time and an estimate of the rest;
- every `table_every` training logs, a table of the per-task training losses and sampling shares;
- at each evaluation, a table of every task's validation metrics beside its chance level (when known);
- the end-of-training summary dict, as `Trainer` prints it.

Every log entry, with every key (`moe/...` router statistics included), is appended to `log_file`, which `plots`
draws from. A progress bar is drawn only when the stream is a terminal (and `disable_tqdm` is not set): a bar written
to a file leaves carriage returns and escape codes in it. Only the main process prints and writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from .report import split_metric_key

__all__ = ["ConsoleCallback", "eval_table", "task_loss_table"]

# Diagnostics logged beside the metrics: counts of rows, printed as whole numbers.
_COUNTS = {"skipped", "malformed_boxes"}


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.2e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.3f}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def task_loss_table(logs: Mapping[str, Any], tasks: Sequence[str]) -> str:
    """Per-task training loss (`loss_<task>`) and share of the sampled micro-batches (`sampled_<task>`)."""
    width = max(len("task"), *(len(t) for t in tasks))
    lines = [f"  {'task':<{width}}  {'loss':>7}  {'sampled':>7}"]
    for task in tasks:
        loss, share = logs.get(f"loss_{task}"), logs.get(f"sampled_{task}")
        if loss is None and share is None:
            continue
        loss_text = "-" if loss is None else f"{loss:7.3f}"
        share_text = "-" if share is None else f"{share:7.1%}"
        lines.append(f"  {task:<{width}}  {loss_text:>7}  {share_text:>7}")
    return "\n".join(lines)


def eval_table(
    logs: Mapping[str, Any],
    tasks: Sequence[str],
    chance: Mapping[str, float] | None = None,
    prefix: str = "eval",
) -> str:
    """Every task's metrics of one evaluation (`<prefix>_<task>_<metric>` keys), a row per (task, metric), with the
    task's validation loss and its chance level where known."""
    chance = chance or {}
    rows: list[tuple[str, str, float]] = []
    losses: dict[str, float] = {}
    for key, value in logs.items():
        split = split_metric_key(key, tasks, prefix)
        if split is None or not isinstance(value, (int, float)):
            continue
        task, metric = split
        if metric == "loss":
            losses[task] = float(value)
        elif metric not in ("runtime", "samples_per_second", "steps_per_second"):
            rows.append((task, metric, float(value)))
    order = {task: index for index, task in enumerate(tasks)}
    rows.sort(key=lambda row: (order[row[0]], row[1]))
    width = max(len("task"), *(len(t) for t in tasks))
    metric_width = max([len("metric"), *(len(m) for _, m, _ in rows)])
    lines = [f"  {'task':<{width}}  {'metric':<{metric_width}}  {'value':>7}  {'chance':>7}  {'loss':>7}"]
    for task, metric, value in rows:
        known = chance.get(f"{task} {metric}", math.nan)
        loss = losses.get(task, math.nan)
        shown = f"{value:.0f}" if metric in _COUNTS else _number(value)
        lines.append(
            f"  {task:<{width}}  {metric:<{metric_width}}  {shown:>7}  {_number(known):>7}  {_number(loss):>7}"
        )
    return "\n".join(lines)


class ConsoleCallback(TrainerCallback):
    """Short training lines, per-task tables and a terminal-only progress bar (see the module docstring).

    Install it in place of `Trainer`'s printer and progress bar:
    `trainer.remove_callback(PrinterCallback); trainer.remove_callback(ProgressCallback); trainer.add_callback(cb)`.

    Args:
        tasks: The run's task names, in the order of the tables.
        chance: `{"<task> <metric>": chance level}` shown beside the evaluation metrics (none: a dash).
        table_every: Print the per-task loss table every this many training logs (0: never).
        log_file: A JSON-lines file that receives every log entry in full (with `step`), or None.
        stream: Where to print (default: `sys.stdout`).
        progress: Draw a progress bar; `None` draws one only when `stream` is a terminal and `disable_tqdm` is off.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        chance: Mapping[str, float] | None = None,
        table_every: int = 10,
        log_file: str | Path | None = None,
        stream: TextIO | None = None,
        progress: bool | None = None,
    ) -> None:
        if table_every < 0:
            raise ValueError(f"ConsoleCallback: table_every must be >= 0, got {table_every}")
        self.tasks = list(tasks)
        self.chance = dict(chance or {})
        self.table_every = table_every
        self.log_file = Path(log_file) if log_file is not None else None
        self.stream = stream
        self.progress = progress
        self._bar: Any = None
        self._train_logs = 0
        self._started = time.perf_counter()
        self._start_step = 0

    # Output ----------------------------------------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def write(self, text: str) -> None:
        """Print above the progress bar (if any)."""
        if self._bar is not None:
            self._bar.write(text, file=self._out())
        else:
            print(text, file=self._out(), flush=True)

    def _wants_bar(self, args: Any) -> bool:
        if self.progress is not None:
            return self.progress
        return self._out().isatty() and not args.disable_tqdm

    # Events ----------------------------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started, self._start_step = time.perf_counter(), state.global_step  # a resumed run starts mid-way
        if not state.is_world_process_zero:
            return
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                self.log_file.write_text("")  # a fresh run; a resumed one appends
        if self._wants_bar(args):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", file=self._out())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)
        if control.should_evaluate and not control.should_log:  # set by the flow callback, which runs first
            self.write(self.evaluating_line(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if self.log_file is not None:
            with self.log_file.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        if "train_runtime" in logs:
            self.write(str(dict(logs)))  # the end-of-training summary, as Trainer prints it
        elif "loss" in logs:
            self._train_logs += 1
            self.write(self.training_line(logs, state.global_step, state.max_steps))
            if self.table_every and self._train_logs % self.table_every == 0:
                self.write(task_loss_table(logs, self.tasks))
            if control.should_evaluate:  # Trainer logs first, then evaluates
                self.write(self.evaluating_line(state.global_step))
        elif any(split_metric_key(key, self.tasks) for key in logs):
            self.write(f"step {state.global_step}: validation\n" + eval_table(logs, self.tasks, self.chance))

    def evaluating_line(self, step: int) -> str:
        return f"step {step}: evaluating {len(self.tasks)} tasks on their validation splits"

    def training_line(self, logs: Mapping[str, Any], step: int, max_steps: int) -> str:
        """`step 150/4400  loss 2.314  lr 2.00e-04  grad 1.23  0m40s, ~19m20s left`."""
        elapsed = time.perf_counter() - self._started
        parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}", f"loss {logs['loss']:.3f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if "grad_norm" in logs:
            parts.append(f"grad {logs['grad_norm']:.2f}")
        timing = _duration(elapsed)
        if self._start_step < step < max_steps:
            timing += f", ~{_duration(elapsed / (step - self._start_step) * (max_steps - step))} left"
        parts.append(timing)
        return "  ".join(parts)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
