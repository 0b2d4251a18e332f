# Copyright 2025 The ofa-hf Authors. Licensed under the Apache License, Version 2.0.
"""Task-weighted sampling for multi-task training.

Four layers, each usable on its own:

- [`task_probabilities`] turns dataset sizes (and optional weights) into per-task sampling probabilities for one of the
  strategies in [`STRATEGIES`].
- [`TaskSchedule`] maps a draw index to a task. The result depends only on `(seed, index)`, so every rank computes
  the same task sequence without communication and a run resumed at step `k` continues exactly where it stopped.
- [`ShardedTaskIterator`] walks one task's examples: one seeded permutation per epoch, split into disjoint per-rank
  slices, cut into micro-batches, rolling over to the next epoch on its own (as OFASys does for each task).
  [`shard_stream`] is the equivalent for streaming datasets of unknown length.
- [`MultiTaskBatchSchedule`] combines them into the sequence of `(optimizer_step, micro_index, task_name,
  example_indices)` one rank trains on, with a JSON-serialisable `state_dict()` for exact resumption.

OFASys itself does not sample tasks: every optimizer step accumulates gradients over micro-batches of *every* task in
list order. That behaviour is the `all_tasks` strategy here; the other strategies are the usual alternatives for
mixtures with many or very unequal tasks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MODES",
    "STRATEGIES",
    "MicroBatch",
    "MultiTaskBatchSchedule",
    "ShardedTaskIterator",
    "TaskSchedule",
    "shard_stream",
    "task_probabilities",
]

STRATEGIES: dict[str, str] = {
    "proportional": "probability proportional to dataset size",
    "temperature": "probability proportional to size ** (1 / temperature), temperature >= 1 flattens the mixture",
    "uniform": "every task equally likely, whatever its size",
    "explicit": "probability proportional to the user's per-task `weights`",
    "all_tasks": "OFASys: every optimizer step takes micro-batches from every task in order (probabilities are all 1)",
}
"""Task-selection strategies accepted by [`task_probabilities`] and [`MultiTaskBatchSchedule`]."""

# Strategies whose probabilities are computed from the dataset sizes (streaming tasks of unknown size cannot use them).
_SIZE_STRATEGIES = frozenset({"proportional", "temperature"})

MODES: dict[str, str] = {
    "homogeneous": "all micro-batches of one optimizer step come from one task drawn for that step",
    "mixed": "every micro-batch draws its own task",
    "all_tasks": "each optimizer step runs `gradient_accumulation_steps` micro-batches of every task, in list order",
}
"""How [`MultiTaskBatchSchedule`] assigns tasks to the micro-batches of an optimizer step."""

_STATE_FORMAT = 1


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    # bool is an int subclass; True as a step or a size is always a bug.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_sizes(sizes: Mapping[str, int | None]) -> dict[str, int | None]:
    if not isinstance(sizes, Mapping):
        raise TypeError(f"`sizes` must be a mapping from task name to number of examples, got {type(sizes).__name__}.")
    if len(sizes) == 0:
        raise ValueError("`sizes` is empty: at least one task is needed.")
    checked: dict[str, int | None] = {}
    for name, size in sizes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Task names must be non-empty strings, got {name!r}.")
        checked[name] = None if size is None else _check_int(f"sizes[{name!r}]", size, minimum=1)
    return checked


def task_probabilities(
    sizes: Mapping[str, int | None],
    strategy: str,
    *,
    weights: Mapping[str, float] | None = None,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Per-task sampling probabilities for one of the [`STRATEGIES`].

    Args:
        sizes: Number of training examples per task, in task order. `None` marks a streaming task of unknown size,
            which only the strategies that ignore sizes (`uniform`, `explicit`, `all_tasks`) accept.
        strategy: One of `STRATEGIES`.
        weights: Positive finite weight per task; required by (and only accepted with) `explicit`. Normalised.
        temperature: Finite value >= 1 for the `temperature` strategy (1 equals `proportional`, larger values move
            towards `uniform`). Must stay 1 for the other strategies so a forgotten `strategy` cannot silently
            ignore it.

    Returns:
        Task name to probability, in the order of `sizes`. For `all_tasks` every value is 1.0: each task takes part in
        every optimizer step, so the values are informational and do not sum to 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown sampling strategy {strategy!r}; known strategies: {', '.join(STRATEGIES)}.")
    checked = _check_sizes(sizes)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"`temperature` must be a number, got {type(temperature).__name__}.")
    if not math.isfinite(temperature) or temperature < 1:
        raise ValueError(f"`temperature` must be finite and >= 1, got {temperature}.")
    if strategy != "temperature" and temperature != 1:
        raise ValueError(f"`temperature={temperature}` is only used by strategy 'temperature', not {strategy!r}.")
    if strategy != "explicit" and weights is not None:
        raise ValueError(f"`weights` are only used by strategy 'explicit', not {strategy!r}.")
    if strategy in _SIZE_STRATEGIES:
        unknown = [name for name, size in checked.items() if size is None]
        if unknown:
            raise ValueError(
                f"Strategy {strategy!r} needs every dataset size, but the size of {unknown} is unknown (streaming); "
                "use 'uniform', 'explicit' or 'all_tasks' for streaming tasks."
            )

    names = list(checked)
    if strategy == "all_tasks":
        return dict.fromkeys(names, 1.0)
    if strategy == "uniform":
        return dict.fromkeys(names, 1.0 / len(names))
    if strategy == "explicit":
        raw = _check_weights(weights, names)
    else:
        # Log space keeps size ** (1 / T) finite for huge sizes and makes T = 1 exactly proportional.
        logits = np.log(np.array([checked[name] for name in names], dtype=np.float64)) / float(temperature)
        raw = np.exp(logits - logits.max())
    probabilities = raw / raw.sum()
    return {name: float(p) for name, p in zip(names, probabilities)}


def _check_weights(weights: Mapping[str, float] | None, names: Sequence[str]) -> np.ndarray:
    if weights is None:
        raise ValueError("Strategy 'explicit' needs `weights`: a positive weight for every task.")
    if not isinstance(weights, Mapping):
        raise TypeError(f"`weights` must be a mapping from task name to weight, got {type(weights).__name__}.")
    missing = [name for name in names if name not in weights]
    if missing:
        raise ValueError(f"`weights` has no weight for task(s) {missing}.")
    extra = [name for name in weights if name not in names]
    if extra:
        raise ValueError(f"`weights` names task(s) {extra} that are not in `sizes` ({list(names)}).")
    values = []
    for name in names:
        weight = weights[name]
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise TypeError(f"Weight of task {name!r} must be a number, got {type(weight).__name__}.")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"Weight of task {name!r} must be finite and > 0, got {weight}.")
        values.append(float(weight))
    return np.array(values, dtype=np.float64)


def _uniform01(seed: int, *key: int) -> float:
    """A float in [0, 1) that depends only on `(seed, *key)`: a counter-based draw, no generator state to carry."""
    word = int(np.random.SeedSequence([seed, *key]).generate_state(1, dtype=np.uint64)[0])
    return (word >> 11) * 2.0**-53  # the top 53 bits fill a double's mantissa exactly


class TaskSchedule:
    """Deterministic, stateless task choice per draw index.

    `task_for_step(i)` hashes `(seed, i)` into a uniform number and inverts the cumulative probabilities, so the
    result depends on nothing else: all ranks agree without communicating, any step can be computed directly, and a
    resumed run continues the uninterrupted sequence.

    Args:
        task_names: Tasks in order (the order fixes the inverse-CDF layout and the `all_tasks` order).
        probabilities: Probability per task (>= 0, at least one > 0, summing to 1 within 1e-6). Leave `None` when
            `all_tasks` is set.
        seed: Non-negative int.
        all_tasks: OFASys scheduling: every step uses every task, so there is nothing to draw.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        probabilities: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        all_tasks: bool = False,
    ) -> None:
        if isinstance(task_names, str) or not isinstance(task_names, Sequence):
            raise TypeError(f"`task_names` must be a sequence of task names, got {type(task_names).__name__}.")
        names = list(task_names)
        if not names:
            raise ValueError("`task_names` is empty: at least one task is needed.")
        if len(set(names)) != len(names):
            raise ValueError(f"`task_names` has duplicates: {names}.")
        self.task_names: tuple[str, ...] = tuple(names)
        self.seed = _check_int("seed", seed)
        self.all_tasks = bool(all_tasks)
        if self.all_tasks:
            if probabilities is not None:
                raise ValueError("`probabilities` must be None when `all_tasks=True`: every task runs every step.")
            self.probabilities = dict.fromkeys(names, 1.0)
            self._cdf = None
            return
        if probabilities is None:
            raise ValueError("`probabilities` is required unless `all_tasks=True`.")
        self.probabilities = self._check_probabilities(probabilities, names)
        cdf = np.cumsum([self.probabilities[name] for name in names])
        # Pin the end to exactly 1 so a draw just below 1 can never fall past the last task after rounding.
        cdf[-1] = 1.0
        self._cdf = cdf

    @staticmethod
    def _check_probabilities(probabilities: Mapping[str, float], names: list[str]) -> dict[str, float]:
        if not isinstance(probabilities, Mapping):
            raise TypeError(f"`probabilities` must be a mapping, got {type(probabilities).__name__}.")
        if set(probabilities) != set(names):
            missing = [name for name in names if name not in probabilities]
            unknown = [name for name in probabilities if name not in names]
            raise ValueError(
                f"`probabilities` must have exactly the tasks {names}; missing {missing}, unknown {unknown}."
            )
        values = np.array([float(probabilities[name]) for name in names], dtype=np.float64)
        for name, value in zip(names, values):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Probability of task {name!r} must be finite and >= 0, got {value}.")
        total = values.sum()
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"`probabilities` must sum to 1, got {total} (use `task_probabilities` to normalise).")
        values = values / total
        return {name: float(value) for name, value in zip(names, values)}

    @classmethod
    def from_strategy(
        cls,
        sizes: Mapping[str, int | None],
        strategy: str,
        *,
        weights: Mapping[str, float] | None = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> TaskSchedule:
        """Build a schedule from dataset sizes and a strategy; arguments as in [`task_probabilities`]."""
        probabilities = task_probabilities(sizes, strategy, weights=weights, temperature=temperature)
        if strategy == "all_tasks":
            return cls(list(probabilities), seed=seed, all_tasks=True)
        return cls(list(probabilities), probabilities, seed=seed)

    def task_for_step(self, step: int) -> str:
        """The task drawn for draw index `step` (>= 0). Not defined for `all_tasks`; use `tasks_for_step`."""
        step = _check_int("step", step)
        if self._cdf is None:
            raise ValueError("An `all_tasks` schedule uses every task every step; call `tasks_for_step` instead.")
        index = int(np.searchsorted(self._cdf, _uniform01(self.seed, step), side="right"))
        return self.task_names[index]

    def tasks_for_step(self, step: int) -> list[str]:
        """All tasks of step `step`: every task in list order for `all_tasks`, else the one drawn task."""
        if self._cdf is None:
            _check_int("step", step)
            return list(self.task_names)
        return [self.task_for_step(step)]

    def steps(self, start: int, stop: int) -> Iterator[str]:
        """Yield `task_for_step(i)` for `start <= i < stop`."""
        start = _check_int("start", start)
        stop = _check_int("stop", stop)
        for step in range(start, stop):
            yield self.task_for_step(step)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(probabilities={self.probabilities}, seed={self.seed}, all_tasks={self.all_tasks})"
        )


class ShardedTaskIterator:
    """One task's micro-batches of example indices for one rank, epoch after epoch.

    Epoch `e` orders the examples by a permutation seeded from `(seed, task_index, e)` (identity if `shuffle=False`).
    The permutation is then made a multiple of `world_size` long and rank `r` takes positions `r::world_size`:

    - `drop_last=False` (default) pads by wrapping around to the start of the permutation, like PyTorch's
      `DistributedSampler`: every example is seen at least once per epoch and at most `world_size - 1` examples are
      seen twice (more only if `num_examples < world_size`).
    - `drop_last=True` truncates the tail, so no example is duplicated; up to `world_size - 1` examples are skipped in
      that epoch (a different set each epoch when shuffling).

    Each rank's slice has the same length, so all ranks stay in lockstep: the slice is cut into batches of
    `batch_size`, the last batch of an epoch holding the remainder, and the next epoch starts right after. The state
    `(epoch, position)` is therefore the same on every rank.

    Args:
        num_examples: Size of the task's dataset (>= 1).
        seed: Non-negative int shared by all ranks.
        task_index: Index of the task, so tasks of equal size get different orders.
        rank: This process's rank in `[0, world_size)`.
        world_size: Number of data-parallel processes.
        batch_size: Micro-batch size per rank.
        shuffle: Permute each epoch; otherwise dataset order.
        drop_last: Truncate instead of padding (see above).
    """

    def __init__(
        self,
        num_examples: int,
        *,
        seed: int,
        task_index: int,
        rank: int,
        world_size: int,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.num_examples = _check_int("num_examples", num_examples, minimum=1)
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.seed = _check_int("seed", seed)
        self.task_index = _check_int("task_index", task_index)
        self.world_size = _check_int("world_size", world_size, minimum=1)
        self.rank = _check_int("rank", rank)
        if self.rank >= self.world_size:
            raise ValueError(f"`rank` must be < world_size={self.world_size}, got {self.rank}.")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if self.drop_last:
            self.examples_per_rank = self.num_examples // self.world_size
            if self.examples_per_rank == 0:
                raise ValueError(
                    f"drop_last=True with {self.num_examples} examples and world_size={self.world_size} leaves no "
                    "example for any rank; use drop_last=False (padding) or a larger dataset."
                )
        else:
            self.examples_per_rank = -(-self.num_examples // self.world_size)
        self.epoch = 0
        self.position = 0
        self._cached_epoch: int | None = None
        self._cached_slice: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Number of micro-batches per epoch on each rank (the last may be smaller than `batch_size`)."""
        return -(-self.examples_per_rank // self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's example indices for `epoch`, in order (a pure function of the constructor arguments)."""
        epoch = _check_int("epoch", epoch)
        if self._cached_epoch == epoch:
            return self._cached_slice
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.task_index, epoch]))
            order = rng.permutation(self.num_examples)
        else:
            order = np.arange(self.num_examples)
        total = self.examples_per_rank * self.world_size
        # np.resize repeats the array cyclically, which is the wrap-around padding (and truncation when shorter).
        order = np.resize(order, total)
        self._cached_epoch, self._cached_slice = epoch, order[self.rank :: self.world_size]
        return self._cached_slice

    def next_batch(self) -> list[int]:
        """The next micro-batch of example indices; advances the state."""
        indices = self.epoch_indices(self.epoch)[self.position : self.position + self.batch_size]
        self.position += len(indices)
        if self.position >= self.examples_per_rank:
            self.epoch += 1
            self.position = 0
        return indices.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """`{"epoch": int, "position": int}`: identical on every rank, JSON-serialisable."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore a state from [`state_dict`]; the constructor arguments must match the saving run's."""
        if not isinstance(state, Mapping) or set(state) != {"epoch", "position"}:
            raise ValueError(f"Expected a state with exactly the keys 'epoch' and 'position', got {state!r}.")
        epoch = _check_int("state['epoch']", state["epoch"])
        position = _check_int("state['position']", state["position"])
        if position > self.examples_per_rank:
            raise ValueError(
                f"state['position']={position} is beyond this rank's {self.examples_per_rank} examples per epoch; "
                "was the state saved with another dataset size, world_size or drop_last?"
            )
        if position == self.examples_per_rank:
            epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position


class _StreamCursor:
    """Stand-in for `ShardedTaskIterator` on a streaming task: indices count the items this rank has taken."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.position = 0

    def next_batch(self) -> list[int]:
        start = self.position
        self.position += self.batch_size
        return list(range(start, self.position))

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"position"}:
            raise ValueError(f"Expected a streaming-task state with exactly the key 'position', got {state!r}.")
        self.position = _check_int("state['position']", state["position"])


def shard_stream(iterable: Iterable[Any], rank: int, world_size: int, skip: int = 0) -> Iterator[Any]:
    """Shard a stream of unknown length: rank `r` gets items `r, r + world_size, r + 2 * world_size, ...`.

    Args:
        iterable: The stream, in the same order on every rank.
        rank: This process's rank in `[0, world_size)`.
        world_size: Number of data-parallel processes.
        skip: Number of items *this rank* already consumed before a resume (ranks consume in lockstep, so it is the
            same on every rank; for a task of [`MultiTaskBatchSchedule`] it is the first index of the next batch).
            The stream is still read through from the start, since streams cannot seek.
    """
    world_size = _check_int("world_size", world_size, minimum=1)
    rank = _check_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"`rank` must be < world_size={world_size}, got {rank}.")
    skip = _check_int("skip", skip)
    return itertools.islice(iterable, rank + skip * world_size, None, world_size)


class MicroBatch(NamedTuple):
    """One micro-batch of the schedule."""

    optimizer_step: int
    micro_index: int
    task_name: str
    example_indices: list[int]


class MultiTaskBatchSchedule:
    """The micro-batch sequence of one rank in multi-task training, resumable exactly.

    Iterating yields [`MicroBatch`] tuples `(optimizer_step, micro_index, task_name, example_indices)` forever; the
    caller stops after its step budget. `micro_index` runs over `micro_batches_per_step` micro-batches per step:
    `gradient_accumulation_steps` for the sampling modes, `gradient_accumulation_steps * num_tasks` for `all_tasks`
    (each task's micro-batches together, tasks in order, like OFASys's per-task `update_freq`).

    Which task a micro-batch uses is a pure function of `(seed, optimizer_step, micro_index)`; see [`MODES`]. In
    `homogeneous` mode the draw index is the optimizer step, in `mixed` mode it is the global micro-batch number
    `optimizer_step * gradient_accumulation_steps + micro_index`. Each task has its own [`ShardedTaskIterator`] (task
    index = position in `sizes`). For a streaming task (size `None`) `example_indices` are instead the positions in
    this rank's [`shard_stream`] shard (`0, 1, 2, ...` across batches), so `shard_stream(..., skip=indices[0])`
    re-opens the stream at that batch after a resume.

    The state is identical on every rank (all ranks draw the same tasks and their slices have equal lengths), so the
    `state_dict()` of rank 0 can restore every rank.

    Args:
        sizes: Number of training examples per task, in task order (`None` = streaming, unknown size).
        batch_size: Micro-batch size per rank, one int or one per task.
        strategy: One of [`STRATEGIES`].
        mode: `homogeneous` or `mixed` for the sampling strategies (default `homogeneous`); must be `None` or
            `all_tasks` for the `all_tasks` strategy.
        gradient_accumulation_steps: Micro-batches per optimizer step (per task for `all_tasks`).
        weights: Per-task weights for the `explicit` strategy.
        temperature: Temperature for the `temperature` strategy.
        seed: Non-negative int shared by all ranks.
        rank: This process's rank.
        world_size: Number of data-parallel processes.
        shuffle: Shuffle each task's examples every epoch.
        drop_last: Truncate rather than pad each epoch to a multiple of `world_size` (see `ShardedTaskIterator`).
    """

    def __init__(
        self,
        sizes: Mapping[str, int | None],
        batch_size: int | Mapping[str, int],
        *,
        strategy: str = "proportional",
        mode: str | None = None,
        gradient_accumulation_steps: int = 1,
        weights: Mapping[str, float] | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.schedule = TaskSchedule.from_strategy(sizes, strategy, weights=weights, temperature=temperature, seed=seed)
        self.task_names = self.schedule.task_names
        self.strategy = strategy
        self.mode = self._resolve_mode(strategy, mode)
        self.gradient_accumulation_steps = _check_int("gradient_accumulation_steps", gradient_accumulation_steps, 1)
        self.batch_sizes = self._resolve_batch_sizes(batch_size, self.task_names)
        self.rank = _check_int("rank", rank)
        self.world_size = _check_int("world_size", world_size, minimum=1)
        if self.rank >= self.world_size:
            raise ValueError(f"`rank` must be < world_size={self.world_size}, got {self.rank}.")
        self.sizes = _check_sizes(sizes)  # plain ints (or None), so the config stays JSON-serialisable
        self.seed = self.schedule.seed
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)

        self._iterators: dict[str, ShardedTaskIterator | _StreamCursor] = {}
        for index, name in enumerate(self.task_names):
            if self.sizes[name] is None:
                self._iterators[name] = _StreamCursor(self.batch_sizes[name])
            else:
                self._iterators[name] = ShardedTaskIterator(
                    self.sizes[name],
                    batch_size=self.batch_sizes[name],
                    seed=self.seed,
                    task_index=index,
                    rank=self.rank,
                    world_size=self.world_size,
                    shuffle=self.shuffle,
                    drop_last=self.drop_last,
                )
        self.optimizer_step = 0
        self.micro_index = 0
        self.consumed_batches: dict[str, int] = dict.fromkeys(self.task_names, 0)
        self.consumed_examples: dict[str, int] = dict.fromkeys(self.task_names, 0)

    @staticmethod
    def _resolve_mode(strategy: str, mode: str | None) -> str:
        if mode is not None and mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; known modes: {', '.join(MODES)}.")
        if strategy == "all_tasks":
            if mode not in (None, "all_tasks"):
                raise ValueError(f"Strategy 'all_tasks' fixes the mode to 'all_tasks'; got mode={mode!r}.")
            return "all_tasks"
        if mode == "all_tasks":
            raise ValueError(f"Mode 'all_tasks' needs strategy 'all_tasks', got strategy={strategy!r}.")
        return mode or "homogeneous"

    @staticmethod
    def _resolve_batch_sizes(batch_size: int | Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
        if isinstance(batch_size, Mapping):
            if set(batch_size) != set(names):
                raise ValueError(f"`batch_size` must give exactly the tasks {list(names)}; got {sorted(batch_size)}.")
            return {name: _check_int(f"batch_size[{name!r}]", batch_size[name], minimum=1) for name in names}
        size = _check_int("batch_size", batch_size, minimum=1)
        return dict.fromkeys(names, size)

    @property
    def probabilities(self) -> dict[str, float]:
        """Per-task sampling probabilities (all 1.0 for `all_tasks`)."""
        return dict(self.schedule.probabilities)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches per optimizer step."""
        if self.mode == "all_tasks":
            return self.gradient_accumulation_steps * len(self.task_names)
        return self.gradient_accumulation_steps

    def task_for(self, optimizer_step: int, micro_index: int) -> str:
        """The task of micro-batch `micro_index` of step `optimizer_step` (pure; does not advance the schedule)."""
        optimizer_step = _check_int("optimizer_step", optimizer_step)
        micro_index = _check_int("micro_index", micro_index)
        if micro_index >= self.micro_batches_per_step:
            raise ValueError(f"`micro_index` must be < {self.micro_batches_per_step}, got {micro_index}.")
        if self.mode == "all_tasks":
            return self.task_names[micro_index // self.gradient_accumulation_steps]
        if self.mode == "homogeneous":
            return self.schedule.task_for_step(optimizer_step)
        return self.schedule.task_for_step(optimizer_step * self.gradient_accumulation_steps + micro_index)

    def sampling_proportions(self) -> dict[str, float]:
        """Fraction of the micro-batches so far that each task received (zeros before the first one)."""
        total = sum(self.consumed_batches.values())
        return {name: (count / total if total else 0.0) for name, count in self.consumed_batches.items()}

    def __iter__(self) -> MultiTaskBatchSchedule:
        return self

    def __next__(self) -> MicroBatch:
        step, micro = self.optimizer_step, self.micro_index
        task = self.task_for(step, micro)
        indices = self._iterators[task].next_batch()
        self.consumed_batches[task] += 1
        self.consumed_examples[task] += len(indices)
        self.micro_index += 1
        if self.micro_index == self.micro_batches_per_step:
            self.optimizer_step, self.micro_index = step + 1, 0
        return MicroBatch(step, micro, task, indices)

    def _config(self) -> dict[str, Any]:
        # Everything that shapes the sequence except `rank`, which must not matter (the state is rank-independent).
        return {
            "task_names": list(self.task_names),
            "sizes": self.sizes,
            "batch_sizes": self.batch_sizes,
            "strategy": self.strategy,
            "mode": self.mode,
            "probabilities": self.probabilities,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "seed": self.seed,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: cursor, every task's data state, consumption counters and the config."""
        return {
            "format": _STATE_FORMAT,
            "optimizer_step": self.optimizer_step,
            "micro_index": self.micro_index,
            "tasks": {name: iterator.state_dict() for name, iterator in self._iterators.items()},
            "consumed_batches": dict(self.consumed_batches),
            "consumed_examples": dict(self.consumed_examples),
            "config": self._config(),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore a [`state_dict`] so the remaining sequence equals the uninterrupted run's.

        Args:
            state: Output of `state_dict()`, possibly after a JSON round trip.
            strict: Require the saving run's configuration (sizes, batch sizes, strategy, mode, probabilities,
                accumulation, seed, world size, shuffle, drop_last) to equal this one. `strict=False` allows a
                deliberate change, e.g. new weights; the task names must still match.
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"Not a MultiTaskBatchSchedule state of format {_STATE_FORMAT}: {state!r:.200}.")
        config = state["config"]
        if list(config["task_names"]) != list(self.task_names):
            raise ValueError(f"State is for tasks {config['task_names']}, this schedule has {list(self.task_names)}.")
        if strict:
            current = self._config()
            differing = [key for key in current if config.get(key) != current[key]]
            if differing:
                details = "; ".join(f"{key}: saved {config.get(key)!r}, now {current[key]!r}" for key in differing)
                raise ValueError(
                    f"State was saved with a different configuration ({details}). Pass strict=False to load it anyway."
                )
        optimizer_step = _check_int("state['optimizer_step']", state["optimizer_step"])
        micro_index = _check_int("state['micro_index']", state["micro_index"])
        if micro_index >= self.micro_batches_per_step:
            raise ValueError(f"state['micro_index']={micro_index} must be < {self.micro_batches_per_step}.")
        for key in ("tasks", "consumed_batches", "consumed_examples"):
            if not isinstance(state.get(key), Mapping) or set(state[key]) != set(self.task_names):
                raise ValueError(f"state[{key!r}] must map exactly the tasks {list(self.task_names)}.")
        consumed_batches = {
            name: _check_int(f"state['consumed_batches'][{name!r}]", state["consumed_batches"][name])
            for name in self.task_names
        }
        consumed_examples = {
            name: _check_int(f"state['consumed_examples'][{name!r}]", state["consumed_examples"][name])
            for name in self.task_names
        }
        previous = {name: iterator.state_dict() for name, iterator in self._iterators.items()}
        try:
            for name in self.task_names:
                self._iterators[name].load_state_dict(state["tasks"][name])
        except (TypeError, ValueError):
            # Leave the schedule as it was rather than half-restored.
            for name, task_state in previous.items():
                self._iterators[name].load_state_dict(task_state)
            raise
        self.optimizer_step, self.micro_index = optimizer_step, micro_index
        self.consumed_batches, self.consumed_examples = consumed_batches, consumed_examples
