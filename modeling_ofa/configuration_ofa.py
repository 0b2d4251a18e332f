"""Configuration of OFA, and the published model sizes as a data table."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

__all__ = ["EXTRA_MODALITIES", "MODALITIES", "MOE_TYPES", "OFAConfig", "PRESETS", "RESNET_LAYERS", "RESNET_NORMS"]

# Modality ids, in OFASys's order (its `ModalityType` enum, 0-based) plus IMAGE_CODE for VQ image-code targets.
# Every encoder and decoder position carries one; modality mixture-of-experts routes by it.
MODALITIES: tuple[str, ...] = (
    "TEXT",
    "IMAGE",
    "BOX",
    "AUDIO",
    "MOTION",
    "PHONE",
    "VIDEO",
    "STRUCT",
    "CATEGORY",
    "IMAGE_CODE",
)

# Feed-forward kinds: dense (OFA), one expert per modality group (OFASys `modal_ffn`, VLMo), or a learned router.
MOE_TYPES: tuple[str, ...] = ("none", "modality", "topk")

# Encoder inputs beyond OFA's text and image, each with its own adapter (OFA+).
EXTRA_MODALITIES: tuple[str, ...] = ("AUDIO", "VIDEO", "MOTION")

# Blocks per stage of the three-stage ResNet stem. Every variant uses Bottleneck blocks, so resnet34 and resnet50
# are the same network here (as in the original code).
RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}

# Normalization inside the ResNet stem (`modeling_ofa.resnet`): trainable BatchNorm as in every released checkpoint,
# BatchNorm with frozen statistics and affine (fine-tuning, PEFT), or GroupNorm (no running statistics, from scratch).
RESNET_NORMS: tuple[str, ...] = ("batch", "frozen", "group")

# The published OFA sizes (OFA-Sys `models/ofa/ofa.py`), as `OFAConfig` arguments, plus the demo model. Parameter
# counts: 33M, 93M, 180M, 470M and 930M. Fields not named here take the `OFAConfig` defaults, the shared OFA settings.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=256,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_layers=4,
        decoder_layers=4,
        resnet_type="resnet50",
    ),
    "medium": dict(
        d_model=512,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_layers=4,
        decoder_layers=4,
        resnet_type="resnet101",
    ),
    "base": dict(
        d_model=768,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_layers=6,
        decoder_layers=6,
        resnet_type="resnet101",
    ),
    "large": dict(
        d_model=1024,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_layers=12,
        decoder_layers=12,
        resnet_type="resnet152",
    ),
    # Not a published size: the OFA+ model of the offline multi-task demo, small enough to learn seven modalities
    # in minutes on a CPU (64-px images -> a 4x4 patch grid; the vocabulary size comes from the demo tokenizer).
    "demo": dict(
        d_model=128,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        resnet_type="resnet18",
        max_position_embeddings=256,
        image_bucket_size=8,
        code_image_size=64,
        extra_modalities=["AUDIO", "VIDEO", "MOTION"],
        motion_feature_size=10,
        max_video_frames=8,
        moe_type="modality",
        moe_modality_groups=[
            ["TEXT", "PHONE", "CATEGORY"],
            ["IMAGE", "VIDEO", "IMAGE_CODE"],
            ["BOX"],
            ["AUDIO"],
            ["MOTION"],
            ["STRUCT"],
        ],
        # No dropout: a model this small, trained for a few thousand steps on ten tasks, underfits; with 0.1 a task
        # alone (summarization) needed over 400 steps instead of 250 to leave its answer prior.
        dropout=0.0,
    ),
    "huge": dict(
        d_model=1280,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_layers=24,
        decoder_layers=12,
        resnet_type="resnet152",
    ),
}


class OFAConfig(PretrainedConfig):
    r"""
    Configuration of an OFA encoder-decoder (`OFAModel`, `OFAForConditionalGeneration`).

    The defaults are the shared settings of the published checkpoints with OFA-medium dimensions. Use
    `OFAConfig.from_preset("base")` for a published size.

    Args:
        vocab_size (`int`, defaults to 59457):
            Size of the unified vocabulary: fairseq specials, BPE, `<mask>`, `<code_0..8191>`, `<bin_0..999>`.
        d_model (`int`, defaults to 512):
            Width of every layer.
        encoder_layers (`int`, defaults to 4):
            Number of encoder layers.
        decoder_layers (`int`, defaults to 4):
            Number of decoder layers.
        encoder_attention_heads (`int`, defaults to 8):
            Attention heads per encoder layer.
        decoder_attention_heads (`int`, defaults to 8):
            Attention heads per decoder layer.
        encoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the encoder feed-forward blocks.
        decoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the decoder feed-forward blocks.
        max_position_embeddings (`int`, defaults to 1024):
            Longest text (encoder) or target (decoder) sequence. The absolute position tables have this + 2 rows.
        activation_function (`str`, defaults to `"gelu"`):
            Feed-forward activation, a key of `transformers.activations.ACT2FN`.
        dropout (`float`, defaults to 0.1):
            Dropout on embeddings and on the output of every sub-block.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on attention probabilities.
        activation_dropout (`float`, defaults to 0.0):
            Dropout after the feed-forward activation.
        encoder_drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the encoder; layer i drops with rate `linspace(0, rate, layers)[i]`.
        decoder_drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the decoder, as above.
        init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialization of linear and embedding weights.
        scale_embedding (`bool`, defaults to `False`):
            Multiply token embeddings by `sqrt(d_model)`. OFA checkpoints do not.
        normalize_before (`bool`, defaults to `True`):
            Pre-LayerNorm layers (OFA) rather than post-LayerNorm (original Transformer).
        normformer (`bool`, defaults to `True`):
            NormFormer extras: a LayerNorm after each attention and one inside each feed-forward block, and a
            learned per-head output scale (`c_attn`).
        layernorm_embedding (`bool`, defaults to `True`):
            LayerNorm on text embeddings (encoder and decoder).
        patch_layernorm_embedding (`bool`, defaults to `True`):
            LayerNorm on image-patch embeddings.
        code_layernorm_embedding (`bool`, defaults to `True`):
            LayerNorm on decoder embeddings of samples that generate image codes.
        add_type_embedding (`bool`, defaults to `True`):
            Add a learned type vector (0 = text, 1 = image) to encoder inputs.
        attn_scale_factor (`float`, defaults to 2.0):
            Attention logits (content and positional) are scaled by `(head_dim * attn_scale_factor) ** -0.5`.
        token_bucket_size (`int`, defaults to 256):
            Text relative positions are bucketed into `2 * token_bucket_size - 1` log-spaced buckets.
        image_bucket_size (`int`, defaults to 42):
            Largest patch grid side. The 2-D image position table has `image_bucket_size**2 + 1` rows.
        entangle_position_embedding (`bool`, defaults to `False`):
            Also add absolute position embeddings to the input embeddings. Released checkpoints have it off;
            positions then enter only as attention biases.
        cross_attention_position_bias (`bool`, defaults to `True`):
            Add OFA's absolute position bias (decoder positions against encoder positions) to the cross-attention
            logits, as the original does. With `False`, cross-attention sees the content and the padding mask only;
            the bias's two projections (`decoder.cross_pos_q_linear`, `decoder.cross_pos_k_linear`) stay in the
            checkpoint but get no gradient, as the image-code parameters do on text-only batches. Measured on the
            demo corpus, trained from scratch: with the bias, the decoder learned to read the image at the colour
            word and the prompt at the shape word, and after 400 caption steps knew only the colour (exact match
            0.33); without it, 0.67. Trained on all ten demo tasks together, though, the tasks that answer with
            positions (grounding, detection) and ASR learned far less without it, so the demo keeps it.
        cross_attention_position_bias_dropout (`float`, defaults to `0.0`):
            During training, leave the cross-attention position bias out for each sample with this probability
            (the whole bias of that sample, every head and layer; evaluation and generation always use it). A
            sample without the bias can only find the image by its content, so cross-attention cannot settle on
            positions alone. Not in the original (0 keeps its training); it only matters with
            `cross_attention_position_bias`. Measured on the demo corpus (400 caption steps from scratch, exact
            match): 0.33 at 0, 0.47 at 0.5, 0.62 at 0.8, against 0.67 without the bias. On all ten demo tasks
            at 0.5 or 0.8, grounding, detection and ASR learned as little as without the bias.
        resnet_type (`str`, defaults to `"resnet101"`):
            Depth of the three-stage image stem, a key of `RESNET_LAYERS`.
        resnet_drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth inside the ResNet stem.
        resnet_norm (`str`, defaults to `"batch"`):
            Normalization inside the ResNet stem, one of `RESNET_NORMS`. `"batch"`: trainable BatchNorm whose running
            statistics update in train mode, as the released checkpoints were trained. `"frozen"`: BatchNorm with its
            statistics and affine fixed (buffers, never updated), the same outputs as `"batch"` in eval mode and the
            same state-dict keys, so checkpoints load across the two; converted checkpoints use it, so fine-tuning
            never couples tasks through shared statistics, and `modeling_ofa.peft_utils` switches a stem to it
            before adding adapters. `"group"`: GroupNorm (trainable affine, no running statistics) for models
            trained from scratch; its keys lack the running statistics, so BatchNorm checkpoints do not load into it.
        code_image_size (`int`, defaults to 128):
            Side in pixels of images generated as VQ codes; the decoder code grid is `code_image_size // 8` wide,
            at most `image_bucket_size`.
        sample_patch_num (`int`, *optional*):
            During training, keep a random subset of this many image patches (OFA pretraining uses 196).
        extra_modalities (`list[str]`, defaults to `[]`):
            Encoder adapters beyond text and image (OFA+): any of `"AUDIO"`, `"VIDEO"`, `"MOTION"`. Original OFA
            checkpoints have none.
        audio_feature_size (`int`, defaults to 80):
            Log-mel bins per audio frame (`OFAAudioFeatureExtractor`).
        motion_feature_size (`int`, *optional*):
            Features per motion step (joints x coordinates x frames per step); required with `"MOTION"`.
        max_video_frames (`int`, defaults to 16):
            Rows of the video time embedding: the most frames a video slot may have.
        moe_type (`str`, defaults to `"none"`):
            Feed-forward kind, one of `MOE_TYPES`: `"none"` (dense), `"modality"` (one expert per modality group,
            tokens routed by their modality id) or `"topk"` (a learned router).
        moe_layers (`str | list[int]`, defaults to `"all"`):
            Which layers get experts: `"all"`, `"every_other"`, `"top_N"` (the last N) or explicit layer indices.
        moe_modality_groups (`list[list[str]]`, *optional*):
            For `"modality"`: the modalities that share each expert. Defaults to one expert per modality in
            `MODALITIES`, as OFASys does.
        moe_num_experts (`int`, defaults to 4):
            For `"topk"`: number of experts.
        moe_top_k (`int`, defaults to 1):
            For `"topk"`: experts per token (1 or 2).
        moe_capacity_factor (`float`, *optional*, defaults to 1.25):
            For `"topk"`: each expert takes at most `factor * tokens * top_k / experts` tokens (None: no limit).
        router_aux_loss_coef (`float`, defaults to 0.01):
            For `"topk"`: weight of the routers' load-balancing loss (Switch), added to the training loss. One loss
            per stack (encoder, decoder) over the routed positions of all its expert layers, as in transformers' MoE
            models. The old name `moe_aux_loss_weight` is read as this.
        router_z_loss_coef (`float`, defaults to 0.0):
            For `"topk"`: weight of the router z-loss (ST-MoE), which keeps router logits small.
        output_router_logits (`bool`, defaults to `False`):
            Return the routers' logits in the model output (`encoder_router_logits`, `decoder_router_logits`) and
            the router losses also outside training.
        label_smoothing (`float`, defaults to 0.0):
            Label smoothing of the training loss (OFA fine-tunes with 0.1).
        pad_token_id (`int`, defaults to 1):
            Padding id (fairseq dictionary order: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3).
        bos_token_id (`int`, defaults to 0):
            Begin-of-sequence id; every source starts with it.
        eos_token_id (`int`, defaults to 2):
            End-of-sequence id; every source and target ends with it.
        decoder_start_token_id (`int`, defaults to 0):
            First decoder input. OFA starts decoding from bos, not from eos as BART does.
        forced_eos_token_id (`int`, *optional*):
            Id forced as the last token when generation reaches `max_length`; unset, as in OFA.
        is_encoder_decoder (`bool`, defaults to `True`):
            OFA is an encoder-decoder; kept for transformers' generation utilities.
        use_cache (`bool`, defaults to `True`):
            Return and reuse decoder key/value caches during generation.
        tie_word_embeddings (`bool`, defaults to `True`):
            Tie the output projection to the shared token embedding, as every OFA checkpoint does.
    """

    model_type = "ofa"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    def __init__(
        self,
        vocab_size: int = 59457,
        d_model: int = 512,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        encoder_attention_heads: int = 8,
        decoder_attention_heads: int = 8,
        encoder_ffn_dim: int = 2048,
        decoder_ffn_dim: int = 2048,
        max_position_embeddings: int = 1024,
        activation_function: str = "gelu",
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        encoder_drop_path_rate: float = 0.0,
        decoder_drop_path_rate: float = 0.0,
        init_std: float = 0.02,
        scale_embedding: bool = False,
        normalize_before: bool = True,
        normformer: bool = True,
        layernorm_embedding: bool = True,
        patch_layernorm_embedding: bool = True,
        code_layernorm_embedding: bool = True,
        add_type_embedding: bool = True,
        attn_scale_factor: float = 2.0,
        token_bucket_size: int = 256,
        image_bucket_size: int = 42,
        entangle_position_embedding: bool = False,
        cross_attention_position_bias: bool = True,
        cross_attention_position_bias_dropout: float = 0.0,
        resnet_type: str = "resnet101",
        resnet_drop_path_rate: float = 0.0,
        resnet_norm: str = "batch",
        code_image_size: int = 128,
        sample_patch_num: int | None = None,
        extra_modalities: list[str] | tuple[str, ...] = (),
        audio_feature_size: int = 80,
        motion_feature_size: int | None = None,
        max_video_frames: int = 16,
        moe_type: str = "none",
        moe_layers: str | list[int] = "all",
        moe_modality_groups: list[list[str]] | None = None,
        moe_num_experts: int = 4,
        moe_top_k: int = 1,
        moe_capacity_factor: float | None = 1.25,
        router_aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 0.0,
        output_router_logits: bool = False,
        label_smoothing: float = 0.0,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 0,
        forced_eos_token_id: int | None = None,
        is_encoder_decoder: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        if resnet_type not in RESNET_LAYERS:
            raise ValueError(f"resnet_type={resnet_type!r} is not one of {sorted(RESNET_LAYERS)}")
        if resnet_norm not in RESNET_NORMS:
            raise ValueError(f"resnet_norm={resnet_norm!r} is not one of {list(RESNET_NORMS)}")
        for name, heads in (("encoder", encoder_attention_heads), ("decoder", decoder_attention_heads)):
            if d_model % heads:
                raise ValueError(f"d_model={d_model} is not divisible by {name}_attention_heads={heads}")
        unknown = sorted(set(extra_modalities) - set(EXTRA_MODALITIES))
        if unknown:
            raise ValueError(f"extra_modalities {unknown} unknown; choose among {list(EXTRA_MODALITIES)}")
        if "MOTION" in extra_modalities and not motion_feature_size:
            raise ValueError("extra_modalities includes MOTION, so motion_feature_size must be set")
        if moe_type not in MOE_TYPES:
            raise ValueError(f"moe_type={moe_type!r} is not one of {list(MOE_TYPES)}")
        if moe_modality_groups is not None:
            flat = [m for group in moe_modality_groups for m in group]
            if sorted(flat) != sorted(set(flat)) or set(flat) - set(MODALITIES):
                raise ValueError(
                    f"moe_modality_groups {moe_modality_groups} must name each of {list(MODALITIES)} at most once"
                )
        if moe_top_k not in (1, 2):
            raise ValueError(f"moe_top_k={moe_top_k} must be 1 or 2")
        if "moe_aux_loss_weight" in kwargs:  # the name configs saved before the router fields had
            router_aux_loss_coef = kwargs.pop("moe_aux_loss_weight")
        if router_aux_loss_coef < 0 or router_z_loss_coef < 0:
            raise ValueError(
                f"router_aux_loss_coef={router_aux_loss_coef} and router_z_loss_coef={router_z_loss_coef} must be >= 0"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1)")
        if not 0.0 <= cross_attention_position_bias_dropout <= 1.0:
            raise ValueError(
                f"cross_attention_position_bias_dropout={cross_attention_position_bias_dropout} must lie in [0, 1]"
            )
        # The decoder's code positions are cells of the 2-D image position table; a wider grid would look up rows
        # the table lacks, and that would only fail (an IndexError) once image codes were generated.
        code_grid = code_image_size // 8
        if code_grid > image_bucket_size:
            raise ValueError(
                f"code_image_size={code_image_size} gives a {code_grid}x{code_grid} decoder code grid, wider than "
                f"image_bucket_size={image_bucket_size}; raise image_bucket_size to at least {code_grid} or lower "
                "code_image_size"
            )
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_attention_heads = decoder_attention_heads
        self.encoder_ffn_dim = encoder_ffn_dim
        self.decoder_ffn_dim = decoder_ffn_dim
        self.max_position_embeddings = max_position_embeddings
        self.activation_function = activation_function
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.encoder_drop_path_rate = encoder_drop_path_rate
        self.decoder_drop_path_rate = decoder_drop_path_rate
        self.init_std = init_std
        self.scale_embedding = scale_embedding
        self.normalize_before = normalize_before
        self.normformer = normformer
        self.layernorm_embedding = layernorm_embedding
        self.patch_layernorm_embedding = patch_layernorm_embedding
        self.code_layernorm_embedding = code_layernorm_embedding
        self.add_type_embedding = add_type_embedding
        self.attn_scale_factor = attn_scale_factor
        self.token_bucket_size = token_bucket_size
        self.image_bucket_size = image_bucket_size
        self.entangle_position_embedding = entangle_position_embedding
        self.cross_attention_position_bias = cross_attention_position_bias
        self.cross_attention_position_bias_dropout = cross_attention_position_bias_dropout
        self.resnet_type = resnet_type
        self.resnet_drop_path_rate = resnet_drop_path_rate
        self.resnet_norm = resnet_norm
        self.code_image_size = code_image_size
        self.sample_patch_num = sample_patch_num
        self.extra_modalities = list(extra_modalities)
        self.audio_feature_size = audio_feature_size
        self.motion_feature_size = motion_feature_size
        self.max_video_frames = max_video_frames
        self.moe_type = moe_type
        self.moe_layers = moe_layers
        self.moe_modality_groups = moe_modality_groups
        self.moe_num_experts = moe_num_experts
        self.moe_top_k = moe_top_k
        self.moe_capacity_factor = moe_capacity_factor
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.output_router_logits = output_router_logits
        self.label_smoothing = label_smoothing
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            forced_eos_token_id=forced_eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def num_experts(self) -> int:
        """Experts per MoE layer: one per modality group, `moe_num_experts` for `topk`, 0 when dense."""
        if self.moe_type == "modality":
            return len(self.moe_modality_groups or MODALITIES)
        return self.moe_num_experts if self.moe_type == "topk" else 0

    def modality_to_expert(self) -> list[int]:
        """Expert index of each modality id (`MODALITIES` order) under `moe_modality_groups`; -1 if ungrouped."""
        groups = self.moe_modality_groups or [[m] for m in MODALITIES]
        lookup = {m: i for i, group in enumerate(groups) for m in group}
        return [lookup.get(m, -1) for m in MODALITIES]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> OFAConfig:
        """Config of a published size (`tiny`, `medium`, `base`, `large`, `huge`), with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown OFA preset {name!r}; known presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
