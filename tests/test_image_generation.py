"""Generating images as VQ codes: the code-token constraint through a real `OFAForConditionalGeneration.generate`
(greedy, top-k sampling, beam search, several candidates), ids -> code grid -> pictures, and CLIP re-ranking."""

from __future__ import annotations

import string

import pytest
import torch
from conftest import perturb_weights, tiny_config_kwargs
from PIL import Image

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.configuration_vqgan import OFAVQGANConfig
from modeling_ofa.modeling_vqgan import OFAVQGANModel, pixel_values_to_images
from modeling_ofa.onnx import sample_encoder_inputs
from processing.image_generation import (
    CodeTokenLogitsProcessor,
    code_generation_kwargs,
    codes_to_images,
    generated_ids_to_codes,
    rank_images_with_clip,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The tiny OFA (120-token vocabulary, code_image_size 32 -> a 4x4 code grid) with codes at ids 10..49 (a third of it).
OFFSET, NUM_CODES, GRID, EOS = 10, 40, (4, 4), 2
COUNT = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return perturb_weights(OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs())).eval(), seed=2)


@pytest.fixture(scope="module")
def inputs(model):
    return sample_encoder_inputs(model.config, "text", batch_size=3, text_length=7, image_size=32, seed=3)


def generate(model, inputs, **options):
    """`generate` with `code_generation_kwargs(**options)` for the tiny OFA's code range."""
    kwargs = code_generation_kwargs(GRID, 3, code_token_offset=OFFSET, num_codes=NUM_CODES, eos_token_id=EOS, **options)
    with torch.no_grad():
        return model.generate(**inputs, **kwargs, return_dict_in_generate=True, output_logits=True, output_scores=True)


def assert_codes_then_eos(sequences: torch.Tensor, rows: int) -> None:
    assert sequences.shape == (rows, 1 + COUNT + 1)
    generated = sequences[:, 1:]
    assert ((generated[:, :COUNT] >= OFFSET) & (generated[:, :COUNT] < OFFSET + NUM_CODES)).all()
    assert (generated[:, COUNT] == EOS).all()
    # Non-degenerate: many codes in use, and they change along an image.
    codes = generated[:, :COUNT]
    assert len(codes.unique()) > 3 and (codes[:, 1:] != codes[:, :-1]).any(), sequences.tolist()


def test_greedy_generates_exactly_the_grid_and_keeps_code_logits(model, inputs):
    out = generate(model, inputs, do_sample=False, num_samples=1)
    assert_codes_then_eos(out.sequences, 3)
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    allowed[OFFSET : OFFSET + NUM_CODES] = True
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        if step < COUNT:
            # Inside the code range the model's logits are untouched; outside, nothing survives.
            assert torch.equal(processed[:, allowed], raw[:, allowed])
            assert torch.isinf(processed[:, ~allowed]).all()
            # The chosen code is the best code, and the unconstrained model would often have chosen a non-code.
            assert torch.equal(out.sequences[:, 1 + step], raw[:, allowed].argmax(-1) + OFFSET)
        else:
            assert torch.isinf(processed[:, torch.arange(model.config.vocab_size) != EOS]).all()
    unconstrained = torch.stack([raw.argmax(-1) for raw in out.logits[:COUNT]], dim=1)
    assert not ((unconstrained >= OFFSET) & (unconstrained < OFFSET + NUM_CODES)).all()

    # generate ran the decoder in image-code mode: a teacher-forced forward with code_masks gives its logits, and
    # one without them differs.
    decoder_input_ids = out.sequences[:, :-1]
    with torch.no_grad():
        coded = model(**inputs, decoder_input_ids=decoder_input_ids, code_masks=torch.ones(3, dtype=torch.bool)).logits
        text = model(**inputs, decoder_input_ids=decoder_input_ids).logits
    stepwise = torch.stack(out.logits, dim=1)  # (B, steps, V)
    torch.testing.assert_close(coded, stepwise, rtol=0, atol=1e-4)
    assert float((coded - text).abs().max()) > 1e-2


def test_top_k_sampling_with_several_candidates(model, inputs):
    torch.manual_seed(7)
    out = generate(model, inputs, do_sample=True, top_k=8, num_samples=4)
    assert_codes_then_eos(out.sequences, 12)
    # Candidates of one input differ, and every sampled code is among the 8 best codes at its step.
    assert len({tuple(row.tolist()) for row in out.sequences[:4]}) == 4
    for step in range(COUNT):
        codes = out.logits[step][:, OFFSET : OFFSET + NUM_CODES]
        chosen = codes.gather(1, (out.sequences[:, 1 + step] - OFFSET)[:, None])
        assert ((codes > chosen).sum(-1) < 8).all()
    grid = generated_ids_to_codes(out.sequences, GRID, code_token_offset=OFFSET, num_codes=NUM_CODES)
    assert grid.shape == (12, 4, 4)
    assert torch.equal(grid.flatten(1), out.sequences[:, 1 : 1 + COUNT] - OFFSET)


def test_beam_search_with_return_sequences(model, inputs):
    out = generate(model, inputs, do_sample=False, num_beams=3, num_samples=2)
    assert_codes_then_eos(out.sequences, 6)
    assert torch.isfinite(out.sequences_scores).all()


def test_processor_respects_a_longer_prefix():
    processor = CodeTokenLogitsProcessor(2, OFFSET, NUM_CODES, EOS, prefix_length=3)
    scores = torch.zeros(2, 120)
    for length, allowed in ((3, range(OFFSET, OFFSET + NUM_CODES)), (4, range(OFFSET, OFFSET + NUM_CODES)), (5, [EOS])):
        out = processor(torch.zeros(2, length, dtype=torch.long), scores)
        assert torch.isfinite(out).nonzero()[:, 1].unique().tolist() == list(allowed)
    with pytest.raises(ValueError, match="fewer than prefix_length=3"):
        processor(torch.zeros(2, 2, dtype=torch.long), scores)
    with pytest.raises(ValueError, match="vocabulary has 30 tokens"):
        processor(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 30))
    with pytest.raises(ValueError, match="inside the code range"):
        CodeTokenLogitsProcessor(2, 0, 10, 2)


def test_non_code_tokens_are_named():
    ids = torch.full((2, 1 + COUNT + 1), OFFSET)
    ids[1, 1 + 5] = 7
    with pytest.raises(ValueError, match="row 1, step 5: token 7 is not a code token"):
        generated_ids_to_codes(ids, GRID, code_token_offset=OFFSET, num_codes=NUM_CODES)
    with pytest.raises(ValueError, match="expected"):
        generated_ids_to_codes(ids[:, :5], GRID, code_token_offset=OFFSET, num_codes=NUM_CODES)


def tiny_image_tokenizer() -> OFAVQGANModel:
    # 32-px images, f8 -> the 4x4 grid of the tiny OFA, 40 codes.
    config = OFAVQGANConfig(
        resolution=32,
        base_channels=16,
        channel_multiplier=[1, 1, 2, 2],
        num_res_blocks=1,
        attn_resolutions=[4],
        latent_channels=16,
        embed_dim=16,
        num_embeddings=NUM_CODES,
        norm_num_groups=8,
    )
    torch.manual_seed(2)
    return OFAVQGANModel(config).eval()


def test_generated_codes_become_pictures(model, inputs):
    torch.manual_seed(3)
    out = generate(model, inputs, do_sample=True, num_samples=2, top_k=16)
    codes = generated_ids_to_codes(out.sequences, GRID, code_token_offset=OFFSET, num_codes=NUM_CODES)
    tokenizer = tiny_image_tokenizer()
    images = codes_to_images(codes, tokenizer)
    assert len(images) == 6 and all(im.size == (32, 32) and im.mode == "RGB" for im in images)
    with torch.no_grad():
        want = pixel_values_to_images(tokenizer.decode(codes))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, want))
    assert images[0].tobytes() != images[1].tobytes()


def tiny_clip_folder(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({f"{c}</w>": len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    special = dict(eos_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"])
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            pad_token_id=special["eos_token_id"],
            **special,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    torch.manual_seed(4)
    clip = CLIPModel(config).eval()
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(torch.randn_like(param) * 0.3)  # spread the random model's similarities apart
    clip.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return clip, CLIPProcessor.from_pretrained(path)


def test_clip_reranking_from_a_local_folder(tmp_path):
    clip, processor = tiny_clip_folder(tmp_path / "clip")
    colours = [(200, 20, 20), (20, 20, 200), (20, 160, 40), (230, 200, 30), (120, 30, 160), (30, 160, 160)]
    images = [Image.new("RGB", (40, 40), c) for c in colours]
    for i, image in enumerate(images):
        image.paste((255, 255, 255), (4 * i, 4 * i, 4 * i + 12, 4 * i + 12))
    texts = ["a red circle", "two blue squares"]
    order, scores = rank_images_with_clip(images, texts, tmp_path / "clip")
    assert order.shape == scores.shape == (2, 3)
    # Each candidate is scored against its own text only, as a pairwise CLIP forward scores it.
    with torch.no_grad():
        for t, text in enumerate(texts):
            for s in range(3):
                pair = processor(text=[text], images=[images[3 * t + s]], return_tensors="pt", padding=True)
                assert torch.allclose(scores[t, s], clip(**pair).logits_per_image[0, 0], atol=1e-4)
    assert len(scores.flatten().unique()) == 6
    assert torch.equal(order, scores.argsort(dim=1, descending=True))
    again, same = rank_images_with_clip(images, texts, (clip, processor), batch_size=4)
    assert torch.equal(again, order) and torch.allclose(same, scores, atol=1e-5)
    with pytest.raises(ValueError, match="do not split into equal groups"):
        rank_images_with_clip(images[:5], texts, (clip, processor))
