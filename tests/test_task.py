"""`trainers.Task`: declaration, column checks, candidates, references, generation settings, bad input."""

from __future__ import annotations

import math

import datasets
import pytest
import torch

from processing import InstructionError, TaskPlan
from trainers import DEFAULT_METRICS, GENERATION_DEFAULTS, TARGET_KINDS, Task
from trainers.data import column_names, dataset_size, is_streaming

CAPTION = "[IMAGE:img] what does the image describe? -> [TEXT:cap]"
VQA = "[IMAGE:img] [TEXT:q] -> [TEXT:answer,closed_set]"
GROUNDING = '[IMAGE:img] which region does the text " [TEXT:phrase] " describe? -> [BOX:box]'
DETECTION = "[IMAGE:img] what are the objects in the image? -> ( [BOX:boxes] [TEXT:labels] )*"
IMAGE_GEN = "what is the complete image? caption: [TEXT:text] -> [IMAGE_CODE:codes]"
CATEGORY = "[TEXT:sentence] -> [CATEGORY:label]"


def rows(**columns) -> list[dict]:
    length = len(next(iter(columns.values())))
    return [{name: values[i] for name, values in columns.items()} for i in range(length)]


VQA_ROWS = rows(img=[None] * 5, q=["what?"] * 5, answer=["red", "blue", "red", " green ", "blue"])


@pytest.mark.parametrize(
    "instruction, kind",
    [(CAPTION, "text"), (VQA, "label"), (GROUNDING, "box"), (DETECTION, "objects"), (IMAGE_GEN, "codes")]
    + [(CATEGORY, "label")],
)
def test_target_kind_and_default_metrics(instruction, kind):
    task = Task("t", instruction, candidates=["a"] if "closed_set" in instruction else None)
    assert task.target_kind == kind and kind in TARGET_KINDS
    assert task.metrics == DEFAULT_METRICS[kind]
    assert isinstance(task.plan, TaskPlan) and task.instruction == instruction


def test_instruction_is_parsed_once_and_plans_are_accepted():
    task = Task("caption", CAPTION)
    assert Task("again", task.plan).plan is task.plan  # a plan is used as is, not re-parsed


def test_column_mapping_renames_the_plan_and_checks_the_dataset():
    data = datasets.Dataset.from_dict({"image": [None, None], "caption": ["a", "b"]})
    task = Task("caption", CAPTION, train_dataset=data, column_mapping={"img": "image", "cap": "caption"})
    assert task.plan.columns == ("caption", "image")
    assert task.instruction == "[IMAGE:image] what does the image describe? -> [TEXT:caption]"
    with pytest.raises(ValueError, match="column_mapping.*'photo'"):
        Task("caption", CAPTION, column_mapping={"photo": "image"})


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: datasets.Dataset.from_dict({"img": [None], "caption": ["a"]}), id="datasets.Dataset"),
        pytest.param(lambda: rows(img=[None], caption=["a"]), id="list of dicts"),
        pytest.param(
            lambda: datasets.IterableDataset.from_generator(lambda: iter(rows(img=[None], caption=["a"]))),
            id="streaming",
        ),
    ],
)
def test_missing_column_is_a_clear_error_at_construction(data):
    with pytest.raises(InstructionError) as info:
        Task("caption", CAPTION, train_dataset=data())
    message = str(info.value)
    assert "Task 'caption'" in message and "'cap'" in message and "caption" in message  # names the data's columns


def test_eval_data_needs_targets_unless_a_reference_column_is_given():
    inputs_only = rows(img=[None], q=["what?"], answers=[["red", "red", "blue"]])
    with pytest.raises(InstructionError, match="'answer'"):
        Task("vqa", VQA, eval_dataset=inputs_only, candidates=["red"])
    task = Task("vqa", VQA, eval_dataset=inputs_only, candidates=["red"], reference_column="answers")
    assert task.reference(inputs_only[0]) == ["red", "red", "blue"]
    with pytest.raises(ValueError, match="reference_column 'human'"):
        Task("vqa", VQA, eval_dataset=inputs_only, candidates=["red"], reference_column="human")


@pytest.mark.parametrize("weight", [0, -1.0, math.inf, math.nan])
def test_bad_weights(weight):
    with pytest.raises(ValueError, match="weight must be finite and > 0"):
        Task("caption", CAPTION, weight=weight)


@pytest.mark.parametrize("which", ["train_dataset", "eval_dataset"])
@pytest.mark.parametrize(
    "empty",
    [
        pytest.param(lambda: datasets.Dataset.from_dict({"img": [], "cap": []}), id="datasets.Dataset"),
        pytest.param(lambda: [], id="list"),
        pytest.param(lambda: datasets.IterableDataset.from_generator(lambda: iter([])), id="streaming"),
    ],
)
def test_empty_datasets_are_rejected(which, empty):
    with pytest.raises(ValueError, match=f"Task 'caption': {which} is empty"):
        Task("caption", CAPTION, **{which: empty()})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": ""}, ValueError, "Task name"),
        ({"name": "a/b"}, ValueError, "Task name"),
        ({"instruction": 3}, TypeError, "instruction must be a str"),
        ({"instruction": "[TEXT:a] no arrow"}, ValueError, "->"),
        ({"weight": "1"}, TypeError, "weight must be a number"),
        ({"metrics": ["nope"]}, ValueError, "unknown metric 'nope'"),
        ({"metrics": ["iou_accuracy"]}, ValueError, "metric 'iou_accuracy' compares box references"),
        ({"instruction": DETECTION, "metrics": ["accuracy"]}, ValueError, "objects targets: object_accuracy"),
        ({"candidates": ["a"]}, ValueError, "not closed_set"),
        ({"instruction": VQA}, ValueError, "pass candidates"),
        ({"instruction": VQA, "candidates": []}, ValueError, "are empty"),
        ({"instruction": VQA, "candidates": ["a", " "]}, ValueError, "empty answer"),
        ({"instruction": VQA, "candidates": "yes"}, TypeError, "list of answers"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"num_beams": 1.5}, ValueError, "num_beams must be a positive int"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"train_dataset": {"img": [1], "cap": ["a"]}}, TypeError, "from_dict"),
        ({"train_dataset": iter(rows(img=[1], cap=["a"]))}, TypeError, "one-shot iterator"),
        ({"train_dataset": 5}, TypeError, "neither indexable nor iterable"),
        ({"train_dataset": [1, 2]}, TypeError, "rows must be mappings"),
    ],
)
def test_bad_task_arguments(kwargs, error, match):
    arguments = {"name": "caption", "instruction": CAPTION, **kwargs}
    with pytest.raises(error, match=match):
        Task(**arguments)


def test_closed_set_candidates_are_collected_from_training_data():
    for data in (VQA_ROWS, datasets.Dataset.from_list(VQA_ROWS)):
        task = Task("vqa", VQA, train_dataset=data)
        assert task.closed_set and task.candidates() == ["blue", "green", "red"]  # unique, stripped, sorted
    given = Task("vqa", VQA, train_dataset=VQA_ROWS, candidates=["yes", "no", "yes"])
    assert given.candidates() == ["yes", "no"]
    assert Task("caption", CAPTION).candidates() is None


def test_closed_set_needs_candidates_for_streaming_data():
    stream = datasets.IterableDataset.from_generator(lambda: iter(VQA_ROWS))
    with pytest.raises(ValueError, match="streaming train_dataset; pass candidates"):
        Task("vqa", VQA, train_dataset=stream)
    assert Task("vqa", VQA, train_dataset=stream, candidates=["red"]).num_train_examples is None


@pytest.mark.parametrize(
    "instruction, row, reference",
    [
        (CAPTION, {"cap": "a red circle"}, "a red circle"),
        (VQA, {"answer": " red "}, "red"),
        (CATEGORY, {"label": 3}, "3"),
        (GROUNDING, {"box": "1, 2,3,4"}, [1.0, 2.0, 3.0, 4.0]),
        (GROUNDING, {"box": (1, 2, 3, 4)}, [1.0, 2.0, 3.0, 4.0]),
        (IMAGE_GEN, {"codes": [3, 1]}, [3, 1]),
        (
            DETECTION,
            {"boxes": [[0, 0, 2, 2], "1,1,3,3"], "labels": ["cat", "dog"]},
            [{"box": [0.0, 0.0, 2.0, 2.0], "label": "cat"}, {"box": [1.0, 1.0, 3.0, 3.0], "label": "dog"}],
        ),
        (CAPTION, {}, None),
    ],
)
def test_references(instruction, row, reference):
    task = Task("t", instruction, candidates=["red"] if "closed_set" in instruction else None)
    assert task.reference(row) == reference


def test_bad_reference_box():
    with pytest.raises(ValueError, match="Task 'g': a box needs 4 numbers"):
        Task("g", GROUNDING).reference({"box": [1, 2, 3]})


@pytest.mark.parametrize(
    "answer, kind, value",
    [
        ({"text": "a cat"}, "text", "a cat"),
        ({"label": "red", "in_set": True}, "label", "red"),
        ({"box": [1.0, 2.0, 3.0, 4.0]}, "box", [1.0, 2.0, 3.0, 4.0]),
        ({"box": None}, "box", [0.0, 0.0, 0.0, 0.0]),  # an unparsable box scores IoU 0, it is not dropped
    ],
)
def test_prediction_values(answer, kind, value):
    instruction = {"text": CAPTION, "label": VQA, "box": GROUNDING}[kind]
    task = Task("t", instruction, candidates=["red"] if kind == "label" else None)
    assert task.prediction(answer) == value


def test_scored_pairs_drop_rows_without_references():
    task = Task("t", GROUNDING)
    answers = [{"box": [1.0, 2.0, 3.0, 4.0]}, {"box": None}, {"box": [0.0, 0.0, 5.0, 5.0]}]
    predictions, references = task.scored_pairs(answers, [[1, 2, 3, 4], [0, 0, 1, 1], None])
    assert predictions == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    assert references == [[1, 2, 3, 4], [0, 0, 1, 1]]
    assert task.scored_pairs(answers, None) == ([], [])


def test_generation_settings_are_layered():
    caption = Task("caption", CAPTION)
    expected = {"num_beams": 5, "max_new_tokens": 32, "no_repeat_ngram_size": 3}
    assert caption.generate_kwargs() == GENERATION_DEFAULTS["text"] == expected
    # TrainingArguments-level defaults < task settings < call overrides; greedy search drops the n-gram block.
    task = Task("caption", CAPTION, num_beams=3, generation_kwargs={"length_penalty": 0.5})
    assert task.generate_kwargs({"num_beams": 2, "max_length": 20}, {"length_penalty": None}) == {
        "num_beams": 3,
        "no_repeat_ngram_size": 3,
        "max_length": 20,
        "length_penalty": 0.5,
    }
    assert task.generate_kwargs(overrides={"num_beams": 1}) == {
        "num_beams": 1,
        "max_new_tokens": 32,
        "length_penalty": 0.5,
    }
    assert Task("box", GROUNDING).generate_kwargs()["min_new_tokens"] == 4


def test_dataset_helpers():
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return {"img": None, "cap": str(index)}

    stream = datasets.IterableDataset.from_generator(lambda: iter(rows(a=[1, 2])))
    assert (dataset_size(Rows()), column_names(Rows()), is_streaming(Rows())) == (2, ("img", "cap"), False)
    assert (dataset_size(stream), column_names(stream), is_streaming(stream)) == (None, ("a",), True)
    task = Task("caption", CAPTION, train_dataset=Rows(), batch_size=4)
    assert task.num_train_examples == 2 and "train=2" in repr(task)
