"""Run reports: bootstrap intervals of test metrics and the "clearly above chance" rule."""

from __future__ import annotations

import dataclasses
import math

import pytest

from trainers.metrics import METRICS
from trainers.report import (
    TaskResult,
    below_chance,
    bootstrap_interval,
    curve_series,
    results_markdown,
    results_table,
    split_metric_key,
)


def accuracy(predictions, references):
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def test_interval_of_a_perfect_model_is_a_point():
    assert bootstrap_interval(accuracy, ["a"] * 20, ["a"] * 20) == (1.0, 1.0)


def test_interval_covers_the_value_and_matches_the_binomial_spread():
    # 60 hits out of 100: the binomial standard error is sqrt(.6 * .4 / 100) = 0.049, so a 95% interval is ~ +-0.096.
    predictions = ["a"] * 60 + ["b"] * 40
    low, high = bootstrap_interval(accuracy, predictions, ["a"] * 100, samples=2000)
    assert low < 0.6 < high
    assert 0.15 < high - low < 0.23


def test_interval_is_reproducible_and_depends_on_the_seed():
    predictions, references = ["a", "b", "a", "c"] * 10, ["a"] * 40
    first = bootstrap_interval(accuracy, predictions, references, samples=200, seed=3)
    assert first == bootstrap_interval(accuracy, predictions, references, samples=200, seed=3)
    assert first != bootstrap_interval(accuracy, predictions, references, samples=200, seed=4)


def test_interval_works_with_the_corpus_metrics():
    spec = METRICS["wer"]
    predictions, references = ["one two", "three four", "five"] * 5, ["one two", "three", "five six"] * 5
    low, high = bootstrap_interval(spec.fn, predictions, references, samples=100)
    assert low <= spec.fn(predictions, references) <= high


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(predictions=["a"], references=[]), "1 predictions but 0"), (dict(level=1.0), "0 < level < 1")],
)
def test_interval_rejects_bad_arguments(kwargs, message):
    arguments = dict(predictions=["a"], references=["a"]) | kwargs
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(accuracy, **arguments)


def test_empty_split_gives_nan():
    assert all(math.isnan(v) for v in bootstrap_interval(accuracy, [], []))


@pytest.mark.parametrize(
    ("value", "low", "high", "chance", "higher_is_better", "expected"),
    [
        (0.40, 0.31, 0.49, 0.25, True, True),  # the whole interval above chance
        (0.32, 0.23, 0.41, 0.25, True, False),  # above chance, but within the noise
        (0.20, 0.12, 0.28, 0.25, True, False),
        (0.50, 0.42, 0.58, 0.84, False, True),  # WER: lower is better
        (0.80, 0.72, 0.88, 0.84, False, False),
        (0.40, math.nan, math.nan, 0.25, True, True),  # no interval: the value alone decides
        (0.40, 0.31, 0.49, math.nan, True, False),  # unknown chance: nothing to beat
    ],
)
def test_clearly_above_chance(value, low, high, chance, higher_is_better, expected):
    result = TaskResult("t", "accuracy", value, chance, higher_is_better, "", low, high)
    assert result.beats_chance is expected


def test_tables_show_the_interval():
    results = [TaskResult("vqa", "accuracy", 0.6, 0.3, True, "[IMAGE:image] [TEXT:q] -> [TEXT:a]", 0.5, 0.7)]
    assert "[0.500, 0.700]" in results_table(results) and "yes" in results_table(results)
    assert "| vqa | `[IMAGE:image] [TEXT:q] -> [TEXT:a]` | accuracy | 0.600 | [0.500, 0.700] | 0.300 |" in (
        results_markdown(results)
    )


def test_curve_series_splits_evaluation_keys_at_the_task_name():
    # Task names with "_" (and one that is a prefix of another) must not be cut at their first underscore.
    tasks = ["motion", "motion_class", "table_qa"]
    history = [
        {"step": 50, "loss": 2.0, "loss_motion_class": 1.5, "loss_table_qa": 1.2, "loss_other": 9.0},
        {
            "step": 100,
            "eval_motion_class_accuracy": 0.5,
            "eval_motion_class_loss": 0.7,
            "eval_motion_accuracy": 0.25,
            "eval_table_qa_exact_match": 0.4,
            "eval_loss": 0.9,
            "eval_runtime": 3.0,
            "eval_other_accuracy": 1.0,
            "epoch": 1.0,
        },
        {"loss_table_qa": 1.0},  # no step: skipped
    ]
    losses, metrics = curve_series(history, tasks)
    assert losses == {"motion_class": [(50, 1.5)], "table_qa": [(50, 1.2)]}
    assert metrics == {
        "motion_class accuracy": [(100, 0.5)],
        "motion accuracy": [(100, 0.25)],
        "table_qa exact_match": [(100, 0.4)],
    }


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("eval_motion_class_accuracy", "eval", ("motion_class", "accuracy")),
        ("eval_motion_accuracy", "eval", ("motion", "accuracy")),
        ("eval_motion_class_exact_match", "eval", ("motion_class", "exact_match")),
        ("eval_table_qa_malformed_boxes", "eval", ("table_qa", "malformed_boxes")),
        ("test_table_qa_exact_match", "test", ("table_qa", "exact_match")),
        ("loss_motion_class", "eval", None),
        ("eval_loss", "eval", None),
        ("eval_motion_class_", "eval", None),
        ("eval_other_accuracy", "eval", None),
        ("test_motion_accuracy", "eval", None),
    ],
)
def test_split_metric_key_takes_the_longest_task_name(key, prefix, expected):
    assert split_metric_key(key, ["motion", "motion_class", "table_qa"], prefix) == expected


def test_results_without_a_chance_level_have_no_verdict():
    own = TaskResult("color", "exact_match", 0.9, math.nan, True, "[TEXT:text] -> [TEXT:label]", 0.8, 1.0)
    demo = TaskResult("vqa", "accuracy", 0.2, 0.3, True, "", 0.1, 0.3)
    assert own.verdict == "-" and not own.has_chance and demo.verdict == "NO"
    assert below_chance([own, demo]) == [demo] and below_chance([own]) == []
    table = results_table([own])
    row = table.splitlines()[2]
    assert row.split()[-3:] == ["-", "-", "-"] and "NO" not in table and "no chance levels are known" in table
    assert "| color |" in results_markdown([own]) and results_markdown([own]).endswith("| - | - |")


def test_results_markdown_has_the_int8_column_the_readme_shows():
    results = [
        TaskResult("vqa", "accuracy", 0.6, 0.3, True, "[IMAGE:image] [TEXT:q] -> [TEXT:a]", 0.5, 0.7),
        TaskResult("asr", "wer", 0.1, 0.84, False, "[AUDIO:audio] -> [TEXT:text]", 0.05, 0.15),
    ]
    int8 = [dataclasses.replace(results[0], value=0.55), dataclasses.replace(results[1], value=0.12)]
    table = results_markdown(results, int8).splitlines()
    assert table[0] == "| task | instruction | metric | model | 95% interval | chance | int8 | above chance |"
    assert table[2].endswith("| 0.300 | 0.550 | yes |") and table[3].endswith("| 0.840 | 0.120 | yes |")
    readme_columns = {"task", "metric", "model", "95% interval", "chance", "int8"}
    assert readme_columns <= {cell.strip() for cell in table[0].strip("|").split("|")}
    with pytest.raises(ValueError, match="same \\(task, metric\\) rows"):
        results_markdown(results, int8[::-1])
