"""Closed-set (constrained) decoding: a token trie over candidate answers and a logits processor that keeps
generation inside it.

OFA decodes VQA and classification-style targets (SNLI-VE labels, ...) by restricting every decoding step to the
children of the trie node reached by the tokens generated so far; once the prefix leaves the trie only EOS is
allowed. The trie is built over `BPE(" " + answer) + [eos]` for every candidate answer (OFA's leading-space
convention). OFA inserts a leading BOS as well; here the processor skips the decoder start token instead, which
is equivalent.

Everything here runs on the public `transformers` generation API:

```python
trie = build_answer_trie(tokenizer, ["yes", "no", "two cats"], eos_token_id=tokenizer.eos_token_id)
processor = ClosedSetLogitsProcessor(trie, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), max_new_tokens=16)
```

`max_new_tokens` must leave room for the longest answer and its EOS, or the longest answers come out truncated.

Beam search in `transformers` hands log-probabilities (not logits) to the processors, so masked beams are not
renormalized over the allowed tokens; pass `renormalize_logits=True` to `generate` to get OFA's renormalized
scores.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation import LogitsProcessor

__all__ = [
    "CandidateTrie",
    "ClosedSetLogitsProcessor",
    "build_answer_trie",
    "closed_set_prefix_allowed_tokens_fn",
]

# Node 0 is the root; every node maps a token id to the index of its child node.
_ROOT = 0


def _as_token_list(tokens: Sequence[int] | torch.Tensor | np.ndarray, what: str) -> list[int]:
    """Return `tokens` as a list of Python ints, raising a clear error for anything that is not a 1-D id sequence."""
    if isinstance(tokens, (torch.Tensor, np.ndarray)):
        if tokens.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(tokens.shape)}")
        tokens = tokens.tolist()
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{what} must be a sequence of token ids, got {type(tokens).__name__}")
    out = []
    for position, token in enumerate(tokens):
        if isinstance(token, bool):
            raise TypeError(f"{what}[{position}] is a bool, expected an int token id")
        try:
            token = operator.index(token)
        except TypeError:
            raise TypeError(f"{what}[{position}] must be an int token id, got {type(token).__name__}") from None
        if token < 0:
            raise ValueError(f"{what}[{position}] is a negative token id ({token})")
        out.append(token)
    return out


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def _check_ids(prefix_length: int, eos_token_id: int, pad_token_id: int | None) -> tuple[int, int, int]:
    eos_token_id = _non_negative_int(eos_token_id, "eos_token_id")
    pad_token_id = eos_token_id if pad_token_id is None else _non_negative_int(pad_token_id, "pad_token_id")
    return _non_negative_int(prefix_length, "prefix_length"), eos_token_id, pad_token_id


class CandidateTrie:
    """A prefix tree over token-id sequences (the tokenized candidate answers of a closed set).

    Args:
        sequences (`Iterable[Sequence[int]]`):
            The candidate token sequences. Duplicates are merged; empty sequences and negative or non-integer ids
            raise. At least one sequence is required, since an empty closed set can never be decoded.

    Example:

    ```python
    >>> trie = CandidateTrie([[5, 6, 2], [5, 7, 2], [9, 2]])
    >>> trie.allowed_next([]), trie.allowed_next([5]), trie.allowed_next([4])
    ([5, 9], [6, 7], [])
    >>> [5, 7, 2] in trie, [5, 7] in trie, len(trie)
    (True, False, 3)
    ```
    """

    def __init__(self, sequences: Iterable[Sequence[int]]):
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Iterable):
            raise TypeError(f"sequences must be an iterable of token-id sequences, got {type(sequences).__name__}")
        self._children: list[dict[int, int]] = [{}]
        self._sequences: set[tuple[int, ...]] = set()
        for index, sequence in enumerate(sequences):
            tokens = _as_token_list(sequence, f"sequences[{index}]")
            if not tokens:
                raise ValueError(f"sequences[{index}] is empty; every candidate needs at least one token")
            self._insert(tokens)
        if not self._sequences:
            raise ValueError("CandidateTrie needs at least one candidate sequence, got none")
        self.max_token_id = max(max(sequence) for sequence in self._sequences)

    def _insert(self, tokens: list[int]) -> None:
        node = _ROOT
        for token in tokens:
            child = self._children[node].get(token)
            if child is None:
                child = len(self._children)
                self._children[node][token] = child
                self._children.append({})
            node = child
        self._sequences.add(tuple(tokens))

    def _node(self, prefix: Sequence[int]) -> int | None:
        """Index of the node reached by `prefix`, or None if the prefix leaves the trie."""
        node = _ROOT
        for token in prefix:
            node = self._children[node].get(token)
            if node is None:
                return None
        return node

    @property
    def num_nodes(self) -> int:
        """Number of trie nodes, the root included."""
        return len(self._children)

    def allowed_next(self, prefix: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
        """Token ids that continue `prefix` inside the trie (insertion order).

        Args:
            prefix (`Sequence[int]`, 1-D `torch.Tensor` or `np.ndarray`): the tokens generated so far.

        Returns:
            `list[int]`: the allowed next ids; empty if `prefix` leaves the trie or ends a candidate that no other
            candidate extends.
        """
        node = self._node(_as_token_list(prefix, "prefix"))
        return [] if node is None else list(self._children[node])

    def __contains__(self, sequence: object) -> bool:
        """Whether `sequence` is one complete candidate (a mere prefix of one is not)."""
        try:
            return tuple(_as_token_list(sequence, "sequence")) in self._sequences  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self._sequences)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(sorted(self._sequences))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_sequences={len(self)}, num_nodes={self.num_nodes})"


def build_answer_trie(
    tokenizer: PreTrainedTokenizerBase, answers: Iterable[str], *, eos_token_id: int
) -> CandidateTrie:
    """Build the trie of a closed answer set the way OFA does: `BPE(" " + answer) + [eos]` for every answer.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The text tokenizer; `encode(text, add_special_tokens=False)` must give the BPE ids.
        answers (`Iterable[str]`):
            The candidate answers. Surrounding whitespace is stripped; duplicates are merged.
        eos_token_id (`int`):
            Appended to every answer so that decoding can only stop at the end of a complete answer.

    Returns:
        `CandidateTrie`: the trie over the tokenized answers.
    """
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Iterable):
        raise TypeError(f"answers must be an iterable of strings, got {type(answers).__name__}")
    eos = _non_negative_int(eos_token_id, "eos_token_id")
    sequences = []
    for index, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise TypeError(f"answers[{index}] must be a str, got {type(answer).__name__}")
        if not answer.strip():
            raise ValueError(f"answers[{index}] is empty ({answer!r}); a closed set cannot contain an empty answer")
        ids = tokenizer.encode(" " + answer.strip(), add_special_tokens=False)
        sequences.append([*ids, eos])
    if not sequences:
        raise ValueError("answers is empty; a closed set needs at least one candidate answer")
    return CandidateTrie(sequences)


class ClosedSetLogitsProcessor(LogitsProcessor):
    r"""[`LogitsProcessor`] that restricts generation to the candidates of a [`CandidateTrie`] (OFA's trie decoding).

    Each row of `input_ids` (batch * beams rows) is read as `[decoder_start] + prompt + answer-so-far`, where the
    prompt has `prefix_length` tokens (for example a teacher-forced `no_loss` prompt copy passed as
    `decoder_input_ids`, or a BOS forced by another processor). Per row:

    - while the row is still inside the prompt, its scores pass through untouched;
    - after the row has emitted EOS, only `pad_token_id` is allowed (finished rows of a batch keep a finite score);
    - otherwise only the trie children of the answer prefix are allowed, and if the prefix has left the trie (or
      reached a leaf) only EOS is, as in OFA.

    Disallowed scores are set to `-inf` (a finished row gets 0 at `pad_token_id`). If another processor has already
    banned every allowed token of a row (e.g. `min_new_tokens` longer than an answer), the closed set wins: the
    allowed tokens get score 0 and a warning names the rows. The per-node allowed sets are precomputed once as
    index tensors, so a step costs one trie walk per row and one scatter for the whole batch.

    Args:
        trie (`CandidateTrie`):
            The closed set, e.g. from [`build_answer_trie`].
        eos_token_id (`int`):
            End-of-sequence id; the only token allowed once the prefix leaves the trie.
        pad_token_id (`int`, *optional*):
            The only token allowed after EOS. Defaults to `eos_token_id`.
        prefix_length (`int`, *optional*, defaults to 0):
            Number of prompt tokens between the decoder start token and the answer, which the trie skips.
    """

    def __init__(
        self,
        trie: CandidateTrie,
        *,
        eos_token_id: int,
        pad_token_id: int | None = None,
        prefix_length: int = 0,
    ):
        if not isinstance(trie, CandidateTrie):
            raise TypeError(f"trie must be a CandidateTrie, got {type(trie).__name__}")
        self.trie = trie
        self.prefix_length, self.eos_token_id, self.pad_token_id = _check_ids(prefix_length, eos_token_id, pad_token_id)
        # Rows are [decoder_start] + prompt + answer; the answer starts after both.
        self._answer_start = 1 + self.prefix_length
        self._max_token_id = max(trie.max_token_id, self.eos_token_id, self.pad_token_id)
        # Allowed ids per trie node, then two pseudo-nodes: "left the trie" (eos only) and "finished" (pad only).
        allowed = [list(children) or [self.eos_token_id] for children in trie._children]
        allowed += [[self.eos_token_id], [self.pad_token_id]]
        self._left_node = len(allowed) - 2
        self._finished_node = len(allowed) - 1
        self._allowed_cpu = [torch.tensor(ids, dtype=torch.long) for ids in allowed]
        self._allowed_by_device: dict[torch.device, list[torch.Tensor]] = {}

    def _row_node(self, answer: list[int]) -> int:
        if self.eos_token_id in answer:
            return self._finished_node
        node = self.trie._node(answer)
        return self._left_node if node is None else node

    def _allowed_on(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._allowed_by_device:
            self._allowed_by_device[device] = [ids.to(device) for ids in self._allowed_cpu]
        return self._allowed_by_device[device]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.ndim != 2 or scores.ndim != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(
                f"expected input_ids (rows, length) and scores (rows, vocab) with the same rows, got "
                f"{tuple(input_ids.shape)} and {tuple(scores.shape)}"
            )
        if self._max_token_id >= scores.shape[-1]:
            raise ValueError(
                f"the closed set uses token id {self._max_token_id} but the scores cover only {scores.shape[-1]} ids"
            )
        if input_ids.shape[1] < self._answer_start:
            # Still inside the prompt (all rows share one length): nothing to constrain yet.
            return scores
        allowed = self._allowed_on(scores.device)
        nodes = [self._row_node(row) for row in input_ids[:, self._answer_start :].tolist()]
        counts = torch.tensor([len(self._allowed_cpu[node]) for node in nodes])
        rows = torch.repeat_interleave(torch.arange(len(nodes)), counts).to(scores.device)
        cols = torch.cat([allowed[node] for node in nodes])
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[rows, cols] = True
        out = scores.masked_fill(~keep, -float("inf"))
        # A finished row emits pad with certainty; a fixed 0 keeps it finite even if another processor banned pad.
        finished = [row for row, node in enumerate(nodes) if node == self._finished_node]
        out[finished, self.pad_token_id] = 0.0
        dead = out.isneginf().all(dim=-1)
        if dead.any():
            # Another processor (min_new_tokens, no_repeat_ngram_size, bad_words_ids, ...) banned every token the
            # closed set allows. Left alone, argmax over an all -inf row would emit an arbitrary id; the closed set
            # wins instead, as in transformers' PrefixConstrainedLogitsProcessor.
            warnings.warn(
                f"closed-set decoding: another logits processor banned every allowed token of rows "
                f"{dead.nonzero().flatten().tolist()}; keeping the closed set. Check min_new_tokens / min_length "
                "(at most the shortest answer + EOS), no_repeat_ngram_size and bad_words_ids.",
                stacklevel=2,
            )
            out = torch.where(dead[:, None] & keep, torch.zeros_like(out), out)
        return out


def closed_set_prefix_allowed_tokens_fn(
    trie: CandidateTrie,
    prefix_length: int = 0,
    *,
    eos_token_id: int,
    pad_token_id: int | None = None,
) -> Callable[[int, torch.Tensor], list[int]]:
    """The same constraint as [`ClosedSetLogitsProcessor`], as a `generate(prefix_allowed_tokens_fn=...)` callable.

    `transformers` calls it once per row and step with the row's ids `[decoder_start] + prompt + answer-so-far`.
    The prompt must be given as `decoder_input_ids` (so it is never generated): the callable cannot allow "every
    token" without knowing the vocabulary, and raises if called inside the prompt.

    Args:
        trie (`CandidateTrie`): the closed set.
        prefix_length (`int`, *optional*, defaults to 0): prompt tokens after the decoder start token.
        eos_token_id (`int`): allowed alone once the prefix leaves the trie.
        pad_token_id (`int`, *optional*): allowed alone after EOS; defaults to `eos_token_id`.

    Returns:
        `Callable[[int, torch.Tensor], list[int]]`: `fn(batch_id, input_ids) -> allowed ids`.
    """
    if not isinstance(trie, CandidateTrie):
        raise TypeError(f"trie must be a CandidateTrie, got {type(trie).__name__}")
    prefix_length, eos_token_id, pad_token_id = _check_ids(prefix_length, eos_token_id, pad_token_id)
    answer_start = 1 + prefix_length

    def prefix_allowed_tokens_fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        tokens = _as_token_list(input_ids, "input_ids")
        if len(tokens) < answer_start:
            raise ValueError(
                f"closed-set decoding got a row of {len(tokens)} tokens, inside the {prefix_length}-token prompt after "
                "the decoder start token; pass the prompt as decoder_input_ids"
            )
        answer = tokens[answer_start:]
        if eos_token_id in answer:
            return [pad_token_id]
        return trie.allowed_next(answer) or [eos_token_id]

    return prefix_allowed_tokens_fn
