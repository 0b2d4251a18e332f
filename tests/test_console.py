"""The terminal output of a run (`trainers.console.ConsoleCallback`): short training lines, per-task tables, the MoE
statistics in the log file only, no progress-bar debris where stdout is not a terminal."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from trainers.console import ConsoleCallback, eval_table

TASKS = ["caption", "motion", "motion_class"]


def training_log(step: int) -> dict[str, float]:
    logs = {"loss": 2.5, "grad_norm": 1.25, "learning_rate": 2e-4, "epoch": 0.1}
    logs |= {f"loss_{task}": 2.0 + i for i, task in enumerate(TASKS)}
    logs |= {f"sampled_{task}": 1 / 3 for task in TASKS}
    logs |= {f"moe/encoder.layers.{i}/expert_{e}_fraction": 0.5 for i in range(4) for e in range(6)}
    logs |= {f"moe/expert_{e}_fraction_mean": 0.5 for e in range(6)} | {"moe/load_balance": 1.0}
    return logs


def run_callback(tmp_path, table_every=2, stream=None, disable_tqdm=False):
    stream = stream or io.StringIO()
    callback = ConsoleCallback(TASKS, {"motion_class accuracy": 0.25}, table_every, tmp_path / "log.jsonl", stream)
    args = SimpleNamespace(disable_tqdm=disable_tqdm)
    state = TrainerState(max_steps=40, is_world_process_zero=True)
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in (10, 20, 30, 40):
        state.global_step = step
        control.should_log, control.should_evaluate = True, step == 40
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs=training_log(step))
    control.should_evaluate = False
    evaluation = {"eval_caption_exact_match": 0.5, "eval_caption_loss": 1.5, "eval_motion_class_accuracy": 0.75}
    evaluation |= {"eval_motion_accuracy": 0.4, "eval_loss": 1.2, "eval_runtime": 3.0, "eval_caption_skipped": 2.0}
    callback.on_log(args, state, control, logs=evaluation)
    callback.on_log(args, state, control, logs={"train_runtime": 12.5, "train_loss": 2.4, "epoch": 0.1})
    callback.on_train_end(args, state, control)
    return stream.getvalue(), callback


def test_console_lines_are_short_and_the_log_file_has_every_key(tmp_path):
    text, _ = run_callback(tmp_path)
    lines = text.splitlines()
    training = [line for line in lines if line.startswith("step ") and "loss " in line]
    assert len(training) == 4 and max(map(len, training)) < 100
    assert training[0].startswith("step 10/40  loss 2.500  lr 2.00e-04  grad 1.25") and "left" in training[0]
    assert "moe/" not in text and "expert" not in text  # router statistics: log file and plots only
    assert "step 40: evaluating 3 tasks on their validation splits" in lines
    assert "{'train_runtime': 12.5, 'train_loss': 2.4, 'epoch': 0.1}" in lines  # the summary, as Trainer prints it
    assert "\r" not in text and "\x1b" not in text  # no progress bar: the stream is not a terminal
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 6 and logged[0]["step"] == 10
    assert logged[0]["moe/encoder.layers.3/expert_5_fraction"] == 0.5 and "eval_runtime" in logged[4]


def test_per_task_tables(tmp_path):
    text, _ = run_callback(tmp_path, table_every=2)
    tables = [i for i, line in enumerate(text.splitlines()) if line.split() == ["task", "loss", "sampled"]]
    assert len(tables) == 2  # every second training log
    lines = text.splitlines()
    assert lines[tables[0] + 3].split() == ["motion_class", "4.000", "33.3%"]
    assert run_callback(tmp_path, table_every=0)[0].count("sampled") == 0
    with pytest.raises(ValueError, match="table_every"):
        ConsoleCallback(TASKS, table_every=-1)


def test_evaluation_table_splits_keys_at_the_task_name_and_shows_chance():
    table = eval_table(
        {"eval_motion_class_accuracy": 0.75, "eval_motion_accuracy": 0.4, "eval_motion_class_loss": 0.9},
        TASKS,
        {"motion_class accuracy": 0.25},
    ).splitlines()
    assert table[0].split() == ["task", "metric", "value", "chance", "loss"]
    assert table[1].split() == ["motion", "accuracy", "0.400", "-", "-"]
    assert table[2].split() == ["motion_class", "accuracy", "0.750", "0.250", "0.900"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_disable_tqdm(tmp_path):
    pytest.importorskip("tqdm")
    text, _ = run_callback(tmp_path, stream=Terminal())
    assert "training" in text and "\r" in text  # tqdm redraws in place on a terminal
    text, _ = run_callback(tmp_path, stream=Terminal(), disable_tqdm=True)
    assert "\r" not in text


def test_only_the_main_process_prints(tmp_path):
    stream = io.StringIO()
    callback = ConsoleCallback(TASKS, log_file=tmp_path / "log.jsonl", stream=stream)
    state = TrainerState(max_steps=4, is_world_process_zero=False)
    args = SimpleNamespace(disable_tqdm=False)
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs=training_log(1))
    assert stream.getvalue() == "" and not (tmp_path / "log.jsonl").exists()
