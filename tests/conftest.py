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
