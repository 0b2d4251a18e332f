"""Generation on transformers' own contracts: cached decoding computes what uncached decoding computes.

Each test compares logits, not only ids, on models whose weights are perturbed so that consecutive tokens differ (a
fresh random OFA repeats one token forever, and ids then agree whether the cache works or not). Before the model took
`cache=` as transformers 5.24's `generate` passes it, every cached step saw only its newest token:
`test_cached_greedy_matches_uncached` failed on every case (logit differences ~0.2).
"""

from __future__ import annotations

import functools
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_weights, tiny_config_kwargs
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.utils import TransformersKwargs

from modeling_ofa import CACHE_NAME, OFACache, OFAConfig, OFAForConditionalGeneration
from modeling_ofa import modeling_ofa as modeling
from modeling_ofa.onnx import sample_encoder_inputs

TOLERANCE = 1e-5
EXTRA = dict(extra_modalities=["AUDIO", "VIDEO", "MOTION"], motion_feature_size=10)
KINDS = {
    "dense": {},
    "modality": dict(
        moe_type="modality",
        moe_modality_groups=[["TEXT", "PHONE", "CATEGORY"], ["IMAGE", "VIDEO", "IMAGE_CODE"], ["BOX", "STRUCT"]]
        + [["AUDIO", "MOTION"]],
    ),
    "topk": dict(moe_type="topk", moe_num_experts=3, moe_top_k=2),
}
# Encoder input variants; the last sample of each batch has text padding and lacks the non-text inputs.
VARIANTS = ["text", "image", "audio", "video+motion", "audio+image"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(kind: str, seed: int = 0, **overrides) -> OFAForConditionalGeneration:
    torch.manual_seed(seed)
    config = OFAConfig(**tiny_config_kwargs(**EXTRA, **KINDS[kind], **overrides))
    return perturb_weights(OFAForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def models() -> dict[str, OFAForConditionalGeneration]:
    return {kind: build(kind) for kind in KINDS}


def inputs_of(model: OFAForConditionalGeneration, variant: str, seed: int = 3) -> dict[str, torch.Tensor]:
    return sample_encoder_inputs(model.config, variant, batch_size=3, text_length=7, image_size=32, seed=seed)


def assert_not_degenerate(sequences: torch.Tensor) -> None:
    """Some sample changes token between consecutive steps, so a cache that forgot the past would show."""
    generated = sequences[:, 1:]
    assert (generated[:, 1:] != generated[:, :-1]).any(), f"degenerate test model: {sequences.tolist()}"


def assert_logits_close(cached, uncached) -> None:
    assert len(cached) == len(uncached)
    worst = max(float((a - b).abs().max()) for a, b in zip(cached, uncached))
    assert worst < TOLERANCE, f"cached and uncached step logits differ by {worst}"


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, return_dict_in_generate=True, output_logits=True, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_greedy_matches_uncached(models, kind, variant):
    model = models[kind]
    inputs = inputs_of(model, variant)
    cached = generate(model, inputs, max_new_tokens=8, do_sample=False)
    uncached = generate(model, inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert_not_degenerate(cached.sequences)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert_logits_close(cached.logits, uncached.logits)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_beam_search_matches_uncached(models, kind):
    model = models[kind]
    inputs = inputs_of(model, "audio+image")
    kwargs = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, output_scores=True)
    cached = generate(model, inputs, **kwargs)
    uncached = generate(model, inputs, use_cache=False, **kwargs)
    assert_not_degenerate(cached.sequences)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=0, atol=TOLERANCE)
    assert_logits_close(cached.logits, uncached.logits)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_sampling_matches_uncached(models, kind):
    model = models[kind]
    inputs = inputs_of(model, "image")
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(5)
        runs.append(generate(model, inputs, max_new_tokens=8, do_sample=True, top_k=20, use_cache=use_cache))
    assert_not_degenerate(runs[0].sequences)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert_logits_close(runs[0].logits, runs[1].logits)


def test_image_code_targets_cache_like_text(models):
    model = models["dense"]
    inputs = {**inputs_of(model, "image"), "code_masks": torch.tensor([True, False, True])}
    cached = generate(model, inputs, max_new_tokens=8, do_sample=False)
    uncached = generate(model, inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert_not_degenerate(cached.sequences)
    assert_logits_close(cached.logits, uncached.logits)


# ---------------------------------------------------------------------------------------------------------------------
# Attention implementations


def test_attention_implementations_agree_and_switch(models, tmp_path):
    model = models["modality"]
    inputs = inputs_of(model, "audio+image")
    reference = generate(model, inputs, max_new_tokens=6, do_sample=False)  # sdpa, the default
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    eager = OFAForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    switched = generate(eager, inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(reference.sequences, switched.sequences)
    assert_logits_close(reference.logits, switched.logits)

    # The attention runs through transformers' registry: a registered function is called once set.
    calls = []

    def counting(module, query, key, value, attention_mask, **kwargs):
        calls.append(kwargs["position_bias"].shape)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("ofa_test_counting", counting)
    eager.set_attn_implementation("ofa_test_counting")
    counted = generate(eager, inputs, max_new_tokens=6, do_sample=False)
    assert calls and all(len(shape) == 4 for shape in calls)
    assert_logits_close(reference.logits, counted.logits)


def test_attention_weights_are_returned_under_sdpa(models):
    model = models["dense"]
    inputs = inputs_of(model, "image")
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=torch.zeros(3, 2, dtype=torch.long), output_attentions=True)
    layers = model.config.decoder_layers
    assert len(out.decoder_attentions) == len(out.cross_attentions) == layers
    assert len(out.encoder_attentions) == model.config.encoder_layers
    assert torch.allclose(out.decoder_attentions[0].sum(-1), torch.ones(()), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Keyword arguments, outputs, the cache object


def test_forward_rejects_unknown_keywords(models):
    model = models["dense"]
    inputs = inputs_of(model, "text")
    decoder_input_ids = torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['cache_positon'\\]"):
        model(**inputs, decoder_input_ids=decoder_input_ids, cache_positon=torch.arange(1))
    with pytest.raises(TypeError, match="OFAEncoder.forward"):
        model.get_encoder()(**inputs, bogus=1)
    with pytest.raises(TypeError, match="OFAModel.forward"):
        model.model(**inputs, decoder_input_ids=decoder_input_ids, bogus=1)


def test_forward_takes_every_keyword_generate_passes(models):
    """Every keyword `generate` hands to `forward` is a parameter of it or a `TransformersKwargs` key that it passes
    on; the cache comes back as an `OFACache`, which the next step receives."""
    model = models["topk"]
    inputs = {**inputs_of(model, "audio+image"), "code_masks": torch.tensor([False, True, False])}
    named = set(inspect.signature(model.forward).parameters) - {"kwargs"}
    seen, caches = set(), []
    original = model.forward

    @functools.wraps(original)
    def spy(*args, **kwargs):
        seen.update(kwargs)
        caches.append(kwargs.get(CACHE_NAME))
        out = original(*args, **kwargs)
        caches.append(getattr(out, CACHE_NAME))
        return out

    model.forward = spy
    try:
        for kwargs in (dict(), dict(num_beams=2), dict(do_sample=True, top_k=5)):
            generate(model, inputs, max_new_tokens=4, output_attentions=True, output_hidden_states=True, **kwargs)
    finally:
        del model.forward
    # `return_dict` is taken by the forward's `can_return_tuple` decorator, as in transformers' models; before 5.24,
    # `generate` passes the cache as `past_key_values`, the alias of `cache`.
    allowed = set(TransformersKwargs.__required_keys__ | TransformersKwargs.__optional_keys__) | {
        "return_dict",
        CACHE_NAME,
    }
    assert not seen - named - allowed, f"forward would drop {sorted(seen - named - allowed)}"
    assert {"decoder_input_ids", "encoder_outputs", "use_cache", "code_masks"} <= seen
    returned = caches[1::2]
    assert all(isinstance(cache, OFACache) for cache in returned)
    # After the first step of each call, generate passes back the OFACache the model returned.
    assert any(cache is not None and cache is returned[i] for i, cache in enumerate(caches[2::2]))


def test_return_dict_false_gives_a_tuple(models):
    model = models["dense"]
    inputs = inputs_of(model, "image")
    labels = torch.tensor([[10, 11, 2], [12, 2, -100], [13, 14, 2]])
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_cache_keyword_and_its_old_name(models):
    model = models["dense"]
    inputs = inputs_of(model, "image")
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(**inputs)
        keys_before = set(encoder_outputs.keys())
        first = model(encoder_outputs=encoder_outputs, decoder_input_ids=torch.zeros(3, 1, dtype=torch.long))
        cache = getattr(first, CACHE_NAME)
        assert isinstance(cache, OFACache) and cache.cross_position_keys is not None
        assert set(cache.self_position_keys) == {"text"}
        # The decoder keeps what it reuses on its own cache; the caller's encoder output is left as it was.
        assert set(encoder_outputs.keys()) == keys_before
        step = torch.full((3, 1), 7, dtype=torch.long)
        new = model(encoder_outputs=encoder_outputs, decoder_input_ids=step, cache=cache).logits
        cache.crop(-1)  # drop the step again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = model(encoder_outputs=encoder_outputs, decoder_input_ids=step, past_key_values=cache).logits
        full = model(encoder_outputs=encoder_outputs, decoder_input_ids=torch.tensor([[0, 7]] * 3)).logits[:, -1:]
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    torch.testing.assert_close(new, full, rtol=0, atol=TOLERANCE)
    if CACHE_NAME == "cache":  # transformers >= 5.24 deprecates the old name, as for its own models
        assert any("past_key_values" in str(w.message) for w in caught)


def test_a_plain_encoder_decoder_cache_is_wrapped(models):
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = models["dense"]
    inputs = inputs_of(model, "text")
    plain = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=torch.zeros(3, 1, dtype=torch.long), cache=plain, use_cache=True)
    wrapped = getattr(out, CACHE_NAME)
    assert isinstance(wrapped, OFACache) and wrapped.self_attention_cache is plain.self_attention_cache
    with pytest.raises(TypeError, match="EncoderDecoderCache"):
        model(**inputs, decoder_input_ids=torch.zeros(3, 1, dtype=torch.long), cache=DynamicCache())


# ---------------------------------------------------------------------------------------------------------------------
# Router logits and losses (transformers' MoE API)


def test_router_logits_cover_real_positions_only(models):
    model = models["topk"]
    inputs = inputs_of(model, "audio+image")
    decoder_input_ids = torch.tensor([[0, 5, 6, 7], [0, 8, 2, 1], [0, 9, 1, 1]])  # pad = 1
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=decoder_input_ids, output_router_logits=True)
        encoder = model.get_encoder()(**inputs)
    real_encoder = int((~encoder.padding_mask).sum())
    assert real_encoder < encoder.padding_mask.numel()  # the batch has padding and a sample without image/audio
    expert_layers = model.config.encoder_layers
    assert len(out.encoder_router_logits) == expert_layers
    assert all(logits.shape == (real_encoder, 3) for logits in out.encoder_router_logits)
    real_decoder = int(decoder_input_ids.ne(1).sum())
    assert all(logits.shape == (real_decoder, 3) for logits in out.decoder_router_logits)
    assert out.aux_loss is not None and out.encoder_aux_loss > 0 and out.decoder_z_loss > 0
    stats = model.get_encoder().layers[0].moe.last_stats
    assert int(stats.expert_counts.sum()) == 2 * real_encoder  # top-2: two assignments per real position
    # Without asking, an evaluating model neither records nor returns them.
    with torch.no_grad():
        plain = model(**inputs, decoder_input_ids=decoder_input_ids)
    assert plain.encoder_router_logits is None and plain.aux_loss is None


def test_training_loss_includes_the_router_loss(models):
    model = build("topk", router_aux_loss_coef=0.5, router_z_loss_coef=0.1).train()
    inputs = inputs_of(model, "image")
    labels = torch.tensor([[10, 11, 2], [12, 2, -100], [13, 14, 2]])
    out = model(**inputs, labels=labels)
    token_loss = model.loss(out.logits, labels)
    expected = 0.5 * (out.encoder_aux_loss + out.decoder_aux_loss) + 0.1 * (out.encoder_z_loss + out.decoder_z_loss)
    torch.testing.assert_close(out.aux_loss, expected)
    torch.testing.assert_close(out.loss, token_loss + out.aux_loss)
    out.loss.backward()
    assert model.get_encoder().layers[0].moe.router.weight.grad.abs().sum() > 0


def test_old_config_name_of_the_router_loss_weight():
    config = OFAConfig(**tiny_config_kwargs(moe_type="topk", moe_aux_loss_weight=0.25))
    assert config.router_aux_loss_coef == 0.25 and not hasattr(config, "moe_aux_loss_weight")


def test_router_loss_survives_trainer_label_smoothing(tmp_path):
    """`Trainer(label_smoothing_factor=...)` takes the labels off and computes the token loss itself, so the model's
    loss (which holds the router loss) is not used; `MultiTaskTrainer` adds the router loss back."""
    from transformers import Seq2SeqTrainingArguments

    from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
    from trainers import MultiTaskTrainer, Task
    from trainers.data import INFO_KEY, TASK_KEY

    rows = [{"text": f"a {color} circle", "color": color} for color in ["red", "blue", "green"] * 4]
    tokenizer = train_demo_tokenizer(["a red blue green circle what color is"] * 20, vocab_size=300, num_codes=8)
    processor = OFAProcessor(OFAImageProcessor(size=16), tokenizer)
    model = build("topk", vocab_size=len(tokenizer)).train()
    task = Task("color", 'what color is " [TEXT:text] "? -> [TEXT:color]', rows)
    args = Seq2SeqTrainingArguments(
        str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        label_smoothing_factor=0.1,
        report_to=[],
        use_cpu=True,
    )
    trainer = MultiTaskTrainer(model=model, args=args, tasks=[task], processor=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: v for k, v in batch.items() if k not in (TASK_KEY, INFO_KEY)}
    labels = inputs["labels"]
    loss, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True)
    assert outputs.aux_loss is not None and outputs.aux_loss > 0
    smoothed = trainer.label_smoother(outputs, labels)
    torch.testing.assert_close(loss, smoothed + outputs.aux_loss)


# ---------------------------------------------------------------------------------------------------------------------
# The language-model head in blocks of vocabulary rows (`vocabulary_logits`)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_blocked_vocabulary_logits_generate_exactly_the_plain_head(models, monkeypatch, num_beams):
    """Decoding with the head in blocks of 64 vocabulary rows (120 = 64 + 56) gives the plain head's logits, bit for
    bit, and its sequences (blocking off)."""
    model = models["dense"]
    inputs = inputs_of(model, "audio+image")
    kwargs = dict(max_new_tokens=8, num_beams=num_beams, num_return_sequences=min(num_beams, 2), do_sample=False)
    runs, products = [], []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a: products.append(a[1].shape[0]) or linear(*a))
    for block_rows in (0, 64):
        monkeypatch.setattr(modeling, "LM_HEAD_BLOCK_BYTES", block_rows * model.config.d_model * 4)
        products.clear()
        runs.append(generate(model, inputs, **kwargs))
    assert 64 in products and 56 in products  # the second run really multiplied by blocks
    assert_not_degenerate(runs[0].sequences)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].logits, runs[1].logits))


@pytest.mark.parametrize("rows", [(2,), (3, 7), (80,), (2, 5, 4)])
@pytest.mark.parametrize("bias", [False, True])
def test_vocabulary_logits_in_blocks_equal_the_head(monkeypatch, rows, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(48, 1001, bias=bias)
    hidden = torch.randn(*rows, 48)
    calls = []
    monkeypatch.setattr(modeling, "LM_HEAD_BLOCK_BYTES", 100 * 48 * 4)  # 64 rows: a multiple of 64
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a: calls.append(a[1].shape[0]) or linear(*a))
    with torch.no_grad():
        blocked = modeling.vocabulary_logits(head, hidden)
    assert calls[:2] == [64, 64] and sum(calls) == 1001  # really in blocks
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.equal(blocked, head(hidden))
    # With autograd (training) the head runs as it is, and its gradient flows.
    grad_run = modeling.vocabulary_logits(head, hidden)
    assert grad_run.grad_fn is not None and torch.equal(grad_run.detach(), blocked)


@pytest.mark.parametrize("wrap", ["forward_hook", "forward_pre_hook", "instance_forward"])
def test_vocabulary_logits_leave_a_hooked_head_alone(monkeypatch, wrap):
    """A head whose forward is hooked or wrapped on the instance (accelerate's offloading does that) is called as it
    is, even where a plain head would be split into blocks (64 rows here)."""
    head = torch.nn.Linear(16, 600, bias=False)
    seen = []
    if wrap == "forward_hook":
        head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    elif wrap == "forward_pre_hook":
        head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    else:
        plain_forward = head.forward
        head.forward = lambda x: seen.append(x.shape) or plain_forward(x)
    monkeypatch.setattr(modeling, "LM_HEAD_BLOCK_BYTES", 64 * 16 * 4)
    with torch.no_grad():
        modeling.vocabulary_logits(head, torch.randn(4, 16))
    assert len(seen) == 1
