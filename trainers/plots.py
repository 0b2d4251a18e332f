"""Pictures of a run: `curves.png` (training and validation curves) and `examples.png` (what the model answers).

`curves.png` has one panel per kind of number, since a WER of 3 and an accuracy of 0.3 cannot share an axis: the
per-task training loss, then one panel per metric kind (`metric_kind`: accuracy-like scores in [0, 1], WER, ROUGE-L,
BLEU, CIDEr), each task's chance level as a dashed line in the task's colour, and the MoE experts' shares of tokens
when the run logged them. A task has the same colour in every panel.

`examples.png` shows a few test examples per task, one row per task: the input as the model sees it (images upscaled
with the reference box in green and the predicted one in orange, a spectrogram for audio, the frames side by side for
video, the table for table QA, the joints' tracks for motion, the text for text) with the model's answer beside the
reference.

matplotlib (the training extra) is imported by the drawing functions only.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import curve_series

__all__ = ["Example", "curve_figure", "examples_figure", "metric_kind", "plot_curves", "plot_examples"]

ACCURACY_LIKE = "accuracy-like (exact match, accuracy, Acc@0.5, object accuracy)"
# metric -> panel; any other metric is accuracy-like (a share of hits in [0, 1]).
_KINDS = {
    "wer": "word error rate (lower is better)",
    "rouge": "ROUGE-L F",
    "bleu": "BLEU (0-100)",
    "cider": "CIDEr",
}
# Diagnostics logged beside the metrics (counts, not scores): not drawn.
_NOT_DRAWN = {"skipped", "malformed_boxes", "runtime", "samples_per_second", "steps_per_second"}
_EXPERT_SHARE = re.compile(r"moe/(expert_\d+)_fraction_mean")


def metric_kind(metric: str) -> str:
    """The `curves.png` panel of a metric: metrics of one kind share a scale."""
    return _KINDS.get(metric, ACCURACY_LIKE)


def _colors(tasks: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(tasks) <= 10 else "tab20"]
    return {task: palette(index % palette.N) for index, task in enumerate(tasks)}


def curve_figure(
    log_history: Sequence[Mapping[str, Any]], tasks: Sequence[str], chance: Mapping[str, float] | None = None
) -> Any:
    """The `curves.png` figure (a matplotlib `Figure`), see the module docstring.

    Args:
        log_history: `trainer.state.log_history` (or the entries of the run's JSON-lines log).
        tasks: The run's task names (keys are split by `report.split_metric_key`).
        chance: `{"<task> <metric>": chance level}`; each is drawn as a dashed line (gid `"chance <task> <metric>"`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    chance = chance or {}
    losses, metrics = curve_series(log_history, tasks)
    metrics = {name: points for name, points in metrics.items() if name.split(" ", 1)[1] not in _NOT_DRAWN}
    shares: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            match = _EXPERT_SHARE.fullmatch(key)
            if match and "step" in entry and isinstance(value, (int, float)):
                shares.setdefault(match.group(1).replace("_", " "), []).append((entry["step"], float(value)))

    kinds: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, points in metrics.items():
        kinds.setdefault(metric_kind(name.split(" ", 1)[1]), {})[name] = points
    order = [ACCURACY_LIKE, *_KINDS.values()]
    panels: list[tuple[str, Any]] = [("training loss per task (token cross-entropy)", losses)]
    panels += [(kind, kinds[kind]) for kind in order if kind in kinds]
    if shares:
        panels.append(("MoE: share of tokens per expert (mean over blocks)", shares))

    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.2 * rows + 0.8), squeeze=False)
    colors = _colors(tasks)
    metric_panels = set(kinds)
    for ax, (title, series) in zip(axes.flat, panels):
        is_metric = title in metric_panels
        for name, points in sorted(series.items()):
            task = name.split(" ", 1)[0]
            color = colors.get(task)
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o" if is_metric else None, markersize=3, color=color, label=name)
            if is_metric and math.isfinite(chance.get(name, math.nan)):
                line = ax.axhline(chance[name], color=color, linestyle="--", linewidth=1.2, alpha=0.8)
                line.set_gid(f"chance {name}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if is_metric:
            ax.set_ylabel("validation " + ("error" if "lower is better" in title else "score"))
        if series is not losses:  # the loss panel's tasks are in the figure legend
            ax.legend(fontsize=7, ncol=2, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[t], label=t) for t in tasks]
    handles.append(Line2D([], [], color="gray", linestyle="--", label="chance level (per task, its colour)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (4.2 * rows + 0.8), 1, 1))
    return fig


def plot_curves(
    log_history: Sequence[Mapping[str, Any]],
    path: str | Path,
    tasks: Sequence[str],
    chance: Mapping[str, float] | None = None,
) -> Path:
    """Draw `curve_figure` into a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = curve_figure(log_history, tasks, chance)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Example:
    """One test example to draw: its row, what the model answered and the reference (as the metrics see them).

    Args:
        task: Task name.
        instruction: The task's instruction (its source slots say which columns are inputs).
        row: The dataset row.
        prediction: The model's answer (`Task.prediction`): a string, a box `[x0, y0, x1, y1]` in the image's
            pixels, or a list of `{"box", "label"}` objects.
        reference: The reference, in the same form.
    """

    task: str
    instruction: str
    row: Mapping[str, Any]
    prediction: Any
    reference: Any


def _answer_text(value: Any) -> str:
    if isinstance(value, str):
        return value or "(empty)"
    if isinstance(value, Mapping) and "box" in value:
        return f"{value.get('label', '')} {_answer_text(value['box'])}".strip()
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(f"{v:.0f}" for v in value) + "]"
    if isinstance(value, (list, tuple)):
        return "; ".join(_answer_text(v) for v in value) or "(none)"
    return str(value)


def _boxes(value: Any) -> list[tuple[list[float], str]]:
    """(box, label) pairs of a box answer or an object list (malformed ones left out)."""
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return [(list(value), "")]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, Mapping) and isinstance(item.get("box"), (list, tuple)) and len(item["box"]) == 4:
                out.append((list(item["box"]), str(item.get("label", ""))))
        return out
    return []


def _draw_input(ax: Any, example: Example, sources: Sequence[Any]) -> tuple[list[str], str]:
    """Draw the example's non-text input into `ax`; returns the text inputs (printed under it) and a note on what
    is drawn (for the panel's title)."""
    import numpy as np
    import PIL.Image
    from matplotlib.patches import Rectangle

    texts, drawn, note = [], False, ""
    for slot in sources:
        value = example.row.get(slot.column)
        if slot.modality == "TEXT":
            texts.append(f"{slot.column}: {value}")
        elif slot.modality == "IMAGE" and isinstance(value, PIL.Image.Image):
            width, height = value.size
            scale = max(1, 256 // max(width, height))  # nearest-neighbour upscaling keeps the pixels visible
            ax.imshow(
                value.convert("RGB").resize((width * scale, height * scale), PIL.Image.NEAREST),
                extent=(0, width, height, 0),
            )
            for boxes, color in ((_boxes(example.reference), "limegreen"), (_boxes(example.prediction), "orange")):
                for (x0, y0, x1, y1), label in boxes:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=2.5))
                    if label:
                        ax.text(x0, y0 - 1, label, color=color, fontsize=7, va="bottom", fontweight="bold")
            drawn = True
        elif slot.modality == "VIDEO" and isinstance(value, (list, tuple)) and value:
            frames = [np.asarray(frame.convert("RGB")) for frame in value]
            gap = np.full((frames[0].shape[0], 2, 3), 255, dtype=np.uint8)
            strip = np.concatenate([part for frame in frames for part in (frame, gap)][:-1], axis=1)
            ax.imshow(strip, interpolation="nearest")
            note = f"{len(frames)} frames, left to right"
            drawn = True
        elif slot.modality == "AUDIO" and isinstance(value, Mapping) and "array" in value:
            samples = np.asarray(value["array"], dtype=np.float32)
            rate = int(value.get("sampling_rate", 16000))
            ax.specgram(samples, Fs=rate, NFFT=256, noverlap=192, cmap="magma")
            ax.set_ylim(0, 2000)  # the DTMF tones of the demo lie below 1.7 kHz
            note = "spectrogram, 0-2 kHz over time (s)"
            drawn = True
        elif slot.modality == "STRUCT" and isinstance(value, (list, tuple)) and value:
            table = ax.table(
                cellText=[list(map(str, r)) for r in value[1:]], colLabels=list(map(str, value[0])), loc="center"
            )
            table.auto_set_font_size(False)
            table.set_fontsize(8)
            table.scale(1, 1.4)
            drawn = True
        elif slot.modality == "MOTION" and value is not None:
            motion = np.asarray(value, dtype=np.float32)  # (frames, joints, 2), y up
            if motion.ndim == 3 and motion.shape[-1] >= 2:
                for joint in range(motion.shape[1]):
                    ax.plot(motion[:, joint, 0], motion[:, joint, 1], marker=".", markersize=3, linewidth=1)
                ax.plot(motion[0, :, 0], motion[0, :, 1], "k+", markersize=6)
                ax.set_aspect("equal", adjustable="datalim")
                note = "joint tracks over the frames (+: first frame)"
                drawn = True
    ax.tick_params(labelsize=6)
    if not drawn or any(s.modality in ("IMAGE", "VIDEO", "STRUCT") for s in sources):
        ax.set_xticks([])
        ax.set_yticks([])
    if not drawn or any(s.modality == "STRUCT" for s in sources):
        # No frame around text or a table; not `axis("off")`, which would hide the answers (the x label) too.
        for spine in ax.spines.values():
            spine.set_visible(False)
    if any(s.modality == "IMAGE" for s in sources):
        boxed = _boxes(example.reference) or _boxes(example.prediction)
        note = "upscaled; green: reference box, orange: model's" if boxed else "upscaled"
    return texts, note


def examples_figure(examples: Sequence[Example], per_task: int = 3) -> Any:
    """The `examples.png` figure: a row per task, `per_task` examples per row (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from processing import parse_instruction

    by_task: dict[str, list[Example]] = {}
    for example in examples:
        if len(by_task.setdefault(example.task, [])) < per_task:
            by_task[example.task].append(example)
    if not by_task:
        raise ValueError("examples_figure: no examples to draw")
    rows, columns = len(by_task), max(len(v) for v in by_task.values())
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.9 * rows), squeeze=False)
    for row_axes, (task, items) in zip(axes, by_task.items()):
        for ax, example in zip(row_axes, items):
            template = parse_instruction(example.instruction).templates[0]
            sources = [slot for slot in template.slots if slot.is_source and slot.column]
            texts, note = _draw_input(ax, example, sources)
            right = _answer_text(example.prediction) == _answer_text(example.reference)
            lines = [textwrap.shorten(t, 70) for t in texts]
            text_only = all(slot.modality == "TEXT" for slot in sources)
            if text_only:  # the input is the text itself: shown in the panel, wrapped
                ax.text(
                    0.5,
                    0.5,
                    "\n".join(textwrap.wrap(" | ".join(texts), 42)),
                    ha="center",
                    va="center",
                    fontsize=8,
                    transform=ax.transAxes,
                )
                lines = []
            lines.append(f"model: {textwrap.shorten(_answer_text(example.prediction), 48)}")
            lines.append(f"reference: {textwrap.shorten(_answer_text(example.reference), 44)}")
            ax.set_title(f"{task}" + (f" ({note})" if note else ""), fontsize=8, loc="left")
            # Under the panel, as its x label: tight_layout then keeps it clear of the next row.
            ax.set_xlabel("\n".join(lines), fontsize=9, loc="left", color="darkgreen" if right else "firebrick")
        for ax in row_axes[len(items) :]:
            ax.set_visible(False)
    fig.suptitle("Test examples: the model's answer beside the reference (green when they are equal, red when not)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_figheight()), h_pad=1.5)
    return fig


def plot_examples(examples: Sequence[Example], path: str | Path, per_task: int = 3) -> Path:
    """Draw `examples_figure` into a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = examples_figure(examples, per_task)
    path = Path(path)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
