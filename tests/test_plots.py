"""The run's pictures: `curves.png` (a panel per metric kind, chance lines per task) and `examples.png`."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("datasets")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from trainers.demo import DEMO_TASKS, build_demo_datasets  # noqa: E402
from trainers.plots import (  # noqa: E402
    ACCURACY_LIKE,
    Example,
    curve_figure,
    examples_figure,
    metric_kind,
    plot_curves,
    plot_examples,
)

TASKS = ["caption", "motion_class", "asr", "summarization"]


def history() -> list[dict]:
    entries = []
    for step in (10, 20, 30, 40):
        entries.append(
            {
                "step": step,
                "loss": 3.0 / step,
                **{f"loss_{task}": 2.0 / step for task in TASKS},
                "moe/expert_0_fraction_mean": 0.6,
                "moe/expert_1_fraction_mean": 0.4,
            }
        )
        entries.append(
            {
                "step": step,
                "eval_caption_exact_match": step / 40,
                "eval_motion_class_accuracy": step / 50,
                "eval_asr_wer": 4.0 / step,
                "eval_summarization_rouge": step / 45,
                "eval_caption_loss": 1.0,
                "eval_caption_skipped": 2.0,
                "eval_loss": 1.0,
                "eval_runtime": 3.0,
            }
        )
    return entries


def panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_metric_kinds_keep_scales_apart():
    assert metric_kind("wer") != metric_kind("accuracy") == metric_kind("exact_match") == ACCURACY_LIKE
    assert len({metric_kind(m) for m in ("wer", "rouge", "bleu", "cider", "iou_accuracy")}) == 5


def test_curves_have_a_panel_per_metric_kind_and_a_chance_line_per_task():
    chance = {"caption exact_match": 0.083, "motion_class accuracy": 0.25, "asr wer": 0.84, "summarization rouge": 0.45}
    fig = curve_figure(history(), TASKS, chance)
    by_title = panels(fig)
    assert list(by_title) == [
        "training loss per task (token cross-entropy)",
        ACCURACY_LIKE,
        metric_kind("wer"),
        metric_kind("rouge"),
        "MoE: share of tokens per expert (mean over blocks)",
    ]

    def curves(title):
        return sorted(line.get_label() for line in by_title[title].lines if line.get_gid() is None)

    def chances(title):
        return {line.get_gid(): line.get_ydata()[0] for line in by_title[title].lines if line.get_gid()}

    # Keys grouped by kind: the WER curve is alone on its axis, not beside the accuracies.
    assert curves(ACCURACY_LIKE) == ["caption exact_match", "motion_class accuracy"]
    assert curves(metric_kind("wer")) == ["asr wer"]
    assert curves("training loss per task (token cross-entropy)") == sorted(TASKS)
    assert chances(ACCURACY_LIKE) == {"chance caption exact_match": 0.083, "chance motion_class accuracy": 0.25}
    assert chances(metric_kind("wer")) == {"chance asr wer": 0.84}
    # A task has one colour: its curve and its chance line.
    lines = by_title[ACCURACY_LIKE].lines
    caption = next(line for line in lines if line.get_label() == "caption exact_match")
    caption_chance = next(line for line in lines if line.get_gid() == "chance caption exact_match")
    assert caption.get_color() == caption_chance.get_color()
    # Four evaluations, four points; diagnostics (skipped rows) and eval_loss are not drawn as metrics.
    assert len(caption.get_xdata()) == 4
    assert not any("skipped" in line.get_label() for ax in fig.axes for line in ax.lines)
    plt.close(fig)


def test_curves_without_chance_levels_or_moe(tmp_path):
    entries = [e for e in history() if "loss" not in e] + [{"step": 5, "loss": 1.0, "loss_caption": 1.0}]
    fig = curve_figure(entries, TASKS)
    assert "MoE: share of tokens per expert (mean over blocks)" not in panels(fig)
    assert not any(line.get_gid() for ax in fig.axes for line in ax.lines)
    plt.close(fig)
    path = plot_curves(entries, tmp_path / "curves.png", TASKS)
    with Image.open(path) as image:
        assert image.size[0] > 1000


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    data = build_demo_datasets(seed=0, sizes={"train": 1, "validation": 1, "test": 2})
    out = []
    for task in DEMO_TASKS:
        for index in range(2):
            row = data[task.name]["test"][index]
            if task.name == "detection":
                reference = [{"box": b, "label": label} for b, label in zip(row["boxes"], row["labels"])]
            else:
                reference = row[task.target]
            prediction = [v + 3 for v in reference] if task.name == "grounding" else reference
            out.append(Example(task.name, task.instruction, row, prediction, reference))
    return out


def test_examples_show_every_task_with_answers_and_readable_boxes(examples, tmp_path):
    fig = examples_figure(examples, per_task=2)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 * len(DEMO_TASKS)
    titles = [ax.get_title(loc="left") for ax in axes]
    assert [t.split(" ")[0] for t in titles[::2]] == [t.name for t in DEMO_TASKS]
    for ax in axes:
        assert "model: " in ax.get_xlabel() and "reference: " in ax.get_xlabel()
    grounding = axes[2 * [t.name for t in DEMO_TASKS].index("grounding")]
    boxes = [p for p in grounding.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2 and all(box.get_linewidth() >= 2 for box in boxes)  # reference and prediction
    image = grounding.get_images()[0]
    assert image.get_array().shape[0] >= 4 * 64  # upscaled, drawn in the original pixel coordinates
    assert tuple(image.get_extent()) == (0, 64, 64, 0)
    wrong = grounding.get_xlabel()
    assert grounding.xaxis.label.get_color() == "firebrick" and "[" in wrong  # the shifted box is not the reference
    audio = axes[2 * [t.name for t in DEMO_TASKS].index("asr")]
    assert audio.get_images() and "spectrogram" in audio.get_title(loc="left")
    table = axes[2 * [t.name for t in DEMO_TASKS].index("table_qa")]
    assert table.tables and "name: " in table.get_xlabel()
    plt.close(fig)
    with Image.open(plot_examples(examples, tmp_path / "examples.png", per_task=2)) as picture:
        assert picture.size[0] > 600 and picture.size[1] > 2000


def test_examples_need_examples():
    with pytest.raises(ValueError, match="no examples"):
        examples_figure([])
