"""The README is a contract: its first commands are the ones CI and the demo run, and its Python snippets run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_first_commands_are_the_main_job_and_the_tests():
    main_job, tests = (block.strip() for block in fenced("bash")[:2])
    for command in (main_job, tests):
        assert command.startswith("pip install torch==2.13.0 && "), "fresh-machine commands pin the CPU torch first"
        assert README.index(command) < 800, "the fresh-machine commands must be in the README's first lines"
    assert main_job.endswith("python scripts/train.py")
    assert tests in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


def test_no_placeholders_left():
    assert "PLACEHOLDER" not in README


@pytest.fixture(scope="module")
def workdir(demo_output, tmp_path_factory) -> Path:
    """A fresh folder holding `outputs/demo` (a shortened demo run), where a reader runs the snippets."""
    folder = tmp_path_factory.mktemp("reader")
    (folder / "outputs").mkdir()
    (folder / "outputs" / "demo").symlink_to(demo_output[0], target_is_directory=True)
    return folder


@pytest.mark.parametrize("index", range(len(fenced("python"))))
def test_python_snippet_runs_alone(index, workdir):
    """Each snippet, exactly as written, in a fresh interpreter: a reader pastes one block, not the whole page."""
    code = fenced("python")[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"README.md python block {index} failed alone:\n{code}\n{done.stderr[-3000:]}"
