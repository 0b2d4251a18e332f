"""The README is a contract: its first commands are the ones CI and the demo run, and its Python snippets run."""

from __future__ import annotations

import os
import re
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
def namespace(demo_output):
    """One namespace for all snippets (the README reads top to bottom), run where `outputs/demo` exists."""
    folder = demo_output[0]
    previous = os.getcwd()
    os.chdir(folder.parents[1])
    yield {"__name__": "readme"}
    os.chdir(previous)


@pytest.mark.parametrize("index", range(len(fenced("python"))))
def test_python_snippet_runs(index, namespace):
    code = fenced("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
