"""Building blocks for generating images as VQ codes with `OFAForConditionalGeneration.generate`.

OFA generates an image as `h * w` code tokens (`<code_i>`, ids `code_token_offset + i`, 50265.. in OFA's vocabulary)
then EOS, with the decoder in image-code mode (`code_masks=True`: 2-D code positions and the code LayerNorm);
text-to-image samples 24 candidates with top-k 256 and may re-rank them with CLIP. Here:

* `CodeTokenLogitsProcessor`: at each of the first `h * w` generated steps only code tokens are allowed, then only
  EOS; works with greedy search, sampling (top-k), beam search and `num_return_sequences` (every row is constrained
  by its own length, so beams and samples stay aligned).
* `code_generation_kwargs`: the `generate` arguments for that (constraint, lengths, sampling, `code_masks`).
* `generated_ids_to_codes`: generated ids -> a (B, h, w) code grid, checked.
* `codes_to_images`: codes -> PIL images through an `OFAVQGANModel`.
* `rank_images_with_clip`: optional re-ranking of candidates by a local `CLIPModel` folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_ofa.modeling_vqgan import OFAVQGANModel, pixel_values_to_images

# OFA's vocabulary: `<code_0>` is id 50265, 8192 codes (see the model's vocabulary layout).
OFA_CODE_TOKEN_OFFSET = 50265
OFA_NUM_CODES = 8192


class CodeTokenLogitsProcessor(LogitsProcessor):
    r"""
    Allow only code tokens for the first `num_codes_per_image` generated tokens, then only `eos_token_id`.

    Args:
        num_codes_per_image (`int`): `h * w`, the number of codes of one image.
        code_token_offset (`int`): Id of `<code_0>`.
        num_codes (`int`): Number of code tokens (ids `code_token_offset .. code_token_offset + num_codes - 1`).
        eos_token_id (`int`): Token forced after the last code.
        prefix_length (`int`, defaults to 1): Length of the decoder prefix `generate` starts from (the decoder start
            token, plus any forced prompt); step `t` of the image is the row's length minus this.
    """

    def __init__(
        self,
        num_codes_per_image: int,
        code_token_offset: int,
        num_codes: int,
        eos_token_id: int,
        prefix_length: int = 1,
    ) -> None:
        if num_codes_per_image < 1 or num_codes < 1 or prefix_length < 1:
            raise ValueError(
                "CodeTokenLogitsProcessor: num_codes_per_image, num_codes and prefix_length must be >= 1, got "
                f"{num_codes_per_image}, {num_codes}, {prefix_length}"
            )
        if code_token_offset <= eos_token_id < code_token_offset + num_codes:
            raise ValueError(f"CodeTokenLogitsProcessor: eos_token_id {eos_token_id} lies inside the code range")
        self.num_codes_per_image = num_codes_per_image
        self.code_token_offset = code_token_offset
        self.num_codes = num_codes
        self.eos_token_id = eos_token_id
        self.prefix_length = prefix_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prefix_length
        if step < 0:
            raise ValueError(
                f"CodeTokenLogitsProcessor: the decoder prefix has {input_ids.shape[1]} tokens, fewer than "
                f"prefix_length={self.prefix_length}"
            )
        end = self.code_token_offset + self.num_codes
        if end > scores.shape[-1]:
            raise ValueError(
                f"CodeTokenLogitsProcessor: code ids reach {end - 1} but the vocabulary has {scores.shape[-1]} tokens"
            )
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        if step < self.num_codes_per_image:
            allowed[self.code_token_offset : end] = True
        else:
            allowed[self.eos_token_id] = True
        return scores.masked_fill(~allowed, float("-inf"))


def code_generation_kwargs(
    grid: tuple[int, int],
    batch_size: int,
    *,
    code_token_offset: int = OFA_CODE_TOKEN_OFFSET,
    num_codes: int = OFA_NUM_CODES,
    eos_token_id: int = 2,
    num_samples: int = 24,
    top_k: int = 256,
    do_sample: bool = True,
    num_beams: int = 1,
    prefix_length: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """
    Keyword arguments for `OFAForConditionalGeneration.generate` that produce `num_samples` images of `grid` codes per
    input, as OFA's text-to-image decoding does (sampling, top-k 256, 24 samples). `code_masks` turns on the
    decoder's image-code positions; the constraint makes every candidate exactly `h * w` codes and EOS.
    """
    height, width = grid
    count = height * width
    kwargs: dict[str, Any] = dict(
        code_masks=torch.ones(batch_size, dtype=torch.bool, device=device),
        logits_processor=LogitsProcessorList(
            [CodeTokenLogitsProcessor(count, code_token_offset, num_codes, eos_token_id, prefix_length)]
        ),
        # The constraint alone fixes the length (codes, then EOS); `min_new_tokens` would ban that EOS.
        max_new_tokens=count + 1,
        do_sample=do_sample,
        num_beams=num_beams,
        num_return_sequences=num_samples,
        eos_token_id=eos_token_id,
    )
    if do_sample:
        kwargs["top_k"] = top_k
    return kwargs


def generated_ids_to_codes(
    sequences: torch.LongTensor,
    grid: tuple[int, int],
    *,
    code_token_offset: int = OFA_CODE_TOKEN_OFFSET,
    num_codes: int = OFA_NUM_CODES,
    prefix_length: int = 1,
) -> torch.LongTensor:
    """
    (B, prefix + h*w [+ EOS, padding]) generated ids -> (B, h, w) codes (ids minus `code_token_offset`), row-major
    as OFA's code positions are. Raises `ValueError` naming the row and step of a token that is not a code.
    """
    height, width = grid
    count = height * width
    if sequences.dim() != 2 or sequences.shape[1] < prefix_length + count:
        raise ValueError(
            f"generated_ids_to_codes: expected (batch, >= {prefix_length + count}) ids for a {height}x{width} grid "
            f"after a {prefix_length}-token prefix, got {tuple(sequences.shape)}"
        )
    codes = sequences[:, prefix_length : prefix_length + count] - code_token_offset  # (B, h*w)
    bad = (codes < 0) | (codes >= num_codes)
    if bool(bad.any()):
        row, step = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"generated_ids_to_codes: row {row}, step {step}: token {int(sequences[row, prefix_length + step])} is "
            f"not a code token (ids {code_token_offset}..{code_token_offset + num_codes - 1})"
        )
    return codes.reshape(-1, height, width)  # (B, h*w) -> (B, h, w)


@torch.no_grad()
def codes_to_images(codes: torch.LongTensor, image_tokenizer: OFAVQGANModel) -> list[Image.Image]:
    """(B, h, w) codes -> B RGB PIL images of `h * f` x `w * f` pixels, decoded by `image_tokenizer`."""
    parameter = next(image_tokenizer.parameters())
    return pixel_values_to_images(image_tokenizer.decode(codes.to(parameter.device)))


@torch.no_grad()
def rank_images_with_clip(
    images: Sequence[Image.Image],
    texts: Sequence[str],
    clip: str | os.PathLike | tuple[Any, Any],
    batch_size: int = 32,
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """
    Re-rank candidate images by CLIP similarity to their text: `images` holds `len(images) // len(texts)` candidates
    per text, grouped by text (as `generate(num_return_sequences=S)` returns them).

    Args:
        images: the candidates, `S` per text, text-major.
        texts: one caption per group.
        clip: a local folder with a transformers `CLIPModel` and its `CLIPProcessor` (loaded offline), or an already
            loaded `(model, processor)` pair.
        batch_size: images scored per forward.

    Returns:
        `(order, scores)`, both `(len(texts), S)`: `order[t]` lists the candidate indices of text `t` (0..S-1) from
        best to worst, `scores[t, s]` is CLIP's image-text logit of candidate `s`.
    """
    from transformers import CLIPModel, CLIPProcessor  # only needed when re-ranking

    if not texts or len(images) % len(texts):
        raise ValueError(
            f"rank_images_with_clip: {len(images)} images do not split into equal groups for {len(texts)} texts"
        )
    if isinstance(clip, tuple):
        model, processor = clip
    else:
        model = CLIPModel.from_pretrained(clip, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(clip, local_files_only=True)
    model.eval()
    device = next(model.parameters()).device
    per_text = len(images) // len(texts)
    logits = []  # per image, its logit against every text: (N, T)
    for start in range(0, len(images), batch_size):
        inputs = processor(
            text=list(texts), images=list(images[start : start + batch_size]), return_tensors="pt", padding=True
        ).to(device)
        logits.append(model(**inputs).logits_per_image)
    by_text = torch.cat(logits).view(len(texts), per_text, len(texts))  # (T*S, T) -> (T, S, T)
    # Candidate s of text t is scored against text t only.
    scores = by_text[torch.arange(len(texts)), :, torch.arange(len(texts))]  # (T, S)
    return scores.argsort(dim=1, descending=True), scores
