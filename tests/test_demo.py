"""The main job, shortened: the demo config end to end, its output folder, and predict.py on that folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = [
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "README.md",
    "results.json",
    "results.md",
    "curves.png",
    "examples.png",
    "train_log.jsonl",
]


def test_demo_run_writes_every_artifact(demo_output):
    folder, results = demo_output
    for name in ARTIFACTS:
        assert (folder / name).is_file(), f"the demo output lacks {name}"
    from trainers.demo import DEMO_TASKS
    from trainers.demo.text_to_image import TEXT_TO_IMAGE_TASK

    tasks = {t.name for t in DEMO_TASKS} | {TEXT_TO_IMAGE_TASK}  # the corpus's ten and the demo's text-to-image
    assert {r.task for r in results} == tasks
    saved = json.loads((folder / "results.json").read_text())
    assert {row["task"] for row in saved} == tasks
    assert all(0.0 <= row["chance"] <= 1.0 for row in saved)
    assert all(0.0 <= row["int8_value"] <= 1.0 or row["metric"] == "wer" for row in saved)  # the int8 check ran
    card = (folder / "README.md").read_text()
    assert "model-index" in card and "chance" in card and "what does the image describe?" in card
    with Image.open(folder / "curves.png") as image:
        assert image.size[0] > 500
    with Image.open(folder / "examples.png") as image:
        assert image.size[1] > image.size[0]  # a row per task
    results_md = (folder / "results.md").read_text().splitlines()
    # Every column of the README table; a row per metric (text-to-image has two: scene match, tokenizer error).
    assert "| int8 |" in results_md[0] and len(results_md) == 2 + len(results)
    logged = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert any(key.startswith("moe/") for entry in logged for key in entry)  # router statistics: in the log file
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert set(processor_config["task_instructions"]) == tasks


def run_predict(folder: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "predict.py"), str(folder), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def scene(demo_output, tmp_path_factory) -> Path:
    from trainers.demo import load_demo_datasets

    data = load_demo_datasets(demo_output[0].parents[1] / "demo_data")
    path = tmp_path_factory.mktemp("inputs") / "scene.png"
    data["grounding"]["test"][0]["image"].save(path)
    return path


def test_predict_text_and_closed_set(demo_output, scene):
    folder = demo_output[0]
    assert isinstance(run_predict(folder, "--task", "caption", "--image", str(scene))["text"], str)
    answer = run_predict(folder, "--task", "itm", "--image", str(scene), "--text", "a red circle")
    assert answer["label"] in {"yes", "no"} and answer["in_set"] is True


def test_predict_box_is_drawn(demo_output, scene, tmp_path):
    png = tmp_path / "box.png"
    answer = run_predict(
        demo_output[0], "--task", "grounding", "--image", str(scene), "--text", "red circle", "--save-png", str(png)
    )
    assert "box" in answer and png.is_file()


def test_shipped_configs_load():
    from trainers.recipe import load_config

    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo["model"]["preset"] == "demo" and demo["evaluation"]["int8"] is True
    finetune = load_config(ROOT / "configs" / "finetune_caption.yaml", ["training.max_steps=5"])
    assert [task["name"] for task in finetune["tasks"]] == ["caption"]
    assert finetune["model"]["checkpoint"] == "outputs/demo" and finetune["training"]["max_steps"] == 5
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(ROOT / "configs" / "demo.yaml", ["no_equals_sign"])


def test_single_task_finetune_config_runs_from_the_demo_folder(demo_output, tmp_path):
    from conftest import DEMO_SMOKE_OVERRIDES

    from trainers.recipe import load_config, run

    folder = demo_output[0]
    # The smoke run's sizes and steps, not its tokenizer or the demo's text-to-image task: this recipe has neither.
    overrides = [o for o in DEMO_SMOKE_OVERRIDES if not o.startswith(("tokenizer.", "text_to_image="))]
    config = load_config(ROOT / "configs" / "finetune_caption.yaml", [*overrides, "training.max_steps=2"])
    config.update(output_dir=str(tmp_path / "ft"), tokenizer={"path": str(folder)})
    config["model"]["checkpoint"] = str(folder)
    config["data"]["demo"]["root"] = str(folder.parents[1] / "demo_data")
    results = run(config)
    assert [(r.task, r.metric) for r in results] == [("caption", "exact_match"), ("caption", "bleu")]
    assert (tmp_path / "ft" / "model.safetensors").is_file()
