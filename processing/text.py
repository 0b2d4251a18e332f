"""Text side of OFA: the unified vocabulary layout, a demo tokenizer and the text slot preprocessor.

OFA uses one vocabulary for every output the decoder can produce. Its layout is fixed by the fairseq dictionary the
original checkpoints were trained with:

| ids                           | tokens                                                    |
|-------------------------------|-----------------------------------------------------------|
| 0, 1, 2, 3                    | `<s>` (bos), `<pad>`, `</s>` (eos), `<unk>`               |
| 4 ... mask_id - 1             | byte-level BPE entries                                    |
| mask_id                       | `<mask>`                                                  |
| code_offset ... +num_codes-1  | `<code_0>` ... `<code_{num_codes-1}>` (VQGAN image codes) |
| bin_offset ... +num_bins-1    | `<bin_0>` ... `<bin_{num_bins-1}>` (location bins)        |

Real checkpoints have 59457 ids: mask 50264, codes from 50265, bins from 58457. The offline demo tokenizer trained by
[`train_demo_tokenizer`] keeps the same order with a much smaller BPE.

Text slots are encoded the OFA way: `" " + text.strip()` through the BPE, without bos/eos (those are added by hand
around each group of text slots by the processor).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .location import bin_token

__all__ = [
    "SPECIAL_TOKENS",
    "MASK_TOKEN",
    "NUM_CODES",
    "NUM_BINS",
    "OFAVocab",
    "TextPreprocessor",
    "add_ofa_tokens",
    "code_token",
    "train_demo_tokenizer",
]

# Fairseq Dictionary specials, in id order 0..3: the order is part of the checkpoint format.
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"
# Sizes used by every released OFA checkpoint (`code_dict_size`, `num_bins`).
NUM_CODES = 8192
NUM_BINS = 1000

# GPT-2 byte-level BPE marks a token that starts with a space (i.e. starts a word) with this character.
_BYTE_LEVEL_SPACE = "\u0120"
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
# BART truncates span lengths at 128 tokens; we do the same so one huge draw cannot swallow a short text.
_MAX_SPAN = 128


def code_token(index: int) -> str:
    """Return the token string of VQGAN image code `index`, e.g. `<code_5>` (the bins' twin is `bin_token`)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"Image code index must be an integer >= 0, got {index!r}.")
    return f"<code_{int(index)}>"


def _count_prefixed(vocab: dict[str, int], make_token: Callable[[int], str]) -> int:
    count = 0
    while make_token(count) in vocab:
        count += 1
    return count


def add_ofa_tokens(
    tokenizer: PreTrainedTokenizerFast, num_codes: int = NUM_CODES, num_bins: int = NUM_BINS
) -> PreTrainedTokenizerFast:
    """Append `<mask>`, the image codes and the location bins to a tokenizer, in OFA's order.

    Idempotent: a tokenizer that already has the OFA tokens (e.g. a saved OFA tokenizer, or a BART tokenizer that
    already has `<mask>`) is left as it is. A tokenizer holding only part of them, or a different number of them,
    raises `ValueError` because its ids could not match OFA's layout.

    Args:
        tokenizer (`PreTrainedTokenizerFast`):
            The text tokenizer (byte-level BPE with the fairseq specials first). Modified in place.
        num_codes (`int`, *optional*, defaults to 8192):
            Number of `<code_i>` tokens (VQGAN codebook size).
        num_bins (`int`, *optional*, defaults to 1000):
            Number of `<bin_i>` location tokens.

    Returns:
        `PreTrainedTokenizerFast`: the same tokenizer, for chaining.
    """
    if num_codes < 0 or num_bins < 1:
        raise ValueError(f"add_ofa_tokens needs num_codes >= 0 and num_bins >= 1, got {num_codes} and {num_bins}.")
    vocab = tokenizer.get_vocab()
    have_codes = _count_prefixed(vocab, code_token)
    have_bins = _count_prefixed(vocab, bin_token)
    if (have_codes, have_bins) not in {(0, 0), (num_codes, num_bins)}:
        raise ValueError(
            f"Tokenizer already has {have_codes} <code_i> and {have_bins} <bin_i> tokens; expected either none or "
            f"exactly {num_codes} and {num_bins}. Its ids cannot follow the OFA layout."
        )
    if tokenizer.mask_token is None or MASK_TOKEN not in vocab:
        if have_codes or have_bins:
            raise ValueError("Tokenizer has OFA code/bin tokens but no <mask> before them; the layout is broken.")
        # BART's <mask> swallows the space before it, so " <mask>" in a prompt is one token.
        tokenizer.add_special_tokens(
            {"mask_token": AddedToken(MASK_TOKEN, lstrip=True, rstrip=False, normalized=False, special=True)}
        )
    if have_codes == 0 and have_bins == 0:
        # Codes and bins are ordinary (non-special) tokens, as in the original HF port: decoding keeps them.
        tokenizer.add_tokens([AddedToken(code_token(i), normalized=False) for i in range(num_codes)])
        tokenizer.add_tokens([AddedToken(bin_token(i), normalized=False) for i in range(num_bins)])
    OFAVocab.from_tokenizer(tokenizer)  # validates contiguity of what we just built
    return tokenizer


@dataclass(frozen=True)
class OFAVocab:
    """Ids of OFA's special regions, read off a tokenizer.

    Works with ints and with integer `numpy`/`torch` arrays alike (`is_code(ids)` returns a boolean mask).

    Args:
        pad_id, bos_id, eos_id, unk_id, mask_id (`int`):
            Ids of `<pad>`, `<s>`, `</s>`, `<unk>` and `<mask>`.
        code_offset (`int`):
            Id of `<code_0>`.
        bin_offset (`int`):
            Id of `<bin_0>`.
        num_codes (`int`):
            Number of image code tokens.
        num_bins (`int`):
            Number of location bin tokens.
        vocab_size (`int`):
            Total number of ids (`len(tokenizer)`), i.e. the model's `vocab_size`.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    mask_id: int
    code_offset: int
    bin_offset: int
    num_codes: int
    num_bins: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerFast) -> OFAVocab:
        """Read the layout from a tokenizer prepared with [`add_ofa_tokens`]; `ValueError` if it is not OFA-shaped."""
        vocab = tokenizer.get_vocab()
        specials = {"bos": tokenizer.bos_token, "pad": tokenizer.pad_token, "eos": tokenizer.eos_token}
        specials |= {"unk": tokenizer.unk_token, "mask": tokenizer.mask_token}
        missing = [name for name, token in specials.items() if token is None or str(token) not in vocab]
        if missing:
            raise ValueError(f"Tokenizer lacks the special tokens {missing}; OFA needs bos, pad, eos, unk and mask.")
        num_codes = _count_prefixed(vocab, code_token)
        num_bins = _count_prefixed(vocab, bin_token)
        if num_bins == 0:
            raise ValueError("Tokenizer has no <bin_i> tokens; call add_ofa_tokens(tokenizer) first.")
        bin_offset = vocab[bin_token(0)]
        code_offset = vocab[code_token(0)] if num_codes else bin_offset
        for name, offset, count, make in (
            ("code", code_offset, num_codes, code_token),
            ("bin", bin_offset, num_bins, bin_token),
        ):
            ids = np.array([vocab[make(i)] for i in range(count)], dtype=np.int64)
            if count and not np.array_equal(ids, np.arange(offset, offset + count)):
                raise ValueError(f"The <{name}_i> tokens are not contiguous from id {offset}; not an OFA vocabulary.")
        if bin_offset != code_offset + num_codes:
            raise ValueError(
                f"<bin_0> has id {bin_offset} but the codes end at {code_offset + num_codes}; bins must follow codes."
            )
        return cls(
            pad_id=tokenizer.pad_token_id,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            unk_id=tokenizer.unk_token_id,
            mask_id=tokenizer.mask_token_id,
            code_offset=code_offset,
            bin_offset=bin_offset,
            num_codes=num_codes,
            num_bins=num_bins,
            vocab_size=len(tokenizer),
        )

    def code_id(self, index: int) -> int:
        """Token id of image code `index` (0 <= index < num_codes)."""
        if not 0 <= index < self.num_codes:
            raise ValueError(f"Image code {index} is outside [0, {self.num_codes}).")
        return self.code_offset + index

    def bin_id(self, index: int) -> int:
        """Token id of location bin `index` (0 <= index < num_bins)."""
        if not 0 <= index < self.num_bins:
            raise ValueError(f"Location bin {index} is outside [0, {self.num_bins}).")
        return self.bin_offset + index

    def is_code(self, token_id):
        """Whether `token_id` (int or integer array/tensor) is an image code token."""
        return (token_id >= self.code_offset) & (token_id < self.code_offset + self.num_codes)

    def is_bin(self, token_id):
        """Whether `token_id` (int or integer array/tensor) is a location bin token."""
        return (token_id >= self.bin_offset) & (token_id < self.bin_offset + self.num_bins)


def train_demo_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, num_codes: int = NUM_CODES, num_bins: int = NUM_BINS
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE with the OFA vocabulary layout, for offline demos and tests.

    The result has `<s>`, `<pad>`, `</s>`, `<unk>` at ids 0-3, the BPE after them, then `<mask>`, the image codes and
    the location bins. It adds no bos/eos automatically (OFA frames sequences by hand). The texts are learned in the
    form OFA encodes them, with a leading space. Training is deterministic: the same texts give the same ids.

    Args:
        texts (`Iterable[str]`):
            Training text. Consumed once.
        vocab_size (`int`, *optional*, defaults to 2000):
            Upper bound on specials + BPE entries (the 256 byte symbols included). A small corpus may yield fewer.
        num_codes (`int`, *optional*, defaults to 8192):
            Number of `<code_i>` tokens.
        num_bins (`int`, *optional*, defaults to 1000):
            Number of `<bin_i>` tokens.

    Returns:
        `PreTrainedTokenizerFast`: the tokenizer, ready for `save_pretrained`.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for merges: the 4 specials and 256 byte symbols take "
            f"{len(SPECIAL_TOKENS) + len(alphabet)} ids."
        )
    corpus = list(texts)
    bad = next((i for i, text in enumerate(corpus) if not isinstance(text, str)), None)
    if bad is not None:
        raise TypeError(f"train_demo_tokenizer needs strings; item {bad} is {type(corpus[bad]).__name__}.")
    if not any(text.strip() for text in corpus):
        raise ValueError("train_demo_tokenizer got no non-empty text to learn from.")

    backend = Tokenizer(models.BPE())
    # Same pre-tokenization as GPT-2/BART, so the OFA leading-space convention carries over unchanged.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    # OFA encodes every prompt and slot value as " " + text, so learn the merges on text in that form: a word then gets
    # one word-start token (e.g. "Ġright") instead of a bare "Ġ" followed by the word.
    backend.train_from_iterator((" " + text.strip() for text in corpus), trainer=trainer)

    bos, pad, eos, unk = SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        pad_token=pad,
        eos_token=eos,
        unk_token=unk,
        model_max_length=1024,
    )
    return add_ofa_tokens(tokenizer, num_codes=num_codes, num_bins=num_bins)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class TextPreprocessor:
    """Encode text slots OFA's way and apply the OFASys text corruptions (`mask_ratio`, `noise_ratio`).

    Args:
        tokenizer (`PreTrainedTokenizerFast`):
            A tokenizer with the OFA layout (see [`add_ofa_tokens`], [`train_demo_tokenizer`]).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer = tokenizer
        self.vocab = OFAVocab.from_tokenizer(tokenizer)
        specials = (self.vocab.bos_id, self.vocab.pad_id, self.vocab.eos_id, self.vocab.unk_id)
        # Random replacements are drawn from the plain BPE region, between the specials and <mask>.
        self.bpe_range = (max(specials) + 1, self.vocab.mask_id)
        if self.bpe_range[0] >= self.bpe_range[1]:
            raise ValueError(f"No BPE ids between the specials and <mask> (id {self.vocab.mask_id}).")
        # Whole-word masking needs word starts; byte-level BPE marks them, other tokenizers fall back to tokens.
        self.byte_level = tokenizer.convert_tokens_to_ids(_BYTE_LEVEL_SPACE) not in (None, self.vocab.unk_id)
        # Added tokens (<mask>, codes, bins) are whole words of their own.
        self._added_tokens = frozenset(tokenizer.get_added_vocab())

    def clean(self, text: str, *, uncased: bool = False, no_punctuation: bool = False) -> str:
        """Apply the `uncased` / `no_punctuation` slot attributes and strip; `ValueError` if nothing is left."""
        if not isinstance(text, str):
            raise TypeError(f"Text slot value must be a str, got {type(text).__name__}: {text!r}.")
        cleaned = text.lower() if uncased else text
        cleaned = cleaned.translate(_PUNCTUATION_TABLE) if no_punctuation else cleaned
        cleaned = cleaned.strip()
        if not cleaned:
            raise ValueError(
                f"Text {text!r} is empty after cleaning (uncased={uncased}, no_punctuation={no_punctuation})."
            )
        return cleaned

    def encode(
        self,
        text: str,
        *,
        uncased: bool = False,
        no_punctuation: bool = False,
        max_length: int | None = None,
        leading_space: bool = True,
    ) -> list[int]:
        """Encode one text slot to BPE ids, without bos/eos.

        Args:
            text (`str`):
                The slot value or literal prompt text.
            uncased (`bool`, *optional*, defaults to `False`):
                Lower-case first.
            no_punctuation (`bool`, *optional*, defaults to `False`):
                Remove ASCII punctuation first.
            max_length (`int`, *optional*):
                Keep at most this many tokens.
            leading_space (`bool`, *optional*, defaults to `True`):
                Encode `" " + text.strip()` (OFA's convention, so the first word gets its word-start form).
        """
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length} for text {text!r}.")
        cleaned = self.clean(text, uncased=uncased, no_punctuation=no_punctuation)
        ids = self.tokenizer.encode(" " + cleaned if leading_space else cleaned, add_special_tokens=False)
        return ids[:max_length] if max_length is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text, dropping special tokens (bos/eos/pad/mask) and surrounding spaces."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def word_starts(self, ids: Sequence[int]) -> np.ndarray:
        """Boolean mask of the tokens that begin a word (every token if the tokenizer is not byte-level)."""
        if not self.byte_level:
            return np.ones(len(ids), dtype=bool)
        tokens = self.tokenizer.convert_ids_to_tokens(list(ids))
        starts = np.array([t.startswith(_BYTE_LEVEL_SPACE) or t in self._added_tokens for t in tokens], dtype=bool)
        if len(starts):
            starts[0] = True
        return starts

    def _check_slot_ids(self, ids: Sequence[int], what: str) -> list[int]:
        ids = [int(i) for i in ids]
        framing = {self.vocab.bos_id, self.vocab.eos_id, self.vocab.pad_id}
        if framing.intersection(ids):
            raise ValueError(f"{what} works on slot tokens without <s>/</s>/<pad>; got ids {ids}.")
        return ids

    def mask_spans(
        self, ids: Sequence[int], mask_ratio: float, rng: np.random.Generator | int | None = None
    ) -> list[int]:
        """BART-style text infilling corruption (the `mask_ratio` slot attribute).

        `ceil(mask_ratio * num_words)` whole words are masked, in spans whose lengths (in words) are drawn from
        Poisson(3). Each span becomes ONE `<mask>`. Spans never touch, so the output never has two `<mask>` in a
        row. Zero-length draws (which BART turns into insertions) are skipped, so exactly the requested share of
        words disappears.

        Args:
            ids (`Sequence[int]`):
                Slot tokens as returned by [`encode`] (no bos/eos).
            mask_ratio (`float`):
                Share of words to mask, in [0, 1].
            rng (`np.random.Generator` or `int`, *optional*):
                Random generator or seed.
        """
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}.")
        ids = self._check_slot_ids(ids, "mask_spans")
        if not ids or mask_ratio == 0.0:
            return ids
        rng = _as_rng(rng)
        starts = np.flatnonzero(self.word_starts(ids))
        words = [ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)])]
        num_words = len(words)
        # The epsilon keeps float noise (10 * 0.3 = 3.0000000000000004) from masking one word too many.
        to_mask = min(num_words, math.ceil(num_words * mask_ratio - 1e-9))
        if to_mask == 0:
            return ids

        lengths: list[int] = []
        while sum(lengths) < to_mask:
            length = min(int(rng.poisson(3.0)), _MAX_SPAN)
            if length > 0:
                lengths.append(length)
        lengths[-1] -= sum(lengths) - to_mask
        # Spans must be separated by at least one kept word; merge the last spans when there are too few.
        kept = num_words - to_mask
        while len(lengths) - 1 > kept:
            last = lengths.pop()
            lengths[-1] += last

        # Uniform placement: spread the spare kept words over the len(lengths)+1 gaps (stars and bars).
        spans = len(lengths)
        spare = kept - (spans - 1)
        bars = np.sort(rng.choice(spare + spans, size=spans, replace=False))
        gaps = np.diff(np.concatenate([[-1], bars, [spare + spans]])) - 1
        gaps[1:-1] += 1

        out: list[int] = []
        word = 0
        for gap, length in zip(gaps[:-1], lengths):
            for w in words[word : word + gap]:
                out.extend(w)
            out.append(self.vocab.mask_id)
            word += gap + length
        for w in words[word:]:
            out.extend(w)
        return out

    def add_noise(
        self, ids: Sequence[int], noise_ratio: float, rng: np.random.Generator | int | None = None
    ) -> list[int]:
        """Replace each token with probability `noise_ratio` by a uniformly drawn BPE token (`noise_ratio` attribute).

        Args:
            ids (`Sequence[int]`):
                Slot tokens (no bos/eos).
            noise_ratio (`float`):
                Replacement probability per token, in [0, 1].
            rng (`np.random.Generator` or `int`, *optional*):
                Random generator or seed.
        """
        if not 0.0 <= noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio must be in [0, 1], got {noise_ratio}.")
        ids = self._check_slot_ids(ids, "add_noise")
        if not ids or noise_ratio == 0.0:
            return ids
        rng = _as_rng(rng)
        out = np.asarray(ids, dtype=np.int64)
        hit = rng.random(len(out)) < noise_ratio
        out[hit] = rng.integers(self.bpe_range[0], self.bpe_range[1], size=int(hit.sum()))
        return out.tolist()
