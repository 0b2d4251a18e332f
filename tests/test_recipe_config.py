"""Run configs (`scripts/train.py CONFIG --set ...`): every typo and every value of the wrong type is an error that
names the key (with a suggestion), found after the `--set` overrides and before anything is trained."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
sys.path.insert(0, str(ROOT / "scripts"))


def load(*overrides: str) -> dict:
    from trainers.recipe import load_config

    return load_config(DEMO, list(overrides))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("trainig.max_steps=2", r"unknown config section 'trainig' \(did you mean 'training'\?\)"),
        ("model.presett=tiny", r"unknown config key 'model\.presett' \(did you mean 'preset'\?\)"),
        ("sampling.temperatur=3", r"'sampling\.temperatur' \(did you mean 'temperature'\?\)"),
        ("evaluation.int_8=true", r"'evaluation\.int_8' \(did you mean 'int8'\?\)"),
        ("training.max_step=2", r"'training\.max_step' \(did you mean 'max_steps'\?\)"),
        ("model.overrides.dropuot=0.1", r"'model\.overrides\.dropuot' \(did you mean 'dropout'\?\)"),
        ("processor.image_sise=32", r"'processor\.image_sise' \(did you mean 'image_size'\?\)"),
        ("data.demo.scal=2", r"'data\.demo\.scal' \(did you mean 'scale'\?\)"),
        ("tokenizer.demo.vocab=300", r"'tokenizer\.demo\.vocab' \(did you mean 'vocab_size'\?\)"),
        ("hub.private=true", r"unknown config section 'hub'"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(override, match):
    with pytest.raises(ValueError, match=match):
        load(override)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("training.learning_rate=1e-3x", r"training\.learning_rate: expected a number, got '1e-3x'"),
        ("training.max_steps=true", r"training\.max_steps: expected an integer, got True"),
        ("training.max_steps=2.5", r"training\.max_steps: expected an integer, got 2\.5"),
        ("training.lr_scheduler_type=cosin", r"lr_scheduler_type: expected one of .*'cosine'.*\(did you mean 'cosine'"),
        ("sampling.temperature=hot", r"sampling\.temperature: expected a number, got 'hot'"),
        ("model.overrides.dropout=[0.1]", r"model\.overrides\.dropout: expected a number, got \[0\.1\]"),
        ("evaluation.int8=yes", r"evaluation\.int8: expected true or false, got 'yes'"),
        ("seed=abc", r"seed: expected an integer, got 'abc'"),
    ],
)
def test_values_are_type_checked_against_their_field(override, match):
    with pytest.raises(ValueError, match=match):
        load(override)


def test_values_are_parsed_and_converted_by_the_documented_rules(tmp_path):
    config = load("training.learning_rate=1e-3", "training.max_steps=1e2", "training.report_to=[]", "seed=7")
    assert config["training"]["learning_rate"] == 0.001 and config["training"]["max_steps"] == 100
    assert config["training"]["report_to"] == [] and config["seed"] == 7
    # YAML 1.1 reads 1e-3 (no dot) as a string: it becomes the number it spells.
    path = tmp_path / "c.yaml"
    path.write_text(DEMO.read_text().replace("learning_rate: 2.0e-4", "learning_rate: 2e-4"))
    from trainers.recipe import load_config

    assert load_config(path)["training"]["learning_rate"] == 2e-4
    # A task of the list, by index.
    config = load('tasks=[{"name": "caption", "data": "demo"}]', "tasks.0.num_beams=3")
    assert config["tasks"] == [{"name": "caption", "data": "demo", "num_beams": 3}]
    with pytest.raises(ValueError, match=r"task 'caption': .*'tasks\[0\]\.weigth' \(did you mean 'weight'\?\)"):
        load('tasks=[{"name": "caption", "data": "demo"}]', "tasks.0.weigth=2")
    with pytest.raises(ValueError, match=r"'tasks' has 1 entries, no entry 3"):
        load('tasks=[{"name": "caption", "data": "demo"}]', "tasks.3.weight=2")


def test_cli_rejects_a_typo_before_training(capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main([str(DEMO), "--set", "trainig.max_steps=2"])
    assert exit_info.value.code == 2
    assert "did you mean 'training'?" in capsys.readouterr().err


def test_empty_split_and_own_data_without_tokenizer(tmp_path):
    from processing import train_demo_tokenizer
    from trainers.recipe import load_config, run

    rows = {"text": ["a red circle", "a blue square"], "label": ["red", "blue"]}
    empty = {"text": [], "label": []}
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(empty)}
    )
    splits.save_to_disk(str(tmp_path / "data"))
    tokenizer = train_demo_tokenizer(["a red circle a blue square"] * 5, vocab_size=300, num_codes=8, num_bins=20)
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    task = {"name": "color", "instruction": "[TEXT:text] -> [TEXT:label]", "data": {"path": str(tmp_path / "data")}}
    config_path = tmp_path / "own.json"
    import json

    config_path.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "tasks": [task]}))
    with pytest.raises(ValueError, match=r"no data\.demo section; give tokenizer\.path"):
        load_config(config_path)
    config = load_config(config_path, [f"tokenizer.path={tmp_path / 'tok'}", "training.max_steps=1"])
    with pytest.raises(ValueError, match=r"task 'color': data\.path .*split 'test' is empty"):
        run(config)
    assert not (tmp_path / "out").exists()  # it stopped before building a model or a trainer


def test_fsdp_on_cpu_processes_is_refused_not_silently_ddp(monkeypatch, tmp_path):
    import torch

    from trainers.recipe import run

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: FSDP is set up")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    config = load(f"output_dir={tmp_path / 'out'}")
    with pytest.raises(ValueError, match="accelerate sets up FSDP only for GPU"):
        run(config)
