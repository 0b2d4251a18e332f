"""LoRA on OFA through PEFT: default targets, training, save/load, merging, and per-task adapters."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_config_kwargs
from torch import nn

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from modeling_ofa.peft_utils import (
    OFA_LORA_TARGET_MODULES,
    TaskAdapters,
    get_ofa_peft_model,
    ofa_lora_config,
    register_peft_defaults,
)

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

MOE = {
    "dense": {},
    "modality": {"moe_type": "modality"},
    "topk": {"moe_type": "topk", "moe_num_experts": 3},
}


_TEMPLATES: dict[str, OFAForConditionalGeneration] = {}


def make_model(kind: str = "dense") -> OFAForConditionalGeneration:
    """A fresh tiny model; every call for one `kind` has the same weights (copied: faster than initializing)."""
    if kind not in _TEMPLATES:
        torch.manual_seed(0)
        _TEMPLATES[kind] = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(**MOE[kind]))).eval()
    return copy.deepcopy(_TEMPLATES[kind])


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.tensor([[0, 11, 12, 13, 2], [0, 21, 22, 2, 1]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "decoder_input_ids": torch.tensor([[0, 31, 32, 33], [0, 41, 42, 43]]),
    }


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def expected_targets(model: nn.Module) -> set[str]:
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in OFA_LORA_TARGET_MODULES
    }


def lora_names(model: nn.Module) -> set[str]:
    """Base-model names of the modules PEFT wrapped."""
    return {name.removeprefix("base_model.model.") for name in model.targeted_module_names}


@pytest.mark.parametrize("kind", sorted(MOE))
def test_plain_lora_config_needs_no_target_modules(kind):
    register_peft_defaults()  # idempotent; importing modeling_ofa.peft_utils already did it
    model = make_model(kind)
    targets = expected_targets(model)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, task_type="SEQ_2_SEQ_LM"))
    assert lora_names(peft_model) == targets
    assert any(".cross_attn.v_proj" in n for n in targets) and any(".self_attn.out_proj" in n for n in targets)
    if kind == "dense":
        assert "model.encoder.layers.0.fc1" in targets
    else:
        assert "model.decoder.layers.1.moe.experts.2.fc2" in targets
        assert not any("router" in n for n in targets)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize(
    ("targets", "experts", "present", "absent"),
    [
        ("attention", True, ".self_attn.q_proj", ".fc1"),
        ("ffn", True, ".experts.0.fc1", "_proj"),
        ("all", False, ".self_attn.k_proj", ".experts."),
        (["out_proj"], True, ".cross_attn.out_proj", ".q_proj"),
    ],
)
def test_target_groups_and_leaving_experts_out(targets, experts, present, absent):
    peft_model = get_ofa_peft_model(make_model("modality"), targets=targets, experts=experts, r=2)
    names = lora_names(peft_model)
    assert any(present in n for n in names)
    assert not any(absent in n for n in names)


def test_one_optimizer_step_trains_only_lora(batch):
    model = get_ofa_peft_model(make_model("topk"), r=4, lora_alpha=8).train()
    before_logits = logits(model, batch)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) < 0.05 * sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    labels = batch["decoder_input_ids"][:, 1:]
    loss = model(**{**batch, "decoder_input_ids": batch["decoder_input_ids"][:, :-1]}, labels=labels).loss
    loss.backward()
    optimizer.step()
    model.eval()
    assert not torch.allclose(logits(model, batch), before_logits, atol=1e-4)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("kind", ["dense", "modality"])
def test_adapter_save_load_round_trip_and_merge(kind, batch, tmp_path):
    config = ofa_lora_config(r=4, init_lora_weights=False)  # random B: the adapter changes the outputs
    model = get_ofa_peft_model(make_model(kind), config).eval()
    adapted = logits(model, batch)
    assert not torch.allclose(adapted, logits(make_model(kind), batch), atol=1e-4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == set(OFA_LORA_TARGET_MODULES)

    reloaded = peft.PeftModel.from_pretrained(make_model(kind), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), adapted, rtol=0, atol=0)

    merged = reloaded.merge_and_unload()
    assert isinstance(merged, OFAForConditionalGeneration)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), adapted, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Per-task adapters


@pytest.fixture
def adapters() -> TaskAdapters:
    return TaskAdapters(make_model("modality"), ["caption", "vqa"], r=4, init_lora_weights=False)


def test_task_adapters_switch_outputs(adapters, batch):
    assert adapters.tasks == ["caption", "vqa"] and adapters.active == "caption"
    caption = logits(adapters.model, batch)
    adapters.activate("vqa")
    vqa = logits(adapters.model, batch)
    assert adapters.active == "vqa" and not torch.allclose(caption, vqa, atol=1e-4)
    with adapters.using("caption"):
        torch.testing.assert_close(logits(adapters.model, batch), caption, rtol=0, atol=0)
    assert adapters.active == "vqa"
    with adapters.disabled():
        torch.testing.assert_close(logits(adapters.model, batch), logits(make_model("modality"), batch))
    torch.testing.assert_close(logits(adapters.merged("caption"), batch), caption, rtol=0, atol=1e-5)
    assert adapters.active == "vqa" and "lora_" in "".join(n for n, _ in adapters.model.named_parameters())


def test_every_task_adapter_stays_trainable_and_only_the_active_one_gets_gradients(adapters, batch):
    adapters.activate("vqa")
    trainable = {n for n, p in adapters.model.named_parameters() if p.requires_grad}
    assert trainable == set(adapters.adapter_parameters())
    assert set(adapters.adapter_parameters("caption")) | set(adapters.adapter_parameters("vqa")) == trainable
    adapters.model.train()
    adapters.model(**batch).logits.sum().backward()
    # Experts of modalities absent from the batch get no gradient either; every attention adapter does.
    vqa = adapters.adapter_parameters("vqa")
    assert all(p.grad is not None for n, p in vqa.items() if "_attn." in n)
    assert all(p.grad is None for p in adapters.adapter_parameters("caption").values())


def test_task_adapters_save_and_load(adapters, batch, tmp_path):
    expected = {}
    for task in adapters.tasks:
        with adapters.using(task):
            expected[task] = logits(adapters.model, batch)
    adapters.activate("vqa")
    adapters.save(tmp_path)
    assert (tmp_path / "caption" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "task_adapters.json").read_text())["active"] == "vqa"

    loaded = TaskAdapters.load(make_model("modality"), tmp_path)
    assert loaded.tasks == ["caption", "vqa"] and loaded.active == "vqa"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    for task, values in expected.items():
        loaded.activate(task)
        torch.testing.assert_close(logits(loaded.model, batch), values, rtol=0, atol=0)

    only_vqa = TaskAdapters.load(make_model("modality"), tmp_path, ["vqa"], trainable=True)
    assert only_vqa.tasks == ["vqa"] and set(only_vqa.adapter_parameters()) == {
        n for n, p in only_vqa.model.named_parameters() if p.requires_grad
    }


def test_adding_a_task_later_keeps_the_active_one(batch):
    adapters = TaskAdapters(make_model(), r=2, init_lora_weights=False)
    with pytest.raises(RuntimeError, match="add"):
        _ = adapters.model
    adapters.add("caption")
    caption = logits(adapters.model, batch)
    adapters.add("grounding", ofa_lora_config("attention", r=2, init_lora_weights=False))
    assert adapters.active == "caption" and len(adapters) == 2 and "grounding" in adapters
    torch.testing.assert_close(logits(adapters.model, batch), caption, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda a: a.add("bad.name"), ValueError, "cannot name an adapter"),
        (lambda a: a.add("default"), ValueError, "reserved"),
        (lambda a: a.add("caption"), ValueError, "already has an adapter"),
        (lambda a: a.activate("asr"), KeyError, "no adapter for task 'asr'"),
        (lambda a: a.save("unused", ["asr"]), KeyError, "asr"),
    ],
)
def test_task_adapter_errors(adapters, call, error, match):
    with pytest.raises(error, match=match):
        call(adapters)


def test_bad_arguments_are_errors(tmp_path):
    with pytest.raises(TypeError, match="OFA model"):
        get_ofa_peft_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="targets='mlp'"):
        ofa_lora_config("mlp")
    with pytest.raises(TypeError, match="not both"):
        get_ofa_peft_model(make_model(), ofa_lora_config(), r=4)
    with pytest.raises(FileNotFoundError, match="TaskAdapters.save"):
        TaskAdapters.load(make_model(), tmp_path)


def test_multitask_trainer_checks_its_task_adapters(tmp_path):
    """Every task needs an adapter, and the trainer trains the adapters' own model."""
    from transformers import Seq2SeqTrainingArguments

    from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
    from trainers import MultiTaskTrainer, Task

    tokenizer = train_demo_tokenizer(["a red circle what does the image describe"] * 20, vocab_size=300, num_codes=16)
    processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer)
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer))))
    adapters = TaskAdapters(model, ["caption"], r=2)
    rows = [{"img": torch.zeros(3, 8, 8).numpy().transpose(1, 2, 0), "cap": "a red circle", "q": "what"}] * 2
    caption = Task("caption", "[IMAGE:img] what does the image describe? -> [TEXT:cap]", rows)
    other = Task("other", "[TEXT:q] -> [TEXT:cap]", rows)
    args = Seq2SeqTrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"tasks \['other'\] have no adapter"):
        MultiTaskTrainer(
            model=adapters.model, args=args, tasks=[caption, other], processor=processor, task_adapters=adapters
        )
    with pytest.raises(ValueError, match="model=task_adapters.model"):
        MultiTaskTrainer(model=model, args=args, tasks=[caption], processor=processor, task_adapters=adapters)
    trainer = MultiTaskTrainer(
        model=adapters.model, args=args, tasks=[caption], processor=processor, task_adapters=adapters
    )
    assert trainer.task_adapters is adapters
