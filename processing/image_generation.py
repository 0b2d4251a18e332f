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
* `ImageCodeCache`: target images -> codes, encoded in batches and kept by a fingerprint of the pixels, so training
  encodes each target image once, not once per epoch (`OFAProcessor.image_codes` / `cache_image_targets` use it).
* `CodeScoreLogitsProcessor`: the log-probability of each sampled candidate, to rank candidates without CLIP.

The image tokenizer (`modeling_ofa.modeling_vqgan`) is imported where it is used, so a processor folder saved with its
code loads where only transformers is installed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

if TYPE_CHECKING:
    from modeling_ofa.modeling_vqgan import OFAVQGANModel

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
    from modeling_ofa.modeling_vqgan import pixel_values_to_images

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


def image_grid(image_tokenizer: OFAVQGANModel) -> tuple[int, int]:
    """The (h, w) code grid `image_tokenizer` encodes an image of its `resolution` into."""
    side = image_tokenizer.config.resolution // image_tokenizer.config.downsample_factor
    return side, side


def as_target_image(value: Any) -> Image.Image | None:
    """A target value that is a picture, as an RGB PIL image: a PIL image or an (H, W, 3|4) uint8 array; `None` for
    anything else (code ids)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[-1] in (3, 4) and value.dtype == np.uint8:
        return Image.fromarray(value[..., :3])
    return None


class ImageCodeCache:
    r"""
    Codes of target images, encoded in batches by an image tokenizer and kept by a fingerprint of each image's pixels
    (mode, size and bytes): a dataset's target images are encoded once, and every later epoch (or evaluation) reads
    them back. The cache belongs to one image tokenizer; `OFAProcessor` starts a new one when its tokenizer changes.

    Attributes:
        encoder_calls (`int`): `image_tokenizer.encode` calls made so far (one per batch).
        images_encoded (`int`): Images encoded so far (each distinct image once).
    """

    def __init__(self) -> None:
        self._codes: dict[str, list[int]] = {}
        self.encoder_calls = 0
        self.images_encoded = 0

    def __len__(self) -> int:
        return len(self._codes)

    @staticmethod
    def fingerprint(image: Image.Image) -> str:
        """A digest of the image's pixels: equal images share it, whatever object or file they came from."""
        digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
        digest.update(image.tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def encode(
        self, images: Sequence[Image.Image], image_tokenizer: OFAVQGANModel, batch_size: int = 32
    ) -> list[list[int]]:
        """Row-major codes (`h * w` ints) of each image; images not seen before are encoded `batch_size` at a time,
        after resizing to the tokenizer's `resolution`."""
        from modeling_ofa.modeling_vqgan import images_to_pixel_values

        keys = [self.fingerprint(image) for image in images]
        missing: dict[str, Image.Image] = {}
        for key, image in zip(keys, images):
            if key not in self._codes:
                missing.setdefault(key, image)
        pending = list(missing.items())
        device = next(image_tokenizer.parameters()).device
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            pixels = images_to_pixel_values([image for _, image in chunk], size=image_tokenizer.config.resolution)
            codes = image_tokenizer.encode(pixels.to(device)).flatten(1).tolist()  # (B, h, w) -> (B, h*w)
            self.encoder_calls += 1
            self.images_encoded += len(chunk)
            for (key, _), row in zip(chunk, codes):
                self._codes[key] = row
        return [list(self._codes[key]) for key in keys]


class CodeScoreLogitsProcessor(LogitsProcessor):
    r"""
    Sum, per row, the log-probability of every token `generate` picks (under the distribution this processor sees:
    place it after the code constraint), without keeping a step's scores beyond the next: candidates of a sampled image
    can then be ranked by their likelihood. Rows must keep their order between steps (sampling or greedy search; beam
    search reorders them and has its own `sequences_scores`). Leaves the scores unchanged.

    Args:
        prefix_length (`int`): Length of the decoder prefix `generate` starts from.
    """

    def __init__(self, prefix_length: int) -> None:
        self.prefix_length = prefix_length
        self.total: torch.Tensor | None = None
        self._previous: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.prefix_length:  # a new `generate` call
            self.total, self._previous = torch.zeros(scores.shape[0], device=scores.device), None
        if self._previous is not None:
            self.total = self.total + self._previous.gather(1, input_ids[:, -1:]).squeeze(1)
        self._previous = scores.float().log_softmax(-1)
        return scores
