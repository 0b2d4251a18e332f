"""The image stem of OFA: the first three stages of a Bottleneck ResNet (output stride 16, 1024 channels).

Module and parameter names follow the original (`conv1`, `bn1`, `layer{1,2,3}.{k}.conv{1,2,3}`, `downsample.{0,1}`),
so original checkpoints load without renaming.

Gradient checkpointing (`model.gradient_checkpointing_enable()`) covers the stem too: the Bottleneck blocks are
recomputed in the backward pass. BatchNorm in train mode updates its running statistics in forward; the
recomputation leaves them as the forward left them (`batch_norm_stats_frozen`), so a step updates them once, as
without checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["Bottleneck", "DropPath", "OFAResNet", "batch_norm_stats_frozen", "drop_path", "drop_path_rates"]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random subset of samples (dim 0 is the batch)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def drop_path_rates(max_rate: float, count: int) -> list[float]:
    """Rates rising linearly from 0 to `max_rate` over `count` layers (plain Python: works on the meta device)."""
    return [max_rate * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


@contextmanager
def batch_norm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Run `module` in train mode without changing the running statistics of its BatchNorm layers.

    Inside the context, train-mode BatchNorms still normalize with the batch statistics, but their
    `running_mean`/`running_var` stay as they were (momentum 0 gives `1 * running + 0 * batch`, the same values) and
    `num_batches_tracked` is restored on exit. The buffers are still written in place, as in a normal forward, so the
    autograd graph is the same and reentrant checkpointing sees the version counters it expects.

    Args:
        module (`nn.Module`): The module whose BatchNorm layers (itself included) to freeze.
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        # Momentum None means a cumulative average over num_batches_tracked; 0.0 switches to a factor of 0.
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for m, momentum, count in saved:
                m.momentum = momentum
                m.num_batches_tracked.copy_(count)


def _recompute_without_stat_updates(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` as a function for a checkpoint: the first call is the forward, every later one a recomputation."""
    calls = 0

    def run(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return module(x)
        with batch_norm_stats_frozen(module):
            return module(x)

    return run


class DropPath(nn.Module):
    """`drop_path` as a module, so that the rate shows in `repr(model)`."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; identity or projected shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class OFAResNet(nn.Module):
    """Stem + three Bottleneck stages: (B, 3, H, W) -> (B, 1024, H/16, W/16)."""

    out_channels = 1024

    def __init__(self, layers: tuple[int, int, int], drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256), layers, (1, 2, 2)):
            # The first block of a stage never drops; the others get rates rising linearly to the maximum.
            rates = drop_path_rates(drop_path_rate, blocks)
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes, drop_path_rate=rates[i]) for i in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        # Switched on, with `_gradient_checkpointing_func`, by `PreTrainedModel.gradient_checkpointing_enable`,
        # which sets both on every submodule that has this attribute.
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))  # (B, 64, H/4, W/4)
        # Checkpointing needs an input that requires grad (reentrant checkpoints only backpropagate through one);
        # without one, e.g. a frozen first convolution, the stages run plainly.
        if not (self.gradient_checkpointing and self.training and x.requires_grad):
            return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = self._gradient_checkpointing_func(_recompute_without_stat_updates(block), x)
        return x
