"""The VQ image tokenizer: taming-transformers' VQGAN with a Gumbel quantizer, as a transformers model.

OFA turns target images into `<code_i>` tokens, and generated codes back into pixels, with taming-transformers'
f8 `GumbelVQ` (8192 codes). This module holds that layout: the parameter names are taming's (`encoder.down.0.block.0.
conv1.weight`, `quantize.proj.weight`, `quantize.embed.weight`, `quant_conv`, `post_quant_conv`, ...), so an original
checkpoint loads by name once its training-only `loss.*` modules are dropped (`modeling_ofa.convert_vqgan`).

Why not the VQ-VAEs already in transformers: their building blocks resemble taming's, but none holds this layout.
`ChameleonVQVAE` has no decoder (it only encodes). `JanusVQVAE` has a nearest-neighbour quantizer with no `proj`
(not Gumbel), L2-normalizes codebook vectors when decoding (taming does not), puts attention only on the last
level instead of at `attn_resolutions`, lists its decoder levels in the reverse order of taming's `decoder.up.{i}`
(so the names do not match), fixes GroupNorm at 32 groups (too many for a tiny tokenizer) and fixes the code grid
to one size. `Emu3VQVAE` is a video tokenizer with temporal convolutions and spatially conditioned norms. Subclassing
any of them would override nearly every module, so this is a small model of its own.

Conventions: `pixel_values` are in [-1, 1] (taming's `2 * image - 1`), shape `(batch, channels, height, width)`;
codes are `(batch, height / f, width / f)` with f = `config.downsample_factor`. `encode` is deterministic: it takes
the most likely code of each latent (the original draws a Gumbel sample even in eval mode, so its codes vary from
run to run; the argmax is that sample's noise-free mode). `forward` samples as the original trains.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vqgan import OFAVQGANConfig


class OFAVQGANResnetBlock(nn.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a (1x1-projected where the width changes) residual."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.nin_shortcut is None else self.nin_shortcut(hidden_states)
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = self.conv2(self.dropout(F.silu(self.norm2(hidden_states))))
        return residual + hidden_states


class OFAVQGANAttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        normed = self.norm(hidden_states)

        def tokens(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, C, H, W) -> (B, 1, H*W, C)

        attended = F.scaled_dot_product_attention(
            tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed))
        )
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)  # back to (B, C, H, W)
        return hidden_states + self.proj_out(attended)


class OFAVQGANDownsample(nn.Module):
    """Stride-2 3x3 conv; the padding is asymmetric (right and bottom only), as in taming."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(hidden_states, (0, 1, 0, 1)))


class OFAVQGANUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class OFAVQGANLevel(nn.Module):
    """One resolution level: residual blocks, each followed by attention where the level has it, then a resampler."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attentions)
        # taming names the resampler `downsample` in the encoder and `upsample` in the decoder.
        self.resample_name = name
        if resample is not None:
            self.add_module(name, resample)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            hidden_states = block(hidden_states)
            if len(self.attn):
                hidden_states = self.attn[i](hidden_states)
        resample = self._modules.get(self.resample_name)
        return hidden_states if resample is None else resample(hidden_states)


class OFAVQGANMidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = OFAVQGANResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = OFAVQGANAttnBlock(channels, groups)
        self.block_2 = OFAVQGANResnetBlock(channels, channels, groups, dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(hidden_states)))


class OFAVQGANEncoder(nn.Module):
    """Pixels (B, in_channels, H, W) -> latents (B, latent_channels, H/f, W/f)."""

    def __init__(self, config: OFAVQGANConfig) -> None:
        super().__init__()
        groups, dropout, ch = config.norm_num_groups, config.dropout, config.base_channels
        levels = len(config.channel_multiplier)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, resolution = ch, config.resolution
        for level, multiplier in enumerate(config.channel_multiplier):
            block_out = ch * multiplier
            blocks, attentions = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(OFAVQGANResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
                if resolution in config.attn_resolutions:
                    attentions.append(OFAVQGANAttnBlock(block_in, groups))
            last = level == levels - 1
            self.down.append(
                OFAVQGANLevel(blocks, attentions, None if last else OFAVQGANDownsample(block_in), "downsample")
            )
            resolution = resolution if last else resolution // 2
        self.mid = OFAVQGANMidBlock(block_in, groups, dropout)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, config.latent_channels, 3, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(pixel_values)
        for level in self.down:
            hidden_states = level(hidden_states)
        hidden_states = self.mid(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class OFAVQGANDecoder(nn.Module):
    """Latents (B, latent_channels, h, w) -> pixels (B, out_channels, h*f, w*f). `up[i]` is level i (0 = finest),
    run from the coarsest level up, as in taming."""

    def __init__(self, config: OFAVQGANConfig) -> None:
        super().__init__()
        groups, dropout, ch = config.norm_num_groups, config.dropout, config.base_channels
        levels = len(config.channel_multiplier)
        block_in = ch * config.channel_multiplier[-1]
        resolution = config.resolution // config.downsample_factor
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, 3, padding=1)
        self.mid = OFAVQGANMidBlock(block_in, groups, dropout)
        up: list[nn.Module] = []
        for level in reversed(range(levels)):
            block_out = ch * config.channel_multiplier[level]
            blocks, attentions = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(OFAVQGANResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
                if resolution in config.attn_resolutions:
                    attentions.append(OFAVQGANAttnBlock(block_in, groups))
            up.insert(0, OFAVQGANLevel(blocks, attentions, OFAVQGANUpsample(block_in) if level else None, "upsample"))
            resolution = resolution * 2 if level else resolution
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden_states = self.mid(self.conv_in(latents))
        for level in reversed(self.up):
            hidden_states = level(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class OFAVQGANGumbelQuantizer(nn.Module):
    """Per latent, logits over the codes (`proj`, a 1x1 conv) and the codebook (`embed`)."""

    def __init__(self, config: OFAVQGANConfig) -> None:
        super().__init__()
        # taming builds `proj` on z_channels but feeds it quant_conv's embed_dim channels; the two are equal in every
        # released config, and embed_dim is what it receives.
        self.proj = nn.Conv2d(config.embed_dim, config.num_embeddings, 1)
        self.embed = nn.Embedding(config.num_embeddings, config.embed_dim)

    def embed_one_hot(self, one_hot: torch.Tensor) -> torch.Tensor:
        """(B, N, h, w) code weights -> (B, embed_dim, h, w) codebook mixture."""
        return torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)


@dataclass
class OFAVQGANOutput(ModelOutput):
    r"""
    Output of `OFAVQGANModel.forward`.

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `reconstruction_loss + quantization_loss` (`train_vq_tokenizer` weights the reconstruction term by
            colour and adds an L2 term to it).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, out_channels, height, width)`):
            The decoded image, in [-1, 1] when trained on such pixels (not clamped).
        codes (`torch.LongTensor` of shape `(batch_size, height / f, width / f)`):
            The code chosen for each latent (the Gumbel sample in training mode, the argmax in eval mode).
        logits (`torch.FloatTensor` of shape `(batch_size, num_embeddings, height / f, width / f)`):
            The quantizer's code logits.
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            Mean absolute error between `reconstruction` and the input.
        quantization_loss (`torch.FloatTensor` of shape `()`):
            `kl_weight` times the KL divergence of the code distribution to the uniform prior, as in taming.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    logits: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None


class OFAVQGANPreTrainedModel(PreTrainedModel):
    config_class = OFAVQGANConfig
    config: OFAVQGANConfig
    base_model_prefix = "vqgan"
    main_input_name = "pixel_values"
    _no_split_modules = ["OFAVQGANResnetBlock", "OFAVQGANAttnBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            # Variance-preserving fan-in init: the library's default (normal, std 0.02) would shrink the
            # activations of a deep conv stack towards zero.
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            init.normal_(module.weight, mean=0.0, std=fan_in**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        else:
            super()._init_weights(module)


class OFAVQGANModel(OFAVQGANPreTrainedModel):
    """
    VQGAN image tokenizer: `encode(pixel_values) -> codes`, `decode(codes) -> pixel_values`, and a trainable
    `forward` (reconstruction, codes and losses). See the module docstring for the pixel and code conventions.
    """

    def __init__(self, config: OFAVQGANConfig) -> None:
        super().__init__(config)
        self.encoder = OFAVQGANEncoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = OFAVQGANGumbelQuantizer(config)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = OFAVQGANDecoder(config)
        self.post_init()

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        factor = self.config.downsample_factor
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"OFAVQGANModel: pixel_values must be (batch, {self.config.in_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[2] % factor or pixel_values.shape[3] % factor:
            raise ValueError(
                f"OFAVQGANModel: image side {tuple(pixel_values.shape[2:])} is not divisible by the downsampling "
                f"factor {factor}"
            )

    def code_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels in [-1, 1] -> (B, num_embeddings, H/f, W/f) code logits."""
        self._check_pixels(pixel_values)
        return self.quantize.proj(self.quant_conv(self.encoder(pixel_values)))

    def encode(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) pixels in [-1, 1] -> (B, H/f, W/f) codes: the most likely code of each latent."""
        return self.code_logits(pixel_values).argmax(dim=1)

    def decode(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """(B, h, w) codes -> (B, out_channels, h*f, w*f) pixels, nominally in [-1, 1] (not clamped)."""
        if codes.dim() != 3 or codes.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"OFAVQGANModel.decode: codes must be an integer (batch, h, w) tensor, got {codes.dtype} "
                f"{tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.num_embeddings):
            raise ValueError(
                f"OFAVQGANModel.decode: codes must lie in [0, {self.config.num_embeddings}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        quantized = self.quantize.embed(codes.long()).permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)
        return self.decode_latents(quantized)

    def decode_latents(self, quantized: torch.Tensor) -> torch.FloatTensor:
        """(B, embed_dim, h, w) codebook vectors -> pixels."""
        return self.decoder(self.post_quant_conv(quantized))

    def forward(
        self, pixel_values: torch.Tensor, temperature: float | None = None, straight_through: bool | None = None
    ) -> OFAVQGANOutput:
        """
        Encode, quantize and decode `pixel_values` (B, C, H, W) in [-1, 1].

        In training mode the code of each latent is a Gumbel-softmax sample at `temperature` (default
        `config.gumbel_temperature`), hard with straight-through gradients when `straight_through` (default
        `config.straight_through`), else the soft sample; in eval mode it is the argmax, as `encode` takes it.
        """
        logits = self.code_logits(pixel_values)  # (B, N, h, w)
        if self.training:
            tau = self.config.gumbel_temperature if temperature is None else temperature
            hard = self.config.straight_through if straight_through is None else straight_through
            one_hot = F.gumbel_softmax(logits, tau=tau, dim=1, hard=hard)
        else:
            one_hot = F.one_hot(logits.argmax(dim=1), self.config.num_embeddings).permute(0, 3, 1, 2).to(logits.dtype)
        reconstruction = self.decode_latents(self.quantize.embed_one_hot(one_hot))
        probs = logits.softmax(dim=1)
        # KL(q || uniform) = sum q log(q N); the 1e-10 keeps log finite where q underflows, as in taming.
        kl = (probs * torch.log(probs * self.config.num_embeddings + 1e-10)).sum(dim=1).mean()
        quantization_loss = self.config.kl_weight * kl
        reconstruction_loss = (reconstruction - pixel_values).abs().mean()
        return OFAVQGANOutput(
            loss=reconstruction_loss + quantization_loss,
            reconstruction=reconstruction,
            codes=one_hot.argmax(dim=1),
            logits=logits,
            reconstruction_loss=reconstruction_loss,
            quantization_loss=quantization_loss,
        )


# ----------------------------------------------------------------------------------------------------------------
# Pixels <-> PIL images, and a small training loop
# ----------------------------------------------------------------------------------------------------------------


def images_to_pixel_values(images: Sequence[Image.Image] | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """
    PIL images (resized to `size` x `size` when given) or a float tensor in [0, 1] of shape (B, C, H, W) ->
    pixel values in [-1, 1], (B, C, H, W).
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"images_to_pixel_values: a tensor must be (batch, channels, height, width), got {tuple(images.shape)}"
            )
        return images.float() * 2.0 - 1.0
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images_to_pixel_values: image {i} is a {type(image).__name__}, not a PIL image")
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    if len({a.shape for a in arrays}) > 1:
        raise ValueError("images_to_pixel_values: images differ in size; pass `size` to resize them")
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    return stacked * 2.0 - 1.0


def pixel_values_to_images(pixel_values: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) pixel values in [-1, 1] (clamped) -> RGB PIL images."""
    array = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()  # (B, C, H, W) -> (B, H, W, C)
    return [Image.fromarray(a) for a in array]


@dataclass
class VQTrainingResult:
    """What `train_vq_tokenizer` measured: the loss of each step and the mean absolute reconstruction error (in
    [-1, 1] pixel units, eval mode, argmax codes) of the training images before and after."""

    losses: list[float]
    error_before: float
    error_after: float


@torch.no_grad()
def reconstruction_error(model: OFAVQGANModel, pixel_values: torch.Tensor, batch_size: int = 16) -> float:
    """Mean absolute error of `decode(encode(x))` against `x` (pixel values in [-1, 1]), in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start : start + batch_size]
        total += float((model.decode(model.encode(batch)).clamp(-1, 1) - batch).abs().sum())
    model.train(was_training)
    return total / pixel_values.numel()


def colour_weights(pixel_values: torch.Tensor, colour_weight: float) -> torch.Tensor:
    """(B, C, H, W) pixel values in [-1, 1] -> (B, 1, H, W) weights `1 + colour_weight * chroma`, chroma being the
    spread (max - min) of its channels in [0, 1]: grey pixels weigh 1, fully saturated ones `1 + colour_weight`."""
    chroma = (pixel_values.amax(dim=1, keepdim=True) - pixel_values.amin(dim=1, keepdim=True)) / 2
    return 1.0 + colour_weight * chroma


def train_vq_tokenizer(
    model: OFAVQGANModel,
    images: Sequence[Image.Image] | torch.Tensor,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 4e-3,
    betas: tuple[float, float] = (0.9, 0.99),
    warmup_steps: int = 20,
    temperature: tuple[float, float] = (1.0, 0.05),
    straight_through: bool = False,
    colour_weight: float = 8.0,
    l2_weight: float = 1.0,
    init_output_bias: bool = False,
    flip: bool = False,
    seed: int = 0,
) -> VQTrainingResult:
    """
    Train `model` in place on `images` (PIL images, resized to `config.resolution`, or a (B, C, H, W) tensor in
    [0, 1]) for `steps` AdamW steps. Leaves the model in eval mode. The defaults are what measured best on the demo's
    scenes (small saturated objects on a dark grey background, 64 px, tiny preset):

    - Loss: `forward`'s Gumbel KL term plus a colour-weighted L1 + `l2_weight` * L2 reconstruction error, each pixel
      weighted `1 + colour_weight * chroma` of the target (`colour_weights`). Plain L1 is dominated by the
      background, so a model that turns red into yellow loses little; the weight makes the objects' hue count, the L2
      term punishes large hue errors more than background noise. No perceptual or GAN loss.
    - Quantizer: the soft Gumbel-softmax sample (`straight_through=False`) with a temperature falling linearly from
      `temperature[0]` to `temperature[1]`: its gradient reaches every code, and at 0.05 the sample is nearly the
      one-hot argmax that `encode` takes. The hard straight-through sample trained slower in the same steps.
    - Optimizer: AdamW (no weight decay) at `learning_rate` with `betas`, a linear warm-up over `warmup_steps`, then
      a cosine decay; 1e-2 diverged, (0.5, 0.9) betas stalled.
    - `init_output_bias` sets the decoder's output bias to the images' mean colour first (for a fresh model: it
      starts at the trivial answer instead of mid-grey). `flip` adds random horizontal flips.
    """
    if steps < 1:
        raise ValueError(f"train_vq_tokenizer: steps must be >= 1, got {steps}")
    pixel_values = images_to_pixel_values(images, size=model.config.resolution)
    if len(pixel_values) == 0:
        raise ValueError("train_vq_tokenizer: no images")
    device = next(model.parameters()).device
    pixel_values = pixel_values.to(device)
    error_before = reconstruction_error(model, pixel_values)
    if init_output_bias:
        with torch.no_grad():
            model.decoder.conv_out.bias.copy_(pixel_values.mean(dim=(0, 2, 3)))
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / max(warmup_steps, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    losses = []
    model.train()
    for step in range(steps):
        index = torch.randint(len(pixel_values), (min(batch_size, len(pixel_values)),), generator=generator)
        batch = pixel_values[index.to(device)]
        if flip and rng.random() < 0.5:
            batch = batch.flip(-1)
        tau = temperature[0] + (temperature[1] - temperature[0]) * step / max(steps - 1, 1)
        output = model(batch, temperature=tau, straight_through=straight_through)
        error = output.reconstruction - batch
        weight = colour_weights(batch, colour_weight)
        loss = (weight * error.abs()).mean() + l2_weight * (weight * error.square()).mean() + output.quantization_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return VQTrainingResult(
        losses=losses, error_before=error_before, error_after=reconstruction_error(model, pixel_values)
    )


def register_vqgan_auto_classes() -> None:
    """Register `ofa_vqgan` with `AutoConfig` and `AutoModel` (importing this module does this). Saved folders also
    carry this code and an `auto_map`, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads them
    where this package is not installed."""
    AutoConfig.register("ofa_vqgan", OFAVQGANConfig, exist_ok=True)
    AutoModel.register(OFAVQGANConfig, OFAVQGANModel, exist_ok=True)
    OFAVQGANConfig.register_for_auto_class()
    OFAVQGANModel.register_for_auto_class("AutoModel")


register_vqgan_auto_classes()
