"""OFA+ modality adapters: embed audio, video and motion slots into the encoder's width.

Text, struct, box, phone, category and image-code slots are tokens and use the shared token embedding; images use
the ResNet stem of the encoder. The adapters here add the other modalities of OFASys. Each returns embeddings
(B, n, D) and a padding mask (B, n) (True = padding); the encoder adds positions and modality ids.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_ofa import OFAConfig

__all__ = ["AudioAdapter", "MotionAdapter", "VideoTimeEmbedding", "subsampled_lengths"]


def subsampled_lengths(lengths: torch.Tensor, num_layers: int = 2) -> torch.Tensor:
    """Lengths after `num_layers` convolutions of kernel 3, stride 2, padding 1."""
    for _ in range(num_layers):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


class AudioAdapter(nn.Module):
    """Log-mel frames (B, T, F) -> two stride-2 convolutions (4x shorter, as speech encoders do) -> (B, T/4, D)."""

    def __init__(self, config: OFAConfig):
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv1d(config.audio_feature_size, d, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.activation = nn.GELU()
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.transpose(1, 2)  # (B, F, T): channels first for Conv1d
        x = self.activation(self.conv2(self.activation(self.conv1(x))))  # (B, D, T/4)
        x = self.layer_norm(x.transpose(1, 2))  # (B, T/4, D)
        if attention_mask is None:
            padding = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            lengths = subsampled_lengths(attention_mask.long().sum(dim=1))  # (B,)
            padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return x, padding


class MotionAdapter(nn.Module):
    """Per-step joint vectors (B, T, F) -> linear projection -> (B, T, D)."""

    def __init__(self, config: OFAConfig):
        super().__init__()
        self.proj = nn.Linear(config.motion_feature_size, config.d_model)
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer_norm(self.proj(features))  # (B, T, D)
        if attention_mask is None:
            padding = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            padding = attention_mask.eq(0)
        return x, padding


class VideoTimeEmbedding(nn.Embedding):
    """A learned vector per frame index, added to every patch of that frame (frames share the image stem)."""

    def __init__(self, config: OFAConfig):
        super().__init__(config.max_video_frames, config.d_model)
