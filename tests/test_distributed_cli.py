"""The README's distributed commands, run as a user runs them: `torchrun` and `accelerate launch` over
`scripts/train.py` with a tiny recipe, on 2 CPU processes, with no extra flag.

The processes are real and the code under test is unchanged; a `sitecustomize` module on the workers' `PYTHONPATH`
only *records*, per rank, the world size and the micro-batches each rank trains on (by wrapping
`MultiTaskTrainer.training_step`, which it calls through) and which ranks write the Hub folder and the curves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
output_dir: out
seed: 0
data:
  demo: {root: demo_data, seed: 0, sizes: {train: 16, validation: 2, test: 4}, tasks: [caption, vqa]}
tokenizer:
  demo: {vocab_size: 300, num_codes: 16, num_bins: 64}
processor: {image_size: 32, max_image_size: 32, max_source_length: 64, max_target_length: 16}
model:
  preset: demo
  overrides: {d_model: 32, encoder_ffn_dim: 64, decoder_ffn_dim: 64, extra_modalities: [], moe_type: none,
              code_image_size: 32}
tasks:
  - {name: caption, data: demo}
  - {name: vqa, data: demo}
training:
  max_steps: 4
  per_device_train_batch_size: 2
  logging_steps: 2
  save_strategy: steps
  save_steps: 2
  disable_tqdm: true
  generation_num_beams: 1
  generation_max_length: 8
"""

RECORDER = """
import json, os

if "LOCAL_RANK" in os.environ:  # a worker of the launcher, not the launcher itself
    import trainers.hub
    import trainers.recipe
    from trainers.data import INFO_KEY
    from trainers.trainer import MultiTaskTrainer

    log = os.path.join(os.environ["OFA_RECORD"], f"rank{os.environ['RANK']}.jsonl")

    def record(**entry):
        with open(log, "a") as handle:
            handle.write(json.dumps(entry) + "\\n")

    training_step = MultiTaskTrainer.training_step

    def recording_step(self, model, inputs, num_items_in_batch=None):
        info = inputs[INFO_KEY]
        record(kind="batch", world_size=self.args.world_size, parallel_mode=str(self.args.parallel_mode),
               step=self.state.global_step, task=info.task, examples=list(info.example_indices))
        return training_step(self, model, inputs, num_items_in_batch)

    MultiTaskTrainer.training_step = recording_step

    def writer(module, name):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            record(kind="write", what=name)
            return original(*args, **kwargs)

        setattr(module, name, wrapped)

    writer(trainers.hub, "save_hub_folder")
    writer(trainers.recipe, "plot_curves")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launchers() -> dict[str, list[str]]:
    port = free_port()
    torchrun = shutil.which("torchrun") or ""
    accelerate = shutil.which("accelerate") or ""
    config = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"
    return {
        "torchrun": [torchrun, "--nproc_per_node", "2", "--master_port", str(port)],
        "accelerate": [accelerate, "launch", "--config_file", str(config), "--main_process_port", str(port)],
    }


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_readme_distributed_command_trains_data_parallel(tmp_path, launcher):
    command = launchers()[launcher]
    if not command[0]:
        pytest.skip(f"{launcher} is not installed")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    recorder = tmp_path / "recorder"
    recorder.mkdir()
    (recorder / "sitecustomize.py").write_text(RECORDER)
    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(recorder), os.environ.get("PYTHONPATH", "")) if p)
    env["OFA_RECORD"] = str(records)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [*command, str(ROOT / "scripts" / "train.py"), "recipe.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    ranks = [[json.loads(line) for line in (records / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    batches = [[e for e in rank if e["kind"] == "batch"] for rank in ranks]
    # Really data-parallel: both ranks see a world of 2 under DDP.
    assert {e["world_size"] for rank in batches for e in rank} == {2}
    assert {e["parallel_mode"] for rank in batches for e in rank} == {"ParallelMode.DISTRIBUTED"}
    # The identical task sequence, each rank on its own shard (disjoint examples in every micro-batch).
    assert [(e["step"], e["task"]) for e in batches[0]] == [(e["step"], e["task"]) for e in batches[1]]
    assert len(batches[0]) == 4
    for mine, theirs in zip(*batches):
        assert not set(mine["examples"]) & set(theirs["examples"]), (mine, theirs)
    # Only the main process writes the Hub folder and the curves; one set of logs.
    assert [e["what"] for e in ranks[0] if e["kind"] == "write"] == ["save_hub_folder", "plot_curves"]
    assert [e for e in ranks[1] if e["kind"] == "write"] == []
    assert output.count("[ofa-hf] done in") == 1
    assert output.count("'train_runtime'") == 1
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in output
    # One output folder, with one set of checkpoints, each holding the RNG state of both ranks.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_data", "out", "recipe.yaml", "recorder", "records"]
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "results.json").is_file()
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    for name in checkpoints:
        folder = tmp_path / "out" / "checkpoints" / name
        assert (folder / "checkpoint_complete.json").is_file()
        assert (folder / "rng_state_0.pth").is_file() and (folder / "rng_state_1.pth").is_file()
        state = json.loads((folder / "trainer_state.json").read_text())
        # 4 steps of 2 ranks x 2 examples on 2 tasks of 16 rows: half an epoch at step 4, a quarter at step 2.
        assert state["epoch"] == pytest.approx(int(name.split("-")[1]) / 8)


API_SCRIPT = """
import torch
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task

tokenizer = train_demo_tokenizer(["a red circle"] * 5, vocab_size=300, num_codes=8, num_bins=20)
processor = OFAProcessor(OFAImageProcessor(size=16), tokenizer)
task = Task("copy", "[TEXT:text] -> [TEXT:text]", [{"text": "a red circle"}] * 4, metrics=["exact_match"])
config = OFAConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16,
                   decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2, resnet_type="resnet18")
args = Seq2SeqTrainingArguments("out", max_steps=1, report_to=[])  # no use_cpu, on a machine without GPUs
print(f"data-parallel world size {args.world_size}", flush=True)
MultiTaskTrainer(model=OFAForConditionalGeneration(config), args=args, tasks=[task], processor=processor).train()
"""


def test_python_api_under_torchrun_without_use_cpu_is_an_error_not_two_runs(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("with GPUs, Trainer sets up DDP by itself")
    command = launchers()["torchrun"]
    if not command[0]:
        pytest.skip("torchrun is not installed")
    (tmp_path / "api.py").write_text(API_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([*command, "api.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    if "data-parallel world size 2" in output:
        # Older accelerate releases (1.3) set up DDP on CPU processes by themselves: then it is one distributed run.
        assert done.returncode == 0, output[-3000:]
        return
    assert "data-parallel world size 1" in output, output[-3000:]
    assert done.returncode != 0 and "set up no data parallelism" in output and "use_cpu=True" in output, output[-3000:]
    assert not (tmp_path / "out").exists()
