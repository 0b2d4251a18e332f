"""Tests of the mixture-of-experts feed-forward blocks (`modeling_ofa.moe`), at tiny sizes on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from modeling_ofa.modeling_ofa import OFAEncoderLayer
from modeling_ofa.moe import (
    FeedForward,
    ModalityMoE,
    TopKMoE,
    collect_moe_stats,
    dense_to_moe_state_dict,
    select_moe_layers,
    sum_aux_losses,
    upcycle_dense_ffn,
)

D, F = 8, 16  # model width, inner width


def tagged_input(batch: int, length: int, d_model: int = D, seed: int = 0) -> torch.Tensor:
    """Random tokens whose feature 0 is the flat position, so a row seen by an expert tells which token it was."""
    x = torch.randn(batch, length, d_model, generator=torch.Generator().manual_seed(seed))
    x[..., 0] = torch.arange(batch * length, dtype=torch.float).reshape(batch, length)
    return x


def record_expert_inputs(moe: nn.Module) -> tuple[dict[int, list[torch.Tensor]], list]:
    seen: dict[int, list[torch.Tensor]] = {e: [] for e in range(len(moe.experts))}
    handles = [
        expert.register_forward_hook(lambda mod, args, out, e=e: seen[e].append(args[0].detach().clone()))
        for e, expert in enumerate(moe.experts)
    ]
    return seen, handles


def seen_positions(seen: list[torch.Tensor]) -> list[int]:
    return sorted(int(v) for chunk in seen for v in chunk.reshape(-1, chunk.shape[-1])[:, 0].tolist())


def route_by_features(moe: TopKMoE) -> TopKMoE:
    """Make the router the identity (needs d_model == num_experts), so a token's logits are its features."""
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(moe.num_experts))
    return moe


# ----------------------------------------------------------------------------------------------------------------
# Dense block
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normformer", [True, False])
def test_feed_forward_and_upcycled_moe_match_ofa_layer(tiny_config, normformer):
    tiny_config.normformer = normformer
    layer = OFAEncoderLayer(tiny_config, layer_idx=0).eval()
    d, f = tiny_config.d_model, tiny_config.encoder_ffn_dim
    x = torch.randn(2, 5, d)
    expected = layer.feed_forward(x)

    ff = FeedForward(d, f, tiny_config.activation_function, normformer=normformer).eval()
    ff.load_state_dict(
        {k: v for k, v in layer.state_dict().items() if k.split(".")[0] in ("fc1", "fc2", "ffn_layer_norm")}
    )
    torch.testing.assert_close(ff(x), expected, rtol=0, atol=0)
    assert (ff.ffn_layer_norm is None) == (not normformer)

    modality = upcycle_dense_ffn(layer, ModalityMoE(3, d, f, normformer=normformer)).eval()
    ids = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 0, 1, 1]])
    torch.testing.assert_close(modality(x, ids), expected, rtol=0, atol=1e-6)
    topk = upcycle_dense_ffn(layer, TopKMoE(3, d, f, top_k=2, normformer=normformer)).eval()
    torch.testing.assert_close(topk(x)[0], expected, rtol=0, atol=1e-6)


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        FeedForward(D, F, "nope")


# ----------------------------------------------------------------------------------------------------------------
# Modality MoE
# ----------------------------------------------------------------------------------------------------------------

ID_PATTERNS = {
    "mixed": [[0, 1, 2, 0, 1, 3], [3, 3, 2, 0, 0, 1]],
    "skips_expert_2": [[0, 1, 1, 0, 3, 3], [1, 0, 3, 0, 1, 1]],
    "single_expert": [[2, 2, 2, 2, 2, 2], [2, 2, 2, 2, 2, 2]],
}


@pytest.mark.parametrize("pattern", sorted(ID_PATTERNS))
def test_modality_routes_every_token_to_its_expert(pattern):
    torch.manual_seed(0)
    moe = ModalityMoE(4, D, F).eval()
    ids = torch.tensor(ID_PATTERNS[pattern])
    x = tagged_input(*ids.shape)
    seen, handles = record_expert_inputs(moe)
    out = moe(x, ids)
    for handle in handles:
        handle.remove()

    flat_ids = ids.reshape(-1).tolist()
    for e in range(4):
        expected = [pos for pos, i in enumerate(flat_ids) if i == e]
        assert seen_positions(seen[e]) == expected
        assert len(seen[e]) == (1 if expected else 0)  # each used expert runs once; empty experts never run

    reference = torch.stack([moe.experts[i](x.reshape(-1, D)[pos]) for pos, i in enumerate(flat_ids)])
    torch.testing.assert_close(out, reference.reshape(x.shape), rtol=1e-5, atol=1e-6)
    assert moe.last_stats.expert_counts.tolist() == [flat_ids.count(e) for e in range(4)]
    assert moe.last_stats.router_entropy is None and moe.last_aux_loss is None


def test_modality_gradients_reach_only_used_experts():
    moe = ModalityMoE(4, D, F)
    ids = torch.tensor(ID_PATTERNS["skips_expert_2"])
    x = tagged_input(*ids.shape).requires_grad_()
    moe(x, ids).square().sum().backward()
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        if e == 2:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_modality_token_mask_keeps_padding_out():
    moe = ModalityMoE(3, D, F).eval()
    ids = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    x = tagged_input(2, 4)
    seen = []
    hooks = [expert.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0])) for expert in moe.experts]
    masked = moe(x, ids, token_mask=mask)
    for hook in hooks:
        hook.remove()
    assert sum(seen) == int(mask.sum())  # padding reaches no expert
    assert moe.last_stats.expert_counts.tolist() == [1, 3, 1]
    full = moe(x, ids)
    assert moe.last_stats.expert_counts.tolist() == [3, 3, 2]  # this call had no mask
    torch.testing.assert_close(masked[mask], full[mask], rtol=0, atol=1e-6)  # real tokens: the same outputs
    assert (masked[~mask] == 0).all() and (full[~mask] != 0).any()


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (torch.tensor([[0, 3]]), ValueError, r"must lie in \[0, 3\); got values from 0 to 3"),
        (torch.tensor([[-1, 0]]), ValueError, r"must lie in \[0, 3\); got values from -1 to 0"),
        (torch.tensor([[0.0, 1.0]]), TypeError, "integer tensor"),
        (torch.tensor([0, 1]), ValueError, "does not match hidden_states"),
    ],
)
def test_modality_rejects_bad_ids(ids, error, match):
    moe = ModalityMoE(3, D, F)
    with pytest.raises(error, match=match):
        moe(torch.randn(1, 2, D), ids)


def test_moe_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"hidden_states must be \(\.\.\., 8\)"):
        ModalityMoE(2, D, F)(torch.randn(1, 2, D + 1), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="token_mask must be a bool tensor"):
        TopKMoE(2, D, F)(torch.randn(1, 2, D), token_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="num_experts must be a positive int"):
        ModalityMoE(0, D, F)
    with pytest.raises(ValueError, match="top_k must be 1 or 2"):
        TopKMoE(4, D, F, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor must be positive"):
        TopKMoE(4, D, F, capacity_factor=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Top-k MoE
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2])
def test_topk_matches_per_token_reference_without_capacity(top_k):
    torch.manual_seed(1)
    moe = TopKMoE(4, D, F, top_k=top_k, capacity_factor=None).eval()
    x = torch.randn(3, 5, D)
    out, _ = moe(x)
    probs = moe.router(x).softmax(-1)
    rows = []
    for token, p in zip(x.reshape(-1, D), probs.reshape(-1, 4)):
        top_p, top_e = p.topk(top_k)
        weights = top_p / top_p.sum()
        rows.append(sum(w * moe.experts[int(e)](token) for w, e in zip(weights, top_e)))
    torch.testing.assert_close(out, torch.stack(rows).reshape(x.shape), rtol=1e-5, atol=1e-6)
    assert moe.last_stats.dropped_fraction == 0
    assert moe.last_stats.expert_counts.sum() == top_k * 15


def test_topk_collapsed_top1_keeps_first_tokens_up_to_capacity():
    moe = route_by_features(TopKMoE(4, 4, F, top_k=1, capacity_factor=1.0)).train()
    x = torch.randn(2, 4, 4)
    x[..., 0] = 10.0  # every token prefers expert 0
    seen, _ = record_expert_inputs(moe)
    out, _ = moe(x)
    capacity = math.ceil(1.0 * 8 * 1 / 4)
    assert moe.last_stats.capacity == capacity == 2
    assert len(seen[0]) == 1 and seen[0][0].shape[0] == capacity
    assert all(len(seen[e]) == 0 for e in (1, 2, 3))
    flat_out = out.reshape(-1, 4)
    torch.testing.assert_close(flat_out[:2], moe.experts[0](x.reshape(-1, 4)[:2]), rtol=0, atol=1e-6)
    assert flat_out[2:].abs().max() == 0  # dropped tokens: zero expert output
    assert moe.last_stats.dropped_fraction.item() == pytest.approx(6 / 8)
    assert moe.last_stats.expert_counts.tolist() == [8, 0, 0, 0]


def test_topk_first_choices_have_priority_over_second_choices():
    moe = route_by_features(TopKMoE(4, 4, F, top_k=2, capacity_factor=1.0)).train()
    # Tokens 0, 1 prefer expert 0 then 1; tokens 2, 3 prefer expert 1 then 0. Capacity ceil(1 * 4 * 2 / 4) = 2.
    x = torch.tensor([[[3.0, 2.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0]]])
    seen, _ = record_expert_inputs(moe)
    out, _ = moe(x)
    assert moe.last_stats.capacity == 2
    # Expert 1 serves the first choices of tokens 2 and 3, not the earlier second choices of tokens 0 and 1.
    torch.testing.assert_close(seen[0][0], x[0, :2])
    torch.testing.assert_close(seen[1][0], x[0, 2:])
    p = torch.tensor([3.0, 2.0, 0.0, 0.0]).softmax(-1)
    first_weight = p[0] / (p[0] + p[1])
    expected = torch.cat([moe.experts[0](x[0, :2]), moe.experts[1](x[0, 2:])]) * first_weight
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)
    assert moe.last_stats.dropped_fraction.item() == pytest.approx(0.5)


@pytest.mark.parametrize(("top_k", "factor"), [(1, 0.5), (2, 0.5), (2, 1.25)])
def test_topk_capacity_respected_on_random_routing(top_k, factor):
    torch.manual_seed(2)
    moe = TopKMoE(4, D, F, top_k=top_k, capacity_factor=factor).train()
    with torch.no_grad():
        moe.router.weight[0] += 2.0 * moe.router.weight[0].sign()  # skew routing so some expert overflows
    x = torch.randn(4, 8, D)
    seen, _ = record_expert_inputs(moe)
    moe(x)
    capacity = math.ceil(factor * 32 * top_k / 4)
    counts = moe.last_stats.expert_counts
    processed = [sum(chunk.shape[0] for chunk in seen[e]) for e in range(4)]
    assert processed == counts.clamp(max=capacity).tolist()
    assert max(processed) <= capacity
    expected_dropped = 1 - sum(processed) / (32 * top_k)
    assert moe.last_stats.dropped_fraction.item() == pytest.approx(expected_dropped)


def test_topk_eval_has_no_capacity_limit_by_default():
    moe = route_by_features(TopKMoE(4, 4, F, top_k=1, capacity_factor=0.5)).eval()
    x = torch.randn(2, 4, 4)
    x[..., 0] = 10.0
    out, _ = moe(x)
    assert moe.last_stats.capacity is None and moe.last_stats.dropped_fraction == 0
    torch.testing.assert_close(out, moe.experts[0](x), rtol=0, atol=1e-6)


def uniform_tokens(top_k: int) -> torch.Tensor:
    """8 tokens whose logits are cyclic shifts of one vector: router mean probabilities and top-k loads are uniform."""
    pattern = torch.tensor([2.0, 0.0, 0.0, 0.0]) if top_k == 1 else torch.tensor([2.0, 2.0, 0.0, 0.0])
    return torch.stack([pattern.roll(i % 4) for i in range(8)]).reshape(2, 4, 4)


@pytest.mark.parametrize("top_k", [1, 2])
def test_balance_loss_golden_values(top_k):
    moe = route_by_features(TopKMoE(4, 4, F, top_k=top_k, capacity_factor=None))
    _, uniform = moe(uniform_tokens(top_k))
    assert uniform.item() == pytest.approx(1.0, abs=1e-6)
    assert moe.last_stats.expert_counts.tolist() == [2 * top_k] * 4

    collapsed = torch.zeros(2, 4, 4)
    collapsed[..., 0] = math.log(3.0)  # p = (1/2, 1/6, 1/6, 1/6)
    _, loss = moe(collapsed)
    # top-1: 4 * (1 * 1/2) = 2; top-2: half the load on expert 0, half on one of the others: 4 * (1/4 + 1/12).
    assert loss.item() == pytest.approx(2.0 if top_k == 1 else 4 / 3, abs=1e-6)
    assert moe.last_stats.z_loss.item() == pytest.approx(math.log(6.0) ** 2, abs=1e-5)


def test_aux_loss_weights_and_z_loss():
    moe = route_by_features(TopKMoE(4, 4, F, capacity_factor=None, balance_loss_coef=0.01, z_loss_coef=0.1))
    x = torch.zeros(1, 3, 4)
    x[..., 0] = math.log(3.0)
    _, loss = moe(x)
    assert loss.item() == pytest.approx(0.01 * 2.0 + 0.1 * math.log(6.0) ** 2, abs=1e-6)
    assert moe.last_stats.balance_loss.item() == pytest.approx(2.0, abs=1e-6)


def test_aux_loss_is_differentiable():
    torch.manual_seed(3)
    moe = TopKMoE(4, D, F, top_k=2)
    _, loss = moe(torch.randn(2, 6, D))
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert torch.isfinite(moe.router.weight.grad).all() and moe.router.weight.grad.abs().sum() > 0


def test_topk_token_mask_excludes_padding():
    torch.manual_seed(4)
    moe = TopKMoE(4, D, F, top_k=2, capacity_factor=1.0).train()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]])
    out, loss = moe(x, token_mask=mask)
    stats = moe.last_stats
    real_out, real_loss = moe(x[mask].unsqueeze(0))  # the real tokens alone, in the same order
    torch.testing.assert_close(out[mask], real_out[0], rtol=0, atol=1e-6)
    assert out[~mask].abs().max() == 0
    torch.testing.assert_close(loss, real_loss)
    assert stats.expert_counts.tolist() == moe.last_stats.expert_counts.tolist()
    assert stats.capacity == math.ceil(1.0 * 7 * 2 / 4)
    torch.testing.assert_close(stats.router_entropy, moe.last_stats.router_entropy)


def test_topk_all_padding_gives_zero_output_and_connected_zero_loss():
    moe = TopKMoE(4, D, F)
    out, loss = moe(torch.randn(2, 3, D), token_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert out.abs().max() == 0 and loss.item() == 0 and loss.requires_grad
    assert moe.last_stats.expert_counts.tolist() == [0, 0, 0, 0]


def test_router_jitter_only_in_training():
    torch.manual_seed(5)
    moe = TopKMoE(4, D, F, top_k=1, capacity_factor=None, router_jitter=0.5)
    x = torch.randn(2, 6, D)
    moe.eval()
    _, clean_loss = moe(x)
    moe.router_jitter = 0.0
    torch.testing.assert_close(moe(x)[1], clean_loss, rtol=0, atol=0)
    moe.router_jitter = 0.5
    moe.train()
    torch.manual_seed(0)
    first = moe(x)[1]
    torch.manual_seed(0)
    torch.testing.assert_close(moe(x)[1], first, rtol=0, atol=0)  # reproducible under a fixed seed
    assert not torch.allclose(first, clean_loss)  # the noise does reach the router


# ----------------------------------------------------------------------------------------------------------------
# Upcycling
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normformer", [True, False])
@pytest.mark.parametrize("kind", ["modality", "top1", "top2"])
def test_upcycling_parity(kind, normformer):
    torch.manual_seed(6)
    dense = FeedForward(D, F, normformer=normformer).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a missed copy would show
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 7, D)
    if kind == "modality":
        moe = upcycle_dense_ffn(dense, ModalityMoE(5, D, F, normformer=normformer)).eval()
        out = moe(x, torch.randint(0, 5, (3, 7)))
    else:
        moe = upcycle_dense_ffn(dense, TopKMoE(5, D, F, top_k=int(kind[-1]), normformer=normformer)).eval()
        out, _ = moe(x)
        assert (moe.last_stats.expert_counts > 0).sum() > 1  # tokens really spread over experts
    torch.testing.assert_close(out, dense(x), rtol=0, atol=1e-6)


def test_top1_router_gets_gradient_after_upcycling():
    torch.manual_seed(7)
    moe = upcycle_dense_ffn(FeedForward(D, F), TopKMoE(4, D, F, top_k=1, capacity_factor=None))
    out, _ = moe(torch.randn(2, 5, D))
    out.square().sum().backward()  # the task loss alone: the weight p / p.detach() must still reach the router
    assert moe.router.weight.grad.abs().sum() > 0


def test_upcycle_rejects_mismatches():
    with pytest.raises(ValueError, match="disagree on NormFormer"):
        upcycle_dense_ffn(FeedForward(D, F, normformer=False), ModalityMoE(2, D, F))
    with pytest.raises(ValueError, match="shape of fc1.weight differs"):
        upcycle_dense_ffn(FeedForward(D, 2 * F), ModalityMoE(2, D, F))
    with pytest.raises(TypeError, match="has no attribute 'fc1'"):
        upcycle_dense_ffn(nn.Linear(D, D), ModalityMoE(2, D, F))


class ToyLayer(nn.Module):
    """A layer whose feed-forward is either dense (fc1/fc2/ffn_layer_norm) or an MoE block at attribute `moe`."""

    def __init__(self, moe: nn.Module | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        if moe is None:
            dense = FeedForward(D, F)
            self.fc1, self.fc2, self.ffn_layer_norm = dense.fc1, dense.fc2, dense.ffn_layer_norm
        else:
            self.moe = moe


class ToyStack(nn.Module):
    def __init__(self, moe_layers: dict[int, nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(ToyLayer(moe_layers.get(i)) for i in range(3))


def test_dense_to_moe_state_dict_key_scheme():
    dense = ToyStack({})
    converted = dense_to_moe_state_dict(dense.state_dict(), ["layers.1"], num_experts=2)
    names = ("fc1", "fc2", "ffn_layer_norm")
    expected = [f"layers.1.moe.experts.{e}.{name}.{p}" for e in range(2) for name in names for p in ("weight", "bias")]
    assert sorted(k for k in converted if k.startswith("layers.1.")) == sorted(
        ["layers.1.norm.weight", "layers.1.norm.bias", *expected]
    )
    assert "layers.1.fc1.weight" in dense.state_dict() and "layers.0.fc1.weight" in converted  # input untouched
    torch.testing.assert_close(converted["layers.1.moe.experts.1.fc2.weight"], dense.layers[1].fc2.weight)

    target = ToyStack({1: TopKMoE(2, D, F, top_k=2)})
    missing, unexpected = target.load_state_dict(converted, strict=False)
    assert missing == ["layers.1.moe.router.weight"] and unexpected == []
    x = torch.randn(2, 3, D)
    dense_ffn = FeedForward(D, F)
    dense_ffn.load_state_dict({k: v for k, v in dense.layers[1].state_dict().items() if not k.startswith("norm")})
    torch.testing.assert_close(target.eval().layers[1].moe(x)[0], dense_ffn(x), rtol=0, atol=1e-6)


def test_dense_to_moe_state_dict_rejects_unknown_prefix():
    with pytest.raises(ValueError, match="no dense feed-forward at 'layers.7'"):
        dense_to_moe_state_dict(ToyStack({}).state_dict(), ["layers.7"], num_experts=2)
    with pytest.raises(TypeError, match="list of strings"):
        dense_to_moe_state_dict(ToyStack({}).state_dict(), "layers.1", num_experts=2)


# ----------------------------------------------------------------------------------------------------------------
# Statistics and auxiliary losses over a model
# ----------------------------------------------------------------------------------------------------------------


class ToyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(ModalityMoE(2, D, F)), ToyLayer(TopKMoE(4, D, F, top_k=2))])

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = x + self.layers[0].moe(x, ids)
        return x + self.layers[1].moe(x)[0]


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = ToyEncoder()


def test_collect_moe_stats():
    torch.manual_seed(8)
    model = ToyModel()
    assert collect_moe_stats(model) == {}
    ids = torch.tensor([[0, 0, 0, 1], [1, 0, 0, 0]])
    model.encoder(torch.randn(2, 4, D), ids)
    stats = collect_moe_stats(model)
    assert stats["moe/encoder.layers.0/expert_0_fraction"] == pytest.approx(0.75)
    assert stats["moe/encoder.layers.0/expert_1_fraction"] == pytest.approx(0.25)
    assert stats["moe/encoder.layers.0/tokens"] == 8
    assert "moe/encoder.layers.0/router_entropy" not in stats
    assert sum(stats[f"moe/encoder.layers.1/expert_{e}_fraction"] for e in range(4)) == pytest.approx(1.0)
    assert stats["moe/encoder.layers.1/tokens"] == 16  # two assignments per token
    assert 0 < stats["moe/router_entropy_mean"] <= math.log(4)
    assert stats["moe/router_entropy_mean"] == stats["moe/encoder.layers.1/router_entropy"]
    assert 0 <= stats["moe/dropped_fraction_mean"] < 1
    assert all(isinstance(v, float) for v in stats.values())


def test_sum_aux_losses_sums_and_clears():
    model = ToyModel()
    extra = TopKMoE(2, D, F)
    model.extra = extra
    x = torch.randn(2, 4, D)
    model.encoder(x, torch.zeros(2, 4, dtype=torch.long))
    _, extra_loss = extra(x)
    total = sum_aux_losses(model)
    torch.testing.assert_close(total, model.encoder.layers[1].moe.last_stats.balance_loss + extra_loss.detach())
    assert sum_aux_losses(model) is None  # cleared: nothing is counted twice
    modality_only = ModalityMoE(2, D, F)
    modality_only(x, torch.zeros(2, 4, dtype=torch.long))
    assert sum_aux_losses(modality_only) is None


@pytest.mark.parametrize("cls", [ModalityMoE, TopKMoE])
def test_non_reentrant_checkpointing_matches_plain_backward(cls):
    torch.manual_seed(9)
    moe = cls(3, D, F).train()
    x = torch.randn(2, 5, D)
    ids = torch.tensor([[0, 0, 2, 2, 0], [2, 0, 0, 2, 2]])  # expert 1 unused

    def run(inp: torch.Tensor) -> torch.Tensor:
        if isinstance(moe, ModalityMoE):
            return moe(inp, ids)
        out, _ = moe(inp)
        return out

    def grads(use_checkpoint: bool) -> list[torch.Tensor | None]:
        moe.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_()
        out = checkpoint(run, inp, use_reentrant=False) if use_checkpoint else run(inp)
        aux = sum_aux_losses(moe)
        loss = out.square().sum() + (aux if aux is not None else 0.0)
        loss.backward()
        return [inp.grad] + [p.grad for p in moe.parameters()]

    plain, checkpointed = grads(False), grads(True)
    for a, b in zip(plain, checkpointed):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    if isinstance(moe, TopKMoE):
        assert moe.router.weight.grad.abs().sum() > 0


def test_reentrant_checkpointing_is_detected():
    moe = TopKMoE(3, D, F).train()
    x = torch.randn(2, 5, D, requires_grad=True)
    checkpoint(lambda inp: moe(inp)[0], x, use_reentrant=True)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        sum_aux_losses(moe)


def test_ddp_with_find_unused_parameters(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(10)
        model = DistributedDataParallel(ModalityMoE(3, D, F), find_unused_parameters=True)
        x = torch.randn(2, 4, D)
        for ids in (torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 2, 1, 2], [2, 2, 1, 1]])):
            model.zero_grad(set_to_none=True)
            model(x, ids).sum().backward()
            used = set(ids.unique().tolist())
            for e, expert in enumerate(model.module.experts):
                assert (expert.fc1.weight.grad is not None) == (e in used)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "num_layers", "expected"),
    [
        ("all", 4, [0, 1, 2, 3]),
        ("every_other", 6, [1, 3, 5]),
        ("every_other", 5, [1, 3]),
        ("every_other", 1, []),
        ("top_2", 6, [4, 5]),
        ("top_6", 6, [0, 1, 2, 3, 4, 5]),
        ([3, 0], 4, [0, 3]),
        ((1,), 2, [1]),
        ([], 3, []),
    ],
)
def test_select_moe_layers(spec, num_layers, expected):
    assert select_moe_layers(spec, num_layers) == expected


@pytest.mark.parametrize(
    ("spec", "num_layers", "error", "match"),
    [
        ("top_7", 6, ValueError, "asks for 7 layers, but there are 6"),
        ("top_0", 6, ValueError, "asks for 0 layers"),
        ("top_x", 6, ValueError, "unknown spec 'top_x'"),
        ("odd", 6, ValueError, "unknown spec 'odd'"),
        ([0, 6], 6, ValueError, r"layer index 6 is outside \[0, 6\)"),
        ([-1], 6, ValueError, "layer index -1"),
        ([1, 1], 6, ValueError, "duplicate layer indices"),
        ([1.0], 6, TypeError, "must be ints"),
        ([True], 6, TypeError, "must be ints"),
        (3, 6, TypeError, "string or a list of ints"),
        ("all", 0, ValueError, "num_layers must be a positive int"),
    ],
)
def test_select_moe_layers_errors(spec, num_layers, error, match):
    with pytest.raises(error, match=match):
        select_moe_layers(spec, num_layers)


@pytest.mark.parametrize("kind", ["modality", "topk"])
def test_mixed_precision_autocast(kind):
    torch.manual_seed(11)
    dense = FeedForward(D, F).eval()
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = dense(x)
        if kind == "modality":
            out = upcycle_dense_ffn(dense, ModalityMoE(3, D, F)).eval()(x, torch.randint(0, 3, (2, 5)))
        else:
            out, _ = upcycle_dense_ffn(dense, TopKMoE(3, D, F, top_k=2)).eval()(x, token_mask=mask)
            expected = expected * mask.unsqueeze(-1)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
