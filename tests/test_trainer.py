"""`MultiTaskTrainer` and its data pipeline on a tiny model: schedule, per-task logs, resume, faults, evaluation."""

from __future__ import annotations

import json
import math
import os

import datasets
import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoProcessor, LogitsProcessor, Seq2SeqTrainingArguments, TrainerCallback

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import InstructionError, OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import SCHEDULE_STATE_NAME, MultiTaskDataset, MultiTaskTrainer, Task
from trainers.data import INFO_KEY, TASK_KEY, StreamReader

COLORS, SHAPES = ["red", "blue", "green"], ["circle", "square"]
COLOR = 'what color is " [TEXT:text] "? -> [TEXT:color,closed_set]'
COPY = 'what text says " [TEXT:text] "? -> [TEXT:text]'


def shape_rows(n: int) -> list[dict]:
    return [{"text": f"a {COLORS[i % 3]} {SHAPES[i % 2]}", "color": COLORS[i % 3]} for i in range(n)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    words = " ".join(COLORS + SHAPES + "a the what color is text says which region does describe".split())
    tokenizer = train_demo_tokenizer([words] * 20, vocab_size=300, num_codes=8, num_bins=20)
    return OFAProcessor(OFAImageProcessor(size=16), tokenizer)


@pytest.fixture(scope="module")
def color_data() -> datasets.Dataset:
    return datasets.Dataset.from_list(shape_rows(12))


@pytest.fixture
def tasks(color_data) -> list[Task]:
    return [
        Task("color", COLOR, color_data, color_data.select(range(7)), num_beams=1),
        Task("copy", COPY, shape_rows(6), shape_rows(4), num_beams=1, max_new_tokens=6, metrics=["exact_match"]),
    ]


def tiny_model(processor, **overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    return OFAForConditionalGeneration(
        OFAConfig(**tiny_config_kwargs(vocab_size=len(processor.tokenizer), **overrides))
    )


def arguments(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    kwargs = dict(
        max_steps=6,
        per_device_train_batch_size=3,
        learning_rate=3e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    kwargs.update(overrides)
    return Seq2SeqTrainingArguments(str(output_dir), **kwargs)


class Recording(MultiTaskTrainer):
    """Records every micro-batch it trains on: (global step, task, example indices, num_items_in_batch, tokens)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        info = inputs[INFO_KEY]
        assert inputs[TASK_KEY] == info.task
        tokens = int(inputs["labels"].ne(-100).sum())
        self.seen.append((self.state.global_step, info.task, info.example_indices, int(num_items_in_batch), tokens))
        return super().training_step(model, inputs, num_items_in_batch)


def recording(processor, tasks, args, model=None, **kwargs) -> Recording:
    trainer = Recording(model=model or tiny_model(processor), args=args, tasks=tasks, processor=processor, **kwargs)
    trainer.seen = []
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# Data pipeline


def test_micro_batches_carry_their_task_and_are_deterministic(processor, tasks):
    def sequence(num_workers: int) -> list:
        data = MultiTaskDataset(tasks, processor, batch_size=3, gradient_accumulation_steps=2, seed=5)
        loader = DataLoader(data, batch_size=None, num_workers=num_workers)
        out = []
        for _ in range(2):  # two epochs: the second continues the schedule
            for batch in loader:
                info = batch[INFO_KEY]
                assert batch[TASK_KEY] == info.task and batch["labels"].shape[0] == len(info.example_indices)
                out.append((info.optimizer_step, info.micro_index, info.task, info.example_indices))
                data.state = info.state  # what the trainer records
        return out

    reference = sequence(0)
    assert len(reference) == 2 * len(MultiTaskDataset(tasks, processor, batch_size=3, gradient_accumulation_steps=2))
    assert [step for step, *_ in reference] == [i // 2 for i in range(len(reference))]
    assert all(reference[i][2] == reference[i + 1][2] for i in range(0, len(reference), 2))  # homogeneous steps
    assert sequence(0) == reference
    assert sequence(2) == reference  # the worker split does not change the sequence


@pytest.mark.parametrize("strategy", ["proportional", "all_tasks"])
def test_ranks_share_the_task_sequence_and_split_the_data(processor, tasks, strategy):
    per_rank = [
        list(MultiTaskDataset(tasks, processor, batch_size=2, strategy=strategy, rank=rank, world_size=2))
        for rank in range(2)
    ]
    infos = [[batch[INFO_KEY] for batch in batches] for batches in per_rank]
    assert [i.task for i in infos[0]] == [i.task for i in infos[1]]
    for task in tasks:
        shards = [[x for i in rank if i.task == task.name for x in i.example_indices] for rank in infos]
        first_epoch = [shard[: task.num_train_examples // 2] for shard in shards]
        assert not set(first_epoch[0]) & set(first_epoch[1])  # disjoint
        assert len(set(first_epoch[0]) | set(first_epoch[1])) == task.num_train_examples


def test_epoch_length(processor, tasks):
    # 12 and 6 rows in batches of 3: 4 + 2 micro-batches per pass, 3 optimizer steps of 2 micro-batches.
    data = MultiTaskDataset(tasks, processor, batch_size=3, gradient_accumulation_steps=2)
    assert (data.steps_per_epoch, len(data), data.examples_per_epoch) == (3, 6, 18)
    # all_tasks: until the largest task is covered once (4 of its micro-batches, 2 per step).
    all_tasks = MultiTaskDataset(tasks, processor, batch_size=3, strategy="all_tasks", gradient_accumulation_steps=2)
    assert (all_tasks.steps_per_epoch, all_tasks.micro_batches_per_step, len(all_tasks)) == (2, 4, 8)


def test_streaming_task(processor, color_data):
    stream = datasets.IterableDataset.from_generator(lambda: iter(shape_rows(5)))
    tasks = [Task("stream", COPY, stream), Task("color", COLOR, color_data)]
    data = MultiTaskDataset(tasks, processor, batch_size=2, strategy="uniform", rank=1, world_size=2)
    with pytest.raises(TypeError, match="no length"):
        len(data)
    batches = [batch for _, batch in zip(range(12), data) if batch[TASK_KEY] == "stream"]
    # Rank 1 reads rows 1, 3 of each pass; positions count on across passes.
    assert [b[INFO_KEY].example_indices for b in batches[:3]] == [(0, 1), (2, 3), (4, 5)]
    texts = [processor.tokenizer.decode(b["labels"][0][:-1]).strip() for b in batches[:3]]
    assert texts == ["a blue square", "a blue square", "a blue square"]  # rows 1, 1 (second pass), 1 (third)
    reader = StreamReader(stream, rank=0, world_size=2, task="stream")
    rows_2_4_0 = ["a green circle", "a blue circle", "a red circle"]
    assert [r["text"] for r in reader.read([1, 2, 3])] == rows_2_4_0
    with pytest.raises(ValueError, match="already read"):
        reader.read([0])
    empty = StreamReader(datasets.IterableDataset.from_generator(lambda: iter(shape_rows(1))), 1, 2, "tiny")
    with pytest.raises(ValueError, match="task 'tiny': the streaming train dataset yielded no rows for rank 1"):
        empty.read([0])


def test_rows_that_cannot_be_encoded(processor):
    bad = [{"text": "a red circle"}, {"text": "   "}, {"text": "a blue square"}]
    skipping = MultiTaskDataset([Task("copy", COPY, bad, on_error="skip")], processor, batch_size=3)
    with pytest.warns(UserWarning, match="skipped: task 'copy', row 1"):
        batch = next(iter(skipping))
    assert batch["labels"].shape[0] == 2 and batch[INFO_KEY].skipped == 1
    with pytest.raises(ValueError, match="task 'copy', row 1"):
        next(iter(MultiTaskDataset([Task("copy", COPY, bad)], processor, batch_size=3)))
    only_bad = MultiTaskDataset([Task("copy", COPY, [{"text": " "}], on_error="skip")], processor, batch_size=3)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no row of the micro-batch"):
        next(iter(only_bad))


# ---------------------------------------------------------------------------------------------------------------------
# Training


class KeepLogs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_two_task_run_loss_falls_with_per_task_logs(processor, tasks, tmp_path, capsys):
    callback = KeepLogs()
    args = arguments(tmp_path, max_steps=12, logging_steps=3, learning_rate=1e-2)
    trainer = recording(processor, tasks, args, callbacks=[callback])
    trainer.train()
    logs = [log for log in callback.logs if "loss" in log]
    assert len(logs) == 4
    for log in logs:  # every reporter sees the per-task values
        assert {"loss_color", "loss_copy", "sampled_color", "sampled_copy"} <= log.keys()
        assert math.isclose(log["sampled_color"] + log["sampled_copy"], 1.0)
    for task in ("color", "copy"):
        assert logs[-1][f"loss_{task}"] < logs[0][f"loss_{task}"] - 1.0
    assert logs[-1]["loss"] < logs[0]["loss"] - 1.0
    assert "loss_color" in capsys.readouterr().out  # the console printer (progress reporting) shows them
    # Proportional sampling: 12 vs 6 rows.
    assert logs[-1]["sampled_color"] == sum(task == "color" for _, task, *_ in trainer.seen) / 12 > 0.5


def test_all_tasks_normalizes_each_step_by_its_token_count(processor, tasks, tmp_path):
    args = arguments(tmp_path, max_steps=3, gradient_accumulation_steps=2)
    trainer = recording(processor, tasks, args, sampling="all_tasks")
    assert trainer.args.gradient_accumulation_steps == 4 and args.gradient_accumulation_steps == 2  # a copy
    trainer.train()
    assert len(trainer.seen) == 12
    for step in range(3):
        micro = [entry for entry in trainer.seen if entry[0] == step]
        assert [task for _, task, *_ in micro] == ["color", "color", "copy", "copy"]
        # Trainer's num_items_in_batch is the target-token count of the whole step, over both tasks.
        assert {items for *_, items, _ in micro} == {sum(tokens for *_, tokens in micro)}


def test_mixed_mode_draws_a_task_per_micro_batch(processor, tasks, tmp_path):
    trainer = recording(processor, tasks, arguments(tmp_path, max_steps=4, gradient_accumulation_steps=3), mode="mixed")
    trainer.train()
    steps = {}
    for step, task, *_ in trainer.seen:
        steps.setdefault(step, set()).add(task)
    assert any(len(tasks_of_step) == 2 for tasks_of_step in steps.values())


@pytest.mark.parametrize("kwargs", [{}, {"sampling": "all_tasks"}])
def test_resume_continues_exactly(processor, tasks, tmp_path, kwargs):
    args = arguments(tmp_path, max_steps=5, save_steps=2, save_strategy="steps", gradient_accumulation_steps=2)
    full = recording(processor, tasks, args, **kwargs)
    full.train()
    state = json.loads((tmp_path / "checkpoint-2" / SCHEDULE_STATE_NAME).read_text())
    assert state["optimizer_step"] == 2 and state["micro_index"] == 0
    resumed = recording(processor, tasks, args, **kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.seen == [entry for entry in full.seen if entry[0] >= 2]
    if not kwargs:  # homogeneous gradient accumulation: both micro-batches of a step come from one task
        assert all(full.seen[i][1] == full.seen[i + 1][1] for i in range(0, len(full.seen), 2))
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_resume_picks_the_last_complete_checkpoint(processor, tasks, tmp_path):
    args = arguments(tmp_path, max_steps=4, save_steps=2, save_strategy="steps")
    full = recording(processor, tasks, args)
    full.train()
    (tmp_path / "checkpoint-4" / SCHEDULE_STATE_NAME).unlink()  # as if killed while saving
    with pytest.raises(ValueError, match="has no multitask_schedule.json"):
        recording(processor, tasks, args).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        assert MultiTaskTrainer.last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-2")
    resumed = recording(processor, tasks, args)
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.seen == [entry for entry in full.seen if entry[0] >= 2]
    with pytest.raises(ValueError, match="no complete checkpoint"):
        recording(processor, tasks, arguments(tmp_path / "empty")).train(resume_from_checkpoint=True)


def test_nan_loss_stops_with_task_and_step(processor, tasks, tmp_path):
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.lm_head.weight.fill_(float("nan"))

    trainer = recording(processor, tasks, arguments(tmp_path), callbacks=[Poison()])
    with pytest.raises(RuntimeError, match="non-finite loss") as info:
        trainer.train()
    task = trainer._train_data.new_schedule().task_for(2, 0)
    assert f"on task {task!r} at training step 3" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and prediction


def test_evaluate_reports_every_task(processor, tasks, tmp_path):
    trainer = MultiTaskTrainer(model=tiny_model(processor), args=arguments(tmp_path), tasks=tasks, processor=processor)
    metrics = trainer.evaluate()
    expected = {"eval_color_accuracy", "eval_color_loss", "eval_copy_exact_match", "eval_copy_loss", "eval_loss"}
    assert expected <= metrics.keys()
    # eval_loss is token-weighted over the tasks.
    assert min(metrics["eval_color_loss"], metrics["eval_copy_loss"]) <= metrics["eval_loss"]
    assert metrics["eval_loss"] <= max(metrics["eval_color_loss"], metrics["eval_copy_loss"])
    assert trainer.state.log_history[-1]["eval_color_accuracy"] == metrics["eval_color_accuracy"]
    only = trainer.evaluate({"copy": shape_rows(2)}, metric_key_prefix="dev")
    assert "dev_copy_exact_match" in only and not any("color" in key for key in only)
    with pytest.raises(ValueError, match="task_name"):
        trainer.evaluate(shape_rows(2))


def test_closed_set_answers_never_leave_the_set(processor, tasks, tmp_path):
    trainer = MultiTaskTrainer(model=tiny_model(processor), args=arguments(tmp_path), tasks=tasks, processor=processor)
    answers = trainer.predict(task="color").predictions
    assert len(answers) == 7 and all(a["in_set"] and a["label"] in COLORS for a in answers)
    # With a teacher-forced decoder prompt before the answer (the SNLI-VE layout) the trie starts after the prompt.
    prompted = Task(
        "prompted", 'is " [TEXT:text] " red? -> is " [TEXT:text,no_loss] " red? [TEXT:color,closed_set]',
        candidates=["yes", "no"], num_beams=2,
    )  # fmt: skip
    assert {a["label"] for a in trainer.predict(shape_rows(3), task=prompted).predictions} <= {"yes", "no"}
    # Without the trie the untrained model says something else.
    batch = processor(COLOR, [{"text": row["text"]} for row in shape_rows(7)])
    free = processor.post_process_generation(trainer.model.generate(**batch, max_new_tokens=4), COLOR)
    assert any(answer["label"] not in COLORS for answer in free)


def test_metrics_on_known_answers(processor, color_data, tmp_path):
    # A closed set of one answer: every prediction is "red", so accuracy is the share of "red" references.
    red_only = Task("color", COLOR, color_data, color_data, candidates=["red"], metrics=["accuracy", "exact_match"])
    trainer = MultiTaskTrainer(
        model=tiny_model(processor), args=arguments(tmp_path), tasks=[red_only], processor=processor
    )
    metrics = trainer.evaluate()
    assert metrics["eval_color_accuracy"] == metrics["eval_color_exact_match"] == pytest.approx(4 / 12)

    # BOX targets: force the whole image as the answer; the references are whole-image boxes, so Acc@0.5 is 1.
    class WholeImage(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - 1
            vocab = processor.vocab
            token = vocab.eos_id if step >= 4 else vocab.bin_id(0 if step < 2 else vocab.num_bins - 1)
            forced = torch.full_like(scores, -float("inf"))
            forced[:, token] = 0.0
            return forced

    image_rows = [{"img": Image.new("RGB", (20, 10), "red"), "phrase": "red", "box": "0,0,20,10"}] * 3
    grounding = Task("ground", '[IMAGE:img] which region " [TEXT:phrase] "? -> [BOX:box]', None, image_rows)
    trainer = MultiTaskTrainer(
        model=tiny_model(processor), args=arguments(tmp_path), tasks=[grounding], processor=processor
    )
    output = trainer.predict(task="ground", logits_processor=[WholeImage()], num_beams=1)
    assert output.predictions == [{"box": [0.0, 0.0, 20.0, 10.0]}] * 3
    assert output.metrics["test_ground_iou_accuracy"] == 1.0 and output.label_ids == [[0.0, 0.0, 20.0, 10.0]] * 3


def test_predict(processor, tasks, tmp_path):
    trainer = MultiTaskTrainer(model=tiny_model(processor), args=arguments(tmp_path), tasks=tasks, processor=processor)
    inputs_only = [{"text": "a red circle"}, {"text": "a blue square"}]
    output = trainer.predict(inputs_only, task="color")  # no "color" column: answers without references or metrics
    assert len(output.predictions) == 2 and all(set(a) == {"label", "in_set"} for a in output.predictions)
    assert output.label_ids is None and not any(key.endswith("accuracy") for key in output.metrics)
    texts = trainer.predict(inputs_only, task="copy")  # the copy task's target is its input column
    assert all(set(a) == {"text"} for a in texts.predictions) and texts.label_ids == ["a red circle", "a blue square"]
    assert "test_copy_exact_match" in texts.metrics
    other = Task("shape", 'which shape is " [TEXT:text] "? -> [TEXT:shape,closed_set]', candidates=SHAPES)
    assert all(a["label"] in SHAPES for a in trainer.predict(inputs_only, task=other).predictions)
    with pytest.raises(KeyError, match="no task 'nope'"):
        trainer.predict(inputs_only, task="nope")
    with pytest.raises(InstructionError, match="'text'"):
        trainer.predict([{"sentence": "a"}], task="copy")


def test_saved_model_carries_the_tasks(processor, tasks, tmp_path):
    trainer = MultiTaskTrainer(model=tiny_model(processor), args=arguments(tmp_path), tasks=tasks, processor=processor)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoProcessor.from_pretrained(str(tmp_path / "final"))
    assert reloaded.task_instructions["color"] == COLOR and reloaded.task_instructions["copy"] == COPY
    assert reloaded.closed_sets["color"] == sorted(COLORS)
    assert os.path.isfile(tmp_path / "final" / "config.json")


def test_moe_router_statistics_are_logged(processor, tasks, tmp_path):
    callback = KeepLogs()
    model = tiny_model(processor, moe_type="topk")
    trainer = MultiTaskTrainer(
        model=model, args=arguments(tmp_path, max_steps=2, logging_steps=1), tasks=tasks, processor=processor,
        callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    log = next(log for log in callback.logs if "loss" in log)
    assert {"moe/router_entropy_mean", "moe/balance_loss_mean", "moe/expert_0_fraction_mean"} <= log.keys()


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tasks": []}, ValueError, "at least one Task"),
        ({"tasks": "color"}, TypeError, "list of Task"),
        ({"tasks": ["color"]}, TypeError, r"tasks\[0\] must be a Task"),
        ({"processor": "nope"}, TypeError, "OFAProcessor"),
        ({"sampling": "round_robin"}, ValueError, "Unknown sampling strategy"),
        ({"moe_logging": "some"}, ValueError, "moe_logging"),
        ({"sampling": "all_tasks", "mode": "mixed"}, ValueError, "fixes the mode"),
        ({"sampling": "temperature", "temperature": 0.5}, ValueError, "temperature"),
    ],
)
def test_bad_trainer_arguments(processor, tasks, tmp_path, kwargs, error, match):
    arguments_ = {"model": tiny_model(processor), "args": arguments(tmp_path), "tasks": tasks, "processor": processor}
    with pytest.raises(error, match=match):
        MultiTaskTrainer(**{**arguments_, **kwargs})


def test_task_weights_select_explicit_sampling(processor, color_data, tmp_path):
    weighted = [Task("color", COLOR, color_data, weight=3.0), Task("copy", COPY, shape_rows(6))]
    trainer = MultiTaskTrainer(tiny_model(processor), arguments(tmp_path), weighted, processor)
    assert trainer.sampling == "explicit" and trainer._train_data.probabilities == {"color": 0.75, "copy": 0.25}
    with pytest.raises(ValueError, match=r"tasks \['color'\] have weights, which sampling='uniform' ignores"):
        MultiTaskTrainer(tiny_model(processor), arguments(tmp_path), weighted, processor, sampling="uniform")
    with pytest.raises(ValueError, match="repeated: \\['copy'\\]"):
        MultiTaskTrainer(tiny_model(processor), arguments(tmp_path), weighted + weighted[1:], processor)


def test_training_needs_training_data(processor, tmp_path):
    eval_only = [Task("copy", COPY, eval_dataset=shape_rows(2))]
    trainer = MultiTaskTrainer(tiny_model(processor), arguments(tmp_path), eval_only, processor)
    with pytest.raises(ValueError, match="no task has a train_dataset"):
        trainer.train()


def test_trainer_features_keep_working(processor, tasks, tmp_path):
    """Evaluation during training, best-checkpoint selection on a per-task metric, checkpoint rotation."""
    args = arguments(
        tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="color_accuracy",
    )  # fmt: skip
    trainer = MultiTaskTrainer(model=tiny_model(processor), args=args, tasks=tasks, processor=processor)
    trainer.train()
    evaluations = [log for log in trainer.state.log_history if "eval_color_accuracy" in log]
    assert [log["step"] for log in evaluations] == [2, 4]
    assert trainer.state.best_metric == max(log["eval_color_accuracy"] for log in evaluations)
    assert os.path.isfile(os.path.join(trainer.state.best_model_checkpoint, SCHEDULE_STATE_NAME))
