"""Shared fixtures: tiny OFA configs that run on a CPU in milliseconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def tiny_config_kwargs(**overrides) -> dict:
    """Arguments of a tiny OFAConfig (d_model 32, 2+2 layers, resnet18 stem, 120-token vocabulary)."""
    kwargs = dict(
        vocab_size=120,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        resnet_type="resnet18",
        token_bucket_size=16,
        image_bucket_size=8,
        code_image_size=32,
        dropout=0.0,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_config():
    from modeling_ofa import OFAConfig

    return OFAConfig(**tiny_config_kwargs())


DEMO_SMOKE_OVERRIDES = [
    'data.demo.sizes={"train": 24, "validation": 4, "test": 4}',
    "tokenizer.demo.vocab_size=500",
    "training.max_steps=6",
    "training.eval_steps=6",
    "training.save_steps=6",
    "training.logging_steps=2",
    "training.per_device_train_batch_size=4",
    "training.disable_tqdm=true",
]


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """A shortened run of the demo config (every task, a few steps), shared by the tests that need a trained folder."""
    from trainers.recipe import load_config, run

    root = tmp_path_factory.mktemp("demo")
    config = load_config(None, [*DEMO_SMOKE_OVERRIDES, f"output_dir={root / 'outputs' / 'demo'}"])
    config["data"]["demo"]["root"] = str(root / "demo_data")
    results = run(config)
    return root / "outputs" / "demo", results
