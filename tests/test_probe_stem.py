"""scripts/probe_image_stem.py as a user runs it: on a demo corpus, a fresh stem and a trained folder's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"test accuracy (\d\.\d\d) \(shape (\d\.\d\d)\) over 12 classes")


@pytest.mark.parametrize("frozen", [None, "random", "trained"])
def test_probe_prints_its_accuracies(demo_output, frozen):
    folder, _ = demo_output
    data = folder.parent.parent / "demo_data"
    extra = [] if frozen is None else ["--frozen", str(folder) if frozen == "trained" else frozen]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "probe_image_stem.py"), str(data), "--steps", "3", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    match = LINE.search(done.stdout)
    assert match, done.stdout
    exact, shape = map(float, match.groups())
    assert 0.0 <= exact <= shape <= 1.0  # an exact answer has the right shape
