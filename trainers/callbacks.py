# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""`TaskLogCallback`: the multi-task keys of every training log (per-task loss, sampling shares, MoE router stats).

`MultiTaskTrainer.compute_loss` adds each training micro-batch's token loss to a [`TaskLossTracker`]; at every
training log the callback (first in the trainer's callback list, so every reporter and the progress bar after it
see the keys) adds

- `loss_<task>`: token negative log-likelihood of that task's micro-batches since the last log, over all ranks;
- `sampled_<task>`: the task's share of the micro-batches consumed so far;
- `moe/...`: router statistics of mixture-of-experts models (`moe_logging="summary"`: means over blocks, `"all"`:
  every block).

The keys also go into the log's record in `state.log_history`, which the log file and the training curves read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from modeling_ofa import collect_moe_stats

__all__ = ["MOE_LOG_LEVELS", "TaskLogCallback", "TaskLossTracker", "moe_summary"]

MOE_LOG_LEVELS = ("none", "summary", "all")
_MOE_EXPERT_KEY = re.compile(r"moe/.+/(expert_\d+_fraction)$")


def moe_summary(stats: Mapping[str, float]) -> dict[str, float]:
    """Means over MoE blocks: the pooled router statistics plus each expert's share of tokens."""
    out = {key: value for key, value in stats.items() if key.count("/") == 1}
    shares: dict[str, list[float]] = {}
    for key, value in stats.items():
        match = _MOE_EXPERT_KEY.fullmatch(key)
        if match:
            shares.setdefault(match.group(1), []).append(value)
    out.update({f"moe/{name}_mean": sum(v) / len(v) for name, v in sorted(shares.items())})
    return out


class TaskLossTracker:
    """(NLL sum, scored tokens) per task since the last log, and the schedule state after the last micro-batch.

    The sums stay on the device, so training costs no host sync per micro-batch.

    Args:
        tasks (`Sequence[str]`): The task names, in the trainer's order.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self._index = {name: i for i, name in enumerate(self.tasks)}
        self.sums: torch.Tensor | None = None
        self.consumed_state: dict[str, Any] | None = None

    def add_batch(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a training micro-batch of `task`: its summed token NLL and its scored tokens (labels other than -100)."""
        with torch.no_grad():
            nll = F.cross_entropy(
                logits.detach().float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            tokens = labels.ne(-100).sum().float()
        if self.sums is None or self.sums.device != nll.device:
            self.sums = torch.zeros(len(self.tasks), 2, device=nll.device)
        self.sums[self._index[task]] += torch.stack([nll, tokens])

    def take(self, device: torch.device) -> torch.Tensor:
        """The sums since the last call (`(tasks, 2)` on `device`), then zeroed."""
        sums = self.sums.to(device) if self.sums is not None else torch.zeros(len(self.tasks), 2, device=device)
        if self.sums is not None:
            self.sums = torch.zeros_like(self.sums)
        return sums

    def reset(self) -> None:
        self.sums = None


class TaskLogCallback(TrainerCallback):
    """Adds the per-task and MoE keys to training logs (see the module docstring).

    Args:
        tracker (`TaskLossTracker`): What `compute_loss` accumulated.
        moe_logging (`str`): One of [`MOE_LOG_LEVELS`].
        reduce (`Callable[[torch.Tensor], torch.Tensor]`): Sums a tensor over ranks (identity on one process). Every
            rank logs at the same steps (as for Trainer's own loss), so this collective matches.
    """

    def __init__(self, tracker: TaskLossTracker, moe_logging: str, reduce: Callable[[torch.Tensor], torch.Tensor]):
        if moe_logging not in MOE_LOG_LEVELS:
            raise ValueError(f"moe_logging must be one of {MOE_LOG_LEVELS}, got {moe_logging!r}")
        self.tracker, self.moe_logging, self.reduce = tracker, moe_logging, reduce

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        consumed = self.tracker.consumed_state
        if logs is None or "loss" not in logs or consumed is None:  # evaluation logs, or before the first step
            return
        added: dict[str, float] = {}
        stats = self.reduce(self.tracker.take(args.device))
        for name, (nll, tokens) in zip(self.tracker.tasks, stats.tolist()):
            if tokens > 0:
                added[f"loss_{name}"] = nll / tokens
        counts = consumed["consumed_batches"]
        total = sum(counts.values())
        for name, count in counts.items():
            added[f"sampled_{name}"] = count / total if total else 0.0
        if self.moe_logging != "none" and model is not None:
            moe = collect_moe_stats(model)
            added.update(moe if self.moe_logging == "all" else moe_summary(moe))
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)  # Trainer.log recorded the log before calling the callbacks
