"""The package as a user installs it: a built wheel (not an editable install), installed into a folder of its own, runs
the main job from a directory outside the source tree, demo config included (package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_SMOKE_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["modeling_ofa", "processing", "trainers", "setup.cfg", "pyproject.toml", "README.md"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the sources (the build writes build/ and egg-info next to what it builds), then
    `pip install --no-deps --target`: the packages as the wheel holds them, nothing else."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0 and any(
        hint in built.stderr for hint in ("No matching distribution", "Could not find a version", "NewConnectionError")
    ):
        pytest.skip(f"the build backend could not be fetched from the package index: {built.stderr[-500:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("ofa_hf-*.whl")
    target = work / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def test_installed_wheel_runs_the_main_job(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import modeling_ofa, processing, trainers.demo; print(trainers.demo.DEMO_CONFIG)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(installed)  # the wheel's package data, not the source tree
    script = tmp_path / "train.py"  # the command line, outside the source tree
    shutil.copy2(ROOT / "scripts" / "train.py", script)
    command = [sys.executable, str(script)]  # no config: the demo config the wheel carries
    for override in [*DEMO_SMOKE_OVERRIDES, "evaluation.require_above_chance=false", "output_dir=out"]:
        command += ["--set", override]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "clearly above chance" in done.stdout
    for name in ("model.safetensors", "results.md", "curves.png", "examples.png", "README.md"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "demo_data").is_dir() and not (ROOT / "out").exists()
