"""The README is a contract: its commands are the ones CI runs, and its Python snippets run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_first_command_is_the_one_ci_runs():
    first = fenced("bash")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in first, "the fresh-machine command must pin the CPU torch build first"
    assert first in ci, f".ci/run does not run the README command {first!r}"
    assert README.index(first) < 600, "the fresh-machine command must be in the README's first lines"


@pytest.mark.parametrize("index", range(len(fenced("python"))))
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = fenced("python")[index]
    namespace: dict = {"__name__": f"readme_snippet_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
