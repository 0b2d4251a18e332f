"""Evaluation metrics for OFA tasks, selectable by name, on the well-kept reference libraries.

| name | library | references per example | range |
|---|---|---|---|
| `cider` | pycocoevalcap `Cider` (CIDEr-D, corpus idf) | one or many captions | 0..10 (papers print x100) |
| `bleu` | sacrebleu corpus BLEU (13a tokenizer) | one or many sentences | 0..100 |
| `rouge` | rouge_score ROUGE-L F-measure, mean over examples | one sentence | 0..1 |
| `exact_match` | string equality after stripping surrounding whitespace | one string | 0..1 |
| `vqa_accuracy` | VQA soft accuracy min(#humans agreeing / 3, 1) | the human answers | 0..1 |
| `vqa_accuracy_official` | the VQA evaluation server's leave-one-annotator-out mean | the human answers | 0..1 |
| `accuracy` | label equality | one label (str or int) | 0..1 |
| `f1` | macro F1 over the labels seen in references or predictions | one label | 0..1 |
| `iou_accuracy` | Acc@0.5: IoU(prediction, reference) >= 0.5 | one box (x0, y0, x1, y1) | 0..1 |
| `wer` | jiwer corpus word error rate (case-sensitive) | one transcript | 0.. (lower is better) |

The OFASys metric names `vqa_score`, `iou_acc` and `f_measure` are accepted as aliases.

Libraries are imported when their metric is first used, so label metrics work without the `[train]` extra. Nothing
here downloads anything: `evaluate.load(...)` would fetch metric scripts from the Hub, so the libraries are called
directly, and `evaluate` is not a dependency (its pip package ships no metric that loads offline by name).

Your own metrics: a `Task` also takes callables `fn(predictions, references) -> float | dict[str, float]` and loaded
`evaluate` modules (anything with `.compute(predictions=..., references=...)`, e.g. `evaluate.load("bleu")` where the
Hub or a local metric script is available); `score_metric_function` runs one.

```python
>>> compute_metrics(["exact_match", "wer"], ["a cat sits on the mat"], ["a cat sat on the mat"])
{'exact_match': 0.0, 'wer': 0.16666666666666666}
```
"""

from __future__ import annotations

import importlib
import math
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Real
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "METRICS",
    "METRIC_ALIASES",
    "MetricSpec",
    "ReferenceType",
    "accuracy",
    "bleu",
    "cider",
    "compute_metrics",
    "exact_match",
    "iou_accuracy",
    "macro_f1",
    "malformed_boxes",
    "normalize_vqa_answer",
    "object_accuracy",
    "metric_function_name",
    "rouge_l",
    "score_metric_function",
    "vqa_accuracy",
    "vqa_accuracy_official",
    "word_error_rate",
]

ReferenceType = Literal["str", "list[str]", "box", "label", "objects"]
"""What one reference is: one string, one string or a list of strings (multi-reference), a box, or a label."""

IOU_THRESHOLD = 0.5


def _require(module: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"metric {metric!r} needs {module.split('.')[0]}; install the training extra: pip install 'ofa-hf[train]'"
        ) from error


# ---------------------------------------------------------------------------------------------------------------------
# Input checks shared by every metric


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any], metric: str) -> None:
    for name, values in (("predictions", predictions), ("references", references)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"{metric}: {name} must be a sequence (one entry per example), got {type(values).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"{metric}: got {len(predictions)} predictions but {len(references)} references; they must pair up"
        )
    if not predictions:
        raise ValueError(f"{metric}: predictions and references are empty; a metric needs at least one example")


def _check_texts(values: Sequence[Any], metric: str, what: str) -> list[str]:
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{metric}: {what}[{index}] must be a str, got {type(value).__name__}")
    return list(values)


def _reference_lists(references: Sequence[Any], metric: str) -> list[list[str]]:
    """One list of reference strings per example; a bare string is one reference."""
    out = []
    for index, refs in enumerate(references):
        if isinstance(refs, str):
            refs = [refs]
        elif not isinstance(refs, Sequence) or not refs:
            raise ValueError(
                f"{metric}: references[{index}] must be a str or a non-empty list of str, got {refs!r:.80}"
            )
        out.append(_check_texts(refs, metric, f"references[{index}]"))
    return out


def _label_kind(value: Any, metric: str, what: str) -> type:
    if isinstance(value, str):
        return str
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int
    raise TypeError(f"{metric}: {what} must be a str or int label, got {type(value).__name__}")


def _check_labels(predictions: Sequence[Any], references: Sequence[Any], metric: str) -> tuple[list, list]:
    """Labels as hashable Python values; a str prediction against an int reference is a bug, not a miss."""
    preds, refs = [], []
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        kind = _label_kind(reference, metric, f"references[{index}]")
        if _label_kind(prediction, metric, f"predictions[{index}]") is not kind:
            raise TypeError(
                f"{metric}: predictions[{index}] is {type(prediction).__name__} but references[{index}] is "
                f"{type(reference).__name__}; map labels to one type before scoring"
            )
        preds.append(kind(prediction))
        refs.append(kind(reference))
    return preds, refs


def _boxes(values: Sequence[Any], metric: str, what: str) -> np.ndarray:
    """An (N, 4) float array of (x0, y0, x1, y1) boxes with x0 <= x1 and y0 <= y1.

    A reference that breaks this is an error. A model's prediction may be malformed (a generated box with x1 < x0):
    for `what == "predictions"` such a box becomes an empty box, so it scores IoU 0 instead of stopping evaluation.
    """
    rows = []
    for index, box in enumerate(values):
        try:
            row = np.asarray(box, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{metric}: {what}[{index}] must be 4 numbers (x0, y0, x1, y1), got {box!r:.80}") from None
        if row.shape != (4,) or not np.isfinite(row).all():
            raise ValueError(f"{metric}: {what}[{index}] must be 4 finite numbers (x0, y0, x1, y1), got {box!r:.80}")
        if row[2] < row[0] or row[3] < row[1]:
            if what != "predictions":
                raise ValueError(f"{metric}: {what}[{index}] = {row.tolist()} has x1 < x0 or y1 < y0")
            row = np.zeros(4)  # an empty box: no intersection with anything
        rows.append(row)
    return np.stack(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Text generation metrics

# OFA's caption validation deletes every ASCII punctuation character before CIDEr (`str.translate` over
# `string.punctuation` in its caption task); captions are lower-cased in its data.
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _caption_text(text: str) -> str:
    return " ".join(text.lower().translate(_DELETE_PUNCTUATION).split())


def cider(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus CIDEr-D with pycocoevalcap's `Cider` scorer.

    The COCO toolkit normally tokenizes with `PTBTokenizer`, which runs the Stanford tokenizer in Java. Instead the
    text is lower-cased, ASCII punctuation is deleted and words are split on whitespace: OFA's own caption
    validation does exactly this, and scores differ from PTB tokenization only around contractions and hyphens.

    CIDEr weighs n-grams by their inverse document frequency over the references of the whole corpus, so it is a
    corpus statistic: with a single example every idf is 0 and so is the score (a warning says so).

    Args:
        predictions (`Sequence[str]`): one caption per example.
        references (`Sequence[str | Sequence[str]]`): the reference caption(s) of each example.

    Returns:
        `float`: CIDEr-D, 0..10 (papers print it multiplied by 100).
    """
    _check_pairs(predictions, references, "cider")
    hypotheses = _check_texts(predictions, "cider", "predictions")
    reference_lists = _reference_lists(references, "cider")
    if len(hypotheses) == 1:
        warnings.warn(
            "cider: a single example always scores 0, since CIDEr's idf is computed over the corpus", stacklevel=2
        )
    scorer = _require("pycocoevalcap.cider.cider", "cider").Cider()
    res = {index: [_caption_text(text)] for index, text in enumerate(hypotheses)}
    gts = {index: [_caption_text(text) for text in refs] for index, refs in enumerate(reference_lists)}
    score, _ = scorer.compute_score(gts, res)
    return float(score)


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU from sacrebleu (default 13a tokenization, 4-grams, exponential smoothing off by default).

    Args:
        predictions (`Sequence[str]`): one hypothesis per example.
        references (`Sequence[str | Sequence[str]]`): the reference(s) of each example; the number may vary.

    Returns:
        `float`: BLEU, 0..100.
    """
    _check_pairs(predictions, references, "bleu")
    hypotheses = _check_texts(predictions, "bleu", "predictions")
    reference_lists = _reference_lists(references, "bleu")
    # sacrebleu wants one stream per reference slot; `None` marks a slot an example does not have.
    num_streams = max(len(refs) for refs in reference_lists)
    streams = [[refs[slot] if slot < len(refs) else None for refs in reference_lists] for slot in range(num_streams)]
    metric = _require("sacrebleu.metrics", "bleu").BLEU()
    return float(metric.corpus_score(hypotheses, streams).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure from `rouge_score` (its default tokenizer, no stemming).

    `rouge_score` lower-cases and keeps only ASCII letters and digits, so a reference with none of those (for
    example Chinese text) would silently score 0: it raises instead.

    Args:
        predictions (`Sequence[str]`): one text per example.
        references (`Sequence[str]`): one reference per example.

    Returns:
        `float`: ROUGE-L F, 0..1.
    """
    _check_pairs(predictions, references, "rouge")
    hypotheses = _check_texts(predictions, "rouge", "predictions")
    targets = _check_texts(references, "rouge", "references")
    tokenizer = _require("rouge_score.tokenizers", "rouge").DefaultTokenizer()
    for index, target in enumerate(targets):
        if target.strip() and not tokenizer.tokenize(target):
            raise ValueError(
                f"rouge: references[{index}] = {target!r:.80} has no ASCII letters or digits, which is all "
                "rouge_score's tokenizer keeps"
            )
    scorer = _require("rouge_score.rouge_scorer", "rouge").RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(target, hypothesis)["rougeL"].fmeasure for hypothesis, target in zip(hypotheses, targets)]
    return float(np.mean(scores))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping surrounding whitespace (case-sensitive).

    Args:
        predictions (`Sequence[str]`): one text per example.
        references (`Sequence[str]`): one reference per example.

    Returns:
        `float`: 0..1.
    """
    _check_pairs(predictions, references, "exact_match")
    hypotheses = _check_texts(predictions, "exact_match", "predictions")
    targets = _check_texts(references, "exact_match", "references")
    return float(np.mean([hypothesis.strip() == target.strip() for hypothesis, target in zip(hypotheses, targets)]))


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate from jiwer: total word edits / total reference words (case-sensitive).

    Args:
        predictions (`Sequence[str]`): one transcript per example.
        references (`Sequence[str]`): one reference transcript per example; not all of them may be empty.

    Returns:
        `float`: WER, 0 at best; it exceeds 1 when there are many insertions.
    """
    _check_pairs(predictions, references, "wer")
    hypotheses = _check_texts(predictions, "wer", "predictions")
    targets = _check_texts(references, "wer", "references")
    if not any(target.split() for target in targets):
        raise ValueError("wer: every reference is empty, so the word error rate is undefined")
    return float(_require("jiwer", "wer").wer(reference=targets, hypothesis=hypotheses))


# ---------------------------------------------------------------------------------------------------------------------
# VQA accuracy

# Answer normalization of the official VQA evaluation (`vqaEval.py` of github.com/GT-Vision-Lab/VQA), compacted:
# lower-case; delete punctuation marks that touch a space (all of them if a comma sits between digits) and turn the
# others into spaces; delete periods not followed by a digit; number words to digits; drop articles. The official
# table that restores apostrophes in contractions ("dont" -> "don't") is left out, which can only matter for answers
# that contain one.
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA = re.compile(r"(\d),(\d)")
_LONE_PERIOD = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_vqa_answer(answer: str) -> str:
    """Normalize a VQA answer as the official VQA evaluation does (without its contraction table).

    Args:
        answer (`str`): a predicted or human answer.

    Returns:
        `str`: e.g. `"The Two Dogs!"` -> `"2 dogs"`, `"1,000"` -> `"1000"`.
    """
    if not isinstance(answer, str):
        raise TypeError(f"VQA answers must be str, got {type(answer).__name__}")
    text = original = " ".join(answer.lower().split())
    # As in the official code, the tests look at the original text, and a comma between digits deletes every mark.
    delete_all = _DIGIT_COMMA.search(original) is not None
    for mark in _VQA_PUNCTUATION:
        delete = delete_all or f"{mark} " in original or f" {mark}" in original
        text = text.replace(mark, "" if delete else " ")
    text = _LONE_PERIOD.sub("", text)
    return " ".join(_NUMBER_WORDS.get(word, word) for word in text.split() if word not in _ARTICLES)


def _vqa_matches(predictions: Sequence[str], references: Sequence[str | Sequence[str]], metric: str) -> list:
    _check_pairs(predictions, references, metric)
    answers = [normalize_vqa_answer(text) for text in _check_texts(predictions, metric, "predictions")]
    humans = [[normalize_vqa_answer(text) for text in refs] for refs in _reference_lists(references, metric)]
    return [[human == answer for human in refs] for answer, refs in zip(answers, humans)]


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """VQA soft accuracy, min(#human answers equal to the prediction / 3, 1), averaged over questions.

    This is the formula of the VQA paper (Antol et al., 2015) and what OFA's validation computes from per-answer
    confidences. Answers are normalized with [`normalize_vqa_answer`] first.

    Args:
        predictions (`Sequence[str]`): one answer per question.
        references (`Sequence[str | Sequence[str]]`): the human answers of each question (10 in VQA v2).

    Returns:
        `float`: 0..1; e.g. 2 of 10 humans agreeing gives 2/3.
    """
    matches = _vqa_matches(predictions, references, "vqa_accuracy")
    return float(np.mean([min(sum(row) / 3.0, 1.0) for row in matches]))


def vqa_accuracy_official(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """VQA accuracy as the official evaluation server computes it: the soft accuracy against each subset of all
    human answers but one, averaged over the subsets.

    It is at most the plain [`vqa_accuracy`]: 2 of 10 humans agreeing gives 0.6 here, not 2/3.

    Args:
        predictions (`Sequence[str]`): one answer per question.
        references (`Sequence[str | Sequence[str]]`): the human answers of each question (10 in VQA v2).

    Returns:
        `float`: 0..1.
    """
    matches = _vqa_matches(predictions, references, "vqa_accuracy_official")
    scores = []
    for row in matches:
        total = sum(row)
        scores.append(sum(min((total - hit) / 3.0, 1.0) for hit in row) / len(row))
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------------------------------
# Classification and grounding metrics


def accuracy(predictions: Sequence[str | int], references: Sequence[str | int]) -> float:
    """Fraction of predicted labels equal to the reference label.

    Args:
        predictions (`Sequence[str | int]`): one label per example (e.g. a closed-set answer).
        references (`Sequence[str | int]`): one label per example, of the same type as the prediction.

    Returns:
        `float`: 0..1.
    """
    _check_pairs(predictions, references, "accuracy")
    preds, refs = _check_labels(predictions, references, "accuracy")
    return float(np.mean([prediction == reference for prediction, reference in zip(preds, refs)]))


def macro_f1(predictions: Sequence[str | int], references: Sequence[str | int]) -> float:
    """Macro F1: the unweighted mean over labels of 2·TP / (2·TP + FP + FN).

    The labels are those seen in the references or the predictions, and a label with no true positive scores 0,
    which is what scikit-learn's `f1_score(average="macro")` does (scikit-learn itself is not a dependency).

    Args:
        predictions (`Sequence[str | int]`): one label per example.
        references (`Sequence[str | int]`): one label per example, of the same type as the prediction.

    Returns:
        `float`: 0..1.
    """
    _check_pairs(predictions, references, "f1")
    preds, refs = _check_labels(predictions, references, "f1")
    true_positives = Counter(prediction for prediction, reference in zip(preds, refs) if prediction == reference)
    predicted, actual = Counter(preds), Counter(refs)
    labels = actual.keys() | predicted.keys()
    return float(np.mean([2 * true_positives[label] / (predicted[label] + actual[label]) for label in labels]))


def iou_accuracy(predictions: Sequence[Sequence[float]], references: Sequence[Sequence[float]]) -> float:
    """Acc@0.5 for grounding (RefCOCO): the fraction of predicted boxes with IoU >= 0.5 against the reference box.

    Boxes are (x0, y0, x1, y1) in any one unit (pixels or bins). Two degenerate boxes (zero union) count as a miss.

    Args:
        predictions (`Sequence[Sequence[float]]`): one box per example (lists, tuples, arrays or tensors).
        references (`Sequence[Sequence[float]]`): one box per example.

    Returns:
        `float`: 0..1.
    """
    _check_pairs(predictions, references, "iou_accuracy")
    hyps = _boxes(predictions, "iou_accuracy", "predictions")
    refs = _boxes(references, "iou_accuracy", "references")
    return float(np.mean(_iou(hyps, refs) >= IOU_THRESHOLD))


def _iou(hyps: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """IoU of each row's pair of boxes, (N, 4) x (N, 4) -> (N,); 0 where the union is empty."""
    width = np.clip(np.minimum(hyps[:, 2], refs[:, 2]) - np.maximum(hyps[:, 0], refs[:, 0]), 0.0, None)
    height = np.clip(np.minimum(hyps[:, 3], refs[:, 3]) - np.maximum(hyps[:, 1], refs[:, 1]), 0.0, None)
    intersection = width * height

    def area(boxes: np.ndarray) -> np.ndarray:
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    union = area(hyps) + area(refs) - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


# ---------------------------------------------------------------------------------------------------------------------
# The table and the entry point


class MetricSpec(NamedTuple):
    """One row of [`METRICS`].

    Args:
        fn (`Callable[[Sequence, Sequence], float]`): `fn(predictions, references) -> score`.
        higher_is_better (`bool`): the direction to select checkpoints by.
        reference_type (`ReferenceType`): what one reference is; `"list[str]"` also takes a bare str.
    """

    fn: Callable[[Sequence[Any], Sequence[Any]], float]
    higher_is_better: bool
    reference_type: ReferenceType


def object_accuracy(predictions: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """Detection as OFA generates it (boxes with labels, in order): per example, the i-th predicted object against the
    i-th reference object, a hit needing the same label and IoU >= 0.5; an example scores `hits / max(#predicted,
    #reference)` (1 when both are empty), so missing and extra objects cost as much as wrong ones.

    Args:
        predictions: per example, a list of `{"box": [x0, y0, x1, y1], "label": str}` (`{"objects"}` answers).
        references: per example, the reference objects in the order the targets list them.

    Returns:
        `float`: the mean over examples, 0..1.
    """
    _check_pairs(predictions, references, "object_accuracy")
    scores = []
    for index, (hyp, ref) in enumerate(zip(predictions, references)):
        denominator = max(len(hyp), len(ref))
        shared = min(len(hyp), len(ref))
        if denominator == 0:
            scores.append(1.0)
            continue
        if shared == 0:
            scores.append(0.0)
            continue
        what = f"object_accuracy example {index}"
        boxes = _boxes([obj["box"] for obj in hyp[:shared]], what, "predictions")
        truth = _boxes([obj["box"] for obj in ref[:shared]], what, "references")
        hits = _iou(boxes, truth) >= IOU_THRESHOLD
        same = np.array([str(h.get("label", "")).strip() == str(r.get("label", "")).strip() for h, r in zip(hyp, ref)])
        scores.append(float((hits & same[:shared]).sum()) / denominator)
    return float(np.mean(scores))


METRICS: dict[str, MetricSpec] = {
    "cider": MetricSpec(cider, True, "list[str]"),
    "bleu": MetricSpec(bleu, True, "list[str]"),
    "rouge": MetricSpec(rouge_l, True, "str"),
    "exact_match": MetricSpec(exact_match, True, "str"),
    "vqa_accuracy": MetricSpec(vqa_accuracy, True, "list[str]"),
    "vqa_accuracy_official": MetricSpec(vqa_accuracy_official, True, "list[str]"),
    "accuracy": MetricSpec(accuracy, True, "label"),
    "f1": MetricSpec(macro_f1, True, "label"),
    "iou_accuracy": MetricSpec(iou_accuracy, True, "box"),
    "wer": MetricSpec(word_error_rate, False, "str"),
    "object_accuracy": MetricSpec(object_accuracy, True, "objects"),
}

# OFASys registers these metrics under other names.
METRIC_ALIASES: dict[str, str] = {"vqa_score": "vqa_accuracy", "iou_acc": "iou_accuracy", "f_measure": "f1"}


def _resolve(name: Any) -> MetricSpec:
    if not isinstance(name, str):
        raise TypeError(f"metric names must be str, got {type(name).__name__}")
    spec = METRICS.get(METRIC_ALIASES.get(name, name))
    if spec is None:
        known = ", ".join(sorted(METRICS.keys() | METRIC_ALIASES.keys()))
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}")
    return spec


def compute_metrics(
    names: str | Iterable[str], predictions: Iterable[Any], references: Iterable[Any]
) -> dict[str, float]:
    """Compute the named metrics of [`METRICS`] (or their OFASys aliases) on one set of predictions.

    Args:
        names (`str | Iterable[str]`): one metric name or several.
        predictions (`Iterable`): one prediction per example (str, label or box, per metric).
        references (`Iterable`): one reference per example; see each metric's `reference_type`.

    Returns:
        `dict[str, float]`: the score per name, keyed by the name as given.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no metric names given; known metrics: {', '.join(sorted(METRICS))}")
    specs = {name: _resolve(name) for name in names}  # every name is checked before any work is done
    predictions, references = list(predictions), list(references)
    _check_pairs(predictions, references, "compute_metrics")
    results = {}
    for name, spec in specs.items():
        score = spec.fn(predictions, references)
        if math.isnan(score):
            raise ValueError(f"{name}: the score is NaN; check the inputs")
        results[name] = score
    return results


def malformed_boxes(answers: Sequence[Mapping[str, Any]]) -> int:
    """How many generated answers of a BOX task hold no box (the generation was not four `<bin_i>` tokens).

    They are scored as an empty box (IoU 0 with any reference); this count says how many there were, so a model that
    emits malformed boxes is not mistaken for one that only places them badly.
    """
    return sum(1 for answer in answers if answer.get("box", ()) is None)


def metric_function_name(metric: Any) -> str:
    """The name a user metric is logged under: an `evaluate` module's `name`, else the function's `__name__`."""
    name = getattr(metric, "name", None) if hasattr(metric, "compute") else getattr(metric, "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise ValueError(f"metric {metric!r} has no usable name: pass it in a mapping, metrics={{'my_metric': fn}}")
    return name


def score_metric_function(
    name: str, metric: Any, predictions: Sequence[Any], references: Sequence[Any]
) -> dict[str, float]:
    """Run one user metric: a callable `fn(predictions, references)` or an object with `.compute(predictions=...,
    references=...)` (an `evaluate` module).

    Returns:
        `dict[str, float]`: `{name: score}` for a number; for a mapping, each numeric entry as `name_key` (`name`
        itself for the entry named like the metric), other entries (lists, strings) left out.
    """
    if hasattr(metric, "compute"):
        result = metric.compute(predictions=list(predictions), references=list(references))
    else:
        result = metric(list(predictions), list(references))
    if isinstance(result, Mapping):
        scores = {
            name if key == name else f"{name}_{key}": float(value)
            for key, value in result.items()
            if isinstance(value, Real) and not isinstance(value, bool)
        }
        if not scores:
            raise ValueError(f"metric {name!r} returned no numeric score: {result!r}")
        return scores
    if isinstance(result, bool) or not isinstance(result, Real):
        raise TypeError(f"metric {name!r} must return a number or a mapping of numbers, got {type(result).__name__}")
    return {name: float(result)}
