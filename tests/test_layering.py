"""The package layers: `modeling_ofa` < `processing` < `trainers` < `scripts`. A layer imports only from the layers
below it (anywhere in a file: at the top, in a function, under TYPE_CHECKING), `import modeling_ofa` loads only what
the model needs, and the demo config is package data."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["modeling_ofa", "processing", "trainers"]


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file; relative imports stay inside their package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def upward_imports(layer: str) -> list[str]:
    above = set(LAYERS[LAYERS.index(layer) + 1 :]) | {"scripts", "tests", "conftest"}
    return [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for package, line in imported_packages(path)
        if package in above
    ]


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_upward(layer):
    assert upward_imports(layer) == []


def test_the_walk_finds_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from trainers.metrics import METRICS\n    import scripts.train\n")
    assert {package for package, _ in imported_packages(bad)} == {"trainers", "scripts"}


def fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_import_modeling_ofa_loads_only_the_model():
    code = (
        "import sys, json, modeling_ofa\n"
        "heavy = ['peft', 'onnx', 'onnxruntime', 'processing', 'trainers', 'modeling_ofa.convert', 'modeling_ofa.onnx',"
        " 'modeling_ofa.peft_utils']\n"
        "loaded = [name for name in heavy if name in sys.modules]\n"
        "missing = [name for name in modeling_ofa.__all__ if not hasattr(modeling_ofa, name)]\n"
        "hidden = sorted(set(modeling_ofa.__all__) - set(dir(modeling_ofa)))\n"
        "print(json.dumps([loaded, missing, len(modeling_ofa.__all__), hidden]))\n"
    )
    loaded, missing, count, hidden = json.loads(fresh(code))
    assert loaded == [] and missing == [] and hidden == []
    assert count > 50


def test_lazy_names_are_the_submodules_objects():
    code = (
        "import modeling_ofa, modeling_ofa.onnx, modeling_ofa.convert\n"
        "print(modeling_ofa.export_onnx is modeling_ofa.onnx.export_onnx and "
        "modeling_ofa.convert_checkpoint is modeling_ofa.convert.convert_checkpoint)\n"
    )
    assert fresh(code) == "True"
    import modeling_ofa

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        modeling_ofa.nope  # noqa: B018


def test_peft_defaults_are_registered_when_peft_is_imported_after_the_model():
    pytest.importorskip("peft")
    check = (
        "from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets\n"
        "print('ofa' in targets)\n"
    )
    assert fresh("import sys, modeling_ofa\nassert 'peft' not in sys.modules\nimport peft\n" + check) == "True"
    assert fresh("import peft, modeling_ofa\n" + check) == "True"  # and in the other order


def test_import_processing_does_not_load_trainers():
    code = "import sys, processing\nprint([name for name in ('trainers', 'peft', 'onnx') if name in sys.modules])\n"
    assert fresh(code) == "[]"


def test_demo_config_is_package_data_and_the_configs_file_is_the_same():
    from trainers.demo import DEMO_CONFIG
    from trainers.recipe import load_config

    assert DEMO_CONFIG.is_file() and DEMO_CONFIG.parent == ROOT / "trainers" / "demo"
    assert (ROOT / "configs" / "demo.yaml").read_bytes() == DEMO_CONFIG.read_bytes()
    assert (ROOT / "configs" / "demo.yaml").resolve() == DEMO_CONFIG.resolve()  # one file, not a copy that drifts
    assert load_config(None) == load_config(ROOT / "configs" / "demo.yaml")
