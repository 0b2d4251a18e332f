"""Tests for `processing.closed_set`: the candidate trie and constrained generation with a tiny random BART."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BartConfig, BartForConditionalGeneration, LogitsProcessorList, PreTrainedTokenizerFast

from processing.closed_set import (
    CandidateTrie,
    ClosedSetLogitsProcessor,
    build_answer_trie,
    closed_set_prefix_allowed_tokens_fn,
)

BOS, PAD, EOS = 0, 1, 2  # OFA's layout; the decoder starts from BOS
ANSWERS = ["yes", "no", "red car", "blue car", "two", "a red bus"]
CORPUS = ["what color is the car? red car, blue car.", "is there a dog? yes no", "how many? two three four"] * 4


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def model(tokenizer) -> BartForConditionalGeneration:
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        bos_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    return BartForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def trie(tokenizer) -> CandidateTrie:
    return build_answer_trie(tokenizer, ANSWERS, eos_token_id=EOS)


@pytest.fixture(scope="module")
def inputs(tokenizer) -> dict:
    return tokenizer(["is there a dog?", "what color is the car?", "how many?"], return_tensors="pt", padding=True)


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer.encode(" " + answer, add_special_tokens=False)


def assert_all_candidates(tokenizer, trie, sequences: torch.Tensor, start: int = 1) -> None:
    """Every row is decoder_start (+ prompt) + one complete candidate + EOS, then padding only."""
    for row in sequences.tolist():
        answer = row[start:]
        end = answer.index(EOS) + 1 if EOS in answer else len(answer)
        assert tuple(answer[:end]) in trie, row
        assert set(answer[end:]) <= {PAD}, row
        assert tokenizer.decode(answer[:end], skip_special_tokens=True).strip() in ANSWERS, row


# ---------------------------------------------------------------------------------------------------------------------
# CandidateTrie


def test_candidate_trie_queries():
    trie = CandidateTrie([[5, 6, 2], [5, 7, 2], (9, 2), [5, 6, 2]])
    assert len(trie) == 3  # the duplicate is merged
    assert list(trie) == [(5, 6, 2), (5, 7, 2), (9, 2)]
    assert trie.allowed_next([]) == [5, 9]
    assert trie.allowed_next([5]) == [6, 7]
    assert trie.allowed_next(torch.tensor([5, 7])) == [2]
    assert trie.allowed_next(np.array([9])) == [2]
    assert trie.allowed_next([5, 7, 2]) == []  # a finished candidate
    assert trie.allowed_next([4]) == []  # left the trie
    assert [5, 7, 2] in trie and (9, 2) in trie
    assert [5, 7] not in trie and [4] not in trie and "ab" not in trie
    assert trie.max_token_id == 9 and trie.num_nodes == 8


@pytest.mark.parametrize(
    "sequences, error, match",
    [
        ([[1, 2], []], ValueError, r"sequences\[1\] is empty"),
        ([[1, -2]], ValueError, r"sequences\[0\]\[1\] is a negative token id"),
        ([[1, 2.5]], TypeError, r"sequences\[0\]\[1\] must be an int"),
        ([[True]], TypeError, "bool"),
        ([], ValueError, "at least one candidate"),
        ("abc", TypeError, "iterable of token-id sequences"),
        ([torch.zeros(2, 2, dtype=torch.long)], ValueError, "must be 1-D"),
    ],
)
def test_candidate_trie_rejects_bad_input(sequences, error, match):
    with pytest.raises(error, match=match):
        CandidateTrie(sequences)


def test_build_answer_trie_uses_leading_space_and_eos(tokenizer, trie):
    assert len(trie) == len(ANSWERS)
    for answer in ANSWERS:
        ids = answer_ids(tokenizer, answer)
        assert (*ids, EOS) in trie
        assert tuple(tokenizer.encode(answer, add_special_tokens=False)) + (EOS,) != (*ids, EOS)  # the space matters
    merged = build_answer_trie(tokenizer, ["yes", " yes ", "no"], eos_token_id=EOS)
    assert len(merged) == 2


@pytest.mark.parametrize(
    "answers, kwargs, error, match",
    [
        (["yes", ""], {}, ValueError, r"answers\[1\] is empty"),
        (["yes", "   "], {}, ValueError, r"answers\[1\] is empty"),
        (["yes", 3], {}, TypeError, r"answers\[1\] must be a str"),
        ([], {}, ValueError, "at least one candidate"),
        ("yes", {}, TypeError, "iterable of strings"),
        (["yes"], {"eos_token_id": -1}, ValueError, "eos_token_id must be non-negative"),
        (["yes"], {"eos_token_id": "2"}, TypeError, "eos_token_id must be an int"),
    ],
)
def test_build_answer_trie_errors(tokenizer, answers, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_answer_trie(tokenizer, answers, **{"eos_token_id": EOS, **kwargs})


# ---------------------------------------------------------------------------------------------------------------------
# The processor on hand-made rows


def test_processor_masks_each_row_by_its_state(tokenizer, trie):
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD)
    red, yes = answer_ids(tokenizer, "a red bus"), answer_ids(tokenizer, "yes")
    assert len(red) > 3 and len(yes) == 1
    rows_and_allowed = [
        ([BOS, red[0], red[1]], {red[2]}),  # inside the trie: its children
        ([BOS, yes[0], EOS], {PAD}),  # finished
        ([BOS, 7, 7], {EOS}),  # left the trie
        ([BOS, PAD, PAD], {EOS}),  # padding is not skipped: it leaves the trie too
    ]
    input_ids = torch.tensor([row for row, _ in rows_and_allowed])
    scores = torch.randn(len(rows_and_allowed), len(tokenizer))
    out = processor(input_ids, scores)
    for row, (_, allowed) in zip(out, rows_and_allowed):
        assert set(torch.nonzero(row.isfinite()).flatten().tolist()) == allowed
        assert row[~row.isfinite()].eq(-float("inf")).all()
    assert out[1, PAD] == 0.0  # a finished row emits pad with certainty
    live = [0, 2, 3]
    kept = out[live].isfinite()
    assert torch.equal(out[live][kept], scores[live][kept])  # allowed scores are untouched


def test_processor_overrides_a_ban_on_every_allowed_token(tokenizer, trie):
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD)
    yes = answer_ids(tokenizer, "yes")
    scores = torch.randn(2, len(tokenizer))
    scores[0, EOS] = -float("inf")  # e.g. min_new_tokens banned EOS after a complete answer
    scores[1, PAD] = -float("inf")
    with pytest.warns(UserWarning, match=r"banned every allowed token of rows \[0\]"):
        out = processor(torch.tensor([[BOS, *yes], [BOS, *yes[:-1], EOS]]), scores)
    assert torch.nonzero(out.isfinite()).tolist() == [[0, EOS], [1, PAD]]


def test_processor_first_step_allows_the_first_tokens(tokenizer, trie):
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD)
    out = processor(torch.full((4, 1), BOS), torch.zeros(4, len(tokenizer)))  # e.g. 2 examples x 2 beams
    first = {answer_ids(tokenizer, answer)[0] for answer in ANSWERS}
    for row in out:
        assert set(torch.nonzero(row.isfinite()).flatten().tolist()) == first


def test_processor_skips_the_prompt(tokenizer, trie):
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD, prefix_length=3)
    scores = torch.randn(2, len(tokenizer))
    assert torch.equal(processor(torch.tensor([[BOS, 40, 41], [BOS, 42, 43]]), scores), scores)
    out = processor(torch.tensor([[BOS, 40, 41, 42], [BOS, 42, 43, 44]]), scores)
    assert out.isfinite().sum(-1).tolist() == [len(trie.allowed_next([]))] * 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prefix_length": -1}, ValueError, "prefix_length must be non-negative"),
        ({"prefix_length": 1.0}, TypeError, "prefix_length must be an int"),
        ({"pad_token_id": True}, TypeError, "pad_token_id must be an int, got a bool"),
        ({"trie": [[1, 2]]}, TypeError, "trie must be a CandidateTrie"),
    ],
)
def test_processor_argument_errors(trie, kwargs, error, match):
    with pytest.raises(error, match=match):
        ClosedSetLogitsProcessor(**{"trie": trie, "eos_token_id": EOS, **kwargs})


def test_processor_rejects_a_vocabulary_too_small(trie):
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS)
    with pytest.raises(ValueError, match=f"uses token id {trie.max_token_id}"):
        processor(torch.full((1, 1), BOS), torch.zeros(1, trie.max_token_id))


# ---------------------------------------------------------------------------------------------------------------------
# generate()


GENERATE_MODES = {
    "greedy": {},
    "beam": {"num_beams": 3, "num_return_sequences": 3},
    "sample": {"do_sample": True, "top_k": 0, "num_return_sequences": 4},
    "beam_sample": {"do_sample": True, "num_beams": 2, "top_k": 0},
}


def test_unconstrained_generation_leaves_the_set(tokenizer, model, trie, inputs):
    out = model.generate(**inputs, max_new_tokens=8)
    with pytest.raises(AssertionError):
        assert_all_candidates(tokenizer, trie, out)


@pytest.mark.parametrize("mode", GENERATE_MODES)
def test_generate_with_processor_stays_in_the_set(tokenizer, model, trie, inputs, mode):
    torch.manual_seed(1)
    processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD)
    out = model.generate(
        **inputs, logits_processor=LogitsProcessorList([processor]), max_new_tokens=10, **GENERATE_MODES[mode]
    )
    assert out.shape[0] == inputs["input_ids"].shape[0] * GENERATE_MODES[mode].get("num_return_sequences", 1)
    assert_all_candidates(tokenizer, trie, out)


@pytest.mark.parametrize("mode", ["greedy", "beam", "sample"])
def test_generate_with_prefix_allowed_tokens_fn_stays_in_the_set(tokenizer, model, trie, inputs, mode):
    torch.manual_seed(2)
    fn = closed_set_prefix_allowed_tokens_fn(trie, eos_token_id=EOS, pad_token_id=PAD)
    out = model.generate(**inputs, prefix_allowed_tokens_fn=fn, max_new_tokens=10, **GENERATE_MODES[mode])
    assert_all_candidates(tokenizer, trie, out)


@pytest.mark.parametrize("use_fn", [False, True])
def test_generate_after_a_teacher_forced_prompt(tokenizer, model, trie, inputs, use_fn):
    prompt = tokenizer.encode(" what color is the car?", add_special_tokens=False)
    batch = inputs["input_ids"].shape[0]
    decoder_input_ids = torch.tensor([[BOS, *prompt]] * batch)
    if use_fn:
        constraint = {
            "prefix_allowed_tokens_fn": closed_set_prefix_allowed_tokens_fn(trie, len(prompt), eos_token_id=EOS)
        }
    else:
        processor = ClosedSetLogitsProcessor(trie, eos_token_id=EOS, pad_token_id=PAD, prefix_length=len(prompt))
        constraint = {"logits_processor": LogitsProcessorList([processor])}
    out = model.generate(**inputs, decoder_input_ids=decoder_input_ids, max_new_tokens=10, num_beams=2, **constraint)
    assert out[:, : 1 + len(prompt)].tolist() == decoder_input_ids.tolist()
    assert_all_candidates(tokenizer, trie, out, start=1 + len(prompt))


def test_generate_with_min_new_tokens_beyond_the_answers_keeps_the_set(tokenizer, model, inputs):
    short = build_answer_trie(tokenizer, ["yes", "no"], eos_token_id=EOS)
    processor = ClosedSetLogitsProcessor(short, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.warns(UserWarning, match="min_new_tokens"):
        out = model.generate(
            **inputs, logits_processor=LogitsProcessorList([processor]), min_new_tokens=4, max_new_tokens=8
        )
    for row in out.tolist():
        assert tuple(row[1 : row.index(EOS) + 1]) in short


def test_prefix_allowed_tokens_fn_states_and_errors(tokenizer, trie):
    fn = closed_set_prefix_allowed_tokens_fn(trie, 2, eos_token_id=EOS, pad_token_id=PAD)
    yes = answer_ids(tokenizer, "yes")
    assert fn(0, torch.tensor([BOS, 50, 51])) == trie.allowed_next([])
    assert fn(0, torch.tensor([BOS, 50, 51, *yes])) == [EOS]
    assert fn(0, torch.tensor([BOS, 50, 51, 7])) == [EOS]  # left the trie
    assert fn(0, torch.tensor([BOS, 50, 51, *yes, EOS])) == [PAD]
    with pytest.raises(ValueError, match="inside the 2-token prompt"):
        fn(0, torch.tensor([BOS, 50]))
    with pytest.raises(TypeError, match="trie must be a CandidateTrie"):
        closed_set_prefix_allowed_tokens_fn({"yes": 0}, eos_token_id=EOS)
