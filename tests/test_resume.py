"""Resuming `MultiTaskTrainer` is bit-exact with dropout on, and only complete checkpoints are resumed from.

A run stopped after a checkpoint and resumed must end with the same weights, optimizer state and RNG state as the
uninterrupted run, and log the same losses: with DataLoader workers or without, with gradient accumulation. A
checkpoint that was cut short (a crash while saving) is passed over with a warning that names it.
"""

from __future__ import annotations

import json
import shutil

import datasets
import pytest
import torch
from conftest import tiny_config_kwargs
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task
from trainers.trainer import CHECKPOINT_COMPLETE_NAME

COLORS, SHAPES = ["red", "blue", "green"], ["circle", "square"]


def shape_rows(n: int) -> list[dict]:
    return [{"text": f"a {COLORS[i % 3]} {SHAPES[i % 2]}", "color": COLORS[i % 3]} for i in range(n)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    words = " ".join(COLORS + SHAPES + "a the what color is text says".split())
    tokenizer = train_demo_tokenizer([words] * 20, vocab_size=300, num_codes=8, num_bins=20)
    return OFAProcessor(OFAImageProcessor(size=16), tokenizer)


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    color = datasets.Dataset.from_list(shape_rows(12))
    return [
        Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color,closed_set]', color, num_beams=1),
        Task("copy", 'what text says " [TEXT:text] "? -> [TEXT:text]', shape_rows(6), num_beams=1),
    ]


def trainer(processor, tasks, output_dir, **overrides) -> MultiTaskTrainer:
    """A tiny model with dropout 0.1 (OFAConfig's default), so every training step draws from the torch RNG."""
    torch.manual_seed(0)
    config = OFAConfig(**tiny_config_kwargs(vocab_size=len(processor.tokenizer), dropout=0.1, attention_dropout=0.1))
    kwargs = dict(
        max_steps=5,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=3,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    kwargs.update(overrides)
    args = Seq2SeqTrainingArguments(str(output_dir), **kwargs)
    return MultiTaskTrainer(model=OFAForConditionalGeneration(config), args=args, tasks=tasks, processor=processor)


def losses(run: MultiTaskTrainer, from_step: int) -> list[tuple[int, dict[str, float]]]:
    """The training logs (loss, per-task losses, grad norm) of the steps after `from_step`."""
    keep = ("loss", "grad_norm", "learning_rate")
    return [
        (entry["step"], {k: v for k, v in entry.items() if k in keep or k.startswith("loss_")})
        for entry in run.state.log_history
        if "loss" in entry and entry["step"] > from_step
    ]


def assert_same_state(expected: MultiTaskTrainer, actual: MultiTaskTrainer) -> None:
    reference, got = expected.model.state_dict(), actual.model.state_dict()
    assert [name for name in reference if not torch.equal(reference[name], got[name])] == []
    reference_opt, got_opt = expected.optimizer.state_dict()["state"], actual.optimizer.state_dict()["state"]
    assert reference_opt.keys() == got_opt.keys()
    for key, state in reference_opt.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got_opt[key][name])), (key, name)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"dataloader_num_workers": 2}, {"gradient_accumulation_steps": 2}],
    ids=["workers0", "workers2", "accumulation"],
)
def test_resume_with_dropout_is_bit_identical(processor, tasks, tmp_path, overrides):
    full = trainer(processor, tasks, tmp_path, **overrides)
    full.train()
    full_rng = torch.get_rng_state()
    resumed = trainer(processor, tasks, tmp_path / "resumed", **overrides)
    shutil.copytree(tmp_path / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed.train(resume_from_checkpoint=True)
    assert torch.equal(torch.get_rng_state(), full_rng)
    assert losses(resumed, 2) == losses(full, 2)
    assert_same_state(full, resumed)


def test_truncated_trainer_state_falls_back_to_the_previous_checkpoint(processor, tasks, tmp_path):
    full = trainer(processor, tasks, tmp_path, max_steps=4)
    full.train()
    state = tmp_path / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # a crash in the middle of writing it
    with pytest.warns(UserWarning, match=r"checkpoint-4.*trainer_state\.json"):
        assert MultiTaskTrainer.last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-2")
    resumed = trainer(processor, tasks, tmp_path, max_steps=4)
    with pytest.warns(UserWarning, match="checkpoint-4"):
        resumed.train(resume_from_checkpoint=True)
    assert_same_state(full, resumed)
    assert json.loads(state.read_text())["global_step"] == 4  # the resumed run wrote checkpoint-4 anew
    state.write_text(state.read_text()[:40])
    # Named explicitly, the damaged checkpoint is an error that names the file, not a bare JSONDecodeError.
    with pytest.raises(ValueError, match=r"checkpoint-4.*trainer_state\.json"):
        trainer(processor, tasks, tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_checkpoints_carry_a_completion_marker(processor, tasks, tmp_path):
    trainer(processor, tasks, tmp_path, max_steps=2).train()
    marker = json.loads((tmp_path / "checkpoint-2" / CHECKPOINT_COMPLETE_NAME).read_text())
    assert marker["global_step"] == 2 and "trainer_state.json" in marker["files"]
    # A checkpoint whose weights were cut short after the marker was written is damaged, too.
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"checkpoint-2.*model\.safetensors"):
        assert MultiTaskTrainer.last_complete_checkpoint(str(tmp_path)) is None


def test_rotation_keeps_only_complete_checkpoints(processor, tasks, tmp_path):
    # Old checkpoints are deleted only once the new one is complete (its marker written).
    trainer(processor, tasks, tmp_path, max_steps=4, save_total_limit=1).train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-4"]
    assert MultiTaskTrainer.last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
