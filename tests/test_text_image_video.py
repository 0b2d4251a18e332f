"""Tests for the text, image and video preprocessors (vocabulary layout, OFA conventions, loaders, golden values)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from processing.image import OFAImageProcessor, load_image
from processing.location import bin_token
from processing.text import (
    MASK_TOKEN,
    SPECIAL_TOKENS,
    OFAVocab,
    TextPreprocessor,
    add_ofa_tokens,
    code_token,
    train_demo_tokenizer,
)
from processing.video import VideoPreprocessor, sample_frame_indices

CORPUS = [
    "a cat sat on the mat.",
    "the dog ran in the park with a red ball!",
    "two birds fly over a small house near the river.",
    "what does the image describe? a man riding a horse.",
    "which region does the text describe? the woman in blue.",
] * 8
NUM_CODES = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_demo_tokenizer(CORPUS, vocab_size=500, num_codes=NUM_CODES)


@pytest.fixture(scope="module")
def text(tokenizer):
    return TextPreprocessor(tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary layout and the demo tokenizer


def test_special_ids_are_fairseq_order(tokenizer):
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
    vocab = OFAVocab.from_tokenizer(tokenizer)
    assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)


def test_mask_codes_bins_are_contiguous_and_last(tokenizer):
    vocab = OFAVocab.from_tokenizer(tokenizer)
    assert vocab.mask_id == tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    assert vocab.code_offset == vocab.mask_id + 1
    codes = tokenizer.convert_tokens_to_ids([code_token(i) for i in range(NUM_CODES)])
    bins = tokenizer.convert_tokens_to_ids([bin_token(i) for i in range(1000)])
    assert codes == list(range(vocab.code_offset, vocab.code_offset + NUM_CODES))
    assert bins == list(range(vocab.code_offset + NUM_CODES, vocab.code_offset + NUM_CODES + 1000))
    assert vocab.bin_offset == bins[0] and vocab.vocab_size == len(tokenizer) == bins[-1] + 1
    # Every id below <mask> except the four specials is BPE: nothing else was slipped in.
    assert not set(tokenizer.get_added_vocab().values()) & set(range(4, vocab.mask_id))


def test_default_sizes_give_ofa_offsets():
    tok = train_demo_tokenizer(CORPUS, vocab_size=300)
    vocab = OFAVocab.from_tokenizer(tok)
    assert (vocab.num_codes, vocab.num_bins) == (8192, 1000)
    assert vocab.bin_offset - vocab.code_offset == 8192
    assert vocab.vocab_size == vocab.mask_id + 1 + 8192 + 1000


def test_training_is_deterministic(tokenizer):
    again = train_demo_tokenizer(CORPUS, vocab_size=500, num_codes=NUM_CODES)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_no_automatic_bos_eos(tokenizer):
    ids = tokenizer.encode(" a cat")  # add_special_tokens defaults to True and must still add nothing
    assert ids == tokenizer.encode(" a cat", add_special_tokens=False)
    assert not {0, 1, 2} & set(ids)


def test_add_ofa_tokens_is_idempotent(tokenizer):
    before = len(tokenizer)
    assert add_ofa_tokens(tokenizer, num_codes=NUM_CODES) is tokenizer
    assert len(tokenizer) == before


def test_add_ofa_tokens_rejects_other_layout(tokenizer):
    with pytest.raises(ValueError, match="<code_i>"):
        add_ofa_tokens(tokenizer, num_codes=NUM_CODES + 1)


def test_save_and_reload_keeps_layout(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert OFAVocab.from_tokenizer(reloaded) == OFAVocab.from_tokenizer(tokenizer)
    assert reloaded.encode(" a cat sat") == tokenizer.encode(" a cat sat")


@pytest.mark.parametrize("vocab_size, error", [(100, ValueError), (260, ValueError)])
def test_train_rejects_tiny_vocab(vocab_size, error):
    with pytest.raises(error, match="vocab_size"):
        train_demo_tokenizer(CORPUS, vocab_size=vocab_size)


@pytest.mark.parametrize("texts, error", [(["", "  "], ValueError), (["ok", 3], TypeError)])
def test_train_rejects_bad_corpus(texts, error):
    with pytest.raises(error):
        train_demo_tokenizer(texts, vocab_size=300)


def test_vocab_helpers(tokenizer):
    vocab = OFAVocab.from_tokenizer(tokenizer)
    assert vocab.code_id(0) == vocab.code_offset and vocab.code_id(NUM_CODES - 1) == vocab.bin_offset - 1
    assert vocab.bin_id(999) == vocab.vocab_size - 1
    assert vocab.is_code(vocab.code_id(3)) and not vocab.is_bin(vocab.code_id(3))
    assert vocab.is_bin(vocab.bin_id(0)) and not vocab.is_code(vocab.bin_id(0)) and not vocab.is_bin(vocab.mask_id)
    ids = torch.tensor([0, vocab.mask_id, vocab.code_id(1), vocab.bin_id(5)])
    assert vocab.is_code(ids).tolist() == [False, False, True, False]
    assert vocab.is_bin(ids).tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="1000"):
        vocab.bin_id(1000)
    with pytest.raises(ValueError):
        vocab.code_id(-1)
    assert code_token(7) == "<code_7>" and bin_token(7) == "<bin_7>"
    with pytest.raises(ValueError, match="code index"):
        code_token(-1)


# ----------------------------------------------------------------------------------------------------------------
# TextPreprocessor.encode / decode


@pytest.mark.parametrize("raw", ["a cat", "  a cat ", "a cat\n"])
def test_leading_space_convention(text, tokenizer, raw):
    assert text.encode(raw) == tokenizer.encode(" a cat", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(text.encode(raw))[0] == "\u0120a"


def test_leading_space_can_be_turned_off(text, tokenizer):
    assert text.encode("a cat", leading_space=False) == tokenizer.encode("a cat", add_special_tokens=False)
    assert text.encode("a cat", leading_space=False) != text.encode("a cat")


def test_cleaning_attributes(text):
    assert text.encode("A Cat!", uncased=True, no_punctuation=True) == text.encode("a cat")
    assert text.encode("A Cat!") != text.encode("a cat")


@pytest.mark.parametrize("raw, kwargs", [("   ", {}), ("?!.", {"no_punctuation": True})])
def test_empty_text_raises_naming_it(text, raw, kwargs):
    with pytest.raises(ValueError, match=repr(raw).replace("?", r"\?").replace(".", r"\.")):
        text.encode(raw, **kwargs)


def test_non_string_text_raises(text):
    with pytest.raises(TypeError, match="str"):
        text.encode(12)


def test_max_length_truncates(text):
    full = text.encode("the dog ran in the park with a red ball")
    assert text.encode("the dog ran in the park with a red ball", max_length=3) == full[:3]
    with pytest.raises(ValueError, match="max_length"):
        text.encode("a cat", max_length=0)


def test_decode_strips_specials(text):
    ids = text.encode("a man riding a horse.")
    assert text.decode([0, *ids, 2, 1, 1]) == "a man riding a horse."


# ----------------------------------------------------------------------------------------------------------------
# Corruptions


def _words(text_pre, ids):
    starts = np.flatnonzero(text_pre.word_starts(ids))
    return [tuple(ids[a:b]) for a, b in zip(starts, [*starts[1:], len(ids)])]


def _masked_runs(text_pre, original, corrupted):
    """Align `corrupted` against `original` (unique words); return the number of words each <mask> hides."""
    mask_id = text_pre.vocab.mask_id
    words = _words(text_pre, original)
    items = _words(text_pre, corrupted)
    runs, position = [], 0
    for i, item in enumerate(items):
        if item == (mask_id,):
            assert i == 0 or items[i - 1] != (mask_id,), "two <mask> in a row"
            following = items[i + 1] if i + 1 < len(items) else None
            end = words.index(following, position) if following is not None else len(words)
            runs.append(end - position)
            position = end
        else:
            assert item == words[position], "kept words must stay in order and unchanged"
            position += 1
    assert position == len(words)
    return runs


UNIQUE_TEXT = " ".join(f"word{i}" for i in range(100))


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_spans_ratio_and_one_mask_per_span(text, ratio, seed):
    ids = text.encode(UNIQUE_TEXT)
    out = text.mask_spans(ids, ratio, np.random.default_rng(seed))
    runs = _masked_runs(text, ids, out)
    assert all(run >= 1 for run in runs)
    assert out.count(text.vocab.mask_id) == len(runs)
    assert sum(runs) == math.ceil(100 * ratio - 1e-9)  # exactly the BART count of words, 100 words here


def test_mask_spans_lengths_look_poisson(text):
    ids = text.encode(UNIQUE_TEXT)
    rng = np.random.default_rng(0)
    runs = [run for _ in range(100) for run in _masked_runs(text, ids, text.mask_spans(ids, 0.3, rng))]
    # Poisson(3) conditioned on >= 1 has mean 3.157; the trimmed last span of each draw pulls it down a little.
    assert 2.5 < np.mean(runs) < 3.5


def test_mask_spans_masks_whole_words(text):
    ids = text.encode(UNIQUE_TEXT)
    out = text.mask_spans(ids, 0.3, 0)
    # Every token right after a <mask> starts a word: no word was cut in half.
    after = [out[i + 1] for i, tok in enumerate(out[:-1]) if tok == text.vocab.mask_id]
    assert all(tok.startswith("\u0120") for tok in text.tokenizer.convert_ids_to_tokens(after))


@pytest.mark.parametrize("ratio, expected", [(0.0, "same"), (1.0, "one_mask")])
def test_mask_spans_extremes(text, ratio, expected):
    ids = text.encode("a cat sat on the mat")
    out = text.mask_spans(ids, ratio, 0)
    assert out == (ids if expected == "same" else [text.vocab.mask_id])


def test_mask_spans_is_seeded(text):
    ids = text.encode(UNIQUE_TEXT)
    assert text.mask_spans(ids, 0.3, 7) == text.mask_spans(ids, 0.3, np.random.default_rng(7))
    assert text.mask_spans(ids, 0.3, 7) != text.mask_spans(ids, 0.3, 8)


@pytest.mark.parametrize("method", ["mask_spans", "add_noise"])
def test_corruptions_reject_bad_input(text, method):
    ids = text.encode("a cat")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        getattr(text, method)(ids, 1.5, 0)
    with pytest.raises(ValueError, match="<s>"):
        getattr(text, method)([0, *ids, 2], 0.3, 0)


def test_add_noise_rate_and_range(text):
    ids = text.encode(UNIQUE_TEXT) * 10
    out = text.add_noise(ids, 0.3, 0)
    assert len(out) == len(ids)
    changed = np.mean(np.array(out) != np.array(ids))
    assert 0.25 < changed < 0.35
    replaced = {o for o, i in zip(out, ids) if o != i}
    low, high = text.bpe_range
    assert (low, high) == (4, text.vocab.mask_id)
    assert all(low <= tok < high for tok in replaced)
    assert text.add_noise(ids, 0.0, 0) == ids
    assert all(low <= tok < high for tok in text.add_noise(ids, 1.0, 0))


# ----------------------------------------------------------------------------------------------------------------
# Images

COLOUR = (255, 0, 51)
EXPECTED = torch.tensor([1.0, -1.0, 51 / 127.5 - 1.0])  # (x / 255 - 0.5) / 0.5
HEIGHT, WIDTH = 30, 50


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _make_input(kind, tmp_path):
    rgb = PIL.Image.new("RGB", (WIDTH, HEIGHT), COLOUR)
    array = np.asarray(rgb)
    path = tmp_path / "img.png"
    rgb.save(path)
    return {
        "pil": rgb,
        "pil_rgba": rgb.convert("RGBA"),
        "pil_palette": rgb.convert("P"),
        "hwc_uint8": array,
        "chw_uint8": array.transpose(2, 0, 1).copy(),
        "hwc_float": array.astype(np.float32) / 255.0,
        "torch_chw": torch.from_numpy(array.transpose(2, 0, 1).copy()),
        "path_str": str(path),
        "path_obj": Path(path),
        "bytes": _png_bytes(rgb),
        "dict_bytes": {"bytes": _png_bytes(rgb), "path": None},
        "dict_path": {"bytes": None, "path": str(path)},
    }[kind]


INPUT_KINDS = [
    "pil",
    "pil_rgba",
    "pil_palette",
    "hwc_uint8",
    "chw_uint8",
    "hwc_float",
    "torch_chw",
    "path_str",
    "path_obj",
    "bytes",
    "dict_bytes",
    "dict_path",
]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_constant_colour_golden(kind, tmp_path):
    processor = OFAImageProcessor(size=32)
    out = processor(_make_input(kind, tmp_path))
    pixels = out["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32
    # The palette image may quantize the colour slightly; everything else is exact up to float rounding.
    tolerance = 0.02 if kind == "pil_palette" else 1e-6
    torch.testing.assert_close(pixels[0], EXPECTED.view(3, 1, 1).expand(3, 32, 32), atol=tolerance, rtol=0)
    assert out["original_sizes"].tolist() == [[HEIGHT, WIDTH]]


@pytest.mark.parametrize("grey", [np.full((HEIGHT, WIDTH), 102, np.uint8), np.full((HEIGHT, WIDTH, 1), 102, np.uint8)])
def test_grayscale_becomes_three_equal_channels(grey):
    pixels = OFAImageProcessor(size=16)(grey)["pixel_values"]
    torch.testing.assert_close(pixels, torch.full((1, 3, 16, 16), 102 / 127.5 - 1.0))


def test_matches_ofa_transform_on_a_real_pattern():
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    pixels = OFAImageProcessor(size=24)(image)["pixel_values"][0]
    # OFA: PIL bicubic resize to S x S, ToTensor (/255), Normalize(0.5, 0.5).
    reference = np.asarray(image.resize((24, 24), PIL.Image.BICUBIC), dtype=np.float32) / 255.0
    reference = torch.from_numpy((reference - 0.5) / 0.5).permute(2, 0, 1)
    torch.testing.assert_close(pixels, reference, atol=1e-6, rtol=0)


def test_batch_of_mixed_inputs(tmp_path):
    inputs = [_make_input(kind, tmp_path) for kind in ("pil", "path_str", "bytes")]
    inputs.append(PIL.Image.new("RGB", (7, 11), COLOUR))
    out = OFAImageProcessor(size=32)(inputs)
    assert out["pixel_values"].shape == (4, 3, 32, 32)
    assert out["original_sizes"].tolist() == [[HEIGHT, WIDTH]] * 3 + [[11, 7]]


def test_four_d_array_is_a_batch():
    batch = np.full((5, HEIGHT, WIDTH, 3), COLOUR, dtype=np.uint8)
    out = OFAImageProcessor(size=8)(batch, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (5, 3, 8, 8)
    assert out["original_sizes"].shape == (5, 2)


@pytest.mark.parametrize("size, shape", [(None, (384, 384)), (48, (48, 48)), ({"height": 32, "width": 40}, (32, 40))])
def test_size_options(size, shape):
    processor = OFAImageProcessor() if size is None else OFAImageProcessor(size=size)
    assert processor(PIL.Image.new("RGB", (20, 10)))["pixel_values"].shape[-2:] == shape


@pytest.mark.parametrize("kwargs", [{"size": {"shortest_edge": 32}}, {"do_center_crop": True}, {"do_pad": True}])
def test_unsupported_options_raise(kwargs):
    with pytest.raises(ValueError):
        OFAImageProcessor(**kwargs)


def test_call_time_override():
    processor = OFAImageProcessor(size=32)
    assert processor(PIL.Image.new("RGB", (9, 9)), size=16)["pixel_values"].shape == (1, 3, 16, 16)
    unnormalized = processor(PIL.Image.new("RGB", (9, 9), COLOUR), do_normalize=False)["pixel_values"]
    torch.testing.assert_close(unnormalized[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def _truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(buffer, format="JPEG")
    path = tmp_path / "broken.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # header intact, pixel data cut
    return path


@pytest.mark.parametrize("variant", ["path", "dict", "not_an_image", "lazy_pil"])
def test_corrupt_file_error_names_file_and_where(tmp_path, variant):
    path = _truncated_jpeg(tmp_path)
    if variant == "not_an_image":
        path.write_text("hello")
    value = {"bytes": path.read_bytes(), "path": str(path)} if variant == "dict" else str(path)
    if variant == "lazy_pil":  # what `datasets.Image()` hands over: opened, not yet decoded
        value = PIL.Image.open(path)
    with pytest.raises(ValueError, match="broken.jpg") as info:
        OFAImageProcessor(size=8)(value, where="row 7, column 'img'")
    assert "row 7, column 'img'" in str(info.value)


def test_truncated_bytes_error_names_where(tmp_path):
    data = _truncated_jpeg(tmp_path).read_bytes()
    with pytest.raises(ValueError, match=r"row 3.*image 1"):
        OFAImageProcessor(size=8)([PIL.Image.new("RGB", (4, 4)), data], where="row 3")


@pytest.mark.parametrize(
    "value, error, message",
    [
        (None, ValueError, "missing"),
        ("does/not/exist.png", ValueError, "does/not/exist.png"),
        ("https://example.com/a.jpg", ValueError, "URL"),
        ({"bytes": None, "path": None}, ValueError, "neither"),
        (np.full((4, 4, 3), 2.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((4, 4, 3), 300, np.int32), ValueError, "0..255"),
        (np.zeros((5, 6, 7), np.uint8), ValueError, "channel"),
        (3.5, TypeError, "float"),
    ],
)
def test_load_image_errors(value, error, message):
    with pytest.raises(error, match=message):
        load_image(value, where="row 1")


def test_save_and_load_round_trip(tmp_path):
    processor = OFAImageProcessor(size=48, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "OFAImageProcessor"
    assert saved["size"] == {"height": 48, "width": 48} and saved["resample"] == PIL.Image.BICUBIC
    reloaded = OFAImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    torch.testing.assert_close(reloaded(image)["pixel_values"], processor(image)["pixel_values"])


# ----------------------------------------------------------------------------------------------------------------
# Video


@pytest.mark.parametrize(
    "total, wanted, expected",
    [
        (10, 4, [0, 3, 6, 9]),
        (3, 8, [0, 0, 1, 1, 1, 1, 2, 2]),
        (8, 8, list(range(8))),
        (1, 3, [0, 0, 0]),
        (100, 1, [0]),
        (7, 2, [0, 6]),
    ],
)
def test_sample_frame_indices_golden(total, wanted, expected):
    assert sample_frame_indices(total, wanted).tolist() == expected


def _frames(kind, count, tmp_path):
    values = [np.full((12, 16, 3), 20 * t, np.uint8) for t in range(count)]
    if kind == "array":
        return np.stack(values)
    if kind == "tensor":
        return torch.from_numpy(np.stack(values))
    if kind == "pil":
        return [PIL.Image.fromarray(v) for v in values]
    if kind == "arrays":
        return values
    paths = []
    for t, value in enumerate(values):
        paths.append(tmp_path / f"frame{t}.png")
        PIL.Image.fromarray(value).save(paths[-1])
    return tuple(paths)


@pytest.mark.parametrize("kind", ["array", "tensor", "pil", "arrays", "paths"])
@pytest.mark.parametrize("count, expected", [(10, [0, 3, 6, 9]), (2, [0, 0, 1, 1])])
def test_video_inputs_and_sampling(kind, count, expected, tmp_path):
    video = VideoPreprocessor(num_frames=4, image_processor=OFAImageProcessor(size=16))
    out = video(_frames(kind, count, tmp_path))
    assert out["pixel_values"].shape == (4, 3, 16, 16) and out["pixel_values"].dtype == torch.float32
    assert out["frame_indices"].dtype == torch.long and out["frame_indices"].tolist() == expected
    # Frame t was filled with 20 * t, so each output frame tells which source frame it is.
    levels = out["pixel_values"][:, 0, 8, 8]
    torch.testing.assert_close(levels, torch.tensor([20 * t / 127.5 - 1.0 for t in expected]))


@pytest.mark.parametrize(
    "video, error, message",
    [
        ([], ValueError, "zero frames"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "zero frames"),
        (np.zeros((8, 8, 3), np.uint8), ValueError, "4-D"),
        (None, ValueError, "missing"),
        (3, TypeError, "int"),
    ],
)
def test_video_errors(video, error, message):
    with pytest.raises(error, match=message):
        VideoPreprocessor(num_frames=2)(video, where="row 5")


def test_video_bad_frame_names_frame(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    frames = [PIL.Image.new("RGB", (4, 4))] * 3 + [bad]
    with pytest.raises(ValueError, match=r"bad\.png.*row 5, frame 3"):
        VideoPreprocessor(num_frames=2, image_processor=OFAImageProcessor(size=8))(frames, where="row 5")


def test_video_config_round_trip():
    video = VideoPreprocessor(num_frames=6, image_processor=OFAImageProcessor(size=64))
    rebuilt = VideoPreprocessor.from_dict(json.loads(json.dumps(video.to_dict())))
    assert rebuilt.to_dict() == video.to_dict() and rebuilt.num_frames == 6
    with pytest.raises(ValueError, match="num_frames"):
        VideoPreprocessor(num_frames=0)


def test_video_file(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 25 * t, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = VideoPreprocessor(num_frames=4, image_processor=OFAImageProcessor(size=16))(path)
    assert out["frame_indices"].tolist() == [0, 3, 6, 9]
    levels = out["pixel_values"][:, 0, 8, 8]
    # Lossy codec: compare to the source levels loosely.
    torch.testing.assert_close(levels, torch.tensor([25 * t / 127.5 - 1.0 for t in (0, 3, 6, 9)]), atol=0.05, rtol=0)


def test_video_file_without_pyav_is_a_clear_import_error(tmp_path):
    try:
        import av  # noqa: F401

        pytest.skip("PyAV is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install av"):
        VideoPreprocessor()(tmp_path / "clip.mp4")


def test_demo_tokenizer_learns_word_start_tokens():
    """Short answers seen alone in the corpus still get one word-start token, as OFA encodes them (" " + text)."""
    tokenizer = train_demo_tokenizer(["right", "left", "yes", "no"] * 20 + ["move it to the right"] * 3, vocab_size=300)
    text = TextPreprocessor(tokenizer)
    for word in ("right", "left", "yes"):
        assert len(text.encode(word)) == 1, tokenizer.convert_ids_to_tokens(text.encode(word))
