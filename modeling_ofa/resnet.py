"""The image stem of OFA: the first three stages of a Bottleneck ResNet (output stride 16, 1024 channels).

Module and parameter names follow the original (`conv1`, `bn1`, `layer{1,2,3}.{k}.conv{1,2,3}`, `downsample.{0,1}`),
so original checkpoints load without renaming.

The normalization layers are a choice (`norm`, `OFAConfig.resnet_norm`, one of `RESNET_NORMS`):

* `"batch"`: trainable `nn.BatchNorm2d`, as the released checkpoints were trained. In train mode its running
  statistics follow the batches, which couples tasks that share the stem and moves buffers an adapter does not save.
* `"frozen"`: `FrozenBatchNorm2d`, statistics and affine fixed as buffers, in train mode too. Its keys are those of
  `nn.BatchNorm2d`, its output is that of `nn.BatchNorm2d` in eval mode (bit for bit), so a checkpoint loads from
  one kind into the other with strict keys and keeps its eval outputs. `freeze_resnet_norm(model)` switches an
  existing stem to it.
* `"group"`: `nn.GroupNorm` (trainable affine, no running statistics, batch-independent) for training from
  scratch. It has no `running_*` keys, so BatchNorm checkpoints do not load into it.

Gradient checkpointing (`model.activation_checkpointing_enable()`) covers the stem too: the Bottleneck blocks are
recomputed in the backward pass. BatchNorm in train mode updates its running statistics in forward; the
recomputation leaves them as the forward left them (`batch_norm_stats_frozen`), so a step updates them once, as
without checkpointing. Frozen and group norms have no statistics to update, so they recompute plainly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_ofa import RESNET_NORMS, OFAConfig

__all__ = [
    "Bottleneck",
    "DropPath",
    "FrozenBatchNorm2d",
    "OFAResNet",
    "RESNET_NORMS",
    "batch_norm_stats_frozen",
    "drop_path",
    "drop_path_rates",
    "freeze_resnet_norm",
    "resnet_norm_layer",
]

# GroupNorm's usual group count (Wu & He, 2018). Every channel count of the stem (64 to 1024) is a multiple of it.
_GROUPS = 32


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


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine: the eval-mode `nn.BatchNorm2d` in every mode.

    `weight`, `bias`, `running_mean` and `running_var` are buffers, so no optimizer, `requires_grad_` or train-mode
    forward changes them; gradients still flow to the input. `num_batches_tracked` is kept as a buffer too, carried
    unchanged, so the state dict has exactly the keys of `nn.BatchNorm2d` and loads from and into one with
    `strict=True` (a counter missing from a state dict, as in detectron2's or torchvision's frozen norms, is not an
    error: the module keeps its own).

    Args:
        num_features (`int`): Channels of the input (dim 1).
        eps (`float`, defaults to 1e-5): Added to the variance, as in `nn.BatchNorm2d`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        # The values of a fresh nn.BatchNorm2d, so that a new module is the identity up to eps.
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, norm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of `norm` (same statistics, affine, counter, eps, device and dtype); `norm` is unchanged.

        Args:
            norm (`nn.BatchNorm2d`): A BatchNorm with an affine and running statistics.
        """
        if not (norm.affine and norm.track_running_stats):
            raise ValueError(f"{norm} has no affine or no running statistics: nothing to freeze")
        frozen = cls(norm.num_features, norm.eps)
        # Assigning to a buffer's name replaces the buffer: each takes norm's tensor (its device and dtype) as a copy.
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(frozen, name, getattr(norm, name).detach().clone())
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The call nn.BatchNorm2d makes in eval mode, so that "batch" and "frozen" agree exactly; training=False
        # normalizes with the running statistics and never writes to them.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        counter = prefix + "num_batches_tracked"
        if counter not in state_dict:
            # A frozen norm counts nothing, so a state dict without the counter loses nothing; keep the own value.
            state_dict[counter] = self.num_batches_tracked
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def resnet_norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalization layer of kind `norm` (one of `RESNET_NORMS`) for `channels` channels.

    Args:
        norm (`str`): `"batch"` (`nn.BatchNorm2d`), `"frozen"` (`FrozenBatchNorm2d`) or `"group"` (`nn.GroupNorm`
            with 32 groups, or fewer where `channels` is not a multiple of 32).
        channels (`int`): Channels of the input (dim 1).
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "frozen":
        return FrozenBatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(_GROUPS, channels), channels)
    raise ValueError(f"norm={norm!r} is not one of {list(RESNET_NORMS)}")


def freeze_resnet_norm(model: nn.Module) -> int:
    """Turn every `nn.BatchNorm2d` of every ResNet stem in `model` into a `FrozenBatchNorm2d`, in place.

    Statistics, affine and counters are kept, so eval-mode outputs do not change (bit for bit) and the state dict
    keeps its keys; from then on no train-mode forward moves them. The stems' `norm` and the `resnet_norm` of the
    OFA configs inside `model` become `"frozen"`, so a saved model reloads frozen. GroupNorm stems are left alone.
    Fine-tuning of converted checkpoints and `modeling_ofa.peft_utils` use it.

    Args:
        model (`nn.Module`): An `OFAResNet`, an OFA model, or anything that holds them (a `peft.PeftModel`, ...).

    Returns:
        `int`: how many BatchNorms were replaced (0 if the stems were frozen already or use GroupNorm).
    """
    replaced = 0
    stems = [module for module in model.modules() if isinstance(module, OFAResNet)]
    for stem in stems:
        for name, module in list(stem.named_modules()):
            if isinstance(module, nn.BatchNorm2d):
                parent, _, child = name.rpartition(".")
                # Assigning a module under the same name replaces it (`downsample.1` too: a Sequential's children
                # are named "0", "1", ...).
                setattr(stem.get_submodule(parent), child, FrozenBatchNorm2d.from_batch_norm(module))
                replaced += 1
        if stem.norm == "batch":
            stem.norm = "frozen"
    if stems:
        for module in model.modules():
            if isinstance(module, PreTrainedModel) and isinstance(module.config, OFAConfig):
                if module.config.resnet_norm == "batch":
                    module.config.resnet_norm = "frozen"
    return replaced


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

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, drop_path_rate: float = 0.0, norm: str = "batch"
    ) -> None:
        """
        Args:
            inplanes (`int`): Input channels.
            planes (`int`): Inner channels; the block outputs `4 * planes`.
            stride (`int`, defaults to 1): Stride of the 3x3 convolution and of the projected shortcut.
            drop_path_rate (`float`, defaults to 0.0): Stochastic depth of the residual branch.
            norm (`str`, defaults to `"batch"`): Normalization kind, one of `RESNET_NORMS`.
        """
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = resnet_norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = resnet_norm_layer(norm, planes)
        self.conv3 = nn.Conv2d(planes, width, kernel_size=1, bias=False)
        self.bn3 = resnet_norm_layer(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=False), resnet_norm_layer(norm, width)
            )
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class OFAResNet(nn.Module):
    """Stem + three Bottleneck stages: (B, 3, H, W) -> (B, 1024, H/16, W/16).

    Args:
        layers (`tuple[int, int, int]`): Bottleneck blocks per stage (`RESNET_LAYERS[resnet_type]`).
        drop_path_rate (`float`, defaults to 0.0): Largest stochastic-depth rate, reached by the last block of
            each stage.
        norm (`str`, defaults to `"batch"`): Normalization kind, one of `RESNET_NORMS` (see the module docstring).
    """

    out_channels = 1024

    def __init__(self, layers: tuple[int, int, int], drop_path_rate: float = 0.0, norm: str = "batch") -> None:
        super().__init__()
        if norm not in RESNET_NORMS:
            raise ValueError(f"norm={norm!r} is not one of {list(RESNET_NORMS)}")
        self.norm = norm
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = resnet_norm_layer(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256), layers, (1, 2, 2)):
            # The first block of a stage never drops; the others get rates rising linearly to the maximum.
            rates = drop_path_rates(drop_path_rate, blocks)
            stage = [Bottleneck(inplanes, planes, stride, norm=norm)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes, drop_path_rate=rates[i], norm=norm) for i in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        # Switched on, with `_gradient_checkpointing_func`, by `PreTrainedModel.activation_checkpointing_enable`,
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
