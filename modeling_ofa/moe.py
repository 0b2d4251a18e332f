"""Mixture-of-experts feed-forward blocks for OFA+ (`moe_type` = `none`, `modality` or `topk`).

* `FeedForward` is the dense OFA feed-forward block as a module of its own:
  `fc1 -> activation -> activation_dropout -> ffn_layer_norm (NormFormer) -> fc2 -> dropout`.
* `ModalityMoE` keeps one `FeedForward` expert per modality group and routes every token by its modality id (hard,
  deterministic routing as in OFASys `modal_ffn` and VLMo; attention stays shared).
* `TopKMoE` routes every token with a learned linear router to its top-1 or top-2 experts, with an optional capacity
  per expert and a Switch-style load-balancing loss (plus an optional router z-loss).

Execution: per layer, the tokens are flattened, sorted once by expert (stable `argsort`), split into one contiguous
group per expert, each non-empty expert runs once on its group, and the results are written back by index. The only
Python loop is over the (few) experts. Each forward needs one host synchronisation, to learn the group sizes.

Unused experts: an expert that receives no token in a forward is not run, so its parameters get no gradient in that
step. Under `DistributedDataParallel` construct the wrapper with `find_unused_parameters=True` (a batch without
images leaves the image expert idle on that rank). With gradient checkpointing use the non-reentrant implementation
(`use_reentrant=False`, the transformers default): routing is a function of the inputs (and of the RNG state, which
checkpointing restores, for router jitter), so the recomputation takes the same path, and the auxiliary loss stored
on the module keeps its autograd graph. Reentrant checkpointing runs the forward under `no_grad`, which would cut
the stored auxiliary loss from the graph; `sum_aux_losses` detects this and raises rather than silently training
without the balancing loss.

Introspection: after each forward every MoE module holds `last_stats` (a detached `MoEStats`) and `last_aux_loss`;
`collect_moe_stats(model)` flattens them into logging-friendly floats and `sum_aux_losses(model)` sums the losses.

Upcycling: `upcycle_dense_ffn` copies a dense block into every expert, and `dense_to_moe_state_dict` rewrites a dense
checkpoint's keys. The MoE block lives at attribute `moe` of a layer, so dense keys `layers.{i}.fc1.weight` become
`layers.{i}.moe.experts.{e}.fc1.weight` (likewise `fc1.bias`, `fc2.*`, `ffn_layer_norm.*`); a `TopKMoE` adds
`layers.{i}.moe.router.weight`, which a dense checkpoint does not have and which keeps its initialisation. Right after
upcycling an MoE model computes the same function as the dense one: trivially for `modality`, and for `topk` because
the combine weights of the selected experts sum to one (see `TopKMoE`), as long as no token is dropped for capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_ofa import MOE_TYPES

__all__ = [
    "MOE_TYPES",
    "FeedForward",
    "MoEFeedForward",
    "MoEStats",
    "ModalityMoE",
    "TopKMoE",
    "TopKRouter",
    "collect_moe_stats",
    "dense_to_moe_state_dict",
    "router_losses",
    "select_moe_layers",
    "sum_aux_losses",
    "upcycle_dense_ffn",
]


# Parameters of a feed-forward block, as state-dict suffixes. `ffn_layer_norm` exists only with NormFormer.
_FFN_PARAM_NAMES: tuple[str, ...] = (
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "ffn_layer_norm.weight",
    "ffn_layer_norm.bias",
)


# ----------------------------------------------------------------------------------------------------------------
# Dense block
# ----------------------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """The OFA feed-forward block; one expert of a mixture.

    Args:
        d_model (`int`): Width of the input and output.
        ffn_dim (`int`): Inner width.
        activation (`str`, defaults to `"gelu"`): A key of `transformers.activations.ACT2FN`.
        dropout (`float`, defaults to 0.0): Dropout on the output.
        activation_dropout (`float`, defaults to 0.0): Dropout after the activation.
        normformer (`bool`, defaults to `True`): Add the NormFormer LayerNorm over the inner width (`ffn_layer_norm`).
    """

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
        normformer: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACT2FN:
            raise ValueError(f"FeedForward: unknown activation {activation!r}; known: {sorted(ACT2FN)}")
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.ffn_layer_norm = nn.LayerNorm(ffn_dim) if normformer else None
        self.activation_fn = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map `(..., d_model)` to `(..., d_model)`."""
        hidden_states = self.activation_dropout(self.activation_fn(self.fc1(hidden_states)))
        if self.ffn_layer_norm is not None:
            hidden_states = self.ffn_layer_norm(hidden_states)
        return self.dropout(self.fc2(hidden_states))


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MoEStats:
    """What one MoE module saw in its last forward. Tensors are detached and stay on the module's device, so
    recording them costs no host synchronisation; `collect_moe_stats` converts them when the trainer logs.

    Args:
        expert_counts (`torch.Tensor`): `(num_experts,)` int64. Token-to-expert assignments of real (unmasked)
            tokens. For `TopKMoE` these are the router's choices before the capacity cut (top-2 gives two per token);
            the tokens an expert actually processed are `min(count, capacity)`.
        router_entropy (`torch.Tensor`, *optional*): Mean entropy (nats) of the router distribution over real
            tokens; `None` for `ModalityMoE`, which has no router.
        dropped_fraction (`torch.Tensor`, *optional*): Fraction of assignments dropped for capacity; `None` for
            `ModalityMoE`.
        balance_loss (`torch.Tensor`, *optional*): Unweighted load-balancing loss; `None` for `ModalityMoE`.
        z_loss (`torch.Tensor`, *optional*): Unweighted router z-loss; `None` for `ModalityMoE`.
        capacity (`int`, *optional*): Tokens per expert allowed in that forward; `None` when unlimited.
    """

    expert_counts: torch.Tensor
    router_entropy: torch.Tensor | None = None
    dropped_fraction: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    capacity: int | None = None

    def to_dict(self) -> dict[str, float]:
        """Flat floats: `expert_{e}_fraction` (share of assignments), `tokens` (assignments) and every scalar set."""
        counts = self.expert_counts.double()
        total = counts.sum()
        fractions = counts / total if total > 0 else torch.zeros_like(counts)
        out = {f"expert_{e}_fraction": value for e, value in enumerate(fractions.tolist())}
        out["tokens"] = float(total)
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "expert_counts" and value is not None:
                out[field.name] = float(value)
        return out


class MoEFeedForward(nn.Module):
    """Base of the MoE blocks: holds `experts` and what the last forward recorded.

    Attributes:
        experts (`nn.ModuleList`): The `FeedForward` experts.
        last_stats (`MoEStats`, *optional*): Statistics of the last forward.
        last_aux_loss (`torch.Tensor`, *optional*): Weighted auxiliary loss of the last forward (with its graph), or
            `None` when the block has no auxiliary loss or `sum_aux_losses(..., clear=True)` consumed it.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        ffn_dim: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
        normformer: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"{type(self).__name__}: num_experts must be a positive int, got {num_experts!r}")
        self.num_experts = num_experts
        self.experts = nn.ModuleList(
            FeedForward(d_model, ffn_dim, activation, dropout, activation_dropout, normformer)
            for _ in range(num_experts)
        )
        self.last_stats: MoEStats | None = None
        self.last_aux_loss: torch.Tensor | None = None

    def _run_experts(self, grouped: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Run expert e once on the e-th contiguous chunk of `grouped` `(sum(sizes), D)`; empty experts are skipped."""
        chunks = grouped.split(sizes)
        outputs = [self.experts[e](chunk) for e, chunk in enumerate(chunks) if sizes[e] > 0]
        return torch.cat(outputs) if outputs else grouped

    def _check_input(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        name = type(self).__name__
        d_model = self.experts[0].fc1.in_features
        if hidden_states.dim() < 1 or hidden_states.shape[-1] != d_model:
            raise ValueError(f"{name}: hidden_states must be (..., {d_model}), got {tuple(hidden_states.shape)}")
        if token_mask is not None:
            if token_mask.dtype != torch.bool:
                raise TypeError(f"{name}: token_mask must be a bool tensor (True = real token), got {token_mask.dtype}")
            if token_mask.shape != hidden_states.shape[:-1]:
                raise ValueError(
                    f"{name}: token_mask shape {tuple(token_mask.shape)} does not match hidden_states "
                    f"{tuple(hidden_states.shape)} without its last dimension"
                )


# ----------------------------------------------------------------------------------------------------------------
# Modality MoE
# ----------------------------------------------------------------------------------------------------------------


class ModalityMoE(MoEFeedForward):
    """One feed-forward expert per modality group; token (b, t) goes to `experts[expert_ids[b, t]]`.

    Routing is hard and has no learned part, so there is no auxiliary loss (`last_aux_loss` stays `None`). Padded
    positions (`token_mask` False) may carry any valid id: they are not routed, their output is zero, and they are
    not counted in the statistics. Without `token_mask` every position is a real token.

    Args:
        num_experts (`int`): Number of experts (modality groups).
        d_model (`int`): Width of the tokens.
        ffn_dim (`int`): Inner width of every expert.
        activation (`str`, defaults to `"gelu"`): Expert activation, a key of `ACT2FN`.
        dropout (`float`, defaults to 0.0): Dropout on expert outputs.
        activation_dropout (`float`, defaults to 0.0): Dropout after the expert activation.
        normformer (`bool`, defaults to `True`): Experts carry the NormFormer `ffn_layer_norm`.
    """

    def forward(
        self, hidden_states: torch.Tensor, expert_ids: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Route and run.

        Args:
            hidden_states (`torch.Tensor`): `(B, T, D)` (any `(..., D)` works).
            expert_ids (`torch.Tensor`): `(B, T)` integer expert of every token, in `[0, num_experts)`.
            token_mask (`torch.Tensor`, *optional*): `(B, T)` bool, True for real tokens; padding is not routed.

        Returns:
            `torch.Tensor` of the shape of `hidden_states`.
        """
        self._check_input(hidden_states, token_mask)
        if expert_ids.shape != hidden_states.shape[:-1]:
            raise ValueError(
                f"ModalityMoE: expert_ids shape {tuple(expert_ids.shape)} does not match hidden_states "
                f"{tuple(hidden_states.shape)} without its last dimension"
            )
        if expert_ids.dtype.is_floating_point or expert_ids.dtype.is_complex or expert_ids.dtype == torch.bool:
            raise TypeError(f"ModalityMoE: expert_ids must be an integer tensor, got {expert_ids.dtype}")
        num = self.num_experts
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # (N, D)
        ids = expert_ids.reshape(-1).long()  # (N,)
        real = token_mask.reshape(-1) if token_mask is not None else torch.ones_like(ids, dtype=torch.bool)

        # One histogram over (id + 1, real) pairs gives, in a single host transfer, the group sizes of real tokens,
        # the padding count, and the validity of the ids: negative ids land in the first two bins, ids >= num make the
        # histogram longer.
        pairs = torch.bincount((ids + 1).clamp(min=0) * 2 + real.long(), minlength=2 * (num + 1))
        bins = pairs.tolist()
        if bins[0] + bins[1] > 0 or len(bins) > 2 * (num + 1):
            raise ValueError(
                f"ModalityMoE: expert_ids must lie in [0, {num}); got values from {int(ids.min())} to {int(ids.max())}"
            )
        sizes = bins[3::2]  # real tokens per expert
        padded = sum(bins[2::2])
        self.last_stats = MoEStats(expert_counts=pairs[3::2].detach())
        self.last_aux_loss = None

        used = [e for e, size in enumerate(sizes) if size > 0]
        if not used:  # no real tokens at all
            return hidden_states.new_zeros(hidden_states.shape)
        if len(used) == 1 and padded == 0:  # a single-modality batch without padding needs no permutation
            return self.experts[used[0]](hidden_states)

        # Padding is not routed: it sorts after every expert's group and its output stays zero (the layer's residual
        # carries it).
        order = torch.argsort(ids.masked_fill(~real, num), stable=True)  # (N,) grouped by expert, token order inside
        routed = order[: sum(sizes)]
        grouped = self._run_experts(x.index_select(0, routed), sizes)  # (R, D) in sorted order
        out = grouped.new_zeros(x.shape).index_copy(0, routed, grouped)  # back to token order
        return out.reshape(hidden_states.shape)


# ----------------------------------------------------------------------------------------------------------------
# Top-k MoE
# ----------------------------------------------------------------------------------------------------------------


def router_losses(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch-style load-balancing loss and ST-MoE router z-loss of routed tokens.

    Args:
        router_logits (`torch.Tensor`): `(R, E)` router logits of the R routed (real) tokens, from one layer or
            several layers concatenated.
        top_k (`int`): Experts per token.

    Returns:
        `(balance_loss, z_loss)`: `balance_loss = E * sum_e f_e * P_e`, `f_e` the fraction of the top-k assignments
        (before any capacity cut) sent to expert e and `P_e` its mean router probability (1 for uniform routing,
        `E / top_k` when routing collapses onto `top_k` experts); `z_loss = mean(logsumexp(logits) ** 2)`.
    """
    logits = router_logits.float()
    num_tokens, num_experts = logits.shape
    probs = logits.softmax(dim=-1)  # (R, E)
    chosen = probs.topk(top_k, dim=-1).indices.reshape(-1)  # (R * k,)
    fraction = torch.bincount(chosen, minlength=num_experts).float() / max(num_tokens * top_k, 1)  # (E,), no grad
    balance = num_experts * (fraction * probs.mean(dim=0)).sum()
    z_loss = torch.logsumexp(logits, dim=-1).square().mean()
    return balance, z_loss


class TopKRouter(nn.Linear):
    """The learned router of `TopKMoE`: a bias-free linear map from a token to one logit per expert.

    A module of its own so that the model can record its output (`output_router_logits`), as transformers' MoE models
    record their routers'; its parameter keeps the key `router.weight`. It only ever sees routed (real) tokens.
    """

    def __init__(self, d_model: int, num_experts: int) -> None:
        super().__init__(d_model, num_experts, bias=False)


class TopKMoE(MoEFeedForward):
    """Experts chosen per token by a learned router (top-1 or top-2), with capacity and a load-balancing loss.

    Routing: `probs = softmax(router(x))` in float32 (`router` is a bias-free linear map); every real token picks its
    `top_k` most probable experts.

    Combine weights (chosen so that the selected weights always sum to one, which keeps the output scale independent
    of router confidence and makes an upcycled model reproduce the dense one exactly):

    * top-2: the two probabilities renormalised, `p_i / (p_1 + p_2)` (GShard, Mixtral), gradients included;
    * top-1: renormalising gives the constant 1, which would starve the router of gradient, so the weight is
      `p / p.detach()`: its value is exactly 1 and its gradient is that of `log p`. This is the Switch gradient
      (weight `p`) rescaled per token by `1 / p`, a factor bounded by `num_experts` because the top-1 probability is
      at least `1 / num_experts`.

    Capacity: with `capacity_factor` set, each expert takes at most `C = ceil(capacity_factor * R * top_k / E)`
    assignments, R being the number of real tokens in the forward. Priority is deterministic: every token's first
    choice comes before any second choice, and within a rank earlier flattened positions `(b, t)` come first. An
    assignment over capacity contributes zero (the layer's residual connection carries the token); under top-2 the
    other expert's contribution keeps its weight. In eval mode `eval_capacity_factor` applies; its default `None`
    means no limit, so inference outputs do not depend on the other examples in the batch.

    Auxiliary loss (`aux_loss = balance_loss_coef * balance_loss + z_loss_coef * z_loss`, over real tokens):

    * `balance_loss = E * sum_e f_e * P_e` (Switch), `f_e` the fraction of the router's assignments (all `top_k`
      choices, before the capacity cut) sent to expert e and `P_e` the mean router probability of e. It is 1 for
      perfectly uniform routing and grows to `E / top_k` as routing collapses onto `top_k` experts;
    * `z_loss = mean(logsumexp(logits) ** 2)` (ST-MoE), which keeps router logits small.

    Padding (`token_mask` False) is not routed: it takes no capacity, enters neither the statistics nor the loss,
    and its output is zero.

    Args:
        num_experts (`int`): Number of experts E.
        d_model (`int`): Width of the tokens.
        ffn_dim (`int`): Inner width of every expert.
        top_k (`int`, defaults to 1): Experts per token, 1 or 2.
        capacity_factor (`float`, *optional*, defaults to 1.25): Training capacity factor; `None` for no limit.
        eval_capacity_factor (`float`, *optional*): Capacity factor in eval mode; `None` (default) for no limit.
        router_jitter (`float`, defaults to 0.0): In training, multiply the router input by noise drawn from
            `U(1 - jitter, 1 + jitter)` (Switch); the experts see the clean input.
        balance_loss_coef (`float`, defaults to 1.0): Weight of the load-balancing loss in `aux_loss`.
        z_loss_coef (`float`, defaults to 0.0): Weight of the router z-loss in `aux_loss`.
        activation (`str`, defaults to `"gelu"`): Expert activation, a key of `ACT2FN`.
        dropout (`float`, defaults to 0.0): Dropout on expert outputs.
        activation_dropout (`float`, defaults to 0.0): Dropout after the expert activation.
        normformer (`bool`, defaults to `True`): Experts carry the NormFormer `ffn_layer_norm`.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        ffn_dim: int,
        top_k: int = 1,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = None,
        router_jitter: float = 0.0,
        balance_loss_coef: float = 1.0,
        z_loss_coef: float = 0.0,
        activation: str = "gelu",
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
        normformer: bool = True,
    ) -> None:
        super().__init__(num_experts, d_model, ffn_dim, activation, dropout, activation_dropout, normformer)
        if top_k not in (1, 2):
            raise ValueError(f"TopKMoE: top_k must be 1 or 2, got {top_k!r}")
        if top_k > num_experts:
            raise ValueError(f"TopKMoE: top_k={top_k} exceeds num_experts={num_experts}")
        for name, factor in (("capacity_factor", capacity_factor), ("eval_capacity_factor", eval_capacity_factor)):
            if factor is not None and not factor > 0:
                raise ValueError(f"TopKMoE: {name} must be positive or None, got {factor!r}")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"TopKMoE: router_jitter must lie in [0, 1), got {router_jitter!r}")
        if balance_loss_coef < 0 or z_loss_coef < 0:
            raise ValueError(
                f"TopKMoE: loss coefficients must be >= 0, got balance_loss_coef={balance_loss_coef}, "
                f"z_loss_coef={z_loss_coef}"
            )
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.router_jitter = router_jitter
        self.balance_loss_coef = balance_loss_coef
        self.z_loss_coef = z_loss_coef
        self.router = TopKRouter(d_model, num_experts)

    def capacity(self, num_tokens: int) -> int | None:
        """Assignments each expert may take for `num_tokens` real tokens in the current mode; `None` if unlimited."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if factor is None:
            return None
        return math.ceil(factor * num_tokens * self.top_k / self.num_experts)

    def forward(
        self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Route and run.

        Args:
            hidden_states (`torch.Tensor`): `(B, T, D)` (any `(..., D)` works).
            token_mask (`torch.Tensor`, *optional*): `(B, T)` bool, True for real tokens; padding is not routed.

        Returns:
            `(output, aux_loss)`: output of the shape of `hidden_states`, and the weighted auxiliary loss (a scalar
            with gradient to the router). The loss is also stored as `last_aux_loss`.
        """
        self._check_input(hidden_states, token_mask)
        num, k = self.num_experts, self.top_k
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # (N, D)
        real = None
        if token_mask is not None:
            real = token_mask.reshape(-1).nonzero().squeeze(1)  # (R,) flat positions of real tokens
            x = x.index_select(0, real)  # (R, D)
        num_real = x.shape[0]

        if num_real == 0:
            # Nothing to route; a zero loss still connected to the router keeps every parameter in the graph.
            aux_loss = self.router.weight.sum() * 0.0
            zero = aux_loss.detach().float()
            self.last_stats = MoEStats(
                expert_counts=torch.zeros(num, dtype=torch.long, device=x.device),
                router_entropy=zero,
                dropped_fraction=zero,
                balance_loss=zero,
                z_loss=zero,
                capacity=self.capacity(0),
            )
            self.last_aux_loss = aux_loss
            return hidden_states.new_zeros(hidden_states.shape), aux_loss

        router_input = x
        if self.training and self.router_jitter > 0:
            noise = torch.empty_like(x).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
            router_input = x * noise
        logits = self.router(router_input).float()  # (R, E); routing in float32 for stable softmax and ties
        log_probs = logits.log_softmax(dim=-1)
        probs = log_probs.exp()
        top_probs, top_experts = probs.topk(k, dim=-1)  # (R, k)
        if k == 1:
            weights = top_probs / top_probs.detach()  # value 1, gradient of log p (see the class docstring)
        else:
            weights = top_probs / top_probs.sum(dim=-1, keepdim=True)

        # Assignments in priority order: all first choices in token order, then all second choices.
        assign_expert = top_experts.t().reshape(-1)  # (k * R,)
        assign_token = torch.arange(num_real, device=x.device).repeat(k)  # (k * R,)
        assign_weight = weights.t().reshape(-1)  # (k * R,)
        counts = torch.bincount(assign_expert, minlength=num)  # (E,)
        order = torch.argsort(assign_expert, stable=True)  # grouped by expert, priority order inside a group
        capacity = self.capacity(num_real)
        kept_counts = counts
        if capacity is not None:
            starts = counts.cumsum(0) - counts  # (E,) first slot of every group
            slot = torch.arange(order.numel(), device=x.device) - starts[assign_expert[order]]
            order = order[slot < capacity]
            kept_counts = counts.clamp(max=capacity)
        sizes = kept_counts.tolist()

        tokens = assign_token[order]  # (A,) token of every kept assignment, grouped by expert
        expert_out = self._run_experts(x.index_select(0, tokens), sizes)  # (A, D)
        expert_out = expert_out * assign_weight[order].unsqueeze(-1).to(expert_out.dtype)
        out = expert_out.new_zeros(x.shape).index_add(0, tokens, expert_out)  # (R, D); top-2 sums both experts
        if real is not None:
            out = out.new_zeros(token_mask.numel(), x.shape[-1]).index_copy(0, real, out)  # (N, D)
        out = out.reshape(hidden_states.shape)

        balance_loss, z_loss = router_losses(logits, k)
        aux_loss = self.balance_loss_coef * balance_loss
        if self.z_loss_coef > 0:
            aux_loss = aux_loss + self.z_loss_coef * z_loss
        self.last_stats = MoEStats(
            expert_counts=counts.detach(),
            router_entropy=-(probs * log_probs).sum(dim=-1).mean().detach(),
            dropped_fraction=1.0 - kept_counts.sum().detach().float() / (k * num_real),
            balance_loss=balance_loss.detach(),
            z_loss=z_loss.detach(),
            capacity=capacity,
        )
        self.last_aux_loss = aux_loss
        return out, aux_loss


# ----------------------------------------------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------------------------------------------


def _stats_name(module_name: str) -> str:
    # The block sits at attribute `moe` of a layer; the layer name reads better in logs.
    name = module_name.removesuffix(".moe")
    return "root" if name in ("", "moe") else name


def collect_moe_stats(model: nn.Module, prefix: str = "moe") -> dict[str, float]:
    """Flatten the last-forward statistics of every MoE block in `model` into floats for logging.

    Keys: `{prefix}/{layer}/expert_{e}_fraction`, `{prefix}/{layer}/tokens`, and for top-k blocks
    `{prefix}/{layer}/router_entropy`, `dropped_fraction`, `balance_loss`, `z_loss`; plus means over blocks,
    `{prefix}/router_entropy_mean`, `{prefix}/dropped_fraction_mean`, `{prefix}/balance_loss_mean`,
    `{prefix}/z_loss_mean` (present when at least one block recorded the value). `{layer}` is the module name
    without the trailing `.moe`, e.g. `moe/encoder.layers.0/expert_3_fraction`. Blocks that have not run yet are
    skipped.

    Args:
        model (`nn.Module`): Any module containing `ModalityMoE` / `TopKMoE` blocks.
        prefix (`str`, defaults to `"moe"`): First component of every key.
    """
    out: dict[str, float] = {}
    pooled: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, MoEFeedForward) or module.last_stats is None:
            continue
        layer = _stats_name(name)
        for key, value in module.last_stats.to_dict().items():
            out[f"{prefix}/{layer}/{key}"] = value
            if key in ("router_entropy", "dropped_fraction", "balance_loss", "z_loss"):
                pooled.setdefault(key, []).append(value)
    for key, values in pooled.items():
        out[f"{prefix}/{key}_mean"] = sum(values) / len(values)
    return out


def sum_aux_losses(model: nn.Module, clear: bool = True) -> torch.Tensor | None:
    """Sum `last_aux_loss` over the MoE blocks of `model` (weights already applied by each block).

    Args:
        model (`nn.Module`): Any module containing MoE blocks.
        clear (`bool`, defaults to `True`): Reset every `last_aux_loss` to `None` after reading, so that a loss is
            never added twice and a block skipped in a later forward (e.g. the encoder during cached decoding)
            contributes nothing stale.

    Returns:
        The sum as a scalar tensor, or `None` when no block holds a loss (dense or modality-only models).

    Raises:
        ValueError: When gradients are enabled and a training block's loss has no graph although its router
            requires grad; this happens under reentrant gradient checkpointing, which runs the forward under
            `no_grad` (use `use_reentrant=False`).
    """
    total = None
    for name, module in model.named_modules():
        if not isinstance(module, MoEFeedForward) or module.last_aux_loss is None:
            continue
        loss = module.last_aux_loss
        router = module.router.weight if isinstance(module, TopKMoE) else None
        if torch.is_grad_enabled() and module.training and router is not None and router.requires_grad:
            if not loss.requires_grad:
                raise ValueError(
                    f"sum_aux_losses: the auxiliary loss of MoE block {name or '<root>'!r} carries no gradient; it was "
                    "computed under no_grad, as reentrant gradient checkpointing does. Enable gradient "
                    "checkpointing with use_reentrant=False so the load-balancing loss trains the router."
                )
        total = loss if total is None else total + loss
        if clear:
            module.last_aux_loss = None
    return total


# ----------------------------------------------------------------------------------------------------------------
# Upcycling
# ----------------------------------------------------------------------------------------------------------------


def upcycle_dense_ffn(dense: nn.Module, moe: MoEFeedForward) -> MoEFeedForward:
    """Copy a dense feed-forward block into every expert of `moe` (in place; the router keeps its initialisation).

    Args:
        dense (`nn.Module`): Anything with `fc1`, `fc2` and `ffn_layer_norm` (`None` without NormFormer): a
            `FeedForward`, or an OFA encoder/decoder layer.
        moe (`MoEFeedForward`): The `ModalityMoE` or `TopKMoE` to initialise.

    Returns:
        `moe`, for chaining.
    """
    if not isinstance(moe, MoEFeedForward):
        raise TypeError(f"upcycle_dense_ffn: moe must be a ModalityMoE or TopKMoE, got {type(moe).__name__}")
    for attr in ("fc1", "fc2", "ffn_layer_norm"):
        if not hasattr(dense, attr):
            raise TypeError(f"upcycle_dense_ffn: the dense module {type(dense).__name__} has no attribute {attr!r}")
    if (dense.ffn_layer_norm is None) != (moe.experts[0].ffn_layer_norm is None):
        raise ValueError(
            "upcycle_dense_ffn: the dense block and the experts disagree on NormFormer "
            f"(dense ffn_layer_norm is {'absent' if dense.ffn_layer_norm is None else 'present'})"
        )
    source = {k: v for k, v in dense.state_dict().items() if k.split(".")[0] in ("fc1", "fc2", "ffn_layer_norm")}
    with torch.no_grad():
        for e, expert in enumerate(moe.experts):
            target = expert.state_dict()
            for key, value in source.items():
                if target[key].shape != value.shape:
                    raise ValueError(
                        f"upcycle_dense_ffn: shape of {key} differs: dense {tuple(value.shape)}, "
                        f"expert {e} {tuple(target[key].shape)}"
                    )
            expert.load_state_dict(source)
    return moe


def dense_to_moe_state_dict(
    state_dict: dict[str, torch.Tensor], layer_prefixes: list[str], num_experts: int
) -> dict[str, torch.Tensor]:
    """Rewrite a dense checkpoint so chosen layers load into MoE blocks (a new dict; the input is left unchanged).

    For every prefix P (a layer's key prefix, e.g. `model.encoder.layers.3`), `P.fc1.weight` becomes
    `P.moe.experts.{e}.fc1.weight` for e in `range(num_experts)`, likewise `fc1.bias`, `fc2.*` and
    `ffn_layer_norm.*`. Other keys pass through. Each expert gets its own copy of the tensors (savable with
    safetensors). A `TopKMoE` router (`P.moe.router.weight`) is absent from the result and keeps its initialisation.

    Args:
        state_dict (`dict[str, torch.Tensor]`): The dense state dict.
        layer_prefixes (`list[str]`): Key prefixes of the layers to convert, without a trailing dot.
        num_experts (`int`): Experts per converted layer.
    """
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"dense_to_moe_state_dict: num_experts must be a positive int, got {num_experts!r}")
    if isinstance(layer_prefixes, str):
        raise TypeError("dense_to_moe_state_dict: layer_prefixes must be a list of strings, not a single string")
    moved: dict[str, str] = {}  # dense key -> layer prefix
    for prefix in layer_prefixes:
        prefix = prefix.removesuffix(".")
        if f"{prefix}.fc1.weight" not in state_dict:
            raise ValueError(f"dense_to_moe_state_dict: no dense feed-forward at {prefix!r} ({prefix}.fc1.weight)")
        for name in _FFN_PARAM_NAMES:
            if f"{prefix}.{name}" in state_dict:
                moved[f"{prefix}.{name}"] = prefix
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in moved:
            out[key] = value
            continue
        prefix = moved[key]
        name = key[len(prefix) + 1 :]
        for e in range(num_experts):
            out[f"{prefix}.moe.experts.{e}.{name}"] = value.clone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------------------------


def select_moe_layers(spec: str | list[int] | tuple[int, ...], num_layers: int) -> list[int]:
    """Indices (0-based, ascending) of the layers that get an MoE block.

    Args:
        spec (`str` or `list[int]`):
            * `"all"`: every layer;
            * `"every_other"`: layers 1, 3, 5, ... (the first layer stays dense, as in GShard and Switch);
            * `"top_N"`: the last N layers, e.g. `"top_2"` of 6 layers is `[4, 5]`;
            * a list of distinct layer indices.
        num_layers (`int`): Layers in the stack.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"select_moe_layers: num_layers must be a positive int, got {num_layers!r}")
    if isinstance(spec, str):
        if spec == "all":
            return list(range(num_layers))
        if spec == "every_other":
            return list(range(1, num_layers, 2))
        count = spec.removeprefix("top_")
        if count != spec and count.isdigit():
            n = int(count)
            if not 1 <= n <= num_layers:
                raise ValueError(f"select_moe_layers: {spec!r} asks for {n} layers, but there are {num_layers}")
            return list(range(num_layers - n, num_layers))
        raise ValueError(
            f"select_moe_layers: unknown spec {spec!r}; use 'all', 'every_other', 'top_N' (e.g. 'top_2') "
            "or a list of layer indices"
        )
    if not isinstance(spec, (list, tuple)):
        raise TypeError(f"select_moe_layers: spec must be a string or a list of ints, got {type(spec).__name__}")
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"select_moe_layers: layer indices must be ints, got {index!r} in {spec!r}")
        if not 0 <= index < num_layers:
            raise ValueError(f"select_moe_layers: layer index {index} is outside [0, {num_layers})")
    if len(set(spec)) != len(spec):
        raise ValueError(f"select_moe_layers: duplicate layer indices in {spec!r}")
    return sorted(spec)
