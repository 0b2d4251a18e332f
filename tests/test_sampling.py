"""Tests for `trainers.sampling`: probabilities, deterministic schedules, DDP sharding and exact resumption."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from trainers.sampling import (
    MODES,
    STRATEGIES,
    MultiTaskBatchSchedule,
    ShardedTaskIterator,
    TaskSchedule,
    shard_stream,
    task_probabilities,
)

SIZES = {"caption": 100, "vqa": 300, "asr": 600, "ocr": 50}
WEIGHTS = {"caption": 1.0, "vqa": 2.0, "asr": 0.5, "ocr": 4.0}
# 0.999 quantiles of the chi-square distribution (scipy.stats.chi2.ppf(0.999, df)), df = number of tasks - 1.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}


def _json_round_trip(obj):
    return json.loads(json.dumps(obj))


# ----------------------------------------------------------------------------------------------- task_probabilities


@pytest.mark.parametrize(
    "sizes, strategy, kwargs, expected",
    [
        ({"a": 100, "b": 300}, "proportional", {}, {"a": 0.25, "b": 0.75}),
        ({"a": 100, "b": 400}, "temperature", {"temperature": 2.0}, {"a": 1 / 3, "b": 2 / 3}),
        ({"a": 100, "b": 300}, "temperature", {"temperature": 1.0}, {"a": 0.25, "b": 0.75}),
        ({"a": 1, "b": 8}, "temperature", {"temperature": 3}, {"a": 1 / 3, "b": 2 / 3}),
        ({"a": 100, "b": 300, "c": 5}, "uniform", {}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
        ({"a": 100, "b": 300}, "explicit", {"weights": {"a": 3.0, "b": 1.0}}, {"a": 0.75, "b": 0.25}),
        ({"a": 100, "b": 300}, "all_tasks", {}, {"a": 1.0, "b": 1.0}),
        ({"a": None, "b": None}, "explicit", {"weights": {"a": 1, "b": 1}}, {"a": 0.5, "b": 0.5}),
        ({"a": None, "b": 3}, "uniform", {}, {"a": 0.5, "b": 0.5}),
    ],
)
def test_task_probabilities_golden(sizes, strategy, kwargs, expected):
    result = task_probabilities(sizes, strategy, **kwargs)
    assert list(result) == list(sizes)  # task order preserved
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12)


def test_task_probabilities_temperature_limits():
    huge = {"a": 10**18, "b": 10**12, "c": 1}
    probs = task_probabilities(huge, "temperature", temperature=1e6)
    assert all(math.isfinite(p) for p in probs.values())
    assert probs == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=1e-4)
    # Temperature moves probability mass from big to small tasks monotonically.
    ps = [task_probabilities(SIZES, "temperature", temperature=t)["ocr"] for t in (1, 2, 5, 100)]
    assert ps == sorted(ps) and ps[0] == pytest.approx(50 / 1050)


def test_strategy_and_mode_tables_are_documented():
    assert set(STRATEGIES) == {"proportional", "temperature", "uniform", "explicit", "all_tasks"}
    assert set(MODES) == {"homogeneous", "mixed", "all_tasks"}
    assert all(isinstance(doc, str) and doc for doc in [*STRATEGIES.values(), *MODES.values()])


@pytest.mark.parametrize(
    "sizes, strategy, kwargs, error, match",
    [
        (SIZES, "round_robin", {}, ValueError, "proportional, temperature, uniform, explicit, all_tasks"),
        ({}, "uniform", {}, ValueError, "empty"),
        ({"a": 0, "b": 3}, "uniform", {}, ValueError, r"sizes\['a'\]"),
        ({"a": -1}, "proportional", {}, ValueError, r"sizes\['a'\]"),
        ({"a": True}, "proportional", {}, TypeError, r"sizes\['a'\]"),
        ({"a": 2.5}, "proportional", {}, TypeError, r"sizes\['a'\]"),
        ({3: 2}, "proportional", {}, TypeError, "Task names"),
        ([1, 2], "proportional", {}, TypeError, "mapping"),
        ({"a": None, "b": 3}, "proportional", {}, ValueError, r"\['a'\] is unknown"),
        ({"a": None}, "temperature", {"temperature": 2}, ValueError, "streaming"),
        ({"a": 1, "b": 2}, "explicit", {}, ValueError, "needs `weights`"),
        ({"a": 1, "b": 2}, "explicit", {"weights": {"a": 1.0}}, ValueError, r"task\(s\) \['b'\]"),
        ({"a": 1}, "explicit", {"weights": {"a": 1.0, "zz": 1.0}}, ValueError, r"\['zz'\]"),
        ({"a": 1, "b": 2}, "explicit", {"weights": {"a": 1.0, "b": 0.0}}, ValueError, "task 'b'"),
        ({"a": 1, "b": 2}, "explicit", {"weights": {"a": -2.0, "b": 1.0}}, ValueError, "task 'a'"),
        ({"a": 1, "b": 2}, "explicit", {"weights": {"a": math.inf, "b": 1.0}}, ValueError, "task 'a'"),
        ({"a": 1, "b": 2}, "explicit", {"weights": {"a": "1", "b": 1.0}}, TypeError, "task 'a'"),
        ({"a": 1}, "uniform", {"weights": {"a": 1.0}}, ValueError, "only used by strategy 'explicit'"),
        ({"a": 1}, "temperature", {"temperature": 0.5}, ValueError, ">= 1"),
        ({"a": 1}, "temperature", {"temperature": math.inf}, ValueError, "finite"),
        ({"a": 1}, "temperature", {"temperature": math.nan}, ValueError, "finite"),
        ({"a": 1}, "proportional", {"temperature": 2.0}, ValueError, "only used by strategy 'temperature'"),
    ],
)
def test_task_probabilities_errors(sizes, strategy, kwargs, error, match):
    with pytest.raises(error, match=match):
        task_probabilities(sizes, strategy, **kwargs)


# ----------------------------------------------------------------------------------------------------- TaskSchedule


@pytest.mark.parametrize(
    "strategy, kwargs",
    [("proportional", {}), ("temperature", {"temperature": 2.0}), ("uniform", {}), ("explicit", {"weights": WEIGHTS})],
)
def test_schedule_frequencies_match_probabilities(strategy, kwargs):
    n = 20_000
    schedule = TaskSchedule.from_strategy(SIZES, strategy, seed=1234, **kwargs)
    counts = Counter(schedule.steps(0, n))
    expected = {name: p * n for name, p in schedule.probabilities.items()}
    chi2 = sum((counts[name] - e) ** 2 / e for name, e in expected.items())
    assert chi2 < CHI2_999[len(SIZES) - 1], (counts, expected)
    for name, p in schedule.probabilities.items():  # and each task within 4.5 binomial standard deviations
        assert abs(counts[name] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (name, counts[name], n * p)


def test_schedule_zero_probability_task_never_drawn():
    schedule = TaskSchedule(["a", "b", "c"], {"a": 0.5, "b": 0.0, "c": 0.5}, seed=3)
    counts = Counter(schedule.steps(0, 2000))
    assert counts["b"] == 0 and counts["a"] > 800 and counts["c"] > 800


def test_schedule_is_a_pure_function_of_seed_and_step():
    a = TaskSchedule.from_strategy(SIZES, "uniform", seed=7)
    b = TaskSchedule.from_strategy(SIZES, "uniform", seed=7)
    c = TaskSchedule.from_strategy(SIZES, "uniform", seed=8)
    seq = list(a.steps(0, 300))
    assert seq == list(b.steps(0, 300))
    assert seq != list(c.steps(0, 300))
    # Random access (a resumed run) gives the same values as the sequential walk, in any order.
    for step in (299, 0, 150, 17):
        assert a.task_for_step(step) == seq[step] == a.tasks_for_step(step)[0]
    assert list(a.steps(100, 300)) == seq[100:]


GOLDEN_AB = "babaabababbababaaabbbbaa"


def test_schedule_golden_sequence():
    # Pins the counter-based scheme: changing it would break the resumption of runs saved by earlier versions.
    schedule = TaskSchedule(["a", "b"], {"a": 0.5, "b": 0.5}, seed=0)
    assert "".join(schedule.steps(0, 24)) == GOLDEN_AB


def test_all_tasks_schedule():
    schedule = TaskSchedule.from_strategy(SIZES, "all_tasks", seed=0)
    assert schedule.all_tasks and schedule.probabilities == dict.fromkeys(SIZES, 1.0)
    for step in (0, 1, 999):
        assert schedule.tasks_for_step(step) == list(SIZES)
    with pytest.raises(ValueError, match="tasks_for_step"):
        schedule.task_for_step(0)
    with pytest.raises(ValueError, match="tasks_for_step"):
        next(schedule.steps(0, 1))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((["a", "b"], {"a": 0.5, "b": 0.6}), {}, ValueError, "sum to 1"),
        ((["a", "b"], {"a": 0.5}), {}, ValueError, r"missing \['b'\]"),
        ((["a"], {"a": 1.0, "x": 0.0}), {}, ValueError, r"unknown \['x'\]"),
        ((["a", "b"], {"a": 1.5, "b": -0.5}), {}, ValueError, "task 'b'"),
        ((["a", "a"], {"a": 1.0}), {}, ValueError, "duplicates"),
        (([], {}), {}, ValueError, "empty"),
        (("ab", {"a": 1.0}), {}, TypeError, "sequence"),
        ((["a"],), {}, ValueError, "required"),
        ((["a"], {"a": 1.0}), {"all_tasks": True}, ValueError, "must be None"),
        ((["a"], {"a": 1.0}), {"seed": -1}, ValueError, "seed"),
    ],
)
def test_schedule_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        TaskSchedule(*args, **kwargs)


@pytest.mark.parametrize("step, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_schedule_rejects_bad_steps(step, error):
    with pytest.raises(error, match="step"):
        TaskSchedule(["a"], {"a": 1.0}).task_for_step(step)


# ---------------------------------------------------------------------------------------------- ShardedTaskIterator


def _iterators(n, world_size, **kwargs):
    kwargs = {"seed": 5, "task_index": 0, "batch_size": 3, **kwargs}
    return [ShardedTaskIterator(n, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [7, 10, 11])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_padding(world_size, n, shuffle):
    iterators = _iterators(n, world_size, shuffle=shuffle)
    per_rank = math.ceil(n / world_size)
    for epoch in (0, 1):
        slices = [it.epoch_indices(epoch).tolist() for it in iterators]
        assert all(len(s) == per_rank for s in slices)
        flat = [i for s in slices for i in s]
        assert set(flat) == set(range(n))  # every example seen
        assert len(flat) - len(set(flat)) == per_rank * world_size - n  # only the padding repeats
    if not shuffle:  # dataset order, padded by wrapping around
        padded = (list(range(n)) * 2)[: per_rank * world_size]
        assert [it.epoch_indices(0).tolist() for it in iterators] == [padded[r::world_size] for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [7, 10, 11])
def test_shards_drop_last_are_disjoint(world_size, n):
    iterators = _iterators(n, world_size, drop_last=True)
    for epoch in (0, 1, 2):
        slices = [set(it.epoch_indices(epoch).tolist()) for it in iterators]
        assert all(len(s) == n // world_size for s in slices)
        union = set().union(*slices)
        assert len(union) == world_size * (n // world_size) and union <= set(range(n))


def test_epochs_and_tasks_get_different_orders():
    it = ShardedTaskIterator(50, seed=1, task_index=0, rank=0, world_size=1, batch_size=4)
    other_task = ShardedTaskIterator(50, seed=1, task_index=1, rank=0, world_size=1, batch_size=4)
    e0, e1 = it.epoch_indices(0).tolist(), it.epoch_indices(1).tolist()
    assert sorted(e0) == sorted(e1) == list(range(50))
    assert e0 != e1 and e0 != other_task.epoch_indices(0).tolist()


def test_batches_walk_the_epoch_and_roll_over():
    it = ShardedTaskIterator(11, seed=2, task_index=0, rank=1, world_size=2, batch_size=4)
    assert it.examples_per_rank == 6 and it.batches_per_epoch == 2
    batches = list(islice(it, 5))
    assert [len(b) for b in batches] == [4, 2, 4, 2, 4]  # remainder batch ends each epoch
    assert batches[0] + batches[1] == it.epoch_indices(0).tolist()
    assert batches[2] + batches[3] == it.epoch_indices(1).tolist()
    assert it.state_dict() == {"epoch": 2, "position": 4}


def test_fewer_examples_than_ranks():
    iterators = _iterators(2, 3, shuffle=False, batch_size=1)
    assert [it.next_batch() for it in iterators] == [[0], [1], [0]]
    with pytest.raises(ValueError, match="no example"):
        _iterators(2, 3, drop_last=True)


@pytest.mark.parametrize("consumed", [0, 1, 3, 4, 9])
def test_sharded_iterator_resume(consumed):
    make = lambda: ShardedTaskIterator(13, seed=9, task_index=2, rank=1, world_size=2, batch_size=3)  # noqa: E731
    reference = list(islice(make(), consumed + 8))
    first = make()
    head = list(islice(first, consumed))
    resumed = make()
    resumed.load_state_dict(_json_round_trip(first.state_dict()))
    assert head + list(islice(resumed, 8)) == reference


@pytest.mark.parametrize(
    "kwargs, state, match",
    [
        ({}, {"epoch": 0}, "exactly the keys"),
        ({}, {"epoch": 0, "position": 99}, "beyond"),
        ({}, {"epoch": -1, "position": 0}, "epoch"),
        ({"rank": 2}, None, "rank"),
        ({"num_examples": 0}, None, "num_examples"),
        ({"batch_size": 0}, None, "batch_size"),
    ],
)
def test_sharded_iterator_errors(kwargs, state, match):
    args = {"num_examples": 10, "seed": 0, "task_index": 0, "rank": 0, "world_size": 2, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        it = ShardedTaskIterator(args.pop("num_examples"), **args)
        it.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------- shard_stream


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shard_stream_partitions_and_skips(world_size):
    stream = list(range(23))
    shards = [list(shard_stream(iter(stream), r, world_size)) for r in range(world_size)]
    assert sorted(i for s in shards for i in s) == stream
    for r, shard in enumerate(shards):
        assert shard == stream[r::world_size]
        assert list(shard_stream(iter(stream), r, world_size, skip=2)) == shard[2:]


def test_shard_stream_errors():
    with pytest.raises(ValueError, match="rank"):
        shard_stream([], 2, 2)
    with pytest.raises(ValueError, match="skip"):
        shard_stream([], 0, 2, skip=-1)


# ------------------------------------------------------------------------------------------- MultiTaskBatchSchedule

MODE_CASES = [
    pytest.param({"strategy": "proportional", "mode": "homogeneous"}, id="homogeneous"),
    pytest.param({"strategy": "temperature", "temperature": 2.0, "mode": "mixed"}, id="mixed"),
    pytest.param({"strategy": "explicit", "weights": {"a": 1.0, "b": 2.0, "c": 3.0}}, id="explicit"),
    pytest.param({"strategy": "all_tasks"}, id="all_tasks"),
]
SMALL = {"a": 7, "b": 12, "c": 5}


def _schedule(rank=0, world_size=2, **kwargs):
    kwargs = {"batch_size": {"a": 2, "b": 3, "c": 2}, "gradient_accumulation_steps": 3, "seed": 11, **kwargs}
    return MultiTaskBatchSchedule(SMALL, rank=rank, world_size=world_size, **kwargs)


@pytest.mark.parametrize("kwargs", MODE_CASES)
@pytest.mark.parametrize("stop_after", [0, 1, 5, 9, 22])
def test_resume_equals_uninterrupted(kwargs, stop_after):
    total = stop_after + 30
    reference = list(islice(_schedule(rank=1, **kwargs), total))
    first = _schedule(rank=1, **kwargs)
    head = list(islice(first, stop_after))
    state = _json_round_trip(first.state_dict())
    resumed = _schedule(rank=1, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.consumed_batches == first.consumed_batches
    assert head + list(islice(resumed, total - stop_after)) == reference


@pytest.mark.parametrize("kwargs", MODE_CASES)
def test_state_from_rank_zero_restores_other_ranks(kwargs):
    reference = list(islice(_schedule(rank=1, world_size=3, **kwargs), 40))
    rank0 = _schedule(rank=0, world_size=3, **kwargs)
    list(islice(rank0, 17))
    rank1 = _schedule(rank=1, world_size=3, **kwargs)
    rank1.load_state_dict(_json_round_trip(rank0.state_dict()))
    assert list(islice(rank1, 23)) == reference[17:]


@pytest.mark.parametrize("kwargs", MODE_CASES)
def test_ranks_agree_on_tasks_and_split_examples(kwargs):
    world_size = 3
    runs = [list(islice(_schedule(rank=r, world_size=world_size, drop_last=True, **kwargs), 60)) for r in range(3)]
    assert all([mb[:3] for mb in run] == [mb[:3] for mb in runs[0]] for run in runs)
    # Same micro-batch on different ranks never holds the same example (drop_last: shards are disjoint).
    for micro_batches in zip(*runs):
        sets = [set(mb.example_indices) for mb in micro_batches]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


@pytest.mark.parametrize("kwargs", MODE_CASES)
def test_steps_and_consumed_counters(kwargs):
    schedule = _schedule(**kwargs)
    micro_batches = list(islice(schedule, 4 * schedule.micro_batches_per_step))
    assert [mb.optimizer_step for mb in micro_batches] == [
        s for s in range(4) for _ in range(schedule.micro_batches_per_step)
    ]
    assert [mb.micro_index for mb in micro_batches] == list(range(schedule.micro_batches_per_step)) * 4
    counts = Counter(mb.task_name for mb in micro_batches)
    assert schedule.consumed_batches == {name: counts[name] for name in SMALL}
    assert sum(schedule.consumed_examples.values()) == sum(len(mb.example_indices) for mb in micro_batches)
    assert sum(schedule.sampling_proportions().values()) == pytest.approx(1.0)
    for mb in micro_batches:
        assert mb.task_name == schedule.task_for(mb.optimizer_step, mb.micro_index)
        assert all(0 <= i < SMALL[mb.task_name] for i in mb.example_indices)


def test_homogeneous_steps_use_one_task():
    schedule = _schedule(strategy="uniform")
    by_step: dict[int, set[str]] = {}
    for mb in islice(schedule, 90):
        by_step.setdefault(mb.optimizer_step, set()).add(mb.task_name)
    assert all(len(tasks) == 1 for tasks in by_step.values())
    assert len(set().union(*by_step.values())) == 3


def test_mixed_steps_mix_tasks():
    schedule = _schedule(strategy="uniform", mode="mixed")
    by_step: dict[int, set[str]] = {}
    for mb in islice(schedule, 90):
        by_step.setdefault(mb.optimizer_step, set()).add(mb.task_name)
    assert any(len(tasks) > 1 for tasks in by_step.values())


def test_all_tasks_every_step_every_task_in_order():
    schedule = _schedule(strategy="all_tasks", gradient_accumulation_steps=2)
    assert schedule.mode == "all_tasks" and schedule.micro_batches_per_step == 6
    tasks = [mb.task_name for mb in islice(schedule, 6 * 5)]
    assert tasks == ["a", "a", "b", "b", "c", "c"] * 5
    assert schedule.consumed_batches == {"a": 10, "b": 10, "c": 10}


def test_mixed_mode_frequencies():
    n = 6000
    schedule = MultiTaskBatchSchedule(
        SIZES, 1, strategy="explicit", weights=WEIGHTS, mode="mixed", gradient_accumulation_steps=4, seed=3
    )
    list(islice(schedule, n))
    for name, p in schedule.probabilities.items():
        assert abs(schedule.consumed_batches[name] - n * p) < 4.5 * math.sqrt(n * p * (1 - p))


def test_each_task_covers_its_dataset_per_epoch():
    schedule = MultiTaskBatchSchedule({"a": 9, "b": 4}, 2, strategy="all_tasks", seed=0)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for mb in islice(schedule, 10):  # 5 steps: a takes 5 batches (one epoch = 2+2+2+2+1), b 2.5 epochs
        seen[mb.task_name].extend(mb.example_indices)
    assert sorted(seen["a"]) == list(range(9))
    assert sorted(seen["b"][:4]) == sorted(seen["b"][4:8]) == list(range(4))


def test_streaming_task_positions():
    schedule = MultiTaskBatchSchedule({"map": 5, "stream": None}, {"map": 2, "stream": 3}, strategy="all_tasks")
    batches = [mb.example_indices for mb in islice(schedule, 6) if mb.task_name == "stream"]
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    state = _json_round_trip(schedule.state_dict())
    assert state["tasks"]["stream"] == {"position": 9} and state["consumed_examples"]["stream"] == 9
    with pytest.raises(ValueError, match="streaming"):
        MultiTaskBatchSchedule({"map": 5, "stream": None}, 2, strategy="proportional")


def test_load_state_checks_configuration():
    first = _schedule(strategy="explicit", weights={"a": 1.0, "b": 1.0, "c": 1.0})
    list(islice(first, 7))
    state = _json_round_trip(first.state_dict())
    reweighted = _schedule(strategy="explicit", weights={"a": 1.0, "b": 1.0, "c": 5.0})
    with pytest.raises(ValueError, match="probabilities: saved"):
        reweighted.load_state_dict(state)
    reweighted.load_state_dict(state, strict=False)  # a deliberate change of weights keeps the data positions
    assert reweighted.state_dict()["tasks"] == state["tasks"] and reweighted.optimizer_step == 2
    with pytest.raises(ValueError, match="seed"):
        _schedule(strategy="explicit", weights={"a": 1.0, "b": 1.0, "c": 1.0}, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="State is for tasks"):
        MultiTaskBatchSchedule({"a": 7, "b": 12}, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        first.load_state_dict({"optimizer_step": 0})


def test_failed_load_leaves_schedule_untouched():
    schedule = _schedule()
    list(islice(schedule, 4))
    before = schedule.state_dict()
    bad = _json_round_trip(before)
    bad["tasks"]["c"] = {"epoch": 0, "position": 999}
    with pytest.raises(ValueError, match="beyond"):
        schedule.load_state_dict(bad)
    assert schedule.state_dict() == before


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"strategy": "all_tasks", "mode": "mixed"}, ValueError, "fixes the mode"),
        ({"strategy": "uniform", "mode": "all_tasks"}, ValueError, "needs strategy 'all_tasks'"),
        ({"mode": "roundrobin"}, ValueError, "homogeneous, mixed, all_tasks"),
        ({"batch_size": {"a": 2}}, ValueError, "exactly the tasks"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"gradient_accumulation_steps": 0}, ValueError, "gradient_accumulation_steps"),
        ({"rank": 2}, ValueError, "rank"),
        ({"strategy": "bogus"}, ValueError, "known strategies"),
    ],
)
def test_batch_schedule_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _schedule(**kwargs)


def test_task_for_rejects_out_of_range_micro_index():
    schedule = _schedule()
    with pytest.raises(ValueError, match="micro_index"):
        schedule.task_for(0, 3)


def test_numpy_integer_sizes_are_json_safe():
    schedule = MultiTaskBatchSchedule({"a": np.int64(5), "b": np.int32(3)}, 2, strategy="uniform")
    list(islice(schedule, 3))
    assert json.loads(json.dumps(schedule.state_dict()))["config"]["sizes"] == {"a": 5, "b": 3}
