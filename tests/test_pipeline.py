"""`pipeline("ofa-instruction", model=folder)`: single and batched calls, closed sets, generation arguments, errors."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image
from transformers import pipeline
from transformers.pipelines import get_supported_tasks

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from processing.pipeline import PIPELINE_TASK, OFAInstructionPipeline

WORDS = "a red blue green circle square what does the image describe is the sentiment of text positive negative yes no"
TASKS = {
    "caption": "[IMAGE:img] what does the image describe? -> [TEXT:cap]",
    "vqa": "[IMAGE:img] [TEXT:question] -> [TEXT:answer,closed_set]",
    "sst2": 'is the sentiment of text " [TEXT:sentence] " positive or negative? -> is the sentiment of text " '
    '[TEXT:sentence,no_loss] " positive or negative? [TEXT:label,closed_set]',
}
CLOSED_SETS = {"vqa": ["red", "blue", "green circle"], "sst2": ["positive", "negative"]}
SHORT = {"max_new_tokens": 6}


def image(color) -> Image.Image:
    return Image.new("RGB", (40, 32), color)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny random model + processor, as `save_pretrained` writes them."""
    tokenizer = train_demo_tokenizer([WORDS] * 20, vocab_size=300, num_codes=16, num_bins=50)
    processor = OFAProcessor(
        OFAImageProcessor(size=32), tokenizer, max_image_size=32, task_instructions=TASKS, closed_sets=CLOSED_SETS
    )
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer))))
    path = tmp_path_factory.mktemp("ofa-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(folder) -> OFAInstructionPipeline:
    return pipeline(PIPELINE_TASK, model=str(folder), **SHORT)


def direct(pipe, instruction, row, **generate_kwargs):
    """The answer computed without the pipeline: processor -> generate -> post_process_generation."""
    processor = pipe.processor
    example = processor.encode(instruction, row, with_targets=False)
    candidates = processor.closed_sets.get(instruction)
    processors = []
    if candidates:
        processors = [processor.closed_set_logits_processor(candidates, example["meta"]["prefix_length"])]
    out = pipe.model.generate(**processor.collate([example]), logits_processor=processors, **generate_kwargs)
    return processor.post_process_generation(out, instruction, [example["meta"]], candidates=candidates)[0]


def test_registered_with_transformers(pipe):
    assert PIPELINE_TASK in get_supported_tasks()
    assert isinstance(pipe, OFAInstructionPipeline) and isinstance(pipe.processor, OFAProcessor)
    assert not pipe.model.training


def test_single_row_matches_the_direct_path(pipe):
    row = {"img": image("red")}
    answer = pipe(row, instruction="caption")
    assert set(answer) == {"text"} and isinstance(answer["text"], str)
    assert answer == direct(pipe, "caption", row, **SHORT)
    assert pipe("caption", row) == answer  # instruction first
    assert pipe(row, instruction=TASKS["caption"]) == answer  # the instruction itself, not its saved name


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_batched_calls_match_single_calls(pipe, batch_size):
    rows = [{"img": image(c)} for c in ("red", "blue", "green")]
    answers = pipe(rows, instruction="caption", batch_size=batch_size)
    assert answers == [pipe(row, instruction="caption") for row in rows]


def test_batches_split_by_decoder_prefix_length(pipe):
    # sst2 forces its prompt (which echoes the sentence) as a decoder prefix: different lengths in one batch.
    rows = [{"sentence": s} for s in ("a red circle", "blue", "the green square is a circle")]
    lengths = {pipe.processor.encode("sst2", row)["meta"]["prefix_length"] for row in rows}
    assert len(lengths) == 3
    answers = pipe(rows, instruction="sst2", batch_size=3)
    assert all(a["label"] in CLOSED_SETS["sst2"] and a["in_set"] for a in answers)
    assert answers == [direct(pipe, "sst2", row, **SHORT) for row in rows]


def test_closed_set_candidates(pipe):
    row = {"img": image("red"), "question": "what color is the circle?", "answer": "ignored target"}
    saved = pipe(row, instruction="vqa")
    assert saved["label"] in CLOSED_SETS["vqa"] and saved["in_set"] is True
    assert saved == direct(pipe, "vqa", row, **SHORT)
    assert pipe(row, instruction="vqa", candidates=["green circle"]) == {"label": "green circle", "in_set": True}
    with pytest.raises(ValueError, match="closed set but no candidates"):
        pipe(row, instruction=TASKS["vqa"])
    raw = pipe(row, instruction=TASKS["vqa"], candidates=("blue",))
    assert raw == {"label": "blue", "in_set": True}


def test_generation_arguments_and_several_sequences(pipe):
    row = {"img": image("blue")}
    beams = pipe(row, instruction="caption", num_beams=2, num_return_sequences=2)
    assert isinstance(beams, list) and len(beams) == 2 and all(set(b) == {"text"} for b in beams)
    assert (
        pipe(row, instruction="caption", generate_kwargs={"max_new_tokens": 1})["text"]
        == direct(pipe, "caption", row, max_new_tokens=1)["text"]
    )


def test_streaming_inputs_give_an_iterator(pipe):
    rows = ({"img": image(c)} for c in ("red", "blue", "green"))
    out = pipe(rows, instruction="caption", batch_size=2)
    assert isinstance(out, types.GeneratorType)
    assert len(list(out)) == 3
    assert pipe([], instruction="caption") == []


def test_model_and_processor_objects(folder):
    processor = OFAProcessor.from_pretrained(folder)
    processor.task_instructions = {"caption": TASKS["caption"]}
    model = OFAForConditionalGeneration.from_pretrained(folder)
    pipe = pipeline(PIPELINE_TASK, model=model, processor=processor, **SHORT)
    assert set(pipe({"img": image("red")})) == {"text"}  # the only saved task is the default


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p({"img": image("red")}), ValueError, "no instruction"),
        (lambda p: p({"img": image("red")}, instruction="caption", beams=2), TypeError, "unknown arguments"),
        (lambda p: p("caption"), ValueError, "rows"),
        (lambda p: p(["not a row"], instruction="caption"), TypeError, "mapping"),
        (lambda p: p({"img": image("red")}, instruction="caption", template=1), ValueError, "template"),
        (lambda p: p({"image": image("red")}, instruction="caption"), ValueError, "no column 'img'"),
        (lambda p: p({"img": image("red")}, instruction="vqa", candidates="red"), TypeError, "list of answers"),
    ],
)
def test_bad_calls_are_clear_errors(pipe, call, error, match):
    with pytest.raises(error, match=match):
        call(pipe)


def test_needs_an_ofa_processor(folder):
    model = OFAForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(TypeError, match="needs an OFAProcessor"):
        OFAInstructionPipeline(model=model, processor=None)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_task_adapters_switch_by_task_name(folder):
    pytest.importorskip("peft")
    from modeling_ofa.peft_utils import TaskAdapters

    processor = OFAProcessor.from_pretrained(folder)
    model = OFAForConditionalGeneration.from_pretrained(folder).eval()
    adapters = TaskAdapters(model, ["caption", "vqa"], r=4, init_lora_weights=False, trainable=False)
    pipe = pipeline(PIPELINE_TASK, model=adapters.model, processor=processor, task_adapters=adapters, **SHORT)
    row = {"img": image("red"), "question": "what color?"}
    pipe(row, instruction="vqa")
    assert adapters.active == "vqa"
    caption = pipe(row, instruction="caption")
    assert adapters.active == "caption"
    with adapters.using("caption"):
        assert caption == direct(pipe, "caption", row, **SHORT)
    with pytest.raises(ValueError, match="has no adapter"):
        pipe({"sentence": "a red circle"}, instruction="sst2")
    with pytest.raises(ValueError, match="must be the pipeline's model"):
        pipeline(PIPELINE_TASK, model=model, processor=processor, task_adapters=adapters)


def test_standard_image_text_to_text_pipeline_answers_as_the_task(folder, pipe):
    """`pipeline("image-text-to-text")` (the card's pipeline_tag) with a task's prompt encodes exactly what the task
    encodes, so it answers as `ofa-instruction` does for that task."""
    standard = pipeline("image-text-to-text", model=str(folder))
    prompt = "what does the image describe?"
    for color in ("red", "blue"):
        (out,) = standard(images=image(color), text=prompt, max_new_tokens=6, return_full_text=False)
        expected = pipe({"img": image(color)}, instruction="caption", num_beams=1)["text"]
        assert out == {"input_text": prompt, "generated_text": expected}
    batch = standard(images=[image("red"), image("blue")], text=[prompt, prompt], max_new_tokens=6)
    assert [r["generated_text"] for r in batch] == [
        prompt + pipe({"img": image(c)}, instruction="caption")["text"] for c in ("red", "blue")
    ]  # full text: prompt + answer
    (alone,) = standard(text='is the sentiment of text " good " positive or negative?', max_new_tokens=4)
    assert isinstance(alone["generated_text"], str)
    with pytest.raises(ValueError, match="one image per prompt"):
        standard.processor(images=[image("red")] * 2, text=prompt)
