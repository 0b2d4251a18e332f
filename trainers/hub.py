"""Hub-ready folders: model + processor + generation config + a model card built with `huggingface_hub.ModelCard`.

```python
from trainers.hub import save_hub_folder, push_hub_folder

save_hub_folder(model, processor, "out/ofa-demo", repo_id="me/ofa-demo",
                results={"caption": {"cider": 1.02}, "vqa": {"vqa_accuracy": 0.71}},
                datasets={"caption": "HuggingFaceM4/COCO"})
push_hub_folder("out/ofa-demo", "me/ofa-demo")  # or: python scripts/push_to_hub.py out/ofa-demo me/ofa-demo
```

A push uploads exactly `hub_files(folder)` (configs, weights, the saved code, processor and tokenizer files, the card,
results and plots), never training state such as `checkpoints/`, and the uploaded card names the repo it is pushed to.

The folder is what `model.save_pretrained` and `processor.save_pretrained` write (`config.json`,
`model.safetensors`, `generation_config.json`, `processor_config.json`, tokenizer files), plus `README.md`: YAML
metadata (library, tags, pipeline tag, license, datasets, metrics, and a `model-index` with one result per task and
metric) and a body listing every task with its instruction and closed set, the results, and runnable usage snippets.
The tasks come from `processor.task_instructions` (saved in `processor_config.json`, so the published model carries
its instructions); `tasks=` adds or overrides some for the saved copy without touching the processor passed in.

The usage snippets name the model by a `model_id = "..."` line; `run_usage_snippets` runs them against a local folder
(offline) by pointing that line at the folder, which is how the tests check that a published card works.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from transformers.dynamic_module_utils import get_relative_imports

from modeling_ofa import OFAConfig, OFAPreTrainedModel
from processing.answers import target_kind
from processing.instruction import Slot, Template, parse_instruction

__all__ = [
    "HUB_PIPELINE_TAGS",
    "HUB_TAGS",
    "MODEL_PIPELINE_TAG",
    "REQUIRED_FILES",
    "build_model_card",
    "build_standard_pipeline_snippet",
    "build_usage_snippets",
    "extract_usage_snippets",
    "hub_files",
    "point_card_at",
    "push_hub_folder",
    "results_from_metrics",
    "run_usage_snippets",
    "save_hub_folder",
    "task_pipeline_tag",
    "validate_hub_folder",
    "write_model_card",
]

GENERATED_IMAGES = "generated.png"
"""A folder's grid of generated images (written by the demo), shown on its card."""

HUB_TAGS: tuple[str, ...] = ("ofa", "ofa-hf", "multimodal", "seq2seq")
"""Tags every card gets (before the modality tags and the user's own)."""

# Hub pipeline tag of a task, by its main input modality and the kind of its target. Text-like inputs (STRUCT tables
# are linearized to text) count as TEXT. Pairs not listed are "any-to-any".
_TASK_PIPELINE_TAGS: dict[tuple[str, str], str] = {
    ("TEXT", "text"): "text-generation",
    ("TEXT", "codes"): "text-to-image",
    ("TEXT", "image"): "text-to-image",
    ("IMAGE", "text"): "image-text-to-text",
    ("IMAGE", "box"): "zero-shot-object-detection",
    ("IMAGE", "objects"): "object-detection",
    ("IMAGE", "codes"): "image-to-image",
    ("IMAGE", "image"): "image-to-image",
    ("AUDIO", "text"): "automatic-speech-recognition",
    ("VIDEO", "text"): "video-text-to-text",
}
MODEL_PIPELINE_TAG = "image-text-to-text"
"""The card's `pipeline_tag`: the standard transformers pipeline every OFA model runs (`pipeline("image-text-to-text",
model=...)`: images and a free prompt, or a prompt alone, to text). The per-task tags above only type the
`model-index` results: transformers 5 has no pipeline for OFA's other tasks (`any-to-any` needs torchvision and a
multimodal-LM output contract; boxes and codes come from `pipeline("ofa-instruction")`)."""
HUB_PIPELINE_TAGS: frozenset[str] = frozenset(_TASK_PIPELINE_TAGS.values()) | {"any-to-any"}
"""Every pipeline tag a generated card may carry."""

# Which input modality names a task, most specific first; the others are text to the model.
_MAIN_INPUT_ORDER: tuple[str, ...] = ("VIDEO", "AUDIO", "MOTION", "IMAGE")
_MODALITY_TAGS: dict[str, str] = {"IMAGE": "image", "AUDIO": "audio", "VIDEO": "video", "MOTION": "motion"}
_MODALITY_TAGS.update(STRUCT="table", BOX="visual-grounding", IMAGE_CODE="image-generation")

REQUIRED_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json"),
    ("generation_config.json",),
    ("processor_config.json",),
    ("tokenizer.json", "tokenizer_config.json"),
    ("README.md",),
)
"""Files a Hub folder must hold; each entry is satisfied by any of its names."""

HUB_FILE_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.py", "*.md", "*.png", "*.txt", "*.jinja", "*.model")
"""What a Hub repo holds, by name, at the folder's top level: configs (model, generation, processor, tokenizer),
weights, the model's and processor's code (`auto_map`), the card, results and plots, tokenizer vocabularies."""
TRAINING_STATE_FILES: frozenset[str] = frozenset(
    {"trainer_state.json", "multitask_schedule.json", "checkpoint_complete.json"}
)
"""Training state that matches `HUB_FILE_PATTERNS` but is never published (optimizer, scheduler, RNG and pickled
training arguments never match: `*.pt`, `*.pth`, `*.bin`; `checkpoints/` and other subfolders are never uploaded)."""


# Inputs the usage snippet builds for each encoder slot, by modality: Python expressions, stand-ins the reader replaces
# with real data.
_EXAMPLES: dict[str, str] = {
    "TEXT": '"two dogs play in the snow"',
    "CATEGORY": '"dog"',
    "PHONE": '"t uw d ao g z"',
    "IMAGE": 'Image.new("RGB", (384, 384), "white")',
    "BOX": "[32.0, 48.0, 256.0, 320.0]",
    "AUDIO": '{"array": np.sin(np.linspace(0, 4000, 16000)).astype(np.float32), "sampling_rate": 16000}',
    "VIDEO": "np.zeros((8, 224, 224, 3), dtype=np.uint8)",
    "STRUCT": '[["name", "color"], ["ball", "red"]]',
    "MOTION": "np.zeros((16, 22, 3), dtype=np.float32)",
    "IMAGE_CODE": "[0, 1, 2, 3]",
}
# An expression that uses the prefix needs the import.
_IMPORT_HINTS: dict[str, str] = {"np.": "import numpy as np", "Image.": "from PIL import Image"}

_CITATION = """\
@inproceedings{wang2022ofa,
  title     = {{OFA}: Unifying Architectures, Tasks, and Modalities Through a Simple Sequence-to-Sequence Learning
               Framework},
  author    = {Wang, Peng and Yang, An and Men, Rui and Lin, Junyang and Bai, Shuai and Li, Zhikang and Ma, Jianxin
               and Zhou, Chang and Zhou, Jingren and Yang, Hongxia},
  booktitle = {International Conference on Machine Learning},
  year      = {2022}
}"""

_MODEL_ID_LINE = re.compile(r'^model_id = ".*"(?P<comment>\s*#.*)?$', re.MULTILINE)
_USAGE_HEADING = "## Usage"


# ---------------------------------------------------------------------------------------------------------------------
# Tasks: kinds and pipeline tags


def _tag_kind(template: Template) -> str:
    """The template's target kind (`processing.answers.TARGET_KINDS`) as the Hub tags see it: a closed-set label is
    generated text there."""
    if template.target_slot is None:
        raise ValueError(f"the instruction {template.text!r} has no target slot after '->'")
    kind = target_kind(template.target_slot)
    return "text" if kind == "label" else kind


def _source_slots(template: Template) -> list[Slot]:
    """The template's encoder data slots, one per column, in order."""
    seen: dict[str, Slot] = {}
    for slot in template.slots:
        if slot.is_source and not slot.is_plaintext:
            seen.setdefault(slot.column, slot)
    return list(seen.values())


def _main_input(template: Template) -> str:
    modalities = {slot.modality for slot in _source_slots(template)}
    return next((m for m in _MAIN_INPUT_ORDER if m in modalities), "TEXT")


def task_pipeline_tag(instruction: str) -> str:
    """The Hub pipeline tag of one task (from its first template): e.g. `image-text-to-text` for captioning."""
    template = parse_instruction(instruction).templates[0]
    return _TASK_PIPELINE_TAGS.get((_main_input(template), _tag_kind(template)), "any-to-any")


def _modality_tags(tasks: Mapping[str, str]) -> list[str]:
    modalities = {m for instruction in tasks.values() for m in parse_instruction(instruction).modalities}
    return sorted({_MODALITY_TAGS[m] for m in modalities if m in _MODALITY_TAGS})


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_tasks(tasks: Any) -> dict[str, str]:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("tasks must be a non-empty mapping of task name -> instruction")
    for name, instruction in tasks.items():
        if not isinstance(name, str) or not name or not isinstance(instruction, str):
            raise TypeError(f"tasks: {name!r} -> {instruction!r} is not a task name -> instruction string")
        try:
            parse_instruction(instruction)
        except ValueError as err:
            raise ValueError(f"tasks[{name!r}] is not a valid instruction: {err}") from err
    return dict(tasks)


def _check_results(results: Any, tasks: Mapping[str, str]) -> dict[str, dict[str, float]]:
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise TypeError(f"results must map task -> {{metric: value}}, got {type(results).__name__}")
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        if task not in tasks:
            raise ValueError(f"results has task {task!r}, which is not one of the tasks {sorted(tasks)}")
        if not isinstance(metrics, Mapping) or not metrics:
            raise TypeError(f"results[{task!r}] must be a non-empty mapping of metric -> value")
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"results[{task!r}][{metric!r}] = {value!r} is not a finite number")
        out[task] = {str(metric): float(value) for metric, value in metrics.items()}
    return out


def _check_datasets(datasets: Any, tasks: Mapping[str, str]) -> dict[str, str]:
    if datasets is None:
        return {}
    if not isinstance(datasets, Mapping):
        raise TypeError(f"datasets must map task -> Hub dataset id, got {type(datasets).__name__}")
    unknown = sorted(set(datasets) - set(tasks))
    if unknown:
        raise ValueError(f"datasets names tasks {unknown} that are not among the tasks {sorted(tasks)}")
    bad = {t: d for t, d in datasets.items() if not isinstance(d, str) or not d}
    if bad:
        raise TypeError(f"datasets: ids must be non-empty strings, got {bad}")
    return dict(datasets)


def results_from_metrics(
    metrics: Mapping[str, Any],
    tasks: Iterable[str],
    prefix: str = "eval",
    exclude: Iterable[str] = ("loss", "skipped"),
) -> dict[str, dict[str, float]]:
    """Trainer-style flat metrics (`eval_caption_cider`, `eval_snli_ve_accuracy`) -> `{task: {metric: value}}`.

    Keys are `{prefix}_{task}_{metric}` (as `MultiTaskTrainer.evaluate` returns them); the longest matching task name
    wins (task names may contain `_`). Keys of no task (`eval_loss`, `eval_runtime`), bookkeeping entries named in
    `exclude` (a task's token loss, its count of skipped rows) and non-numeric values are left out.
    """
    exclude = set(exclude)
    names = sorted(set(tasks), key=len, reverse=True)
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not key.startswith(f"{prefix}_"):
            continue
        rest = key[len(prefix) + 1 :]
        task = next((t for t in names if rest.startswith(f"{t}_") and len(rest) > len(t) + 1), None)
        if task is not None and rest[len(task) + 1 :] not in exclude:
            out.setdefault(task, {})[rest[len(task) + 1 :]] = float(value)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Usage snippets


def _row_lines(template: Template, example_inputs: Mapping[str, str]) -> tuple[list[str], set[str]]:
    """Lines of the snippet's `row = {...}` (one per encoder column) and the imports they need."""
    lines, imports = [], set()
    for slot in _source_slots(template):
        expression = example_inputs.get(slot.column, _EXAMPLES[slot.modality])
        imports.update(line for prefix, line in _IMPORT_HINTS.items() if prefix in expression)
        lines.append(f"    {slot.column!r}: {expression},  # your {slot.modality.lower()}")
    return lines, imports


def _prompt_task(template: Template) -> str | None:
    """The prompt of an `[IMAGE:x] <prompt text> -> [TEXT:y]` template (what `pipeline("image-text-to-text")` asks
    with `text=`), else None."""
    encoder, target = list(template.encoder), template.target_slot
    if not isinstance(target, Slot) or target.modality != "TEXT" or len(encoder) != 2:
        return None
    image, prompt = encoder
    if not (isinstance(image, Slot) and image.modality == "IMAGE" and isinstance(prompt, Slot) and prompt.is_plaintext):
        return None
    return prompt.text


def build_standard_pipeline_snippet(model_id: str, prompt: str) -> str:
    """A runnable snippet of the standard `pipeline("image-text-to-text")` (the card's `pipeline_tag`) on one image."""
    return (
        "\n".join(
            [
                "import processing  # noqa: F401  (pip install ofa-hf) registers OFA; or pass trust_remote_code=True",
                "from PIL import Image",
                "from transformers import pipeline",
                "",
                f"model_id = {json.dumps(model_id)}  # a Hub repo id or a local folder",
                'pipe = pipeline("image-text-to-text", model=model_id)',
                f"image = {_EXAMPLES['IMAGE']}  # your image",
                f"print(pipe(images=image, text={prompt!r}, return_full_text=False, max_new_tokens=32))",
            ]
        )
        + "\n"
    )


def build_usage_snippets(
    model_id: str,
    task: str,
    instruction: str,
    *,
    closed_set: bool = False,
    example_inputs: Mapping[str, str] | None = None,
) -> list[str]:
    """Two runnable snippets for one task: through `pipeline("ofa-instruction")`, and with processor + model.

    Args:
        model_id (`str`): Hub repo id (or folder) the snippets load.
        task (`str`): A task name saved in the processor.
        instruction (`str`): Its instruction (the snippets build an input row for its first template).
        closed_set (`bool`): The processor holds a closed set for the task (the direct snippet constrains to it).
        example_inputs (`Mapping[str, str]`, *optional*): Python expressions for some input columns, replacing the
            per-modality stand-ins.
    """
    template = parse_instruction(instruction).templates[0]
    row, imports = _row_lines(template, dict(example_inputs or {}))
    registration = [
        "import modeling_ofa  # noqa: F401  (pip install ofa-hf) registers OFA with transformers' Auto classes",
        "import processing  # noqa: F401  registers OFA's processor and the ofa-instruction pipeline",
        *sorted(imports),
    ]
    row_block = ["row = {", *row, "}"]
    model_line = f"model_id = {json.dumps(model_id)}  # a Hub repo id or a local folder"

    pipeline_snippet = [
        *registration,
        "from transformers import pipeline",
        "",
        model_line,
        'ofa = pipeline("ofa-instruction", model=model_id)',
        *row_block,
        f"print(ofa(row, instruction={task!r}, num_beams=5))  # the task's instruction is saved with the model",
    ]
    closed = (
        [
            f"candidates = processor.closed_sets[{task!r}]",
            'closed_set = [processor.closed_set_logits_processor(candidates, example["meta"]["prefix_length"])]',
        ]
        if closed_set
        else ["candidates, closed_set = None, []"]
    )
    direct_snippet = [
        *registration,
        "from transformers import AutoModelForSeq2SeqLM, AutoProcessor",
        "",
        model_line,
        "processor = AutoProcessor.from_pretrained(model_id)",
        "model = AutoModelForSeq2SeqLM.from_pretrained(model_id).eval()",
        *row_block,
        f"example = processor.encode({task!r}, row)  # token ids, pixels, ... and the meta post-processing needs",
        *closed,
        "generated = model.generate(",
        "    **processor.collate([example]), logits_processor=closed_set, num_beams=5, max_new_tokens=32",
        ")",
        f'print(processor.post_process_generation(generated, {task!r}, [example["meta"]], candidates=candidates))',
    ]
    return ["\n".join(pipeline_snippet) + "\n", "\n".join(direct_snippet) + "\n"]


def extract_usage_snippets(readme: str) -> list[str]:
    """The ```` ```python ```` blocks of a card's `## Usage` section."""
    start = readme.find(f"\n{_USAGE_HEADING}\n")
    if start < 0:
        return []
    section = readme[start + len(_USAGE_HEADING) + 2 :]
    following = re.search(r"^## ", section, re.MULTILINE)
    section = section[: following.start()] if following else section
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)]


# Runs snippets (a JSON list on stdin) one after the other in one interpreter, each in a fresh namespace, and prints
# their captured outputs as a JSON list after a marker line; a failing snippet exits with its traceback on stderr.
_SNIPPET_DRIVER = """
import contextlib, io, json, sys, traceback
outputs = []
for index, code in enumerate(json.load(sys.stdin)):
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, f"usage snippet {index}", "exec"), {"__name__": "__main__"})
    except BaseException:
        sys.stderr.write(f"usage snippet {index} failed:\\n" + traceback.format_exc())
        sys.exit(1)
    outputs.append(buffer.getvalue())
print("@@snippet-outputs@@")
print(json.dumps(outputs))
"""


def _offline_hub_cache(folder: Path, repo_id: str, root: Path) -> Path:
    """A Hub cache under `root` in which `repo_id` holds what a push of `folder` uploads, so that `from_pretrained(
    repo_id)` resolves offline exactly as it would after the push (no files but `hub_files`, the card pointed at it)."""
    cache = root / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in hub_files(folder):
        if name == "README.md":
            (snapshot / name).write_text(point_card_at((folder / name).read_text(encoding="utf-8"), repo_id))
        else:
            shutil.copyfile(folder / name, snapshot / name)
    return cache


def run_usage_snippets(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    isolated: bool = False,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run the card's usage snippets, offline, in a fresh Python process (`HF_HUB_OFFLINE=1`).

    With `repo_id`, the snippets run verbatim, naming `repo_id`, against an offline Hub cache in which `repo_id` holds
    exactly what `push_hub_folder(folder, repo_id)` would upload: the check that the published card works. Without it,
    every snippet's `model_id = "..."` line is pointed at `folder` itself.

    Args:
        folder: A Hub folder with a `README.md`.
        repo_id (`str`, *optional*): The repo the folder is (or will be) pushed to.
        isolated (`bool`, defaults to `False`): One process per snippet. By default the snippets share one process
            (each in a fresh namespace), which saves an interpreter start and the imports per snippet.
        timeout (`float`): Seconds per process.
        env (`Mapping[str, str]`, *optional*): Extra environment variables.

    Returns:
        `list[str]`: each snippet's standard output. A failing snippet raises `RuntimeError` with its traceback.
    """
    folder = Path(folder).resolve()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    snippets = extract_usage_snippets(point_card_at(readme, repo_id) if repo_id else readme)
    if not snippets:
        raise ValueError(f"{folder / 'README.md'} has no python block under {_USAGE_HEADING!r}")
    target = repo_id or str(folder)
    codes = []
    for index, snippet in enumerate(snippets):
        code, count = _MODEL_ID_LINE.subn(lambda m: f"model_id = {json.dumps(target)}{m['comment'] or ''}", snippet)
        if count != 1:
            raise ValueError(f"usage snippet {index} must set model_id exactly once, found {count} times")
        codes.append(code)
    with tempfile.TemporaryDirectory(prefix="ofa-snippets-") as scratch:
        environment = {**os.environ, **(env or {}), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if repo_id:
            environment["HF_HUB_CACHE"] = str(_offline_hub_cache(folder, repo_id, Path(scratch)))
            environment["HF_MODULES_CACHE"] = str(Path(scratch) / "modules")
        outputs = []
        for batch in [[code] for code in codes] if isolated else [codes]:
            done = subprocess.run(
                [sys.executable, "-c", _SNIPPET_DRIVER],
                input=json.dumps(batch),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=environment,
                cwd=scratch,  # not the caller's folder: a snippet must not depend on what lies beside it
            )
            if done.returncode != 0:
                raise RuntimeError(f"a usage snippet failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            outputs += json.loads(done.stdout.rsplit("@@snippet-outputs@@\n", 1)[1])
    return outputs


# ---------------------------------------------------------------------------------------------------------------------
# The card


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def _model_table(config: OFAConfig | None, num_parameters: int | None) -> list[str]:
    if config is None:
        return []
    rows = [
        ("parameters", f"{num_parameters / 1e6:.1f}M" if num_parameters else None),
        ("d_model", str(config.d_model)),
        ("layers (encoder / decoder)", f"{config.encoder_layers} / {config.decoder_layers}"),
        ("attention heads", str(config.encoder_attention_heads)),
        ("vocabulary", str(config.vocab_size)),
        ("image stem", config.resnet_type),
        ("extra modalities", ", ".join(config.extra_modalities) or None),
        ("feed-forward", "dense" if config.moe_type == "none" else f"{config.moe_type} mixture of experts"),
    ]
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows if value is not None), ""]


def build_model_card(
    tasks: Mapping[str, str],
    *,
    model_name: str,
    repo_id: str | None = None,
    results: Mapping[str, Mapping[str, float]] | None = None,
    datasets: Mapping[str, str] | None = None,
    closed_sets: Mapping[str, Sequence[str]] | None = None,
    config: OFAConfig | None = None,
    num_parameters: int | None = None,
    description: str | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    language: str | list[str] | None = None,
    tags: Iterable[str] = (),
    pipeline_tag: str | None = None,
    usage_task: str | None = None,
    example_inputs: Mapping[str, str] | None = None,
    generated_images: str | None = None,
) -> ModelCard:
    """A Hub model card (`huggingface_hub.ModelCard`) for an OFA model trained on `tasks`.

    Args:
        tasks (`Mapping[str, str]`): Task name -> instruction, in the order to list them.
        model_name (`str`): Title of the card and name of the `model-index` entry.
        repo_id (`str`, *optional*): Repo the usage snippets load; defaults to `"your-username/{model_name}"`.
        results (`Mapping[str, Mapping[str, float]]`, *optional*): Task -> metric -> value (see `results_from_metrics`).
        datasets (`Mapping[str, str]`, *optional*): Task -> Hub dataset id it was trained and evaluated on.
        closed_sets (`Mapping[str, Sequence[str]]`, *optional*): Task -> candidate answers (from the processor).
        config (`OFAConfig`, *optional*): Adds a table of the architecture.
        num_parameters (`int`, *optional*): Shown in that table.
        description (`str`, *optional*): A paragraph under the title.
        base_model (`str`, *optional*): Repo id of the checkpoint this one was fine-tuned from.
        license, language, tags: Card metadata (`tags` come after `HUB_TAGS` and the modality tags).
        pipeline_tag (`str`, *optional*): Defaults to `MODEL_PIPELINE_TAG`, the standard pipeline that runs OFA.
        usage_task (`str`, *optional*): The task the usage snippets run; defaults to the first.
        example_inputs (`Mapping[str, str]`, *optional*): Python expressions for the snippets' input columns.
        generated_images (`str`, *optional*): Path, relative to the card, of a PNG grid of generated images (shown
            under the results; `write_model_card` passes `generated.png` when the folder has one).
    """
    tasks = _check_tasks(tasks)
    results = _check_results(results, tasks)
    datasets = _check_datasets(datasets, tasks)
    closed_sets = {task: list(values) for task, values in (closed_sets or {}).items() if task in tasks}
    usage_task = usage_task if usage_task is not None else next(iter(tasks))
    if usage_task not in tasks:
        raise ValueError(f"usage_task={usage_task!r} is not one of the tasks {sorted(tasks)}")
    repo_id = repo_id or f"your-username/{model_name}"
    pipeline_tag = pipeline_tag or MODEL_PIPELINE_TAG

    data = _card_data(tasks, results, datasets, model_name, pipeline_tag, license, language, tags, base_model)
    body = [f"# {model_name}", "", description or _default_description(len(tasks)), ""]
    model_table = _model_table(config, num_parameters)
    if model_table:
        body += ["## Model", "", *model_table]
    body += _task_sections(tasks, datasets, closed_sets)
    body += _results_section(results, datasets, generated_images)
    body += _usage_sections(repo_id, usage_task, tasks, closed_sets, example_inputs)
    body += ["## Citation", "", "```bibtex", _CITATION, "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def _card_data(
    tasks: Mapping[str, str],
    results: Mapping[str, Mapping[str, float]],
    datasets: Mapping[str, str],
    model_name: str,
    pipeline_tag: str,
    license: str,
    language: str | list[str] | None,
    tags: Iterable[str],
    base_model: str | None,
) -> ModelCardData:
    """The card's YAML metadata: tags, datasets, metrics and one `model-index` entry per (task, metric)."""
    eval_results = [
        EvalResult(
            task_type=task_pipeline_tag(tasks[task]),
            task_name=task,
            dataset_type=datasets.get(task, task),
            dataset_name=datasets.get(task, task),
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for task, metrics in results.items()
        for metric, value in metrics.items()
    ]
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        language=language,
        tags=list(dict.fromkeys([*HUB_TAGS, *_modality_tags(tasks), *tags])),
        datasets=sorted(set(datasets.values())) or None,
        metrics=sorted({metric for metrics in results.values() for metric in metrics}) or None,
        base_model=base_model,
        eval_results=eval_results or None,
    )


def _default_description(num_tasks: int) -> str:
    return (
        f"An [OFA](https://github.com/OFA-Sys/OFA) encoder-decoder trained with "
        f"ofa-hf on {num_tasks} task{'s' if num_tasks != 1 else ''}, each declared by a "
        "one-line OFASys instruction. Load it with `AutoModelForSeq2SeqLM` and `AutoProcessor` after "
        "`import modeling_ofa, processing` (`pip install ofa-hf`), or without the package with "
        "`trust_remote_code=True` (the folder carries the model's and processor's code), or run it with "
        '`pipeline("ofa-instruction")` or the standard `pipeline("image-text-to-text")`.'
    )


def _task_sections(
    tasks: Mapping[str, str], datasets: Mapping[str, str], closed_sets: Mapping[str, Sequence[str]]
) -> list[str]:
    """ "## Tasks": each task's instruction, dataset link and (the first 20 of) its closed set."""
    body = ["## Tasks", "", "Each task is an instruction saved in `processor_config.json`; pass its name.", ""]
    for task, instruction in tasks.items():
        body += [f"### `{task}`", "", "```text", instruction, "```", ""]
        if task in datasets:
            body += [f"Dataset: [{datasets[task]}](https://huggingface.co/datasets/{datasets[task]})", ""]
        if task in closed_sets:
            shown = ", ".join(f"`{c}`" for c in closed_sets[task][:20])
            more = f" and {len(closed_sets[task]) - 20} more" if len(closed_sets[task]) > 20 else ""
            body += [f"Closed set ({len(closed_sets[task])} answers): {shown}{more}", ""]
    return body


def _results_section(
    results: Mapping[str, Mapping[str, float]], datasets: Mapping[str, str], generated_images: str | None
) -> list[str]:
    """ "## Results" (a row per task and metric) and "## Generated images" when the folder has a grid."""
    body = []
    if results:
        body += ["## Results", "", "| task | dataset | metric | value |", "|---|---|---|---|"]
        for task, metrics in results.items():
            for metric, value in metrics.items():
                body.append(f"| `{task}` | {datasets.get(task, '-')} | {metric} | {_format_number(value)} |")
        body.append("")
    if generated_images is not None:
        alt = "Images generated by the model beside the reference pictures"
        body += ["## Generated images", "", f"![{alt}]({generated_images})", ""]
    return body


def _usage_sections(
    repo_id: str,
    usage_task: str,
    tasks: Mapping[str, str],
    closed_sets: Mapping[str, Sequence[str]],
    example_inputs: Mapping[str, str] | None,
) -> list[str]:
    """The usage snippets: the OFA pipeline, the processor and model, and the standard pipeline with a free prompt."""
    pipeline_snippet, direct_snippet = build_usage_snippets(
        repo_id,
        usage_task,
        tasks[usage_task],
        closed_set=usage_task in closed_sets,
        example_inputs=example_inputs,
    )
    body = [
        _USAGE_HEADING,
        "",
        f"With the pipeline (`{usage_task}` shown; any task above works the same way):",
        "",
        "```python",
        pipeline_snippet.rstrip("\n"),
        "```",
        "",
        "With the processor and the model (what the pipeline does):",
        "",
        "```python",
        direct_snippet.rstrip("\n"),
        "```",
        "",
    ]
    prompts = [(task, _prompt_task(parse_instruction(tasks[task]).templates[0])) for task in tasks]
    task_prompt = next(((task, prompt) for task, prompt in prompts if prompt is not None), None)
    if task_prompt is not None:
        body += [
            f"With the standard `image-text-to-text` pipeline and a free prompt (`{task_prompt[0]}`'s prompt shown;"
            " the answer is free text, without closed sets or boxes):",
            "",
            "```python",
            build_standard_pipeline_snippet(repo_id, task_prompt[1]).rstrip("\n"),
            "```",
            "",
        ]
    return body


# ---------------------------------------------------------------------------------------------------------------------
# Folders


def _motion_example(config: OFAConfig, processor: Any) -> str | None:
    """A MOTION stand-in of the shape the model takes: (frames, joints, coords) from the feature size."""
    motion = processor.motion
    if config.motion_feature_size is None:
        return None
    joints = config.motion_feature_size // (motion.num_coords * motion.frames_per_token)
    return f"np.zeros((16, {joints}, {motion.num_coords}), dtype=np.float32)"


def save_hub_folder(
    model: Any,
    processor: Any,
    out_dir: str | os.PathLike,
    *,
    tasks: Mapping[str, str] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    results: Mapping[str, Mapping[str, float]] | None = None,
    datasets: Mapping[str, str] | None = None,
    example_inputs: Mapping[str, str] | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write a complete Hub folder: model (safetensors), generation config, processor, tokenizer and `README.md`.

    Args:
        model (`OFAForConditionalGeneration`): The model (a merged one for LoRA: `peft_model.merge_and_unload()`).
        processor (`OFAProcessor`): Its processor.
        out_dir: The folder (created if needed).
        tasks (`Mapping[str, str]`, *optional*): Task name -> instruction, added to (or overriding) the processor's
            `task_instructions` in the saved copy. At least one task is needed in all.
        repo_id (`str`, *optional*): The repo the card's snippets load.
        model_name (`str`, *optional*): Defaults to the last part of `repo_id`, else the folder name.
        results, datasets: Per-task metrics and dataset ids (see `build_model_card`).
        example_inputs (`Mapping[str, str]`, *optional*): Python expressions for the snippets' input columns.
        card_kwargs: Other `build_model_card` arguments (`description`, `base_model`, `language`, `tags`, ...).

    Returns:
        `Path`: the folder, checked with `validate_hub_folder`.
    """
    if not isinstance(model, OFAPreTrainedModel):
        raise TypeError(
            f"save_hub_folder needs an OFA model, got {type(model).__name__}; for a PEFT model pass "
            "model.merge_and_unload() (a standalone model), or publish the adapter with model.save_pretrained"
        )
    out_dir = Path(out_dir)
    all_tasks = {**processor.task_instructions, **dict(tasks or {})}
    _check_tasks(all_tasks)
    _check_results(results, all_tasks)
    _check_datasets(datasets, all_tasks)
    if all_tasks != processor.task_instructions:
        processor = copy.copy(processor)  # the caller's processor keeps its own task table
        processor.task_instructions = all_tasks
    model_name = model_name or (repo_id.rsplit("/", 1)[-1] if repo_id else out_dir.resolve().name)
    examples = dict(example_inputs or {})
    motion = _motion_example(model.config, processor)
    usage_task = card_kwargs.get("usage_task") or next(iter(all_tasks))
    if motion is not None and usage_task in all_tasks:
        for slot in _source_slots(parse_instruction(all_tasks[usage_task]).templates[0]):
            if slot.modality == "MOTION":
                examples.setdefault(slot.column, motion)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _add_auto_map_entries(out_dir / "config.json")
    processor.save_pretrained(out_dir)
    card = build_model_card(
        all_tasks,
        model_name=model_name,
        repo_id=repo_id,
        results=results,
        datasets=datasets,
        closed_sets=processor.closed_sets,
        config=model.config,
        num_parameters=model.num_parameters(),
        example_inputs=examples,
        **{"generated_images": GENERATED_IMAGES if (out_dir / GENERATED_IMAGES).is_file() else None, **card_kwargs},
    )
    card.save(out_dir / "README.md")
    validate_hub_folder(out_dir)
    return out_dir


# Auto classes a published folder's saved code also serves (`save_pretrained` names one per class): the base model, and
# the model `pipeline("image-text-to-text", trust_remote_code=True)` loads where the package is not installed.
_EXTRA_AUTO_MAP = {
    "AutoModel": "modeling_ofa.OFAModel",
    "AutoModelForImageTextToText": "modeling_ofa.OFAForConditionalGeneration",
}


def _add_auto_map_entries(config_file: Path) -> None:
    config = json.loads(config_file.read_text(encoding="utf-8"))
    auto_map = config.get("auto_map")
    if not auto_map or not (config_file.parent / "modeling_ofa.py").is_file():
        return  # a model without saved code (not registered for auto classes): nothing to point at
    config["auto_map"] = {**_EXTRA_AUTO_MAP, **auto_map}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def write_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    results: Mapping[str, Mapping[str, float]] | None = None,
    datasets: Mapping[str, str] | None = None,
    **card_kwargs: Any,
) -> Path:
    """(Re)write `README.md` of a folder that already holds a saved model and processor (e.g. a training output).

    The tasks and closed sets are read from the folder's `processor_config.json`, the architecture from `config.json`.

    Returns:
        `Path`: the `README.md` written.
    """
    folder = Path(folder)
    processor_config = folder / "processor_config.json"
    if not processor_config.is_file():
        raise FileNotFoundError(f"{processor_config} not found: save the processor into the folder first")
    saved = json.loads(processor_config.read_text(encoding="utf-8"))
    tasks = saved.get("task_instructions") or {}
    if not tasks:
        raise ValueError(f"{processor_config} has no task_instructions: the card needs at least one task")
    config = OFAConfig.from_pretrained(folder)
    card = build_model_card(
        tasks,
        model_name=model_name or (repo_id.rsplit("/", 1)[-1] if repo_id else folder.resolve().name),
        repo_id=repo_id,
        results=results,
        datasets=datasets,
        closed_sets=saved.get("closed_sets") or {},
        config=config,
        num_parameters=_count_parameters(folder),
        **{"generated_images": GENERATED_IMAGES if (folder / GENERATED_IMAGES).is_file() else None, **card_kwargs},
    )
    card.save(folder / "README.md")
    return folder / "README.md"


def _auto_map_modules(config: Any) -> set[str]:
    """Local module names of every `auto_map` in a (nested) config: `"module.Class"` -> `"module"`; code in another
    repo (`"repo--module.Class"`) is not the folder's."""
    modules: set[str] = set()
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key == "auto_map" and isinstance(value, Mapping):
                for reference in value.values():
                    for item in reference if isinstance(reference, (list, tuple)) else [reference]:
                        if isinstance(item, str) and "--" not in item:
                            modules.add(item.rsplit(".", 1)[0])
            else:
                modules |= _auto_map_modules(value)
    return modules


def validate_hub_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Check a Hub folder offline: required files, card metadata, `model-index`, tasks and usage snippets.

    Returns:
        `dict`: the card's metadata. Every problem found is listed in one `ValueError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    problems = [
        f"missing {' or '.join(names)}" for names in REQUIRED_FILES if not any((folder / n).is_file() for n in names)
    ]
    readme = folder / "README.md"
    if not readme.is_file():
        raise ValueError(f"{folder} is not a complete Hub folder: " + "; ".join(problems))
    try:
        card = ModelCard.load(readme)
    except ValueError as err:  # malformed YAML or model-index
        raise ValueError(f"{readme}: the card's metadata does not parse: {err}") from err
    metadata = card.data.to_dict()
    for key, expected in (("library_name", "transformers"), ("license", None), ("pipeline_tag", None)):
        if not metadata.get(key):
            problems.append(f"card metadata has no {key}")
        elif expected is not None and metadata[key] != expected:
            problems.append(f"card metadata {key} is {metadata[key]!r}, expected {expected!r}")
    if metadata.get("pipeline_tag") and metadata["pipeline_tag"] not in HUB_PIPELINE_TAGS:
        problems.append(f"pipeline_tag {metadata['pipeline_tag']!r} is not one of {sorted(HUB_PIPELINE_TAGS)}")
    if "ofa" not in (metadata.get("tags") or []):
        problems.append("card metadata tags lack 'ofa'")
    for name in ("config.json", "processor_config.json"):  # the code an auto_map names is part of the repo
        if (folder / name).is_file():
            pending = sorted(_auto_map_modules(json.loads((folder / name).read_text(encoding="utf-8"))))
            seen: set[str] = set()
            while pending:  # each named module and the modules it imports relatively
                module = pending.pop()
                if module in seen:
                    continue
                seen.add(module)
                if not (folder / f"{module}.py").is_file():
                    problems.append(f"{name}: its auto_map needs {module}.py, which the folder lacks")
                    continue
                pending += get_relative_imports(str(folder / f"{module}.py"))

    tasks: dict[str, str] = {}
    processor_config = folder / "processor_config.json"
    if processor_config.is_file():
        tasks = json.loads(processor_config.read_text(encoding="utf-8")).get("task_instructions") or {}
        if not tasks:
            problems.append("processor_config.json has no task_instructions")
    for task in tasks:
        if f"### `{task}`" not in card.text:
            problems.append(f"the card does not list task {task!r}")
    for result in card.data.eval_results or []:
        if result.task_name not in tasks:
            problems.append(f"model-index result for unknown task {result.task_name!r}")
    snippets = extract_usage_snippets(card.content)
    if not snippets:
        problems.append(f"the card has no python block under {_USAGE_HEADING!r}")
    for index, snippet in enumerate(snippets):
        if len(_MODEL_ID_LINE.findall(snippet)) != 1:
            problems.append(f"usage snippet {index} does not set model_id exactly once")
        try:
            compile(snippet, f"README.md usage snippet {index}", "exec")
        except SyntaxError as err:
            problems.append(f"usage snippet {index} is not valid Python: {err}")
    if problems:
        raise ValueError(f"{folder} is not a valid Hub folder:\n- " + "\n- ".join(problems))
    return metadata


def hub_files(folder: str | os.PathLike) -> list[str]:
    """The files of a Hub folder that make up its Hub repo, sorted: what `push_hub_folder` uploads.

    Top-level files matching `HUB_FILE_PATTERNS` (configs, weights, code, card, results, plots, tokenizer files), except
    `TRAINING_STATE_FILES` and hidden files. Subfolders (a training run's `checkpoints/`) are never part of it.
    """
    folder = Path(folder)
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.name not in TRAINING_STATE_FILES
        and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in HUB_FILE_PATTERNS)
    )


def point_card_at(readme: str, repo_id: str) -> str:
    """The card text with every usage snippet's `model_id = "..."` line naming `repo_id` (comments kept)."""
    return _MODEL_ID_LINE.sub(lambda m: f"model_id = {json.dumps(repo_id)}{m['comment'] or ''}", readme)


def push_hub_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload OFA model",
    create_pr: bool = False,
) -> str:
    """Validate a Hub folder, create the repo if needed, and upload its Hub files (`hub_files`) in one commit.

    Only the files `hub_files` lists are uploaded, never training state or subfolders such as `checkpoints/`. The card
    is uploaded with its usage snippets naming `repo_id` (`point_card_at`), so they run once the repo exists; the
    folder itself is not modified.

    Args:
        folder: A folder written by `save_hub_folder` (or checked by `validate_hub_folder`).
        repo_id (`str`): `"user/name"` or `"org/name"`.
        private (`bool`, *optional*): Visibility of a newly created repo.
        token (`str`, *optional*): Defaults to the logged-in token (`HF_TOKEN` or `hf auth login`).
        revision, commit_message, create_pr: As `huggingface_hub.HfApi.create_commit`.

    Returns:
        `str`: the commit URL.
    """
    validate_hub_folder(folder)
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}")
    folder = Path(folder)
    operations = []
    for name in hub_files(folder):
        content: str | bytes = str(folder / name)
        if name == "README.md":
            content = point_card_at((folder / name).read_text(encoding="utf-8"), repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
    )
    return str(commit.commit_url)
