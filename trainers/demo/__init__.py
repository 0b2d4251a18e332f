"""The offline demo: its synthetic multimodal corpus (`trainers.demo.corpus`) and its run config (`demo.yaml`).

The demo is an application of the library, not part of it: it lives beside the trainer (its detection score uses
`trainers.metrics`), so that `modeling_ofa` and `processing` import nothing above themselves. `demo.yaml` is package
data, found from an installed package too (`DEMO_CONFIG`); `configs/demo.yaml` in the source tree is the same file.
"""

from importlib import resources
from pathlib import Path

from .corpus import (
    ACTIONS,
    COLORS,
    DEFAULT_SIZES,
    DEMO_TASK_NAMES,
    DEMO_TASKS,
    DEMO_VERSION,
    DIGIT_WORDS,
    DIRECTIONS,
    DTMF_FREQUENCIES,
    IMAGE_SIZE,
    JOINTS,
    MOTION_FRAMES,
    SAMPLING_RATE,
    SHAPES,
    SPLITS,
    VIDEO_FRAMES,
    DemoTask,
    build_demo_datasets,
    chance_baseline,
    demo_text_corpus,
    detection_accuracy,
    get_demo_task,
    load_demo_datasets,
    save_demo_datasets,
)

DEMO_CONFIG = Path(str(resources.files(__name__) / "demo.yaml"))
"""The demo's run config (`python scripts/train.py` with no config runs it)."""

__all__ = [
    "ACTIONS",
    "COLORS",
    "DEFAULT_SIZES",
    "DEMO_CONFIG",
    "DEMO_TASKS",
    "DEMO_TASK_NAMES",
    "DEMO_VERSION",
    "DIGIT_WORDS",
    "DIRECTIONS",
    "DTMF_FREQUENCIES",
    "IMAGE_SIZE",
    "JOINTS",
    "MOTION_FRAMES",
    "SAMPLING_RATE",
    "SHAPES",
    "SPLITS",
    "VIDEO_FRAMES",
    "DemoTask",
    "build_demo_datasets",
    "chance_baseline",
    "demo_text_corpus",
    "detection_accuracy",
    "get_demo_task",
    "load_demo_datasets",
    "save_demo_datasets",
]
