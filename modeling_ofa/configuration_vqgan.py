"""Configuration of the VQ image tokenizer (`OFAVQGANModel`): taming-transformers' VQGAN with a Gumbel quantizer."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# Presets as data. `ofa_vqgan_f8_8192` is the VQGAN OFA encodes its image-generation targets with (taming-transformers'
# "VQGAN OpenImages (f=8), 8192, GumbelQuantization"; its model.yaml: ch 128, ch_mult [1,1,2,4], 2 res blocks,
# attention at 32 px, z_channels = embed_dim = 256, kl_weight 1e-8). `tiny` is not a released model: 64-px images to
# an 8x8 grid of 256 codes (the grid of `OFAConfig(code_image_size=64)`), small enough to train on a CPU in minutes.
VQGAN_PRESETS: dict[str, dict[str, Any]] = {
    "ofa_vqgan_f8_8192": dict(
        resolution=256,
        base_channels=128,
        channel_multiplier=[1, 1, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[32],
        latent_channels=256,
        embed_dim=256,
        num_embeddings=8192,
        norm_num_groups=32,
        kl_weight=1e-8,
    ),
    "tiny": dict(
        resolution=64,
        base_channels=16,
        channel_multiplier=[1, 2, 2, 4],
        # No residual blocks in the encoder's levels (so it stays 16 wide down to its middle block; the decoder keeps
        # one block per level, both keep the middle block with its attention): a training step costs about half as
        # much and, at equal steps, reconstructs the demo's scenes as well.
        num_res_blocks=0,
        attn_resolutions=[8],
        latent_channels=32,
        embed_dim=32,
        num_embeddings=256,
        norm_num_groups=8,
        # The KL term to the uniform prior pushes each latent's code distribution towards flat, against the sharp
        # codes `encode` takes; negligible here, as in OFA's released model.
        kl_weight=1e-8,
    ),
}


class OFAVQGANConfig(PretrainedConfig):
    r"""
    Configuration of `OFAVQGANModel`, a VQGAN image tokenizer: a convolutional encoder downsamples an image by
    `2 ** (len(channel_multiplier) - 1)` into a grid of latents, a Gumbel quantizer maps each latent to one of
    `num_embeddings` codes, and a mirrored decoder turns the codes' embeddings back into pixels. The layout is that
    of taming-transformers' `GumbelVQ`, so its checkpoints convert by name (`modeling_ofa.convert_vqgan`).

    Use `OFAVQGANConfig.from_preset("ofa_vqgan_f8_8192")` for OFA's released tokenizer and `from_preset("tiny")` for
    tests and the offline demo.

    Args:
        in_channels (`int`, defaults to 3):
            Channels of the input images.
        out_channels (`int`, defaults to 3):
            Channels of the reconstructed images (taming's `out_ch`).
        resolution (`int`, defaults to 256):
            Image side the model was built for (taming's `resolution`); with `attn_resolutions` it decides at which
            levels attention blocks sit. Other sides divisible by the downsampling factor encode too.
        base_channels (`int`, defaults to 128):
            Channels of the first level (taming's `ch`).
        channel_multiplier (`list[int]`, defaults to `[1, 1, 2, 4]`):
            Per-level channel multipliers (taming's `ch_mult`); one level fewer downsamplings than entries.
        num_res_blocks (`int`, defaults to 2):
            Residual blocks per encoder level; the decoder has one more per level.
        attn_resolutions (`list[int]`, defaults to `[32]`):
            Feature-map sides (at `resolution`) whose levels get a self-attention block after each residual block.
        latent_channels (`int`, defaults to 256):
            Channels of the encoder output and decoder input (taming's `z_channels`).
        embed_dim (`int`, defaults to 256):
            Dimension of a codebook vector.
        num_embeddings (`int`, defaults to 8192):
            Number of codes (taming's `n_embed`; OFA's `code_dict_size`).
        norm_num_groups (`int`, defaults to 32):
            Groups of every GroupNorm (taming fixes 32; smaller models need fewer).
        dropout (`float`, defaults to 0.0):
            Dropout inside the residual blocks.
        kl_weight (`float`, defaults to 1e-8):
            Weight of the quantizer's KL term to the uniform code prior in `forward`'s loss.
        gumbel_temperature (`float`, defaults to 1.0):
            Temperature of the Gumbel-softmax sample taken in training mode.
        straight_through (`bool`, defaults to `True`):
            In training, use a hard one-hot sample with straight-through gradients (taming's default) rather than the
            soft sample.
        initializer_range (`float`, defaults to 1.0):
            Standard deviation of the codebook initialization (convolutions use a fan-in scaled normal).
    """

    model_type = "ofa_vqgan"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        resolution: int = 256,
        base_channels: int = 128,
        channel_multiplier: list[int] | tuple[int, ...] = (1, 1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: list[int] | tuple[int, ...] = (32,),
        latent_channels: int = 256,
        embed_dim: int = 256,
        num_embeddings: int = 8192,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        kl_weight: float = 1e-8,
        gumbel_temperature: float = 1.0,
        straight_through: bool = True,
        initializer_range: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.base_channels = base_channels
        self.channel_multiplier = [int(m) for m in channel_multiplier]
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = [int(r) for r in attn_resolutions]
        self.latent_channels = latent_channels
        self.embed_dim = embed_dim
        self.num_embeddings = num_embeddings
        self.norm_num_groups = norm_num_groups
        self.dropout = dropout
        self.kl_weight = kl_weight
        self.gumbel_temperature = gumbel_temperature
        self.straight_through = straight_through
        self.initializer_range = initializer_range
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        if not self.channel_multiplier:
            raise ValueError("OFAVQGANConfig.channel_multiplier must have at least one level")
        widths = {"latent_channels": self.latent_channels, "embed_dim": self.embed_dim}
        widths.update({f"base_channels * {m}": self.base_channels * m for m in self.channel_multiplier})
        for name, width in widths.items():
            if width % self.norm_num_groups:
                raise ValueError(
                    f"OFAVQGANConfig: {name} = {width} is not divisible by norm_num_groups = {self.norm_num_groups}"
                )
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"OFAVQGANConfig: resolution {self.resolution} is not divisible by the downsampling factor "
                f"{self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each side (8 for OFA's f8 VQGAN)."""
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid_size(self) -> int:
        """Codes along each side of an image of side `resolution`."""
        return self.resolution // self.downsample_factor

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> OFAVQGANConfig:
        """Config of a named preset (`ofa_vqgan_f8_8192`, `tiny`), with fields overridden."""
        if name not in VQGAN_PRESETS:
            raise ValueError(f"unknown VQGAN preset {name!r}; known presets: {sorted(VQGAN_PRESETS)}")
        return cls(**{**VQGAN_PRESETS[name], **overrides})
