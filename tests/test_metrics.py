"""Golden-value tests for `trainers.metrics`: every score here can be checked by hand."""

from __future__ import annotations

import math
import typing
import warnings

import numpy as np
import pytest
import torch

from trainers.metrics import (
    METRIC_ALIASES,
    METRICS,
    ReferenceType,
    compute_metrics,
    normalize_vqa_answer,
)

CAT = "the cat sat on the mat"


def score(name: str, predictions: list, references: list) -> float:
    return compute_metrics(name, predictions, references)[name]


def test_table_is_well_formed():
    reference_types = set(typing.get_args(ReferenceType))
    for name, spec in METRICS.items():
        assert callable(spec.fn), name
        assert isinstance(spec.higher_is_better, bool), name
        assert spec.reference_type in reference_types, name
    assert METRICS["wer"].higher_is_better is False
    assert {METRICS[name].reference_type for name in ("cider", "bleu", "vqa_accuracy")} == {"list[str]"}
    fn, higher_is_better, reference_type = METRICS["iou_accuracy"]  # rows unpack as (fn, direction, type)
    assert (higher_is_better, reference_type) == (True, "box")
    assert all(target in METRICS for target in METRIC_ALIASES.values())


# ---------------------------------------------------------------------------------------------------------------------
# BLEU (sacrebleu, 0..100)


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        (CAT, CAT, 100.0),
        # 1- to 4-gram precisions 5/6, 3/5, 1/4 and 0/3; sacrebleu's default "exp" smoothing turns 0/3 into 1/(2*3).
        ("the cat is on the mat", CAT, 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25),
        # All precisions 1, brevity penalty exp(1 - 6/5).
        ("the cat sat on the", CAT, 100 * math.exp(1 - 6 / 5)),
        # Multi-reference: the second reference matches exactly.
        (CAT, ["a dog lies on a rug", CAT], 100.0),
    ],
)
def test_bleu_golden(prediction, references, expected):
    assert score("bleu", [prediction], [references]) == pytest.approx(expected, abs=1e-6)


def test_bleu_variable_number_of_references():
    predictions = [CAT, "a dog lies on a rug"]
    references = [["x y z", CAT], ["a dog lies on a rug"]]
    assert score("bleu", predictions, references) == pytest.approx(100.0)
    assert score("bleu", predictions, [["x y z"], ["w v u"]]) < 1.0


# ---------------------------------------------------------------------------------------------------------------------
# ROUGE-L, WER, exact match


def test_rouge_l_golden():
    # LCS("the cat on the mat", CAT) = 5 words: precision 5/5, recall 5/6, F = 10/11; the second pair is identical.
    assert score("rouge", ["the cat on the mat", CAT], [CAT, CAT]) == pytest.approx((10 / 11 + 1.0) / 2)
    assert score("rouge", ["dogs bark"], [CAT]) == 0.0


def test_rouge_rejects_text_its_tokenizer_drops():
    with pytest.raises(ValueError, match="ASCII"):
        score("rouge", ["猫"], ["猫"])


@pytest.mark.parametrize(
    "predictions, references, expected",
    [
        ([CAT], [CAT], 0.0),
        (["the cat sit on mat"], [CAT], 2 / 6),  # one substitution, one deletion
        (["the cat sit on mat", "a b c"], [CAT, "a b"], 3 / 8),  # corpus level: (2 + 1 insertion) / (6 + 2)
        (["THE cat sat on the mat"], [CAT], 1 / 6),  # case-sensitive
    ],
)
def test_wer_golden(predictions, references, expected):
    assert score("wer", predictions, references) == pytest.approx(expected)


def test_wer_warns_nothing():
    # jiwer 3.0.0 warned on every call (its `truth_transform` defaulted to a value): 4000 warnings in the test run.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score("wer", ["the cat sat"], [CAT]) == pytest.approx(3 / 6)


def test_wer_rejects_all_empty_references():
    with pytest.raises(ValueError, match="every reference is empty"):
        score("wer", ["a"], [" "])


def test_exact_match():
    assert score("exact_match", [" yes ", "No", "two"], ["yes", "no", "two"]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------------------
# VQA accuracy


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The Two Dogs!", "2 dogs"),
        ("yes.", "yes"),
        ("1,000", "1000"),
        ("1.5", "1.5"),
        ("black-and-white", "black and white"),
        ("  an   apple ", "apple"),
        ("none", "0"),
    ],
)
def test_normalize_vqa_answer(answer, expected):
    assert normalize_vqa_answer(answer) == expected


HUMANS_2_OF_10 = ["two"] * 2 + ["three"] * 8


@pytest.mark.parametrize(
    "prediction, humans, plain, official",
    [
        ("2", HUMANS_2_OF_10, 2 / 3, 0.6),  # official: (2 * 1/3 + 8 * 2/3) / 10
        ("three", HUMANS_2_OF_10, 1.0, 1.0),
        ("2", ["2"] * 3 + ["3"] * 7, 1.0, 0.9),  # official: (3 * 2/3 + 7 * 1) / 10
        ("four", HUMANS_2_OF_10, 0.0, 0.0),
        ("The dog.", "dog", 1 / 3, 0.0),  # a bare str is one human answer
    ],
)
def test_vqa_accuracy_golden(prediction, humans, plain, official):
    results = compute_metrics(["vqa_accuracy", "vqa_accuracy_official"], [prediction], [humans])
    assert results["vqa_accuracy"] == pytest.approx(plain)
    assert results["vqa_accuracy_official"] == pytest.approx(official)


def test_vqa_accuracy_averages_over_questions():
    assert score("vqa_score", ["2", "no"], [HUMANS_2_OF_10, ["no"] * 10]) == pytest.approx((2 / 3 + 1) / 2)


# ---------------------------------------------------------------------------------------------------------------------
# CIDEr


CAPTIONS = ["a black dog runs outside", "two red buses parked near station", "small kitten sleeping on sofa"]


def test_cider_identical_disjoint_and_normalized():
    # Every n-gram occurs in one image only, so all idfs are log(3) and an identical caption scores 10 per image.
    assert score("cider", CAPTIONS, CAPTIONS) == pytest.approx(10.0)
    assert score("cider", ["zebra giraffe elephant lion"] * 3, CAPTIONS) == 0.0
    shouted = [caption.upper() + "!" for caption in CAPTIONS]
    assert score("cider", shouted, [[caption, "unrelated words here now"] for caption in CAPTIONS]) > 0.0
    assert score("cider", shouted, CAPTIONS) == pytest.approx(10.0)


def test_cider_single_example_warns():
    with pytest.warns(UserWarning, match="single example"):
        assert score("cider", CAPTIONS[:1], CAPTIONS[:1]) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    "predictions, references, expected_accuracy, expected_f1",
    [
        # a: 2TP/(2TP+FP+FN) = 2/3; b: 2/3; c: 1.
        (["a", "b", "a", "c"], ["a", "b", "b", "c"], 0.75, (2 / 3 + 2 / 3 + 1) / 3),
        # The label "d" is only predicted and still counts (scikit-learn's macro average does the same).
        (["a", "d"], ["a", "b"], 0.5, 1 / 3),
        ([0, 1, 1, 1], [0, 1, 0, 1], 0.75, (2 / 3 + 0.8) / 2),
        ([np.int64(3), 4], [3, 4], 1.0, 1.0),
    ],
)
def test_accuracy_and_f1_golden(predictions, references, expected_accuracy, expected_f1):
    results = compute_metrics(["accuracy", "f1"], predictions, references)
    assert results == pytest.approx({"accuracy": expected_accuracy, "f1": expected_f1})


def test_labels_of_different_types_raise():
    with pytest.raises(TypeError, match=r"predictions\[0\] is str but references\[0\] is int"):
        score("accuracy", ["1"], [1])


# ---------------------------------------------------------------------------------------------------------------------
# Boxes


@pytest.mark.parametrize(
    "prediction, reference, hit",
    [
        ((0, 0, 1, 1), (0, 0, 1, 1), 1.0),
        ((0, 0, 1, 1), (0, 0, 2, 1), 1.0),  # IoU = 1/2 exactly: counts
        ((0, 0, 1, 1), (0, 0, 2.001, 1), 0.0),  # IoU just below 1/2
        ((0, 0, 1, 1), (0, 0, 1.999, 1), 1.0),  # IoU just above 1/2
        ((10, 10, 30, 30), (20, 20, 40, 40), 0.0),  # IoU = 100 / 700
        ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),  # touching edges
        ((5, 5, 5, 5), (5, 5, 5, 5), 0.0),  # zero union
    ],
)
def test_iou_accuracy_golden(prediction, reference, hit):
    assert score("iou_accuracy", [prediction], [reference]) == hit
    assert score("iou_acc", [reference], [prediction]) == hit  # symmetric, and the OFASys alias


def test_iou_accuracy_accepts_arrays_and_tensors():
    predictions = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    references = np.array([[0.0, 0.0, 2.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    assert score("iou_accuracy", predictions, references) == 0.5


@pytest.mark.parametrize(
    "box, error, match",
    [
        ((0, 0, 1), ValueError, "4 finite numbers"),
        ((0, 0, 1, float("nan")), ValueError, "4 finite numbers"),
        ((2, 0, 1, 1), ValueError, "x1 < x0"),
        ("abcd", TypeError, "4 numbers"),
    ],
)
def test_bad_boxes_raise(box, error, match):
    with pytest.raises(error, match=match):
        score("iou_accuracy", [(0, 0, 1, 1)], [box])


def test_malformed_predicted_box_is_a_miss_not_an_error():
    # A model can generate x1 < x0; that prediction scores IoU 0, and the other example still counts.
    assert score("iou_accuracy", [(2, 0, 1, 1), (0, 0, 1, 1)], [(0, 0, 2, 1), (0, 0, 1, 1)]) == 0.5
    with pytest.raises(ValueError, match="4 finite numbers"):
        score("iou_accuracy", [(0, 0, 1, float("nan"))], [(0, 0, 1, 1)])


# ---------------------------------------------------------------------------------------------------------------------
# compute_metrics errors


@pytest.mark.parametrize(
    "names, predictions, references, error, match",
    [
        (["bleu", "nope"], ["a"], ["a"], ValueError, "unknown metric 'nope'; known metrics: accuracy, bleu"),
        ([], ["a"], ["a"], ValueError, "no metric names"),
        ("bleu", ["a", "b"], ["a"], ValueError, "2 predictions but 1 references"),
        ("accuracy", [], [], ValueError, "empty"),
        ("exact_match", [1], ["a"], TypeError, r"predictions\[0\] must be a str"),
        ("bleu", ["a"], [[]], ValueError, r"references\[0\] must be a str or a non-empty list"),
        ("cider", ["a", "b"], [["a"], ["b", 3]], TypeError, r"references\[1\]\[1\] must be a str"),
        ([3], ["a"], ["a"], TypeError, "metric names must be str"),
    ],
)
def test_compute_metrics_errors(names, predictions, references, error, match):
    with pytest.raises(error, match=match):
        compute_metrics(names, predictions, references)


def test_unknown_metric_lists_every_known_name():
    with pytest.raises(ValueError) as info:
        compute_metrics("nope", ["a"], ["a"])
    assert all(name in str(info.value) for name in [*METRICS, *METRIC_ALIASES])


def test_direct_call_checks_inputs():
    with pytest.raises(TypeError, match="must be a sequence"):
        METRICS["accuracy"].fn("abc", "abc")


def test_object_accuracy_golden():
    a = {"box": [0, 0, 10, 10], "label": "red circle"}
    b = {"box": [20, 20, 30, 30], "label": "blue square"}
    shifted = {"box": [5, 0, 15, 10], "label": "red circle"}  # IoU 1/3 with a
    relabeled = {"box": [20, 20, 30, 30], "label": "red square"}
    predictions = [[a, b], [a], [shifted, b], [a, relabeled, b], []]
    references = [[a, b], [a, b], [a, b], [a, b], []]
    # per example: 2/2, 1/2 (a missing object), 1/2 (IoU too low), 1/3 (wrong label, extra object), 1 (both empty)
    expected = (1 + 0.5 + 0.5 + 1 / 3 + 1) / 5
    assert compute_metrics("object_accuracy", predictions, references)["object_accuracy"] == pytest.approx(expected)
