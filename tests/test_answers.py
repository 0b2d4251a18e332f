"""The one answer path (`processing.answers`), the keyword form of `OFAProcessor.__call__`, and `MultiTaskTrainer`'s
`Trainer.predict` contract and saved tasks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import perturb_weights, tiny_config_kwargs
from PIL import Image
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, parse_instruction, train_demo_tokenizer
from processing.answers import TARGET_KINDS, AnswerGenerator, generation_inputs, target_kind
from trainers import MultiTaskTrainer, Task

COLORS = ["red", "blue", "green"]
COLOR = 'what color is " [TEXT:text] "? -> [TEXT:color,closed_set]'
# Two templates; the second forces a decoder prefix that echoes the input, so the rows fall into several groups.
PROMPTED = (
    'what color is " [TEXT:text] "? -> [TEXT:color,closed_set] ||| '
    'is " [TEXT:text] " red? -> is " [TEXT:text,no_loss] " red? [TEXT:color,closed_set]'
)
VQA = "[IMAGE:img] [TEXT:question] -> [TEXT:answer]"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(n: int) -> list[dict]:
    return [{"text": f"a {COLORS[i % 3]} {'big ' * (i % 4)}circle", "color": COLORS[i % 3]} for i in range(n)]


@pytest.fixture(scope="module")
def processor() -> OFAProcessor:
    words = " ".join(COLORS + "a the big circle what color is text says red image question".split())
    tokenizer = train_demo_tokenizer([words] * 20, vocab_size=300, num_codes=8, num_bins=20)
    return OFAProcessor(OFAImageProcessor(size=16), tokenizer)


@pytest.fixture(scope="module")
def model(processor) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    config = OFAConfig(**tiny_config_kwargs(vocab_size=len(processor.tokenizer)))
    return perturb_weights(OFAForConditionalGeneration(config), seed=1).eval()


def one_by_one(processor, model, plan, examples, candidates=None, **kwargs):
    """Reference: every row generated alone, with its own freshly built constraint."""
    answers = []
    for example in examples:
        example = generation_inputs(example)
        meta = example["meta"]
        call = dict(kwargs)
        if candidates is not None:
            constraint = processor.closed_set_logits_processor(
                candidates, meta["prefix_length"], plan=plan, template_index=meta["template_index"]
            )
            call.update(logits_processor=[constraint], max_new_tokens=max(len(a) for a in constraint.trie))
        sequences = model.generate(**processor.collate([example]), **call)
        answers += processor.post_process_generation(sequences, plan, [meta], candidates=candidates)
    return answers


def test_target_kinds_are_one_table():
    kinds = {
        "[TEXT:a] -> [TEXT:b]": "text",
        "[TEXT:a] -> [TEXT:b,closed_set]": "label",
        "[TEXT:a] -> [CATEGORY:b]": "label",
        "[IMAGE:i] [TEXT:a] -> [BOX:b]": "box",
        "[IMAGE:i] -> ( [BOX:b] [TEXT:l] )*": "objects",
        "[TEXT:a] -> [IMAGE_CODE:c]": "codes",
    }
    for instruction, kind in kinds.items():
        plan = parse_instruction(instruction)
        assert target_kind(plan.templates[0].target_slot) == kind and kind in TARGET_KINDS
        closed = plan.templates[0].target_slot.closed_set if kind == "label" else False
        assert Task("t", instruction, candidates=["x"] if closed else None).target_kind == kind
        assert plan.target_kind == kind  # the plan's own property


def test_groups_by_template_and_prefix_in_input_order(processor, model, monkeypatch):
    plan = processor.plan(PROMPTED)
    examples = [processor.encode(plan, row, row_index=i, with_targets=False) for i, row in enumerate(rows(12))]
    keys = {(e["meta"]["template_index"], e["meta"]["prefix_length"]) for e in examples}
    assert len({template for template, _ in keys}) == 2 and len(keys) >= 3  # several groups, both templates
    built = []
    original = OFAProcessor.closed_set_trie
    monkeypatch.setattr(
        OFAProcessor, "closed_set_trie", lambda self, *a, **k: built.append(k) or original(self, *a, **k)
    )
    generator = AnswerGenerator(processor, plan, candidates=COLORS, batch_size=2)
    batches = generator.batches(examples)
    assert all(len(positions) <= 2 for _, positions in batches)
    assert sorted(p for _, positions in batches for p in positions) == list(range(12))
    for group, positions in batches:  # one template and one prefix length per generate call
        metas = [examples[p]["meta"] for p in positions]
        assert {(m["template_index"], m["prefix_length"]) for m in metas} == {
            (group.template_index, group.prefix_length)
        }
    answers = generator.generate_from_examples(model, examples)
    # The trie is built once per (template, prefix or not), not once per batch.
    assert len(built) == len({(k["template_index"], k["prefix_length"] == 0) for k in built}) == 2
    assert answers == one_by_one(processor, model, plan, examples, candidates=COLORS)
    assert all(a["in_set"] for a in answers)
    # An untrained model's free answers leave the set: the constraint is what keeps them in.
    free = one_by_one(processor, model, plan, examples, max_new_tokens=4)
    assert any(a["label"] not in COLORS for a in free)


def test_rows_and_examples_with_targets_give_the_same_answers(processor, model):
    plan = processor.plan('what text says " [TEXT:text] "? -> [TEXT:text]')
    generator = AnswerGenerator(processor, plan, batch_size=3, generate_kwargs={"max_new_tokens": 5})
    with_targets = [processor.encode(plan, row, row_index=i) for i, row in enumerate(rows(5))]
    assert all("labels" in e for e in with_targets)
    answers = generator.generate(model, rows(5))
    assert answers == generator.generate_from_examples(model, with_targets)
    assert answers == one_by_one(processor, model, plan, with_targets, max_new_tokens=5)
    assert len({a["text"] for a in answers}) > 1  # the perturbed model answers rows differently
    assert processor.generate_answers(model, plan, rows(5), max_new_tokens=5) == answers


def test_closed_set_needs_candidates_and_is_never_cut_short(processor):
    with pytest.raises(ValueError, match="closed set but no candidates"):
        AnswerGenerator(processor, COLOR)
    generator = AnswerGenerator(processor, COLOR, candidates=COLORS, generate_kwargs={"max_new_tokens": 1})
    (group,) = generator.groups([processor.encode(COLOR, rows(1)[0], with_targets=False)])
    assert generator.call_kwargs(group)["max_new_tokens"] == group.longest_answer > 1
    with pytest.raises(ValueError, match="template=5"):
        AnswerGenerator(processor, COLOR, candidates=COLORS, template=5)


# ---------------------------------------------------------------------------------------------------------------------
# The keyword form of OFAProcessor.__call__


def test_keyword_form_fills_the_instructions_slots(processor):
    images = [Image.new("RGB", (20, 10), color) for color in ("red", "blue")]
    by_rows = processor(VQA, [{"img": images[0], "question": "what color"}, {"img": images[1], "question": "what"}])
    by_keywords = processor(VQA, images=images, text=["what color", "what"])
    assert by_rows.keys() == by_keywords.keys()
    for key in by_rows:
        assert torch.equal(by_rows[key], by_keywords[key]), key
    single = processor(VQA, images=images[0], text="what color")
    assert torch.equal(single["input_ids"][0], by_rows["input_ids"][0][: single["input_ids"].shape[1]])
    # Several text slots of one row: a tuple, filled in order.
    two = "[TEXT:premise] and [TEXT:hypothesis] -> [TEXT:label]"
    pairs = processor(two, text=[("a red circle", "a circle")])
    assert torch.equal(
        pairs["input_ids"], processor(two, {"premise": "a red circle", "hypothesis": "a circle"})["input_ids"]
    )
    with pytest.raises(ValueError, match=r"reads IMAGE slots \['img'\]: pass images="):
        processor(VQA, text="what")
    with pytest.raises(ValueError, match="has no AUDIO slot"):
        processor(VQA, images=images[0], text="what", audio=[0.0] * 160)
    with pytest.raises(ValueError, match="different numbers of rows"):
        processor(VQA, images=images, text="what")
    speech = "[AUDIO:audio] what is the text corresponding to the voice? -> [TEXT:text]"
    wave = [0.1 * ((i % 7) - 3) for i in range(1600)]  # one waveform as a list of samples, at 16 kHz
    audio = processor(speech, audio=wave)
    assert torch.equal(audio["audio_features"], processor(speech, {"audio": np.array(wave)})["audio_features"])
    assert processor(speech, audio=[np.array(wave)] * 2)["audio_features"].shape[0] == 2
    with pytest.raises(TypeError, match="not both"):
        processor(VQA, [{"img": images[0], "question": "q"}], text="q")


# ---------------------------------------------------------------------------------------------------------------------
# MultiTaskTrainer: Trainer.predict's contract, the saved tasks


def trainer_for(processor, model, tmp_path, tasks) -> MultiTaskTrainer:
    args = Seq2SeqTrainingArguments(str(tmp_path), report_to=[], disable_tqdm=True, use_cpu=True)
    return MultiTaskTrainer(model=model, args=args, tasks=tasks, processor=processor)


def test_predict_keeps_trainers_contract(processor, model, tmp_path):
    color = Task("color", COLOR, candidates=COLORS, num_beams=1)
    trainer = trainer_for(processor, model, tmp_path, [color])
    # Code written for Trainer.predict(test_dataset, ignore_keys, metric_key_prefix) works: the dataset first.
    trainer_parameters = list(inspect.signature(Seq2SeqTrainer.predict).parameters)[:4]
    assert list(inspect.signature(MultiTaskTrainer.predict).parameters)[:4] == trainer_parameters
    output = trainer.predict(rows(4), None, "test")
    assert len(output.predictions) == 4 and all(a["label"] in COLORS for a in output.predictions)
    assert output.label_ids == [row["color"] for row in rows(4)] and "test_color_accuracy" in output.metrics
    assert trainer.predict(test_dataset=rows(4), task="color").predictions == output.predictions
    with pytest.raises(TypeError, match=r"predict\(dataset, task='color'\)"):
        trainer.predict("color", rows(4))
    copy = Task("copy", 'what text says " [TEXT:text] "? -> [TEXT:text]', max_new_tokens=3, num_beams=1)
    two = trainer_for(processor, model, tmp_path, [color, copy])
    with pytest.raises(ValueError, match="name the task"):
        two.predict(rows(2))
    assert all(set(a) == {"text"} for a in two.predict(rows(2), task="copy").predictions)


def test_the_processor_given_is_not_mutated(processor, model, tmp_path):
    given = OFAProcessor(OFAImageProcessor(size=16), processor.tokenizer, task_instructions={"other": COLOR})
    trainer = trainer_for(given, model, tmp_path, [Task("color", COLOR, candidates=COLORS)])
    assert (given.task_instructions, given.closed_sets, given.generation_defaults) == ({"other": COLOR}, {}, {})
    carried = trainer.processing_class
    assert carried.task_instructions["color"] == COLOR and carried.closed_sets["color"] == COLORS
    assert carried.generation_defaults["color"]["num_beams"] == 1
    trainer.save_model(str(tmp_path / "final"))
    reloaded = OFAProcessor.from_pretrained(str(tmp_path / "final"))
    assert reloaded.task_instructions == {"other": COLOR, "color": COLOR} and reloaded.closed_sets == {"color": COLORS}
