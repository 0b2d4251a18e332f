"""Multi-process runs of `MultiTaskTrainer`: two CPU ranks through `accelerate launch`, and a run killed by SIGKILL.

Each test writes a small training script to its tmp_path and runs it in fresh processes. The script records every
micro-batch it trains on (step, micro-batch, task, example indices) per rank, and at the end the evaluation metrics,
the predictions and the final weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, sys, time

import datasets
import torch

sys.path[:0] = [os.environ["OFA_REPO"], os.path.join(os.environ["OFA_REPO"], "tests")]
torch.set_num_threads(1)
from conftest import tiny_config_kwargs
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task
from trainers.data import INFO_KEY

config = json.loads(os.environ["RUN_CONFIG"])
COLORS, SHAPES = ["red", "blue", "green"], ["circle", "square"]
words = " ".join(COLORS + SHAPES + "a the what color is text says".split())
tokenizer = train_demo_tokenizer([words] * 20, vocab_size=300, num_codes=8, num_bins=20)
processor = OFAProcessor(OFAImageProcessor(size=16), tokenizer)
color = datasets.Dataset.from_dict(
    {"text": [f"a {COLORS[i % 3]} {SHAPES[i % 2]}" for i in range(14)], "color": [COLORS[i % 3] for i in range(14)]}
)
copy = datasets.Dataset.from_dict({"text": [f"the {c} {s}" for c in COLORS for s in SHAPES]})
tasks = [
    Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color,closed_set]', color, color.select(range(7)),
         num_beams=1),
    Task("copy", 'what text says " [TEXT:text] "? -> [TEXT:text]', copy, copy, num_beams=1, max_new_tokens=5,
         metrics=["exact_match"]),
]


class Recording(MultiTaskTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        info = inputs[INFO_KEY]
        entry = [self.state.global_step, info.micro_index, info.task, list(info.example_indices)]
        with open(f"{config['log']}.{self.args.process_index}", "a") as handle:
            handle.write(json.dumps(entry) + "\\n")
        if config.get("slow_from") is not None and self.state.global_step >= config["slow_from"]:
            time.sleep(0.3)  # leaves time to kill the run after its checkpoint
        return super().training_step(model, inputs, num_items_in_batch)


if config.get("kill_in_save") is not None:
    # A crash in the middle of writing checkpoint N: the process dies before the optimizer state is written.
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if f"checkpoint-{config['kill_in_save']}" in str(path):
            os.kill(os.getpid(), 9)
        return real_save(obj, path, *args, **kwargs)

    torch.save = dying_save

dropout = config.get("dropout", 0.0)
torch.manual_seed(0)
model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), dropout=dropout)))
args = Seq2SeqTrainingArguments(
    config["output_dir"], max_steps=config["max_steps"], save_steps=config["save_steps"], per_device_train_batch_size=2,
    gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=2, report_to=[], disable_tqdm=True, use_cpu=True,
    seed=7,
)
trainer = Recording(model=model, args=args, tasks=tasks, processor=processor)
trainer.train(resume_from_checkpoint=config.get("resume"))
metrics = trainer.evaluate()
predictions = trainer.predict(task="color").predictions
weights = [float(p.detach().double().sum()) for p in trainer.model.parameters()]
result = {"metrics": metrics, "predictions": predictions, "weights": weights, "world_size": args.world_size}
if config.get("resume_from"):
    # A second trainer in the same processes resumes from a checkpoint of the first run, as a new job would.
    config["log"] += ".resumed"
    torch.manual_seed(1)
    fresh = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), dropout=dropout)))
    resumed = Recording(model=fresh, args=args, tasks=tasks, processor=processor)
    resumed.train(resume_from_checkpoint=config["resume_from"])
    result["resumed_weights"] = [float(p.detach().double().sum()) for p in resumed.model.parameters()]
with open(f"{config['log'].removesuffix('.resumed')}.result.{args.process_index}", "w") as handle:
    json.dump(result, handle)
"""

COLOR_ROWS, COPY_ROWS, COLOR_EVAL_ROWS = 14, 6, 7


def environment() -> dict[str, str]:
    env = dict(os.environ, OFA_REPO=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    return env


def start(tmp_path: Path, name: str, launcher: list[str], **config) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    log = tmp_path / name / "log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config = {"output_dir": str(tmp_path / name / "out"), "log": str(log), **config}
    env = {**environment(), "RUN_CONFIG": json.dumps(config)}
    stdout = open(tmp_path / name / "stdout", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([*launcher, str(script)], env=env, stdout=stdout, stderr=subprocess.STDOUT, cwd=tmp_path)
    process.stdout_file = stdout
    return process, log


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    try:
        process.wait(timeout=timeout)
    finally:
        process.stdout_file.close()
    if process.returncode != 0:
        output = Path(process.stdout_file.name).read_text()
        pytest.fail(f"{process.args} exited with {process.returncode}:\n{output[-4000:]}")


def read_log(log: Path, rank: int = 0) -> list[list]:
    return [json.loads(line) for line in Path(f"{log}.{rank}").read_text().splitlines()]


def trained_past(log: Path, step: int) -> bool:
    """Whether rank 0 has started a micro-batch of optimizer step `step` (a line may be half written)."""
    path = Path(f"{log}.0")
    lines = path.read_text().splitlines() if path.exists() else []
    return any(line.startswith(f"[{step},") for line in lines)


def read_result(log: Path, rank: int = 0) -> dict:
    return json.loads(Path(f"{log}.result.{rank}").read_text())


def accelerate_launch() -> list[str]:
    """`accelerate launch` with the shipped CPU DDP config, on a free port."""
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"
    return [accelerate, "launch", "--config_file", str(config), "--main_process_port", str(port)]


def test_two_cpu_ranks_share_the_schedule_and_split_the_data(tmp_path):
    checkpoint = str(tmp_path / "run" / "out" / "checkpoint-3")
    run, log = start(tmp_path, "run", accelerate_launch(), max_steps=6, save_steps=3, resume_from=checkpoint)
    finish(run)
    logs = [read_log(log, rank) for rank in range(2)]
    results = [read_result(log, rank) for rank in range(2)]
    assert [r["world_size"] for r in results] == [2, 2]
    # The same task for every micro-batch on both ranks.
    assert [entry[:3] for entry in logs[0]] == [entry[:3] for entry in logs[1]]
    assert len(logs[0]) == 12 and {entry[2] for entry in logs[0]} == {"color", "copy"}
    # Disjoint shards: within a task's first pass, no example is seen on both ranks, and together they cover it.
    for task, size in (("color", COLOR_ROWS), ("copy", COPY_ROWS)):
        shards = [[i for entry in rank_log if entry[2] == task for i in entry[3]][: size // 2] for rank_log in logs]
        assert len(shards[0]) == len(shards[1]) == size // 2
        assert not set(shards[0]) & set(shards[1])
        assert len(set(shards[0]) | set(shards[1])) == size
    # DDP kept the replicas identical; evaluation gathered every row and agrees on both ranks.
    assert results[0]["weights"] == results[1]["weights"]
    assert results[0]["metrics"]["eval_color_accuracy"] == results[1]["metrics"]["eval_color_accuracy"]
    assert results[0]["predictions"] == results[1]["predictions"] and len(results[0]["predictions"]) == COLOR_EVAL_ROWS
    assert all(answer["in_set"] for answer in results[0]["predictions"])

    # A trainer resuming both ranks from the checkpoint rank 0 wrote continues with exactly the same batches.
    for rank in range(2):
        assert read_log(Path(f"{log}.resumed"), rank) == [entry for entry in logs[rank] if entry[0] >= 3]
        assert results[rank]["resumed_weights"] == results[rank]["weights"]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    # Dropout on (OFAConfig's default 0.1): every step draws from the torch RNG, which must resume exactly too.
    python = [sys.executable]
    reference, reference_log = start(tmp_path, "reference", python, max_steps=6, save_steps=3, dropout=0.1)
    victim, victim_log = start(tmp_path, "victim", python, max_steps=6, save_steps=3, slow_from=3, dropout=0.1)
    checkpoint = tmp_path / "victim" / "out" / "checkpoint-3"
    deadline = time.time() + 240
    while victim.poll() is None and time.time() < deadline:
        if (checkpoint / "trainer_state.json").exists() and trained_past(victim_log, 3):
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    victim.wait(timeout=60)
    victim.stdout_file.close()
    assert victim.returncode == -signal.SIGKILL, Path(victim.stdout_file.name).read_text()[-3000:]
    assert not Path(f"{victim_log}.result.0").exists()  # it died mid-training

    config = {"max_steps": 6, "save_steps": 3, "resume": True, "output_dir": str(tmp_path / "victim" / "out")}
    resumed, resumed_log = start(tmp_path, "resumed", python, dropout=0.1, **config)
    finish(resumed)
    finish(reference)
    expected, result = read_result(reference_log), read_result(resumed_log)
    # It continued from checkpoint-3 with the batches of the uninterrupted run, the lost steps included.
    assert read_log(resumed_log) == [e for e in read_log(reference_log) if e[0] >= 3]
    lost = [e for e in read_log(victim_log) if e[0] >= 3]
    assert lost and lost == read_log(resumed_log)[: len(lost)]
    assert result["weights"] == expected["weights"]  # and ends where the uninterrupted run ends
    assert result["metrics"]["eval_loss"] == expected["metrics"]["eval_loss"]
    assert result["predictions"] == expected["predictions"]


def test_run_killed_while_saving_resumes_from_the_previous_complete_checkpoint(tmp_path):
    python = [sys.executable]
    reference, reference_log = start(tmp_path, "reference", python, max_steps=4, save_steps=2, dropout=0.1)
    victim, victim_log = start(tmp_path, "victim", python, max_steps=4, save_steps=2, dropout=0.1, kill_in_save=4)
    victim.wait(timeout=240)
    victim.stdout_file.close()
    assert victim.returncode == -signal.SIGKILL, Path(victim.stdout_file.name).read_text()[-3000:]
    out = tmp_path / "victim" / "out"
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()  # it died before the Trainer state
    assert (out / "checkpoint-4" / "model.safetensors").exists()  # ... but after the weights

    config = {"max_steps": 4, "save_steps": 2, "resume": True, "output_dir": str(out), "dropout": 0.1}
    resumed, resumed_log = start(tmp_path, "resumed", python, **config)
    finish(resumed)
    finish(reference)
    assert "skipping incomplete checkpoint" in Path(resumed.stdout_file.name).read_text()
    assert read_log(resumed_log) == [e for e in read_log(reference_log) if e[0] >= 2]
    expected, result = read_result(reference_log), read_result(resumed_log)
    assert result["weights"] == expected["weights"]
    assert result["metrics"]["eval_loss"] == expected["metrics"]["eval_loss"]


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"))
    fsdp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "fsdp.yaml"))
    assert ddp.use_cpu and ddp.num_processes == 2
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    # The wrap policy names layer classes that exist.
    import modeling_ofa.modeling_ofa as modeling

    for name in fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert hasattr(modeling, name)
