"""OFA ("One For All"): a unified multimodal encoder-decoder, written as a transformers model.

The architecture follows the original OFA (OFA-Sys, fairseq `models/ofa/`) so that its checkpoints convert with
logits parity:

* pre-LayerNorm Transformer with NormFormer extras (a LayerNorm after each attention, one inside each feed-forward
  block, a learned scale per attention head);
* the encoder input is `[image patches ; text tokens]`: patches come from a three-stage ResNet, tokens from the
  embedding shared with the decoder and the tied output projection;
* positions are not added to the inputs; they enter as attention biases: an absolute term (a product of projected
  position embeddings, computed once per forward) plus a relative term per layer (log-bucketed 1-D buckets for text,
  2-D offsets for image patches);
* the decoder can generate image codes (`code_masks`), which switches its positions to the 2-D image grid.

Shapes in comments: B batch, N encoder length (P patches + L tokens), T new decoder positions, S all decoder
positions (cached + new), H heads, D model width.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial, wraps

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqMoEModelOutput,
    Seq2SeqMoEOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .adapters import AudioAdapter, MotionAdapter, VideoTimeEmbedding
from .configuration_ofa import MODALITIES, RESNET_LAYERS, OFAConfig
from .moe import ModalityMoE, TopKMoE, TopKRouter, dense_to_moe_state_dict, router_losses, select_moe_layers
from .resnet import DropPath, FrozenBatchNorm2d, OFAResNet, drop_path_rates

__all__ = [
    "CACHE_NAME",
    "OFACache",
    "OFADecoderOutput",
    "OFAEncoderOutput",
    "OFASeq2SeqLMOutput",
    "OFAPreTrainedModel",
    "OFAEncoder",
    "OFADecoder",
    "OFAModel",
    "OFAForConditionalGeneration",
    "eager_attention_forward",
    "make_token_bucket_positions",
    "micro_batch_share",
    "make_image_bucket_positions",
    "image_grid_position_ids",
    "shift_tokens_right",
    "vocabulary_logits",
]


# ----------------------------------------------------------------------------------------------------------------
# The KV cache's name, and the keyword arguments a forward accepts
# ----------------------------------------------------------------------------------------------------------------


# transformers 5.24 renamed the KV cache `past_key_values` -> `cache`, as a forward argument (what `generate` passes)
# and as an output field (what `generate` reads back); older 5.x releases use `past_key_values` for both. The model
# takes `cache=` and returns the cache under the field this transformers has.
CACHE_NAME = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"

# What `**kwargs: Unpack[TransformersKwargs]` may hold; anything else is an error, never silently dropped.
_TRANSFORMERS_KWARGS = frozenset(TransformersKwargs.__required_keys__ | TransformersKwargs.__optional_keys__)


def _check_kwargs(kwargs: dict, where: str, ignored: tuple[str, ...] = ()) -> None:
    """Raise on keyword arguments that are neither named parameters of `where` nor `TransformersKwargs`.

    `ignored` names inputs of another part of the model that callers hand to this part too (`generate` passes every
    model keyword that does not start with `decoder_` to the encoder, `code_masks` included); they are explicitly
    not this part's business.
    """
    unknown = sorted(set(kwargs) - _TRANSFORMERS_KWARGS - set(ignored))
    if unknown:
        raise TypeError(f"{where}.forward() got unexpected keyword arguments {unknown}")


def _accepts_past_key_values(func: Callable) -> Callable:
    """`past_key_values=` as an alias of `cache=`.

    On transformers >= 5.24 it is deprecated, as in transformers' own models; older releases' `generate` still passes
    `past_key_values` itself, so there the alias is silent.
    """
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(func)

    @wraps(func)
    def wrapper(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("pass the KV cache once, as `cache` (or its old name `past_key_values`), not both")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return func(*args, **kwargs)

    return wrapper


# Decoder inputs that `generate` hands to the encoder as well (it passes every model keyword argument that does not
# start with `decoder_`); the encoder leaves them to the decoder.
_DECODER_INPUTS = ("code_masks",)


class OFACache(EncoderDecoderCache):
    """The decoder's KV cache (`EncoderDecoderCache`) plus the projected position keys OFA's biases reuse.

    The attention layers read and write the self- and cross-attention caches as in BART. On top of them, the decoder
    stores projections that depend on the weights and the encoder output only, so that a cached step computes them
    for its own positions alone:

    Attributes:
        self_position_keys (`dict[str, torch.Tensor]`):
            Projected self-attention position keys of every decoder position so far, per position kind (`"text"`:
            1-D text positions, `"image"`: 2-D image-code positions), each `(num_heads, positions, head_dim)`. Keyed
            by name because a step computes only the kinds its batch uses (text only, codes only, or both). They do
            not depend on the batch row, so beam reordering leaves them; after `crop` the first rows are used.
        cross_position_keys (`torch.Tensor` of shape `(batch_size, num_heads, encoder_length, head_dim)`, *optional*):
            The decoder's projection of the encoder's position embeddings, computed on the first decoder call.
        cross_groups (`int`):
            Size of the groups of consecutive batch rows whose encoder output is the same (the beams of one sample
            after `generate` expanded the encoder output), found on the first decoder call; 1 when unknown. The
            cross-attention keys and values are then projected once per group, and a beam reordering that stays
            inside the groups leaves the cross-attention caches alone (their rows are equal within a group), which
            saves copying `(batch_size, num_heads, encoder_length, head_dim)` tensors of every layer per step.

    Any `EncoderDecoderCache` handed to the model (by `generate` or by hand) is wrapped into one with `from_cache`,
    sharing its layer caches; the output carries the `OFACache`, which is what the next step should get.
    """

    def __init__(self, *caches) -> None:
        super().__init__(*caches)
        self.self_position_keys: dict[str, torch.Tensor] = {}
        self.cross_position_keys: torch.Tensor | None = None
        self.cross_groups = 1

    @classmethod
    def from_cache(cls, cache: Cache) -> OFACache:
        """`cache` itself if it is an `OFACache`; otherwise an `OFACache` over the same layer caches."""
        if isinstance(cache, cls):
            return cache
        if not isinstance(cache, EncoderDecoderCache):
            raise TypeError(
                "OFA's decoder needs an EncoderDecoderCache (self- and cross-attention caches), got "
                f"{type(cache).__name__}"
            )
        wrapped = cls(cache.self_attention_cache, cache.cross_attention_cache)
        wrapped.is_updated = cache.is_updated
        return wrapped

    def reset(self) -> None:
        super().reset()
        self.self_position_keys = {}
        self.cross_position_keys = None
        self.cross_groups = 1

    def _stays_in_groups(self, beam_idx: torch.LongTensor) -> bool:
        """Whether every row `i` takes its new content from a row of its own group (`cross_groups` rows)."""
        if self.cross_groups == 1:
            return False
        rows = torch.arange(beam_idx.shape[0], device=beam_idx.device)
        return torch.equal(beam_idx // self.cross_groups, rows // self.cross_groups)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)
        if self._stays_in_groups(beam_idx):
            return  # cross-attention rows are equal within a group: reordering inside one changes nothing
        self.cross_attention_cache.reorder_cache(beam_idx)
        if self.cross_position_keys is not None:
            self.cross_position_keys = self.cross_position_keys.index_select(
                0, beam_idx.to(self.cross_position_keys.device)
            )

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.cross_groups = 1
        if self.cross_position_keys is not None:
            self.cross_position_keys = self.cross_position_keys.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.cross_groups = 1
        if self.cross_position_keys is not None:
            self.cross_position_keys = self.cross_position_keys[indices]


# ----------------------------------------------------------------------------------------------------------------
# Position buckets (pure functions of the config; rebuilt, never stored in checkpoints)
# ----------------------------------------------------------------------------------------------------------------


TOKEN_BUCKET_SPAN = 1024  # positions over which the original spaces its text buckets


def make_token_bucket_positions(bucket_size: int, max_position: int) -> torch.Tensor:
    """Relative text positions -> table rows, shape (max_position, max_position), values in [0, 2*bucket_size-2].

    Offsets up to `bucket_size // 2` keep their own bucket; longer ones share log-spaced buckets.
    """
    pos = torch.arange(max_position)
    rel = pos[:, None] - pos[None, :]  # query minus key
    mid = bucket_size // 2
    abs_rel = torch.where(rel.abs() < mid, torch.full_like(rel, mid - 1), rel.abs())
    log_pos = torch.ceil(torch.log(abs_rel / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_rel <= mid, rel, log_pos.long() * torch.sign(rel))
    return bucket + bucket_size - 1


def make_image_bucket_positions(bucket_size: int) -> torch.Tensor:
    """Pairs of 2-D patch position ids -> table rows, shape (bucket_size**2 + 1,) * 2.

    Id 0 is reserved (no patch); its row, column and corner get the last three table rows.
    """
    num_rows = (2 * bucket_size - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, G) with G = bucket_size**2
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (bucket_size - 1)  # (G, G, 2), >= 0
    table = torch.zeros((bucket_size**2 + 1,) * 2, dtype=torch.long)
    table[1:, 1:] = rel[..., 0] * (2 * bucket_size - 1) + rel[..., 1]
    table[0, :] = num_rows - 3
    table[:, 0] = num_rows - 2
    table[0, 0] = num_rows - 1
    return table


def image_grid_position_ids(height: int, width: int, bucket_size: int, device: torch.device | None = None):
    """Position id of each patch of an (height, width) grid in row-major order: row * bucket_size + col + 1."""
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).flatten()  # (height * width,)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last label, turn -100 into padding."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def micro_batch_share(
    aux_loss: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> torch.Tensor:
    """The router loss to add to one micro-batch's token loss.

    With accumulated micro-batches (`num_items_in_batch`, the scored tokens of the whole step) the token loss is a
    sum over the step's tokens; the router loss is then weighed by this micro-batch's share of them, so that a step
    adds it once rather than once per micro-batch.
    """
    if num_items_in_batch is None:
        return aux_loss
    return aux_loss * labels.ne(-100).sum() / num_items_in_batch


# `vocabulary_logits` multiplies a few rows by the output projection one block of vocabulary rows at a time: blocks
# of at most this many bytes of weights (768 KiB, within a core's L2 cache) and a multiple of 64 rows, for 2 to
# `LM_HEAD_BLOCK_MAX_ROWS` rows. 0 turns the blocking off (`scripts/benchmark.py` does, to measure what it gains).
LM_HEAD_BLOCK_BYTES = 3 << 18
LM_HEAD_BLOCK_MAX_ROWS = 1024


def vocabulary_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)`, the language-model logits (..., V); without autograd on CPU, in blocks of vocabulary rows.

    Why: on CPU a product of a few rows (decoding: one per beam) with the whole (V, D) matrix reads the matrix at a
    fraction of the memory bandwidth, while products with L2-sized blocks of it run faster (measured at the base
    preset, one thread, MKL: 0.77 of the time for 2 rows, 0.65 for 80, 0.76 for 1024; slower for one row, which
    takes the matrix-vector path, and for thousands, hence the bounds). Blocks of a multiple of 64 rows keep every
    logit the same dot product in the same order: the values are those of `head(hidden)` bit for bit (measured for
    d_model 256 to 1280 and 2 to 1024 rows; `tests/test_generation_cache.py`). A head with hooks or a wrapped
    forward (accelerate's offloading), a quantized head, autograd, tracing and other devices get `head(hidden)`.
    """
    rows = hidden.numel() // hidden.shape[-1]
    if (
        type(head) is not nn.Linear
        or head.weight.dtype != torch.float32
        or bool(head._forward_hooks or head._forward_pre_hooks or "forward" in vars(head))
        or not 2 <= rows <= LM_HEAD_BLOCK_MAX_ROWS
        or torch.is_grad_enabled()
        or hidden.device.type != "cpu"
        or _tracing()
    ):
        return head(hidden)
    block = LM_HEAD_BLOCK_BYTES // (head.in_features * head.weight.element_size()) // 64 * 64
    if not 0 < block < head.out_features:  # off, or the whole matrix is one block
        return head(hidden)
    flat = hidden.reshape(rows, hidden.shape[-1])  # (N, D)
    biases = head.bias.split(block) if head.bias is not None else itertools.repeat(None)
    logits = torch.cat([F.linear(flat, w, b) for w, b in zip(head.weight.split(block), biases)], dim=1)  # (N, V)
    return logits.view(*hidden.shape[:-1], head.out_features)


def _moe_layers(config: OFAConfig, num_layers: int) -> set[int]:
    """Indices of the layers that get an expert block."""
    if config.moe_type == "none":
        return set()
    return set(select_moe_layers(config.moe_layers, num_layers))


def _additive_mask(masked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = masked key) -> additive float mask: 0 where attended, the dtype's most negative finite
    value where masked (finite, so a fully masked row stays free of NaN)."""
    return torch.zeros(masked.shape, dtype=dtype, device=masked.device).masked_fill(masked, torch.finfo(dtype).min)


def _causal_padding_mask(
    past: int, total: int, attention_mask: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive causal (and, with `attention_mask`, padding) mask of the steps `past..total` over all `total` keys:
    (1 or B, 1, T, S)."""
    query_pos = torch.arange(past, total, device=device)
    masked = (torch.arange(total, device=device)[None, :] > query_pos[:, None])[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        masked = masked | attention_mask[:, None, None, -total:].eq(0)
    return _additive_mask(masked, dtype)


def _tracing() -> bool:
    """Whether the model is being traced or compiled: data-dependent shortcuts must then stay out of the graph."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _batch_invariant(x: torch.Tensor) -> bool:
    """Whether `x` (batch first) is one row broadcast over the batch, so that work on it can run on one row."""
    return x.shape[0] == 1 or x.stride(0) == 0


def _row_group_size(*tensors: torch.Tensor) -> int:
    """Size k of the groups of consecutive batch rows that are equal in every tensor (1 if there are none).

    `generate` repeats the encoder output once per beam (or returned sequence) before the first decoder call; the
    decoder then projects the cross-attention inputs once per group. Comparing the rows costs one pass over the
    encoder output, a small fraction of the projections it saves.
    """
    bsz = tensors[0].shape[0]
    if bsz == 1 or _tracing():
        return 1
    first = tensors[0]
    size = 1
    while size < bsz and torch.equal(first[size], first[0]):
        size += 1
    if size == 1 or bsz % size:
        return 1
    for t in tensors:
        grouped = t.reshape(bsz // size, size, *t.shape[1:])
        if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
            return 1
    return size


@dataclass
class _Segment:
    """One modality's part of the encoder sequence."""

    embeds: torch.Tensor  # (B, n, D)
    padding: torch.Tensor  # (B, n), True at padding
    positions: torch.Tensor  # (B, n, D) layer-normalized absolute position embeddings
    rel_ids: torch.Tensor  # (n,) 1-D positions, or (B, n) 2-D grid ids when is_image
    is_image: bool  # which relative table: 2-D image offsets or 1-D token buckets
    modality: int | torch.Tensor  # a MODALITIES index, or (B, n) ids

    def modality_ids(self, bsz: int) -> torch.Tensor:
        if isinstance(self.modality, torch.Tensor):
            return self.modality.to(self.embeds.device).long()
        return torch.full((bsz, self.embeds.shape[1]), self.modality, dtype=torch.long, device=self.embeds.device)


@dataclass
class _RelativeSpan:
    """Where one segment sits in the encoder sequence, and its relative position table rows (any layer's)."""

    start: int
    end: int
    buckets: torch.Tensor  # (n, n), or (B, n, n) when is_image
    is_image: bool


@dataclass
class OFAEncoderOutput(BaseModelOutput):
    """
    Encoder output, plus what the decoder needs besides the hidden states.

    Args:
        padding_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`):
            True at padding (text padding and the patches of samples without an image).
        position_embeddings (`torch.FloatTensor` of shape `(batch_size, sequence_length, d_model)`):
            Layer-normalized absolute position embeddings of `[patches ; tokens]`, for the decoder's
            cross-attention position bias.
        modality_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            `MODALITIES` index of every position (routes modality experts).
        router_logits (`tuple(torch.FloatTensor)`, *optional*):
            With `output_router_logits` on a `topk` model: per expert layer, the router logits of the routed (real)
            positions, `(routed_positions, num_experts)`.
    """

    padding_mask: torch.BoolTensor | None = None
    position_embeddings: torch.FloatTensor | None = None
    modality_ids: torch.LongTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OFADecoderOutput(BaseModelOutputWithPastAndCrossAttentions):
    """
    Decoder output (`BaseModelOutputWithPastAndCrossAttentions`; its cache is an `OFACache`) plus router logits.

    Args:
        router_logits (`tuple(torch.FloatTensor)`, *optional*):
            With `output_router_logits` on a `topk` model: per expert layer, the router logits of the routed (real)
            target positions, `(routed_positions, num_experts)`.
    """

    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OFASeq2SeqLMOutput(Seq2SeqMoEOutput):
    """
    `Seq2SeqMoEOutput` plus the weighted total of the router losses.

    Args:
        aux_loss (`torch.FloatTensor`, *optional*):
            `router_aux_loss_coef * (encoder_aux_loss + decoder_aux_loss) + router_z_loss_coef * (encoder_z_loss +
            decoder_z_loss)` of a `topk` model; in training it is already included in `loss` (when labels are given),
            and it is reported here separately for logging and for trainers that compute the token loss themselves.
    """

    aux_loss: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with an additive position bias, the contract of `ALL_ATTENTION_FUNCTIONS` entries.

    Args:
        query, key, value (`torch.Tensor`): `(B, H, T, D/H)`, `(B, H, S, D/H)`, `(B, H, S, D/H)`.
        attention_mask (`torch.Tensor`, *optional*): Additive `(B, 1, T, S)` mask (0 or the dtype minimum).
        scaling (`float`): Query scale.
        dropout (`float`): Dropout on the attention probabilities.
        position_bias (`torch.Tensor`, *optional*): Additive `(B, H, T, S)` bias.

    Returns:
        The output `(B, T, H, D/H)` and the attention probabilities `(B, H, T, S)`.
    """
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # (B, H, T, S)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(F.dropout(weights, dropout, module.training), value)  # (B, H, T, D/H)
    return out.transpose(1, 2).contiguous(), weights


class OFAAttention(nn.Module):
    """Multi-head attention with OFA's additive position bias and NormFormer's per-head output scale.

    The attention itself runs through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` (`"sdpa"`, `"eager"`,
    or a function registered with `AttentionInterface`), which takes the bias as `position_bias`, as T5 does;
    `attn_implementation` therefore switches at load time and with `set_attn_implementation`. Asking for the
    attention weights (`output_attentions`) computes them eagerly, since SDPA does not return them.
    """

    def __init__(self, config: OFAConfig, num_heads: int, layer_idx: int | None = None, is_cross: bool = False):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = (self.head_dim * config.attn_scale_factor) ** -0.5
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_cross = is_cross
        # Causality is part of the additive mask the decoder builds, so the attention functions must not add theirs.
        self.is_causal = False
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if config.normformer else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, len, D/H)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_bias: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        kv_repeats: int = 1,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, target_length, d_model)`): The queries' input.
            attention_mask (`torch.Tensor` of shape `(batch_size, 1, target_length, key_length)`, *optional*):
                Additive mask: 0 for visible keys, the dtype minimum for masked ones (padding, future positions).
            position_bias (`torch.Tensor` of shape `(batch_size, num_heads, target_length, key_length)`):
                OFA's absolute plus relative position bias.
            key_value_states (`torch.Tensor`, *optional*): The encoder output, for cross-attention.
            cache (`EncoderDecoderCache`, *optional*): The decoder's cache; this layer's keys and values are added.
            kv_repeats (`int`): Cross-attention only: `key_value_states` holds one row per group of this many
                query rows (beams); its projected keys and values are repeated to the query batch.
        """
        bsz, tgt_len, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states))  # (B, H, T, D/H)

        layer_cache = None
        if cache is not None:
            layer_cache = cache.cross_attention_cache if self.is_cross else cache.self_attention_cache
        if self.is_cross and cache is not None and cache.is_updated.get(self.layer_idx, False):
            # The encoder does not change during generation: reuse its projected keys and values.
            key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if self.is_cross else hidden_states
            key, value = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))  # (B, H, S, D/H)
            if kv_repeats > 1:  # (B/k, H, S, D/H) -> (B, H, S, D/H)
                key, value = key.repeat_interleave(kv_repeats, 0), value.repeat_interleave(kv_repeats, 0)
            if layer_cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if self.is_cross:
                    cache.is_updated[self.layer_idx] = True

        implementation = "eager" if kwargs.get("output_attentions") else self.config._attn_implementation
        if implementation == "eager":  # ours, which adds the bias (whatever "eager" may mean to the registry)
            attention = eager_attention_forward
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            position_bias=position_bias,
            is_causal=False,
            **kwargs,
        )  # out: (B, T, H, D/H)
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, 1, -1, 1).to(out.dtype)
        out = out.reshape(bsz, tgt_len, -1)  # (B, T, D)
        return self.out_proj(out), weights


class _OFALayer(GradientCheckpointingLayer):
    """What encoder and decoder layers share: pre-LN self-attention with NormFormer LayerNorms, and the feed-forward
    block (dense `fc1`/`fc2`/`ffn_layer_norm`, the original key names, or an expert block at `moe`)."""

    def __init__(
        self, config: OFAConfig, num_heads: int, ffn_dim: int, layer_idx: int, drop_path_rate: float, use_moe: bool
    ):
        super().__init__()
        d = config.d_model
        self.normalize_before = config.normalize_before
        self.self_attn = OFAAttention(config, num_heads, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.activation_fn = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.drop_path = DropPath(drop_path_rate)
        self.moe = None
        if not use_moe:
            self.fc1 = nn.Linear(d, ffn_dim)
            self.fc2 = nn.Linear(ffn_dim, d)
            self.ffn_layer_norm = nn.LayerNorm(ffn_dim) if config.normformer else None
            return
        shared = dict(
            d_model=d,
            ffn_dim=ffn_dim,
            activation=config.activation_function,
            dropout=config.dropout,
            activation_dropout=config.activation_dropout,
            normformer=config.normformer,
        )
        if config.moe_type == "modality":
            self.moe = ModalityMoE(config.num_experts, **shared)
            self.register_buffer("modality_to_expert", torch.tensor(config.modality_to_expert()), persistent=False)
        else:
            self.moe = TopKMoE(
                config.num_experts,
                top_k=config.moe_top_k,
                capacity_factor=config.moe_capacity_factor,
                balance_loss_coef=config.router_aux_loss_coef,
                z_loss_coef=config.router_z_loss_coef,
                **shared,
            )

    def attention_block(
        self,
        attn: OFAAttention,
        pre_norm: nn.LayerNorm,
        mid_norm: nn.LayerNorm | None,
        hidden_states: torch.Tensor,
        **attn_kwargs,
    ) -> torch.Tensor:
        """Residual attention sub-block: (pre-LN) -> attention -> NormFormer LN -> dropout, drop-path -> (post-LN)."""
        residual = hidden_states
        if self.normalize_before:
            hidden_states = pre_norm(hidden_states)
        hidden_states, _ = attn(hidden_states, **attn_kwargs)
        if mid_norm is not None:
            hidden_states = mid_norm(hidden_states)
        hidden_states = residual + self.drop_path(self.dropout(hidden_states))
        if not self.normalize_before:
            hidden_states = pre_norm(hidden_states)
        return hidden_states

    def feed_forward_block(
        self, hidden_states: torch.Tensor, modality_ids: torch.Tensor | None, token_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Residual feed-forward sub-block; expert blocks route real tokens only (`token_mask`, True = real)."""
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.drop_path(self.feed_forward(hidden_states, modality_ids, token_mask))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states

    def feed_forward(
        self,
        hidden_states: torch.Tensor,
        modality_ids: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.moe is None:
            hidden_states = self.activation_dropout(self.activation_fn(self.fc1(hidden_states)))
            if self.ffn_layer_norm is not None:
                hidden_states = self.ffn_layer_norm(hidden_states)
            return self.dropout(self.fc2(hidden_states))
        if isinstance(self.moe, TopKMoE):
            return self.moe(hidden_states, token_mask)[0]
        if modality_ids is None:
            modality_ids = torch.zeros(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        expert_ids = self.modality_to_expert[modality_ids]  # (B, T)
        if bool((expert_ids < 0).any()):
            missing = sorted({MODALITIES[i] for i in modality_ids[expert_ids < 0].unique().tolist()})
            raise ValueError(f"modalities {missing} belong to no group of config.moe_modality_groups")
        return self.moe(hidden_states, expert_ids, token_mask)


class OFAEncoderLayer(_OFALayer):
    """Self-attention and feed-forward blocks, pre-LN with NormFormer LayerNorms."""

    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0, use_moe: bool = False):
        super().__init__(
            config, config.encoder_attention_heads, config.encoder_ffn_dim, layer_idx, drop_path_rate, use_moe
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        position_bias: torch.Tensor,
        modality_ids: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        bias_builder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, length, d_model)`): The layer's input.
            attention_mask (`torch.Tensor` of shape `(batch_size, 1, length, length)`, *optional*): Additive
                key-padding mask.
            position_bias (`torch.Tensor` of shape `(batch_size, num_heads, length, length)`): The position bias; or,
                with `bias_builder`, what the builder turns into it.
            modality_ids (`torch.Tensor` of shape `(batch_size, length)`, *optional*): Routes modality experts.
            token_mask (`torch.Tensor` of shape `(batch_size, length)`, *optional*): True at real positions; expert
                blocks route only those.
            bias_builder (`Callable`, *optional*): Builds this layer's bias from `position_bias` (the part all layers
                share) and `attention_mask`, which it includes. It runs here, inside the region that gradient
                checkpointing recomputes, so checkpointing keeps the shared tensor once rather than one
                `(batch_size, num_heads, length, length)` bias per layer.
        """
        if bias_builder is not None:
            # The builder folds the mask into the bias, which the attention then takes as is (SDPA would otherwise
            # add the two in one more pass over a (B, H, N, N) tensor).
            position_bias, attention_mask = bias_builder(position_bias, attention_mask), None
        hidden_states = self.attention_block(
            self.self_attn,
            self.self_attn_layer_norm,
            self.self_attn_mid_layer_norm,
            hidden_states,
            attention_mask=attention_mask,
            position_bias=position_bias,
            **kwargs,
        )
        return self.feed_forward_block(hidden_states, modality_ids, token_mask)


class OFADecoderLayer(_OFALayer):
    """Causal self-attention, cross-attention over the encoder, feed-forward; each pre-LN with NormFormer LNs."""

    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0, use_moe: bool = False):
        super().__init__(
            config, config.decoder_attention_heads, config.decoder_ffn_dim, layer_idx, drop_path_rate, use_moe
        )
        self.cross_attn = OFAAttention(config, config.decoder_attention_heads, layer_idx, is_cross=True)
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(config.d_model) if config.normformer else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        position_bias: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        cross_position_bias: torch.Tensor,
        modality_ids: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        cross_kv_repeats: int = 1,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, target_length, d_model)`): The layer's input.
            attention_mask (`torch.Tensor` of shape `(batch_size, 1, target_length, key_length)`, *optional*):
                Additive causal and padding mask of the self-attention (None when `position_bias` includes it).
            position_bias (`torch.Tensor` of shape `(batch_size, num_heads, target_length, key_length)`):
                Self-attention position bias.
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, encoder_length, d_model)`): Encoder output.
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, 1, target_length, encoder_length)`,
                *optional*): Additive encoder-padding mask (None when `cross_position_bias` includes it).
            cross_position_bias (`torch.Tensor` of shape `(batch_size, num_heads, target_length, encoder_length)`):
                Cross-attention position bias.
            modality_ids, token_mask: as in `OFAEncoderLayer.forward`.
            cache (`EncoderDecoderCache`, *optional*): Where the attention layers keep their keys and values.
            cross_kv_repeats (`int`): `encoder_hidden_states` has one row per group of this many rows of
                `hidden_states` (see `OFAAttention.forward`).
        """
        hidden_states = self.attention_block(
            self.self_attn,
            self.self_attn_layer_norm,
            self.self_attn_mid_layer_norm,
            hidden_states,
            attention_mask=attention_mask,
            position_bias=position_bias,
            cache=cache,
            **kwargs,
        )
        hidden_states = self.attention_block(
            self.cross_attn,
            self.cross_attn_layer_norm,
            self.cross_attn_mid_layer_norm,
            hidden_states,
            attention_mask=encoder_attention_mask,
            position_bias=cross_position_bias,
            key_value_states=encoder_hidden_states,
            cache=cache,
            kv_repeats=cross_kv_repeats,
            **kwargs,
        )
        return self.feed_forward_block(hidden_states, modality_ids, token_mask)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained base
# ----------------------------------------------------------------------------------------------------------------


class OFAPreTrainedModel(PreTrainedModel):
    # Spelled out: with postponed annotations (`from __future__ import annotations`) transformers cannot read the
    # config class off the `config` annotation.
    config_class = OFAConfig
    config: OFAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # OFA's position bias is an additive term of the attention scores: SDPA takes it, flash attention cannot.
    # transformers' flex attention would take it as a score modification, but through transformers 5.24 on CPU
    # (torch 2.13) the process died in it (double free), so it stays off until it is tested where it runs.
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_flash_attn = False
    # Expert routing has data-dependent shapes.
    _can_compile_fullgraph = False
    _no_split_modules = ["OFAEncoderLayer", "OFADecoderLayer", "OFAResNet"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _keys_to_ignore_on_load_unexpected = [r"encoder\.version", r"decoder\.version"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, OFAAttention) and module.c_attn is not None:
            init.ones_(module.c_attn)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, FrozenBatchNorm2d):
            # Its statistics and affine are buffers, which the generic initialization leaves alone: an identity norm.
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, _OFALayer) and isinstance(module.moe, ModalityMoE):
            init.copy_(module.modality_to_expert, torch.tensor(self.config.modality_to_expert()))
        elif isinstance(module, (OFAEncoder, OFADecoder)):
            # Relative position tables start at zero (no bias until learned), as in the original.
            for table in (*module.token_rel_pos_table_list, *module.image_rel_pos_table_list):
                init.zeros_(table.weight)
            # Deterministic index buffers are not saved; rebuild them whenever weights are (re)initialized.
            for name, value in module.position_buffers().items():
                init.copy_(getattr(module, name), value)


class _PositionTables(nn.Module):
    """What the encoder and the decoder share: position tables, their LayerNorms and the bucket indices."""

    def _build_position_tables(self, config: OFAConfig, num_layers: int, num_heads: int) -> None:
        d = config.d_model
        self.num_heads = num_heads
        self.pos_scaling = (d / num_heads * config.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        num_token_buckets = 2 * config.token_bucket_size - 1
        num_image_buckets = (2 * config.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_token_buckets, num_heads) for _ in range(num_layers)]
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_image_buckets, num_heads) for _ in range(num_layers)]
        )
        for name, value in self.position_buffers().items():
            self.register_buffer(name, value, persistent=False)

    def position_buffers(self) -> dict[str, torch.Tensor]:
        config = self.config
        return {
            # The original always spaces the log buckets over 1024 positions, whatever the model's limit.
            "token_rp_bucket": make_token_bucket_positions(
                config.token_bucket_size, max(TOKEN_BUCKET_SPAN, config.max_position_embeddings)
            ),
            "image_rp_bucket": make_image_bucket_positions(config.image_bucket_size),
        }

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_heads, -1).transpose(-2, -3)  # (..., H, len, D/H)

    def _check_length(self, length: int, what: str) -> None:
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"{what} has {length} positions, more than max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate it or raise the limit"
            )


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


class OFAEncoder(OFAPreTrainedModel, _PositionTables):
    """Embeds `[image patches ; text tokens]` and runs the encoder layers with position biases."""

    _can_record_outputs = {
        "hidden_states": OFAEncoderLayer,
        "attentions": OutputRecorder(OFAAttention, index=1),
        "router_logits": OutputRecorder(TopKRouter, index=0),
    }

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        d = config.d_model
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.embed_tokens = embed_tokens or nn.Embedding(config.vocab_size, d, config.pad_token_id)
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.embed_images = OFAResNet(
            RESNET_LAYERS[config.resnet_type], config.resnet_drop_path_rate, norm=config.resnet_norm
        )
        self.image_proj = nn.Linear(OFAResNet.out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        extra = config.extra_modalities
        self.video_time_embedding = VideoTimeEmbedding(config) if "VIDEO" in extra else None
        adapters = {"AUDIO": AudioAdapter, "MOTION": MotionAdapter}
        self.adapters = nn.ModuleDict({name: adapters[name](config) for name in adapters if name in extra})
        self.dropout = nn.Dropout(config.dropout)
        self._build_position_tables(config, config.encoder_layers, config.encoder_attention_heads)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = drop_path_rates(config.encoder_drop_path_rate, config.encoder_layers)
        moe = _moe_layers(config, config.encoder_layers)
        self.layers = nn.ModuleList(
            [OFAEncoderLayer(config, i, rates[i], i in moe) for i in range(config.encoder_layers)]
        )
        self.layer_norm = nn.LayerNorm(d) if config.normalize_before else None
        self.gradient_checkpointing = False
        self.post_init()

    def _type(self, x: torch.Tensor, type_id: int) -> torch.Tensor:
        if self.type_embedding is None:
            return x
        return x + self.type_embedding.weight[type_id]

    def _patch_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) -> ResNet features (B, P, 1024) and the patches' grid position ids (P,)."""
        features = self.embed_images(pixel_values)  # (B, 1024, h, w)
        h, w = features.shape[-2:]
        if max(h, w) > self.config.image_bucket_size:
            raise ValueError(
                f"pixel_values of size {tuple(pixel_values.shape[-2:])} give a {h}x{w} patch grid, larger than "
                f"image_bucket_size={self.config.image_bucket_size}; use images of at most "
                f"{16 * self.config.image_bucket_size} pixels per side"
            )
        position_ids = image_grid_position_ids(h, w, self.config.image_bucket_size, features.device)
        return features.flatten(2).transpose(1, 2), position_ids  # (B, P, 1024), (P,)

    def _finish_patches(self, x: torch.Tensor, raw_positions: torch.Tensor) -> torch.Tensor:
        """Projected patches -> (+ entangled positions) + image type -> patch LayerNorm -> dropout."""
        if self.config.entangle_position_embedding:
            x = x + raw_positions
        x = self._type(x, 1)
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return self.dropout(x)

    def _sample_mask(self, present: torch.Tensor | None, bsz: int, length: int, device) -> torch.Tensor:
        """Padding (B, n) of a segment: everything, for samples that lack the modality (`present` False)."""
        padding = torch.zeros(bsz, length, dtype=torch.bool, device=device)
        if present is not None:
            padding = padding | ~present.to(device=device, dtype=torch.bool).view(bsz, 1)
        return padding

    def embed_patches(self, pixel_values: torch.Tensor, patch_masks: torch.Tensor | None) -> _Segment:
        """Image slot: ResNet patches (B, P, D), with 2-D grid positions."""
        features, grid_ids = self._patch_features(pixel_values)
        bsz, num_patches = features.shape[:2]
        position_ids = grid_ids.expand(bsz, -1)  # (B, P)
        sample = self.config.sample_patch_num
        if self.training and sample is not None and sample < num_patches:
            # Pretraining trick: train on a random subset of patches (different per sample).
            order = torch.rand(bsz, num_patches, device=features.device).argsort(dim=1)[:, :sample]  # (B, P')
            features = features.gather(1, order[..., None].expand(-1, -1, features.shape[-1]))
            position_ids = position_ids.gather(1, order)
            raw_positions = self.embed_image_positions(position_ids)  # (B, P', D)
            positions = self.image_pos_ln(raw_positions)
        else:
            # Every sample has the same grid: embed it once and broadcast (the bias then runs on one row too).
            raw_positions = self.embed_image_positions(grid_ids)  # (P, D)
            positions = self.image_pos_ln(raw_positions).expand(bsz, -1, -1)  # (B, P, D), one row broadcast
        x = self._finish_patches(self.image_proj(features) * self.embed_scale, raw_positions)
        padding = self._sample_mask(patch_masks, bsz, x.shape[1], x.device)
        return _Segment(x, padding, positions, position_ids, True, MODALITIES.index("IMAGE"))

    def embed_video(
        self, video_pixel_values: torch.Tensor, frame_indices: torch.Tensor | None, video_masks: torch.Tensor | None
    ) -> _Segment:
        """Video slot (B, F, 3, H, W): every frame through the image stem, plus a learned time embedding."""
        if self.video_time_embedding is None:
            raise ValueError(
                "got video inputs, but this model has no VIDEO adapter; add 'VIDEO' to config.extra_modalities "
                f"(now {self.config.extra_modalities})"
            )
        bsz, frames = video_pixel_values.shape[:2]
        if frames > self.config.max_video_frames:
            raise ValueError(
                f"the video has {frames} frames, more than max_video_frames={self.config.max_video_frames}"
            )
        features, grid_ids = self._patch_features(video_pixel_values.flatten(0, 1))  # (B*F, P, 1024), (P,)
        num_patches = features.shape[1]
        x = self.image_proj(features).view(bsz, frames * num_patches, -1) * self.embed_scale  # (B, F*P, D)
        if frame_indices is None:
            frame_indices = torch.arange(frames, device=x.device).expand(bsz, -1)
        x = x + self.video_time_embedding(frame_indices).repeat_interleave(num_patches, dim=1)  # (B, F*P, D)
        position_ids = grid_ids.repeat(frames).expand(bsz, -1)  # (B, F*P): frames share the grid
        raw_positions = self.embed_image_positions(position_ids)
        x = self._finish_patches(x, raw_positions)
        padding = self._sample_mask(video_masks, bsz, x.shape[1], x.device)
        return _Segment(x, padding, self.image_pos_ln(raw_positions), position_ids, True, MODALITIES.index("VIDEO"))

    def embed_sequence(self, adapter: nn.Module, features, mask, present, modality: str) -> _Segment:
        """Audio or motion slot: its adapter, then 1-D positions like text."""
        x, padding = adapter(features, mask)  # (B, n, D), (B, n)
        length = x.shape[1]
        self._check_length(length, f"the {modality.lower()} input (after its adapter)")
        padding = padding | self._sample_mask(present, x.shape[0], length, x.device)
        positions = self.pos_ln(self.embed_positions.weight[:length]).expand(x.shape[0], -1, -1)
        rel_ids = torch.arange(length, device=x.device)
        return _Segment(self.dropout(x), padding, positions, rel_ids, False, MODALITIES.index(modality))

    def embed_text(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> _Segment:
        """Text tokens (B, L, D), with 1-D positions."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        bsz, length = inputs_embeds.shape[:2]
        self._check_length(length, "the text input")
        if attention_mask is None:
            padding = input_ids.eq(self.config.pad_token_id) if input_ids is not None else None
        else:
            padding = attention_mask.eq(0)
        if padding is None:
            padding = torch.zeros(bsz, length, dtype=torch.bool, device=inputs_embeds.device)
        raw_positions = self.embed_positions.weight[:length]  # (L, D)
        x = inputs_embeds * self.embed_scale
        if self.config.entangle_position_embedding:
            x = x + raw_positions
        x = self._type(x, 0)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        positions = self.pos_ln(raw_positions).expand(bsz, -1, -1)  # (B, L, D)
        rel_ids = torch.arange(length, device=x.device)
        return _Segment(self.dropout(x), padding, positions, rel_ids, False, MODALITIES.index("TEXT"))

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_masks: torch.BoolTensor | None = None,
        input_modality_ids: torch.LongTensor | None = None,
        video_pixel_values: torch.FloatTensor | None = None,
        video_frame_indices: torch.LongTensor | None = None,
        video_masks: torch.BoolTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        audio_masks: torch.BoolTensor | None = None,
        motion_features: torch.FloatTensor | None = None,
        motion_attention_mask: torch.Tensor | None = None,
        motion_masks: torch.BoolTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> OFAEncoderOutput:
        r"""
        The encoder sequence is `[image ; video ; audio ; motion ; text]`, each part present only when given.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                Text token ids: `<s>` prompt `</s>`, padded with `pad_token_id`.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
                1 for real tokens, 0 for padding. Defaults to `input_ids != pad_token_id`.
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`, *optional*):
                Images normalized to [-1, 1] (`OFAImageProcessor`).
            patch_masks (`torch.BoolTensor` of shape `(batch_size,)`, *optional*):
                False for samples of a mixed batch that have no image: their (dummy) patches are padding.
                `video_masks`, `audio_masks` and `motion_masks` do the same for the other modalities.
            input_modality_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
                Modality id (`MODALITIES` index) of each token: struct, box or phone tokens are embedded as text but
                can be routed to their own experts. Defaults to TEXT.
            video_pixel_values (`torch.FloatTensor` of shape `(batch_size, frames, 3, height, width)`, *optional*):
                Video frames (needs `"VIDEO"` in `config.extra_modalities`), with `video_frame_indices`
                `(batch_size, frames)` for the time embedding (defaults to 0..frames-1).
            audio_features (`torch.FloatTensor` of shape `(batch_size, frames, audio_feature_size)`, *optional*):
                Log-mel frames (needs `"AUDIO"`), with `audio_attention_mask` (1 = real frame).
            motion_features (`torch.FloatTensor` of shape `(batch_size, steps, motion_feature_size)`, *optional*):
                Motion steps (needs `"MOTION"`), with `motion_attention_mask` (1 = real step).
            inputs_embeds (`torch.FloatTensor` of shape `(batch_size, text_length, d_model)`, *optional*):
                Token embeddings to use instead of looking up `input_ids`.
        """
        _check_kwargs(kwargs, type(self).__name__, ignored=_DECODER_INPUTS)
        for name in _DECODER_INPUTS:
            kwargs.pop(name, None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds to the OFA encoder")
        segments = []
        if pixel_values is not None:
            segments.append(self.embed_patches(pixel_values, patch_masks))
        if video_pixel_values is not None:
            segments.append(self.embed_video(video_pixel_values, video_frame_indices, video_masks))
        for name, features, mask, present in (
            ("AUDIO", audio_features, audio_attention_mask, audio_masks),
            ("MOTION", motion_features, motion_attention_mask, motion_masks),
        ):
            if features is not None:
                segments.append(self.embed_sequence(self._adapter(name), features, mask, present, name))
        text = self.embed_text(input_ids, inputs_embeds, attention_mask)
        if input_modality_ids is not None:
            text.modality = input_modality_ids
        segments.append(text)

        x = torch.cat([seg.embeds for seg in segments], dim=1)  # (B, N, D)
        bsz, length = x.shape[:2]
        padding = torch.cat([seg.padding for seg in segments], dim=1)  # (B, N)
        if all(_batch_invariant(seg.positions) for seg in segments):
            # Positions do not depend on the sample (text, whole images): project them and build the absolute bias
            # on one row, B times less work; the output still carries them as (B, N, D), a broadcast view.
            position_rows = torch.cat([seg.positions[:1] for seg in segments], dim=1)  # (1, N, D)
            positions = position_rows.expand(bsz, -1, -1)  # (B, N, D)
        else:
            positions = position_rows = torch.cat([seg.positions for seg in segments], dim=1)  # (B, N, D)
        modality_ids = torch.cat([seg.modality_ids(bsz) for seg in segments], dim=1)  # (B, N)
        x = x * (~padding).unsqueeze(-1).to(x.dtype)

        # Absolute position bias, shared by all layers: (1 or B, H, N, N).
        pos_q = self._heads(self.pos_q_linear(position_rows)) * self.pos_scaling
        pos_k = self._heads(self.pos_k_linear(position_rows))
        abs_bias = torch.matmul(pos_q, pos_k.transpose(-1, -2))
        abs_bias = abs_bias.expand(bsz, -1, -1, -1)  # (B, H, N, N), a view when it was built on one row
        mask = _additive_mask(padding[:, None, None, :], x.dtype).expand(bsz, 1, length, length)  # (B, 1, N, N)
        if not _tracing() and not bool(padding.any()):
            mask = None  # nothing to mask: a bias of one row then serves the whole batch
        # Relative buckets inside each segment (positions of different segments interact only through abs_bias);
        # the same for every layer, only the table they index differs.
        spans, start = [], 0
        for seg in segments:
            end = start + seg.embeds.shape[1]
            spans.append(_RelativeSpan(start, end, self.relative_buckets(seg), seg.is_image))
            start = end

        for idx, layer in enumerate(self.layers):
            # Each layer builds its own (B, H, N, N) bias from the shared abs_bias inside its forward (see
            # OFAEncoderLayer.forward): under gradient checkpointing, only abs_bias is kept, once for all layers.
            build = partial(self.layer_bias, idx=idx, spans=spans)
            x = layer(x, mask, abs_bias, modality_ids, ~padding, bias_builder=build, **kwargs)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return OFAEncoderOutput(
            last_hidden_state=x, padding_mask=padding, position_embeddings=positions, modality_ids=modality_ids
        )

    def _adapter(self, modality: str) -> nn.Module:
        adapter = self.adapters[modality] if modality in self.adapters else None
        if adapter is None:
            raise ValueError(
                f"got {modality.lower()} inputs, but this model has no {modality} adapter; add {modality!r} to "
                f"config.extra_modalities (now {self.config.extra_modalities})"
            )
        return adapter

    def relative_buckets(self, segment: _Segment) -> torch.Tensor:
        """Relative position table rows inside one segment: (B, n, n) for images, (n, n) for 1-D positions."""
        ids = segment.rel_ids
        if segment.is_image:
            if _batch_invariant(ids):  # the same grid for every sample: (n, n), broadcast over the batch
                return self.image_rp_bucket[ids[0, :, None], ids[0, None, :]]
            return self.image_rp_bucket[ids[:, :, None], ids[:, None, :]]  # ids: (B, n) grid ids
        return self.token_rp_bucket[ids[:, None], ids[None, :]]  # ids: (n,) 1-D positions

    def layer_bias(
        self, abs_bias: torch.Tensor, mask: torch.Tensor | None = None, *, idx: int, spans: list[_RelativeSpan]
    ) -> torch.Tensor:
        """Position bias of layer `idx`: the shared absolute bias (B, H, N, N) plus the additive key-padding `mask`
        (B, 1, N, N), plus the relative bias inside each span from the layer's tables. Without a mask and with an
        absolute bias that is one row broadcast, the result is that one row, (1, H, N, N)."""
        if _batch_invariant(abs_bias):
            abs_bias = abs_bias[:1]  # (1, H, N, N): the broadcast rows are the same
        bias = abs_bias.clone() if mask is None else abs_bias + mask  # a new tensor either way
        for span in spans:
            table = (self.image_rel_pos_table_list if span.is_image else self.token_rel_pos_table_list)[idx].weight
            rel = F.embedding(span.buckets, table)  # (n, n, H) or (B, n, n, H)
            rel = rel.permute(0, 3, 1, 2) if rel.dim() == 4 else rel.permute(2, 0, 1)
            bias[:, :, span.start : span.end, span.start : span.end] += rel  # (H, n, n) or (B, H, n, n)
        return bias


# ----------------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------------


class OFADecoder(OFAPreTrainedModel, _PositionTables):
    """Causal decoder over the unified vocabulary; `code_masks` samples use the 2-D image-code positions."""

    _can_record_outputs = {
        "hidden_states": OFADecoderLayer,
        "attentions": OutputRecorder(OFAAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(OFAAttention, index=1, layer_name="cross_attn"),
        "router_logits": OutputRecorder(TopKRouter, index=0),
    }

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding | None = None):
        super().__init__(config)
        d = config.d_model
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.embed_tokens = embed_tokens or nn.Embedding(config.vocab_size, d, config.pad_token_id)
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self.dropout = nn.Dropout(config.dropout)
        self._build_position_tables(config, config.decoder_layers, config.decoder_attention_heads)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        rates = drop_path_rates(config.decoder_drop_path_rate, config.decoder_layers)
        moe = _moe_layers(config, config.decoder_layers)
        self.layers = nn.ModuleList(
            [OFADecoderLayer(config, i, rates[i], i in moe) for i in range(config.decoder_layers)]
        )
        self.layer_norm = nn.LayerNorm(d) if config.normalize_before else None
        self.gradient_checkpointing = False
        self.post_init()

    def position_buffers(self) -> dict[str, torch.Tensor]:
        buffers = super().position_buffers()
        # Decoder position ids when generating image codes: 0 for the start token, then the code grid row by row,
        # then a filler id for any longer target (as in the original).
        config = self.config
        window = config.code_image_size // 8
        grid = image_grid_position_ids(window, window, config.image_bucket_size)
        fill = max(config.max_position_embeddings + 2 - 1 - grid.numel(), 0)
        # The original fills with id 1024, a row that exists only when image_bucket_size >= 33; smaller tables use
        # their last row.
        filler = min(1024, config.image_bucket_size**2)
        buffers["image_position_idx"] = torch.cat(
            [torch.zeros(1, dtype=torch.long), grid, grid.new_full((fill,), filler)]
        )
        return buffers

    def _position_kinds(self, code_masks: torch.BoolTensor | None, bsz: int) -> tuple[list[str], torch.Tensor | None]:
        """The position kinds this call computes and, for a batch of both kinds, which samples generate codes.

        A batch of one kind computes only that kind's biases, embeddings and LayerNorms: `["text"]` or `["image"]`
        and no selection. A mixed batch computes both, `["text", "image"]`, and selects per sample with the
        returned `(B, 1, 1, 1)` mask. A traced or compiled graph keeps the mixed path whenever any sample (of the
        sample inputs) generates codes, so that one graph serves every `code_masks`.
        """
        if code_masks is None:
            return ["text"], None
        code_masks = code_masks.to(torch.bool)
        if _tracing():
            return (["text", "image"], code_masks.view(bsz, 1, 1, 1)) if bool(code_masks.any()) else (["text"], None)
        codes = int(code_masks.sum())  # one host synchronisation for both tests
        if codes == 0:
            return ["text"], None
        if codes == bsz:
            return ["image"], None
        return ["text", "image"], code_masks.view(bsz, 1, 1, 1)

    def _kind_positions(self, kind: str, start: int, total: int) -> torch.Tensor:
        """Position embeddings `start:total` of one kind, (total - start, D): only the rows a step needs are looked
        up (the image-code ids go through an embedding lookup, the text rows are a slice of the table)."""
        if kind == "text":
            return self.embed_positions.weight[start:total]
        return self.embed_image_positions(self.image_position_idx[start:total])

    def _position_biases(
        self, kind: str, past: int, total: int, cache: OFACache | None, cross_keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Absolute self- and cross-attention biases of one position kind for the new rows `past:total`.

        The projected self-attention keys of earlier positions depend on the weights only, so they are kept on the
        cache (`OFACache.self_position_keys[kind]`) and only the positions after them are projected; the rows
        before `min(known, past)` are then neither queries nor new keys and are not embedded at all. The new rows
        go through the kind's position LayerNorm once, for both biases.

        Args:
            kind (`str`): `"text"` (1-D positions) or `"image"` (the 2-D image-code grid).
            past (`int`): Number of cached steps.
            total (`int`): Number of decoder positions S, cached and new.
            cache (`OFACache`, *optional*): The decoding cache; its stored keys are read and extended.
            cross_keys (`torch.Tensor` of shape `(B, H, N, D/H)`): Projected encoder positions.

        Returns:
            The self-attention bias (H, T, S), the cross-attention bias (1 or B, H, T, N; `None` without
            `config.cross_attention_position_bias`) and the kind's position embeddings of the new rows (T, D).
        """
        ln = self.pos_ln if kind == "text" else self.image_pos_ln
        stored = cache.self_position_keys.get(kind) if cache is not None else None
        known = 0 if stored is None else min(stored.shape[1], total)
        first = min(known, past)
        positions = self._kind_positions(kind, first, total)  # (S - first, D)
        normed = ln(positions)
        queries = normed[past - first :]  # (T, D)
        keys = stored[:, :known] if known else None  # (H, known, D/H)
        if known < total:
            new_keys = self._heads(self.self_pos_k_linear(normed[known - first :]))  # (H, S - known, D/H)
            keys = new_keys if keys is None else torch.cat([keys, new_keys], dim=1)
        if cache is not None:
            cache.self_position_keys[kind] = keys
        self_q = self._heads(self.self_pos_q_linear(queries)) * self.pos_scaling  # (H, T, D/H)
        self_bias = torch.matmul(self_q, keys.transpose(-1, -2))  # (H, T, S)
        if not self.config.cross_attention_position_bias:
            return self_bias, None, positions[past - first :]
        cross_q = self._heads(self.cross_pos_q_linear(queries)) * self.pos_scaling  # (H, T, D/H)
        if _batch_invariant(cross_keys):
            cross_keys = cross_keys[:1]  # one row broadcast over the batch: (1, H, N, D/H)
        return self_bias, torch.matmul(cross_q, cross_keys.transpose(-1, -2)), positions[past - first :]

    @merge_with_config_defaults
    @capture_outputs
    @_accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_padding_mask: torch.BoolTensor | None = None,
        encoder_position_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        code_masks: torch.BoolTensor | None = None,
        decoder_modality_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> OFADecoderOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`):
                Decoder input ids (only the new ones when `cache` holds the earlier steps).
            encoder_hidden_states, encoder_padding_mask, encoder_position_embeddings:
                From `OFAEncoderOutput` (`last_hidden_state`, `padding_mask`, `position_embeddings`), or pass
                `encoder_outputs` itself.
            attention_mask (`torch.Tensor` of shape `(batch_size, past + target_length)`, *optional*):
                1 for real decoder tokens, 0 for padding; the causal mask is always applied. Without it, positions
                whose input id is `pad_token_id` are not routed to experts.
            code_masks (`torch.BoolTensor` of shape `(batch_size,)`, *optional*):
                True for samples whose target is a sequence of image codes.
            decoder_modality_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                `MODALITIES` index of each sample's target slot, which routes the decoder's modality experts.
                Defaults to IMAGE_CODE for `code_masks` samples and TEXT otherwise.
            cache (`Cache`, *optional*):
                The decoding cache (`OFACache`; any `EncoderDecoderCache` is wrapped into one). With `use_cache`
                and no cache, a new one is made. Its old name `past_key_values` is accepted as an alias.
        """
        _check_kwargs(kwargs, type(self).__name__)
        if encoder_outputs is not None:
            encoder_hidden_states = encoder_outputs.last_hidden_state
            encoder_padding_mask = encoder_outputs.padding_mask
            encoder_position_embeddings = encoder_outputs.position_embeddings
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds to the OFA decoder")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        bsz, tgt_len = inputs_embeds.shape[:2]
        cache = self._decoding_cache(cache, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        total = past + tgt_len
        self._check_length(total, "the decoder sequence")
        device, dtype = inputs_embeds.device, inputs_embeds.dtype

        # Text samples use the 1-D text positions, `code_masks` samples the 2-D image-code grid; a batch of one
        # kind computes only that kind (the other would be computed and thrown away at every step).
        kinds, select = self._position_kinds(code_masks, bsz)

        # Projected position keys that depend on the weights and the encoder only live on the cache, so a cached
        # step projects only its own positions: the encoder positions' keys once per encoder output, the decoder
        # positions' keys once per position.
        cross_keys = cache.cross_position_keys if cache is not None else None
        kv_repeats = 1
        if cache is not None and not cache.is_updated.get(0, False):
            # First cached call: rows repeated per beam are projected once per group (see `OFACache`).
            kv_repeats = cache.cross_groups = _row_group_size(
                encoder_hidden_states, encoder_padding_mask, encoder_position_embeddings
            )
            encoder_hidden_states = encoder_hidden_states[::kv_repeats]  # (B/k, N, D)
        if cross_keys is None:
            cross_keys = self._cross_position_keys(encoder_position_embeddings, cache, bsz)
        self_abs, cross_abs, new_positions = {}, {}, {}  # per kind: (H, T, S), (1 or B, H, T, N), (T, D)
        for kind in kinds:
            self_abs[kind], cross_abs[kind], new_positions[kind] = self._position_biases(
                kind, past, total, cache, cross_keys
            )
        drop = self.config.cross_attention_position_bias_dropout
        if self.training and drop > 0 and self.config.cross_attention_position_bias:
            # Whole samples lose the bias, so their cross-attention must find the image by content.
            keep = (torch.rand(bsz, 1, 1, 1, device=device) >= drop).to(dtype)  # (B, 1, 1, 1)
            cross_abs = {kind: bias * keep for kind, bias in cross_abs.items()}  # (B, H, T, N)
        # The masks go into the biases, which the attention then takes as is: the cross-attention bias is the same
        # in every layer, so its padding mask is added once rather than once per layer.
        encoder_mask = _additive_mask(encoder_padding_mask[:, None, None, :], dtype)  # (B, 1, 1, N)
        if not self.config.cross_attention_position_bias:
            cross_bias = encoder_mask.expand(bsz, self.num_heads, tgt_len, -1)  # (B, H, T, N), a view
        elif select is not None:
            cross_bias = torch.where(select, cross_abs["image"], cross_abs["text"]) + encoder_mask  # (B, H, T, N)
        else:
            cross_bias = cross_abs[kinds[0]] + encoder_mask  # (B, H, T, N)

        self_mask = _causal_padding_mask(past, total, attention_mask, device, dtype)  # (1 or B, 1, T, S)
        # Positions that experts route: real target tokens only.
        if attention_mask is not None:
            token_mask = attention_mask[:, -tgt_len:].ne(0)  # (B, T)
        elif input_ids is not None:
            token_mask = input_ids.ne(self.config.pad_token_id)
        else:
            token_mask = None

        # With any code sample, the entangled positions of every sample are the code positions (`kinds[-1]`).
        x = self._embed(inputs_embeds, new_positions[kinds[-1]], kinds, select)  # (B, T, D)
        if decoder_modality_ids is None:
            default = "IMAGE_CODE" if kinds == ["image"] else "TEXT"
            decoder_modality_ids = torch.full((bsz,), MODALITIES.index(default), dtype=torch.long, device=device)
            if select is not None:
                decoder_modality_ids = decoder_modality_ids.masked_fill(
                    select.view(bsz), MODALITIES.index("IMAGE_CODE")
                )
        modality_ids = decoder_modality_ids.view(bsz, 1).expand(bsz, tgt_len)  # (B, T): one modality per target

        layer_bias = self._layer_self_biases(past, total, self_abs, self_mask, select)
        for idx, layer in enumerate(self.layers):
            x = layer(
                x,
                None,
                layer_bias(idx),
                encoder_hidden_states,
                None,
                cross_bias,
                modality_ids,
                token_mask,
                cache=cache,
                cross_kv_repeats=kv_repeats,
                **kwargs,
            )
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return OFADecoderOutput(last_hidden_state=x, **{CACHE_NAME: cache if use_cache else None})

    def _layer_self_biases(
        self,
        past: int,
        total: int,
        self_abs: dict[str, torch.Tensor],
        self_mask: torch.Tensor,
        code_select: torch.Tensor | None,
    ) -> Callable[[int], torch.Tensor]:
        """`idx -> ` layer `idx`'s self-attention bias (absolute + relative + mask, (1 or B, H, T, S)) for the
        position kinds in `self_abs` (see `_position_kinds`). The text relative bias of every layer comes from one
        lookup in the layers' tables side by side; a layer's 2-D code bias is built when the layer asks for it, so
        only one (1 or B, H, T, S) tensor of it exists at a time. A mixed batch selects per sample (`code_select`)."""
        tgt_len = total - past
        if "text" in self_abs:
            tables = torch.cat([table.weight for table in self.token_rel_pos_table_list], dim=1)  # (buckets, L*H)
            rel_text = F.embedding(self.token_rp_bucket[past:total, :total], tables)  # (T, S, L*H)
            rel_text = rel_text.view(tgt_len, total, len(self.layers), self.num_heads).permute(2, 3, 0, 1)
            text_bias = rel_text + self_abs["text"]  # (L, H, T, S)
            if "image" not in self_abs:
                # With the causal and padding mask: (L, 1 or B, H, T, S), each layer's bias ready for the attention.
                layer_biases = text_bias[:, None] + self_mask[None]
                return lambda idx: layer_biases[idx]
        code_ids = self.image_position_idx[:total]
        code_buckets = self.image_rp_bucket[code_ids[past:total, None], code_ids[None, :]]  # (T, S)

        def code_bias(idx: int) -> torch.Tensor:
            rel_code = F.embedding(code_buckets, self.image_rel_pos_table_list[idx].weight).permute(2, 0, 1)
            bias = self_abs["image"] + rel_code  # (H, T, S)
            if code_select is not None:
                bias = torch.where(code_select, bias, text_bias[idx])  # (B, H, T, S)
            return bias + self_mask

        return code_bias

    def _decoding_cache(self, cache: Cache | None, use_cache: bool | None) -> OFACache | None:
        """The cache this call reads and extends: a new `OFACache` with `use_cache`, the one given (wrapped)."""
        if cache is None:
            return OFACache(DynamicCache(config=self.config), DynamicCache(config=self.config)) if use_cache else None
        cache = OFACache.from_cache(cache)
        if not isinstance(cache.self_attention_cache, DynamicCache):
            # A fixed-size cache returns keys for all its slots, which the biases and masks here (built for the
            # positions so far) do not cover: it would attend to empty slots rather than fail.
            raise TypeError(
                "OFA's decoder supports a DynamicCache for self-attention (generate's default), got "
                f"{type(cache.self_attention_cache).__name__}; do not pass cache_implementation='static'"
            )
        return cache

    def _cross_position_keys(
        self, encoder_position_embeddings: torch.Tensor, cache: OFACache | None, bsz: int
    ) -> torch.Tensor:
        """The decoder's projection of the encoder positions, (B, H, N, D/H), projected once and kept on the cache."""
        rows = encoder_position_embeddings
        if _batch_invariant(rows):
            rows = rows[:1]  # the same positions in every row: project one, broadcast the rest
        elif cache is not None:
            rows = rows[:: cache.cross_groups]
        cross_keys = self._heads(self.cross_pos_k_linear(rows))  # (1, B/k or B, H, N, D/H)
        if cross_keys.shape[0] == 1:
            cross_keys = cross_keys.expand(bsz, -1, -1, -1)
        elif cross_keys.shape[0] != bsz:
            cross_keys = cross_keys.repeat_interleave(bsz // cross_keys.shape[0], 0)
        if cache is not None:
            cache.cross_position_keys = cross_keys
        return cross_keys

    def _embed(
        self, inputs_embeds: torch.Tensor, positions: torch.Tensor, kinds: list[str], code_select: torch.Tensor | None
    ) -> torch.Tensor:
        """Scaled token embeddings (+ the step's positions when entangled), each sample through its own LayerNorm:
        code samples through the code one, text samples through the text one; a mixed batch (`code_select`,
        (B, 1, 1, 1)) computes both and selects per sample."""
        x = inputs_embeds * self.embed_scale
        if self.config.entangle_position_embedding:
            x = x + positions
        if "image" not in kinds or self.code_layernorm_embedding is None:
            x = self._text_ln(x)
        elif code_select is None:
            x = self.code_layernorm_embedding(x)  # every sample generates codes
        else:
            bsz = x.shape[0]
            x = torch.where(code_select.view(bsz, 1, 1), self.code_layernorm_embedding(x), self._text_ln(x))
        return self.dropout(x)

    def _text_ln(self, x: torch.Tensor) -> torch.Tensor:
        return self.layernorm_embedding(x) if self.layernorm_embedding is not None else x


# ----------------------------------------------------------------------------------------------------------------
# Full models
# ----------------------------------------------------------------------------------------------------------------


class OFAModel(OFAPreTrainedModel):
    """The OFA encoder-decoder without the language-model head; returns the decoder's last hidden states."""

    _input_embed_layer = "shared"
    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: OFAConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = OFAEncoder(config, self.shared)
        self.decoder = OFADecoder(config, self.shared)
        self.post_init()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        # The encoder and the decoder share the token embedding.
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @can_return_tuple
    @_accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_masks: torch.BoolTensor | None = None,
        input_modality_ids: torch.LongTensor | None = None,
        video_pixel_values: torch.FloatTensor | None = None,
        video_frame_indices: torch.LongTensor | None = None,
        video_masks: torch.BoolTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        audio_masks: torch.BoolTensor | None = None,
        motion_features: torch.FloatTensor | None = None,
        motion_attention_mask: torch.Tensor | None = None,
        motion_masks: torch.BoolTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        code_masks: torch.BoolTensor | None = None,
        decoder_modality_ids: torch.LongTensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqMoEModelOutput:
        r"""
        Args:
            input_ids, attention_mask, pixel_values, patch_masks, inputs_embeds, and the video, audio and motion
                inputs: see `OFAEncoder.forward`.
            decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`):
                `<s>` followed by the target tokens (`shift_tokens_right(labels)`).
            decoder_attention_mask, code_masks, decoder_modality_ids, cache: see `OFADecoder.forward`.
            encoder_outputs (`OFAEncoderOutput`, *optional*): a previous encoder pass, reused as is.
        """
        _check_kwargs(kwargs, type(self).__name__)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                patch_masks=patch_masks,
                input_modality_ids=input_modality_ids,
                video_pixel_values=video_pixel_values,
                video_frame_indices=video_frame_indices,
                video_masks=video_masks,
                audio_features=audio_features,
                audio_attention_mask=audio_attention_mask,
                audio_masks=audio_masks,
                motion_features=motion_features,
                motion_attention_mask=motion_attention_mask,
                motion_masks=motion_masks,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, OFAEncoderOutput):
            raise TypeError(
                "encoder_outputs must be the OFAEncoderOutput returned by the OFA encoder (it carries the padding "
                f"mask and position embeddings the decoder needs), got {type(encoder_outputs).__name__}"
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            encoder_outputs=encoder_outputs,
            attention_mask=decoder_attention_mask,
            code_masks=code_masks,
            decoder_modality_ids=decoder_modality_ids,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqMoEModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            decoder_router_logits=decoder_outputs.router_logits,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            encoder_router_logits=encoder_outputs.router_logits,
            **{CACHE_NAME: getattr(decoder_outputs, CACHE_NAME)},
        )


class OFAForConditionalGeneration(OFAPreTrainedModel, GenerationMixin):
    """OFA with its tied language-model head: captioning, VQA, grounding, detection, image-code generation."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: OFAConfig):
        super().__init__(config)
        self.model = OFAModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; asking a dense checkpoint for `moe_type=...` upcycles it."""
        moe_type = kwargs.get("moe_type", "none")
        if moe_type != "none" and kwargs.get("config") is None:
            config_kwargs = {
                k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs
            }
            stored = OFAConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
            if stored.moe_type == "none":
                return cls.from_dense(pretrained_model_name_or_path, *model_args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_dense(cls, dense: OFAForConditionalGeneration | str, *model_args, **kwargs) -> OFAForConditionalGeneration:
        """Upcycle a dense model (or its path) to mixture-of-experts: every expert starts as the dense FFN.

        `moe_*` keyword arguments configure the experts (`moe_type` is required); the others go to
        `from_pretrained` when `dense` is a path. Right after upcycling the model computes the dense model's
        function (for `topk`, as long as no token exceeds an expert's capacity).
        """
        moe_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("moe_")}
        if moe_kwargs.get("moe_type", "none") == "none":
            raise ValueError("from_dense needs moe_type='modality' or moe_type='topk'")
        if isinstance(dense, (str, os.PathLike)):
            dense = super().from_pretrained(dense, *model_args, **kwargs)
        if dense.config.moe_type != "none":
            raise ValueError(f"the model to upcycle already has moe_type={dense.config.moe_type!r}")
        config = OFAConfig.from_dict({**dense.config.to_dict(), **moe_kwargs})
        model = cls(config).to(dtype=dense.dtype)
        prefixes = [
            f"model.{side}.layers.{i}"
            for side, count in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers))
            for i in sorted(_moe_layers(config, count))
        ]
        state = dense_to_moe_state_dict(dense.state_dict(), prefixes, config.num_experts)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("moe.router.weight")]
        if missing or unexpected:
            raise ValueError(f"upcycling left parameters unmatched: missing {missing}, unexpected {unexpected}")
        return model.train(dense.training)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @can_return_tuple
    @_accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        patch_masks: torch.BoolTensor | None = None,
        input_modality_ids: torch.LongTensor | None = None,
        video_pixel_values: torch.FloatTensor | None = None,
        video_frame_indices: torch.LongTensor | None = None,
        video_masks: torch.BoolTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        audio_masks: torch.BoolTensor | None = None,
        motion_features: torch.FloatTensor | None = None,
        motion_attention_mask: torch.Tensor | None = None,
        motion_masks: torch.BoolTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        code_masks: torch.BoolTensor | None = None,
        decoder_modality_ids: torch.LongTensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> OFASeq2SeqLMOutput:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
                Target ids followed by `</s>`; -100 marks positions without loss (padding, `no_loss` prompts).
                When `decoder_input_ids` is not given it is derived from the labels.
            kwargs (`TransformersKwargs`):
                `num_items_in_batch` (passed by `Trainer`): number of scored tokens over all accumulated
                micro-batches; the loss is then a sum divided by it, so gradient accumulation weighs every token
                equally. `output_router_logits`: return the routers' logits (`topk` models; defaults to
                `config.output_router_logits`). `output_attentions`, `output_hidden_states` as usual.
            Others: see `OFAModel.forward`.

        A `topk` model computes its router losses from the router logits of the real (routed) positions whenever it
        trains or `output_router_logits` is set (`encoder_aux_loss`, `decoder_aux_loss`, `encoder_z_loss`,
        `decoder_z_loss`, and their weighted sum `aux_loss`); in training with labels, `aux_loss` is added to `loss`.
        """
        _check_kwargs(kwargs, type(self).__name__)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        return_router_logits = kwargs.pop("output_router_logits", None)
        if return_router_logits is None:
            return_router_logits = self.config.output_router_logits
        routed = self.config.moe_type == "topk" and (self.training or return_router_logits)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            patch_masks=patch_masks,
            input_modality_ids=input_modality_ids,
            video_pixel_values=video_pixel_values,
            video_frame_indices=video_frame_indices,
            video_masks=video_masks,
            audio_features=audio_features,
            audio_attention_mask=audio_attention_mask,
            audio_masks=audio_masks,
            motion_features=motion_features,
            motion_attention_mask=motion_attention_mask,
            motion_masks=motion_masks,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            code_masks=code_masks,
            decoder_modality_ids=decoder_modality_ids,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_router_logits=routed,
            **kwargs,
        )
        logits = vocabulary_logits(self.lm_head, outputs.last_hidden_state)  # (B, T, V)
        router = {}
        if routed:
            router = self.router_losses(outputs.encoder_router_logits, outputs.decoder_router_logits)
        aux_loss = router.get("aux_loss")
        loss = None
        if labels is not None:
            loss = self.loss(logits, labels, num_items_in_batch)
            if aux_loss is not None and self.training:
                loss = loss + micro_batch_share(aux_loss, labels, num_items_in_batch)
        return OFASeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            encoder_router_logits=outputs.encoder_router_logits if return_router_logits else None,
            decoder_router_logits=outputs.decoder_router_logits if return_router_logits else None,
            **router,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def router_losses(
        self,
        encoder_router_logits: tuple[torch.Tensor, ...] | None,
        decoder_router_logits: tuple[torch.Tensor, ...] | None,
    ) -> dict[str, torch.Tensor]:
        """Load-balancing and z-losses of the encoder's and the decoder's routers, and their weighted sum.

        Each stack's losses pool the routed positions of all its expert layers (`moe.router_losses`), as
        transformers' MoE models do; padding never reaches a router, so it is never counted.
        """
        out, total = {}, None
        for side, logits in (("encoder", encoder_router_logits), ("decoder", decoder_router_logits)):
            if not logits:
                continue
            balance, z_loss = router_losses(torch.cat(logits), self.config.moe_top_k)
            out[f"{side}_aux_loss"], out[f"{side}_z_loss"] = balance, z_loss
            weighted = self.config.router_aux_loss_coef * balance
            if self.config.router_z_loss_coef > 0:
                weighted = weighted + self.config.router_z_loss_coef * z_loss
            total = weighted if total is None else total + weighted
        if total is not None:
            out["aux_loss"] = total
        return out

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token cross-entropy with `config.label_smoothing`, ignoring -100; mean over scored tokens."""
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
        flat_labels = labels.reshape(-1).to(logits.device)
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = F.cross_entropy(
            flat_logits,
            flat_labels,
            ignore_index=-100,
            reduction=reduction,
            label_smoothing=self.config.label_smoothing,
        )
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
        return loss
