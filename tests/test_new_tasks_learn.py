"""Tasks the project never saw, declared only through the public API, learn: held-out accuracy beats chance.

Two tasks built here from scratch (not from `processing.demo_data`): an image task whose answer depends on where the
content is (which half holds the bright square) and a text task whose answer is one word buried among fillers (which
animal a sentence names). A tiny model trains on both at once with `MultiTaskTrainer`, then `predict` scores rows it
never trained on. Both answers are balanced, so chance is 1/2 and 1/4; a task passes only when its held-out accuracy
clears chance by a margin that an input-blind model cannot reach (its best is the majority answer).
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task

SIDES = ["left", "right"]
ANIMALS = ["otter", "heron", "badger", "lynx"]
FILLERS = "yesterday at dawn quietly someone saw near the old mill by a stream a small grey".split()


def side_rows(n: int, seed: int) -> list[dict]:
    """32 x 32 noisy dark images with one bright square in the left or right half (balanced)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        side = SIDES[i % 2]
        pixels = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
        size = int(rng.integers(6, 11))
        x = int(rng.integers(0, 16 - size)) + (16 if side == "right" else 0)
        y = int(rng.integers(0, 32 - size))
        pixels[y : y + size, x : x + size] = rng.integers(180, 256, size=3, dtype=np.uint8)
        rows.append({"image": Image.fromarray(pixels), "side": side})
    return rows


def animal_rows(n: int, seed: int) -> list[dict]:
    """Sentences of 4-7 random filler words with one animal name at a random place (animals balanced)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [str(w) for w in rng.choice(FILLERS, size=int(rng.integers(4, 8)))]
        animal = ANIMALS[i % len(ANIMALS)]
        words.insert(int(rng.integers(0, len(words) + 1)), animal)
        rows.append({"sentence": " ".join(words), "animal": animal})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster than two waiting on each other
    text = [" ".join(FILLERS + ANIMALS + SIDES + "which half holds the bright square what animal does name".split())]
    tokenizer = train_demo_tokenizer(text * 20, vocab_size=300, num_codes=8, num_bins=20)
    processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer, max_image_size=32)
    tasks = [
        Task(
            "side",
            "[IMAGE:image] which half holds the bright square? -> [TEXT:side,closed_set]",
            side_rows(96, 0),
            metrics=["accuracy"],
        ),
        Task(
            "animal",
            'what animal does " [TEXT:sentence] " name? -> [TEXT:animal]',
            animal_rows(96, 1),
            metrics=["exact_match"],
        ),
    ]
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), d_model=64)))
    args = Seq2SeqTrainingArguments(
        str(tmp_path_factory.mktemp("new_tasks")),
        max_steps=400,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=20,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = MultiTaskTrainer(model=model, args=args, tasks=tasks, processor=processor)
    trainer.train()
    yield trainer
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("task", "metric", "rows", "chance", "margin"),
    [("side", "accuracy", side_rows(40, 100), 0.5, 0.25), ("animal", "exact_match", animal_rows(40, 101), 0.25, 0.3)],
)
def test_new_task_beats_chance_on_held_out_rows(trained, task, metric, rows, chance, margin):
    output = trained.predict(datasets.Dataset.from_list(rows), task=task)
    accuracy = output.metrics[f"test_{task}_{metric}"]
    print(task, metric, accuracy)
    assert accuracy >= chance + margin, f"{task}: held-out accuracy {accuracy:.2f}, chance {chance:.2f}"
