"""The user's own recipe through the real command line: no chance levels, so metrics without a verdict and exit 0;
where chance levels are known (demo tasks) and the recipe asks for it, a task not above chance fails the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "training.max_steps=2",
    "training.logging_steps=1",
    "training.per_device_train_batch_size=2",
    "training.save_strategy=no",
    "training.eval_strategy=no",
]


def train(tmp_path: Path, recipe: dict, *overrides: str) -> subprocess.CompletedProcess:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), str(path)]
    for override in overrides:
        command += ["--set", override]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_own_data_recipe_reports_metrics_without_a_verdict_and_exits_0(tmp_path):
    from processing import train_demo_tokenizer

    rows = {"text": ["a red circle", "a blue square"] * 4, "label": ["red", "blue"] * 4}
    splits = {name: datasets.Dataset.from_dict(rows) for name in ("train", "validation", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    corpus = ["a red circle a blue square red blue"] * 5
    tokenizer = train_demo_tokenizer(corpus, vocab_size=300, num_codes=8, num_bins=20)
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    recipe = {
        "output_dir": "out",
        "tokenizer": {"path": "tok"},
        "model": {"preset": "tiny"},
        "processor": {"image_size": 32, "max_image_size": 32},
        "tasks": [
            {
                "name": "color",
                "instruction": "[TEXT:text] -> [TEXT:label]",
                "data": {"path": "data"},
                "metrics": ["exact_match", "bleu"],
            }
        ],
        "evaluation": {"require_above_chance": True},  # nothing to check: no chance level is known
    }
    done = train(tmp_path, recipe, *TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("clearly above chance") :].splitlines()
    for row in table[2:4]:
        assert row.split()[0] == "color" and row.split()[-3:] == ["-", "-", "-"], row
    assert "NO" not in done.stdout and "not clearly above chance" not in done.stdout
    assert "reported without a verdict" in done.stdout
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(row["task"], row["metric"], row["beats_chance"]) for row in saved] == [
        ("color", "exact_match", False),
        ("color", "bleu", False),
    ]
    assert (tmp_path / "out" / "results.md").read_text().splitlines()[2].endswith("| - | - |")


def test_demo_task_not_above_chance_fails_the_run_when_asked(tmp_path):
    recipe = {
        "output_dir": "out",
        "data": {"demo": {"root": "demo_data", "sizes": {"train": 8, "validation": 2, "test": 4}, "tasks": ["itm"]}},
        "tokenizer": {"demo": {"vocab_size": 300, "num_codes": 8, "num_bins": 20}},
        "model": {"preset": "tiny"},
        "processor": {"image_size": 32, "max_image_size": 32},
        "tasks": [{"name": "itm", "data": "demo"}],
        "evaluation": {"require_above_chance": True},
    }
    done = train(tmp_path, recipe, *TINY)  # two steps: nowhere near clearly above chance on 4 test rows
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tasks not clearly above chance: ['itm']" in done.stdout
    done = train(tmp_path, recipe, *TINY, "evaluation.require_above_chance=false")
    assert done.returncode == 0, done.stderr[-3000:]
