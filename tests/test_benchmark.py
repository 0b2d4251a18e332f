"""`scripts/benchmark.py`: the quick run reports every figure in the documented JSON schema (timings unchecked)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"

FIGURES = (
    "train_step_vs_bart",
    "decode_flatness",
    "generate_vs_bart",
    "blocked_head_vs_plain",
    "image_stem_share",
    "preprocess_vs_train",
    "moe_modality_vs_dense",
    "moe_topk_vs_dense",
    "mfu",
    "checkpointing_memory",
    "multitask_vs_trainer",
    "onnx_vs_torch",
    "int8_vs_fp32",
    "image_generation",
    "port_logits_parity",
    "train_step_vs_port",
    "generate_vs_port",
    "caption_throughput_vs_port",
    "train_memory_vs_port",
    "compiled_vs_eager",
)
# Figures that need --reference-port or --compile, which the quick run leaves out.
OPT_IN = {
    "port_logits_parity": "--reference-port",
    "train_step_vs_port": "--reference-port",
    "generate_vs_port": "--reference-port",
    "caption_throughput_vs_port": "--reference-port",
    "train_memory_vs_port": "--reference-port",
    "compiled_vs_eager": "--compile",
}
RECORD_KEYS = {"value", "target", "meets_target", "reference_seconds", "measured_seconds", "details", "status"}
# The issue's targets, as the report must state them.
TARGETS = {
    "train_step_vs_bart": ("<=", 0.95),
    "decode_flatness": ("<=", 1.2),
    "generate_vs_bart": (">=", 1.05),
    "blocked_head_vs_plain": ("<=", 1.0),
    "preprocess_vs_train": (">=", 5.0),
    "moe_modality_vs_dense": ("<=", 1.15),
    "moe_topk_vs_dense": ("<=", 1.3),
    "mfu": (">=", 0.4),
    "checkpointing_memory": ("<=", 0.6),
    "multitask_vs_trainer": (">=", 0.95),
    "image_generation": ("<=", 1.2),
    "port_logits_parity": ("<=", 1e-4),
    "train_step_vs_port": ("<=", 0.77),
    "generate_vs_port": ("<=", 0.77),
    "caption_throughput_vs_port": (">=", 1.5),
}


def _load_script():
    spec = importlib.util.spec_from_file_location("ofa_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_module():
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick` run for the whole module: (report from --json, report from stdout, stderr)."""
    out = tmp_path_factory.mktemp("benchmark") / "out.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # One thread and no warm-up round: the run stays short and stable when other jobs share the cores.
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--warmup", "0", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), json.loads(done.stdout), done.stderr


def test_stdout_is_the_json_object_and_matches_the_file(quick_run):
    from_file, from_stdout, _ = quick_run
    assert from_stdout == from_file
    assert set(from_file) == {"machine", "settings", "figures"}


def test_every_figure_is_reported_in_order(quick_run, bench_module):
    figures = quick_run[0]["figures"]
    assert tuple(figures) == FIGURES
    assert tuple(bench_module.BENCHMARKS) == FIGURES


@pytest.mark.parametrize("name", FIGURES)
def test_figure_record_schema(quick_run, name):
    record = quick_run[0]["figures"][name]
    assert set(record) == RECORD_KEYS
    assert isinstance(record["details"], dict)
    expected_target = TARGETS.get(name)
    if expected_target is None:
        assert record["target"] is None
    else:
        assert record["target"] == {"op": expected_target[0], "value": expected_target[1]}
    status = record["status"]
    assert status == "ok" or status.startswith("unavailable: "), status
    if status == "ok":
        value = record["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0
        for key in ("reference_seconds", "measured_seconds"):
            assert isinstance(record[key], float) and record[key] > 0
        cpu_value = record["details"].get("cpu_time_value")
        assert cpu_value is None or (isinstance(cpu_value, float) and cpu_value > 0)
        if expected_target is None:
            assert record["meets_target"] is None
        else:
            op, threshold = expected_target
            assert record["meets_target"] is (value <= threshold if op == "<=" else value >= threshold)
    else:
        assert record["value"] is None and record["meets_target"] is None
        assert len(status) > len("unavailable: ")


def test_opt_in_figures_say_what_they_need(quick_run):
    figures = quick_run[0]["figures"]
    for name, flag in OPT_IN.items():
        assert figures[name]["status"].startswith("unavailable: ") and flag in figures[name]["status"], name
    assert quick_run[0]["settings"]["reference_port"] is None


def _fake_port(folder: Path) -> Path:
    """A stand-in for the port's folder: relative transformers imports and the config line transformers 5 breaks."""
    folder.mkdir(parents=True)
    (folder / "configuration_ofa.py").write_text(
        "from ...configuration_utils import PretrainedConfig\n\n\n"
        "class OFAConfig(PretrainedConfig):\n"
        "    model_type = 'ofa'\n\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        '        if self.forced_bos_token_id is None and kwargs.get("force_bos_token_to_be_generated", False):\n'
        "            self.forced_bos_token_id = self.bos_token_id\n"
    )
    (folder / "resnet.py").write_text("import torch.nn as nn\n")
    (folder / "modeling_ofa.py").write_text(
        "from ...modeling_utils import PreTrainedModel\nfrom .configuration_ofa import OFAConfig\n\n\n"
        "class OFAModel(PreTrainedModel):\n    config_class = OFAConfig\n"
    )
    return folder


def test_reference_port_is_loaded_from_a_patched_copy(tmp_path):
    checkout = tmp_path / "OFA"
    folder = _fake_port(checkout / "transformers" / "src" / "transformers" / "models" / "ofa")
    before = {path.name: path.read_text() for path in folder.iterdir()}
    code = (
        "import sys; from pathlib import Path; import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('bench', {str(SCRIPT)!r})\n"
        "bench = importlib.util.module_from_spec(spec); sys.modules['bench'] = bench; spec.loader.exec_module(bench)\n"
        f"port = bench.load_reference_port(Path({str(checkout)!r}))\n"
        "config = port.OFAConfig(bos_token_id=0)\n"
        "assert config.bos_token_id == 0 and port.OFAModel.config_class is port.OFAConfig\n"
        "print(port.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ofa_reference_port"]
    assert {path.name: path.read_text() for path in folder.iterdir()} == before  # the checkout is untouched


def test_reference_port_folder_without_the_port_is_a_usage_error(bench_module, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_module.main(["--reference-port", str(tmp_path), "--only", "train_step_vs_port"])
    assert exit_info.value.code == 2
    assert "modeling_ofa.py" in capsys.readouterr().err


def test_machine_and_settings(quick_run):
    report = quick_run[0]
    machine = report["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert machine["logical_cores"] >= 1 and machine["available_cores"] >= 1
    assert machine["torch_threads"] == 1
    assert machine["torch"] == torch.__version__
    assert {"transformers", "python", "platform"} <= set(machine)
    settings = report["settings"]
    assert settings["quick"] is True and settings["size"] == "tiny"
    assert settings["figures"] == list(FIGURES)
    assert settings["workload"]["repeats"] >= 1 and settings["workload"]["warmup"] == 0


def test_image_generation_measures_the_demo_and_the_run_size(quick_run):
    record = quick_run[0]["figures"]["image_generation"]
    assert record["status"] == "ok"
    details = record["details"]
    grid = quick_run[0]["settings"]["workload"]["image_code_grid"]
    assert details["grid"] == [grid, grid] and details["new_tokens"] == grid * grid
    assert details["code_image_size"] == 8 * grid
    sizes = {"demo", "tiny"}
    assert sizes <= set(details)
    for size in sizes:
        mode = details[size]
        assert mode["images_per_second"] > 0 and mode["images_per_cpu_second"] > 0
        code_s, text_s = mode["code_seconds"]["median"], mode["text_seconds"]["median"]
        assert mode["ratio"] == pytest.approx(code_s / text_s, rel=1e-3)
        assert mode["code_ms_per_token"] == pytest.approx(1000 * code_s / (grid * grid), rel=1e-3)
    # The demo model keeps its tokenizer's vocabulary, the published sizes OFA's.
    assert details["demo"]["vocab_size"] < details["tiny"]["vocab_size"] == 59457
    worst = max(sizes, key=lambda size: details[size]["ratio"])
    assert details["worst_mode"] == worst and record["value"] == pytest.approx(details[worst]["ratio"])
    assert details["cpu_time_value"] == max(details[size]["cpu_time_ratio"] for size in sizes)


def test_table_goes_to_stderr(quick_run):
    stderr = quick_run[2]
    # Progress lines read "name: status (seconds)"; table rows start with the bare name.
    table_rows = [line.split() for line in stderr.splitlines() if line.split() and line.split()[0] in FIGURES]
    assert sorted(row[0] for row in table_rows) == sorted(FIGURES)
    assert all(row[-1] == "ok" or "unavailable:" in row for row in table_rows)
    assert any(line.split()[:3] == ["figure", "value", "target"] for line in stderr.splitlines())


# ---------------------------------------------------------------------------------------------------------------
# In-process checks of the machinery (no model runs)
# ---------------------------------------------------------------------------------------------------------------


def test_interleaving_alternates_the_order(bench_module):
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench_module.interleaved_times(runs, repeats=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for values in times.values() for t in values)


def test_interleaving_rejects_zero_repeats(bench_module):
    with pytest.raises(ValueError, match="repeats"):
        bench_module.interleaved_times({"a": lambda: None}, repeats=0, warmup=0)


@pytest.mark.parametrize(
    "name, value, meets",
    [
        ("train_step_vs_bart", 0.95, True),
        ("train_step_vs_bart", 1.0, False),
        ("generate_vs_bart", 1.05, True),
        ("generate_vs_bart", 1.0, False),
        ("generate_vs_bart", 0.5, False),
        ("image_stem_share", 0.3, None),
    ],
)
def test_figure_judges_the_target(bench_module, name, value, meets):
    record = bench_module.figure(name, value, 1.0, value, {})
    assert record["meets_target"] is meets
    assert record["status"] == "ok"


def test_image_generation_calls_differ_only_in_the_code_mode(bench_module):
    from processing.image_generation import CodeTokenLogitsProcessor

    processor = bench_module.make_processor(32)
    calls = bench_module.image_generation_calls(processor, 256)
    (code_inputs, code_kwargs), (text_inputs, text_kwargs) = calls["code"], calls["text"]
    # The same prompt for both; the image is generated in code mode under the code constraint.
    assert torch.equal(code_inputs["input_ids"], text_inputs["input_ids"])
    assert code_inputs["code_masks"].tolist() == [True] and "code_masks" not in text_inputs
    assert any(isinstance(p, CodeTokenLogitsProcessor) for p in code_kwargs["logits_processor"])
    assert not text_kwargs.get("logits_processor")
    for kwargs in (code_kwargs, text_kwargs):
        assert kwargs["min_new_tokens"] == kwargs["max_new_tokens"] == 256
        assert kwargs["do_sample"] is True and kwargs["top_k"] == 256 and kwargs["num_return_sequences"] == 1


def test_image_generation_model_decodes_the_requested_grid(bench_module):
    config = bench_module.image_generation_model("demo", 16, vocab_size=1000).config
    assert config.code_image_size == 128 and config.image_bucket_size >= 16 and config.vocab_size == 1000


@pytest.mark.parametrize("name", ["generate_vs_bart", "generate_vs_port"])
def test_worst_mode_follows_the_targets_direction(bench_module, name):
    # generate_vs_bart is a speed-up (>=, the smallest is worst); generate_vs_port a time ratio (<=, the largest).
    worst = "slow"
    ratios = {"fast": 1.0, "slow": 0.5} if name == "generate_vs_bart" else {"fast": 0.5, "slow": 1.0}
    modes = {
        mode: {
            "ratio": r,
            "cpu_time_ratio": r,
            "ref": {"median": 2.0},
            "got": {"median": 3.0 if mode == worst else 1.0},
        }
        for mode, r in ratios.items()
    }
    record = bench_module._worst_mode_figure(name, modes, {"batch": 1}, "ref", "got")
    assert record["value"] == ratios[worst] and record["details"]["worst_mode"] == worst
    assert record["measured_seconds"] == 3.0 and record["reference_seconds"] == 2.0
    assert record["details"]["cpu_time_value"] == ratios[worst] and record["details"]["batch"] == 1
    assert record["details"][worst] == modes[worst]


def test_unavailable_and_error_figures_are_recorded(bench_module, monkeypatch):
    def missing(bench):
        raise bench_module.Unavailable("piece not written")

    def broken(bench):
        raise RuntimeError("boom")

    monkeypatch.setitem(bench_module.BENCHMARKS, "onnx_vs_torch", missing)
    monkeypatch.setitem(bench_module.BENCHMARKS, "int8_vs_fp32", broken)
    bench = bench_module.Bench("tiny", bench_module.WORKLOADS["quick"], threads=1)
    figures = bench_module.run_benchmarks(["onnx_vs_torch", "int8_vs_fp32"], bench)
    assert figures["onnx_vs_torch"]["status"] == "unavailable: piece not written"
    assert figures["onnx_vs_torch"]["value"] is None
    assert figures["int8_vs_fp32"]["status"] == "error: RuntimeError: boom"
    assert "traceback" in figures["int8_vs_fp32"]["details"]


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--size", "huge"], ["--repeats", "0"]])
def test_bad_arguments_exit_with_usage_error(bench_module, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_module.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
