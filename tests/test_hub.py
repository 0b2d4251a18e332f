"""Hub folders: complete files, a model card whose metadata parses back, usage snippets that run offline, the CLI."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config_kwargs
from huggingface_hub import HfApi, ModelCard, metadata_load
from PIL import Image
from transformers import AutoModelForSeq2SeqLM, AutoProcessor, GenerationConfig

from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers.hub import (
    HUB_TAGS,
    build_model_card,
    build_usage_snippets,
    extract_usage_snippets,
    hub_files,
    results_from_metrics,
    run_usage_snippets,
    save_hub_folder,
    task_pipeline_tag,
    validate_hub_folder,
    write_model_card,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"
WORDS = "a red blue green circle square what does the image describe which region yes no dog snow"
TASKS = {
    "vqa": "[IMAGE:img] [TEXT:question] -> [TEXT:answer,closed_set]",
    "caption": "[IMAGE:img] what does the image describe? -> [TEXT:cap]",
}
GROUNDING = '[IMAGE:img] which region does the text " [TEXT:phrase] " describe? -> [BOX:box]'
RESULTS = {"vqa": {"vqa_accuracy": 0.625}, "caption": {"cider": 1.0437, "bleu": 31.5}}
DATASETS = {"caption": "HuggingFaceM4/COCO"}


@pytest.fixture(scope="module")
def parts():
    tokenizer = train_demo_tokenizer([WORDS] * 20, vocab_size=300, num_codes=16, num_bins=50)
    processor = OFAProcessor(
        OFAImageProcessor(size=32),
        tokenizer,
        max_image_size=32,
        task_instructions=TASKS,
        closed_sets={"vqa": ["red", "blue", "green circle"]},
    )
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer)))).eval()
    return model, processor


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory) -> Path:
    model, processor = parts
    out = tmp_path_factory.mktemp("hub") / "ofa-tiny-demo"
    return save_hub_folder(
        model,
        processor,
        out,
        repo_id="ofa-hf/ofa-tiny-demo",
        tasks={"grounding": GROUNDING},
        results=RESULTS,
        datasets=DATASETS,
        base_model="OFA-Sys/ofa-tiny",
    )


def test_folder_is_complete_and_reloads(folder, parts):
    model, processor = parts
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json"} <= names
    assert {"tokenizer.json", "README.md"} <= names
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    assert GenerationConfig.from_pretrained(folder).decoder_start_token_id == model.config.decoder_start_token_id
    loaded_processor = AutoProcessor.from_pretrained(folder)
    assert loaded_processor.task_instructions == {**TASKS, "grounding": GROUNDING}
    assert processor.task_instructions == TASKS  # the caller's processor is left alone
    batch = loaded_processor("caption", {"img": Image.new("RGB", (40, 30), "red"), "cap": "a red circle"})
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_card_metadata_parses_back(folder):
    metadata = metadata_load(folder / "README.md")
    assert metadata["library_name"] == "transformers" and metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["tags"][: len(HUB_TAGS)] == list(HUB_TAGS) and "image" in metadata["tags"]
    assert "visual-grounding" in metadata["tags"]
    assert metadata["datasets"] == ["HuggingFaceM4/COCO"] and metadata["base_model"] == "OFA-Sys/ofa-tiny"
    assert metadata["metrics"] == ["bleu", "cider", "vqa_accuracy"]
    card = ModelCard.load(folder / "README.md")
    found = {
        (r.task_name, r.metric_type): (r.metric_value, r.task_type, r.dataset_type) for r in card.data.eval_results
    }
    assert found == {
        ("vqa", "vqa_accuracy"): (0.625, "image-text-to-text", "vqa"),
        ("caption", "cider"): (1.0437, "image-text-to-text", "HuggingFaceM4/COCO"),
        ("caption", "bleu"): (31.5, "image-text-to-text", "HuggingFaceM4/COCO"),
    }
    assert metadata["model-index"][0]["name"] == "ofa-tiny-demo"
    assert validate_hub_folder(folder)["pipeline_tag"] == "image-text-to-text"


def test_card_body_lists_tasks_results_and_usage(folder):
    text = ModelCard.load(folder / "README.md").text
    for task, instruction in {**TASKS, "grounding": GROUNDING}.items():
        assert f"### `{task}`\n\n```text\n{instruction}\n```" in text
    assert "Closed set (3 answers): `red`, `blue`, `green circle`" in text
    assert "| `caption` | HuggingFaceM4/COCO | cider | 1.044 |" in text
    assert "| layers (encoder / decoder) | 2 / 2 |" in text
    snippets = extract_usage_snippets((folder / "README.md").read_text())
    assert len(snippets) == 3
    assert 'model_id = "ofa-hf/ofa-tiny-demo"' in snippets[0] and 'pipeline("ofa-instruction"' in snippets[0]
    assert "closed_set_logits_processor" in snippets[1]  # vqa, the first task, is a closed set
    # The card's pipeline_tag, with caption's prompt (vqa has no literal prompt).
    assert 'pipeline("image-text-to-text"' in snippets[2] and "text='what does the image describe?'" in snippets[2]


def test_usage_snippets_run_offline_against_the_folder(folder):
    # One thread: on a busy 2-core machine a second OpenMP thread only spins (3x slower here).
    pipeline_output, direct_output, standard_output = run_usage_snippets(
        folder, timeout=300, env={"OMP_NUM_THREADS": "1"}
    )
    through_pipeline = ast.literal_eval(pipeline_output.strip().splitlines()[-1])
    direct = ast.literal_eval(direct_output.strip().splitlines()[-1])
    assert through_pipeline["label"] in {"red", "blue", "green circle"} and through_pipeline["in_set"] is True
    assert direct == [through_pipeline]  # the two snippets compute the same answer
    (standard,) = ast.literal_eval(standard_output.strip().splitlines()[-1])
    assert standard["input_text"] == "what does the image describe?" and isinstance(standard["generated_text"], str)


@pytest.mark.parametrize(
    ("instruction", "tag"),
    [
        (TASKS["caption"], "image-text-to-text"),
        (GROUNDING, "zero-shot-object-detection"),
        ("[IMAGE:img] what are the objects? -> ( [BOX:boxes] [TEXT:labels] )*", "object-detection"),
        ("what is the summary of [TEXT:src] ? -> [TEXT:tgt]", "text-generation"),
        ("structured knowledge: [STRUCT:table] . how to describe the table? -> [TEXT:tgt]", "text-generation"),
        ("what is the complete image? caption: [TEXT:text] -> [IMAGE_CODE:codes]", "text-to-image"),
        ("[AUDIO:wav] what is the text corresponding to the voice? -> [TEXT:text]", "automatic-speech-recognition"),
        ("[VIDEO:video] what does the video describe? -> [TEXT:cap]", "video-text-to-text"),
        ("[MOTION:motion] what is the action? -> [TEXT:action,closed_set]", "any-to-any"),
    ],
)
def test_task_pipeline_tags(instruction, tag):
    assert task_pipeline_tag(instruction) == tag


@pytest.mark.parametrize(
    "tasks",
    [
        {"a": TASKS["caption"]},
        {"a": TASKS["caption"], "b": GROUNDING},
        {"a": TASKS["caption"], "b": "[AUDIO:wav] what is said? -> [TEXT:text]"},
        {"a": "what is the complete image? caption: [TEXT:text] -> [IMAGE_CODE:codes]"},
    ],
)
def test_model_pipeline_tag_is_the_pipeline_that_runs_ofa(tasks):
    """Whatever the tasks, the card names the standard pipeline OFA runs (`any-to-any` needs torchvision and a
    multimodal-LM contract; `text-to-image` and the others have no pipeline for OFA)."""
    tag = "image-text-to-text"
    assert build_model_card(tasks, model_name="m").data.pipeline_tag == tag


@pytest.mark.parametrize(
    ("instruction", "columns", "needs_numpy"),
    [
        (GROUNDING, ["img", "phrase"], False),
        ("[AUDIO:wav] what is the text corresponding to the voice? -> [TEXT:text]", ["wav"], True),
        ("[VIDEO:video] [TEXT:q] -> [TEXT:a]", ["video", "q"], True),
        ("structured knowledge: [STRUCT:table] . how to describe the table? -> [TEXT:tgt]", ["table"], False),
    ],
)
def test_usage_snippets_build_a_row_per_modality(instruction, columns, needs_numpy):
    for snippet in build_usage_snippets("me/m", "t", instruction):
        compile(snippet, "snippet", "exec")
        row = snippet[snippet.index("row = {") : snippet.index("\n}\n")]
        assert [line.split(":")[0].strip().strip("'") for line in row.splitlines()[1:]] == columns
        assert ("import numpy as np" in snippet) == needs_numpy
        assert ("from PIL import Image" in snippet) == ("img" in columns)


def test_results_from_trainer_metrics():
    metrics = {
        "eval_loss": 1.5,
        "eval_snli_ve_accuracy": 0.5,
        "eval_snli_ve_loss": 2.0,
        "eval_snli_ve_skipped": 0.0,
        "eval_snli_ve_f1": 0.4,
        "eval_snli_accuracy": 0.25,
        "eval_caption_cider": 1.2,
        "eval_runtime": 3.0,
        "train_caption_cider": 9.0,
        "eval_caption_flag": True,
    }
    assert results_from_metrics(metrics, ["snli", "snli_ve", "caption"]) == {
        "snli_ve": {"accuracy": 0.5, "f1": 0.4},
        "snli": {"accuracy": 0.25},
        "caption": {"cider": 1.2},
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"results": {"asr": {"wer": 0.1}}}, ValueError, "task 'asr'"),
        ({"results": {"caption": {"cider": float("nan")}}}, ValueError, "finite"),
        ({"results": {"caption": {}}}, TypeError, "non-empty"),
        ({"datasets": {"asr": "x/y"}}, ValueError, "asr"),
        ({"usage_task": "asr"}, ValueError, "usage_task"),
        ({"tasks": {}}, ValueError, "non-empty"),
        ({"tasks": {"bad": "no arrow here"}}, ValueError, "tasks\\['bad'\\]"),
    ],
)
def test_bad_card_arguments(kwargs, error, match):
    tasks = kwargs.pop("tasks", TASKS)
    with pytest.raises(error, match=match):
        build_model_card(tasks, model_name="m", **kwargs)


def test_save_needs_a_standalone_model(parts, tmp_path):
    _, processor = parts
    with pytest.raises(TypeError, match="merge_and_unload"):
        save_hub_folder(torch.nn.Linear(2, 2), processor, tmp_path)
    with pytest.raises(ValueError, match="task 'asr'"):
        save_hub_folder(parts[0], processor, tmp_path, results={"asr": {"wer": 0.5}})
    assert not any(tmp_path.iterdir())  # nothing written before the arguments are checked


def test_validation_lists_every_problem(folder, tmp_path):
    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "generation_config.json").unlink()
    (broken / "moe.py").unlink()  # code the model's auto_map needs
    readme = (broken / "README.md").read_text()
    readme = readme.replace("library_name: transformers\n", "").replace("### `grounding`", "### grounding")
    (broken / "README.md").write_text(readme.replace('model_id = "ofa-hf/ofa-tiny-demo"', "model_id = None"))
    with pytest.raises(ValueError) as info:
        validate_hub_folder(broken)
    message = str(info.value)
    for problem in (
        "missing generation_config.json",
        "no library_name",
        "task 'grounding'",
        "model_id exactly once",
        "config.json: its auto_map needs moe.py",
    ):
        assert problem in message


# ---------------------------------------------------------------------------------------------------------------------
# The CLI


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi calls instead of reaching the network."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, **kwargs):
        calls.append(("create_commit", kwargs["repo_id"], kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/0"})()

    def upload_folder(self, **kwargs):  # a push must name its files, never upload a folder wholesale
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_cli_dry_run_touches_no_network(folder, hub_calls, capsys):
    load_script().main([str(folder), "me/ofa-tiny-demo", "--dry-run"])
    out = capsys.readouterr().out
    summary = json.loads(out[: out.rindex("}") + 1])
    assert summary["pipeline_tag"] == "image-text-to-text" and summary["results"] == 3
    assert "model.safetensors" in summary["files"] and "nothing was uploaded" in out
    assert hub_calls == []


def test_cli_push_uploads_exactly_the_dry_run_list(folder, hub_calls, capsys, tmp_path):
    run = shutil.copytree(folder, tmp_path / "run")
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"):
        (run / "checkpoints" / "checkpoint-2" / name).write_bytes(b"state")
    (run / "training_args.bin").write_bytes(b"pickle")
    (run / "trainer_state.json").write_text("{}")
    load_script().main([str(run), "me/ofa-tiny-demo", "--dry-run"])
    out = capsys.readouterr().out
    listed = json.loads(out[: out.rindex("}") + 1])["files"]
    load_script().main([str(run), "me/ofa-tiny-demo", "--private", "--commit-message", "v1"])
    assert [c[0] for c in hub_calls] == ["create_repo", "create_commit"]
    assert hub_calls[0][2] == {"private": True, "exist_ok": True}
    commit = hub_calls[1][2]
    assert commit["commit_message"] == "v1"
    uploaded = [operation.path_in_repo for operation in commit["operations"]]
    assert uploaded == listed
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", "modeling_ofa.py"} <= set(listed)
    assert not {"training_args.bin", "trainer_state.json"} & set(listed) and all("/" not in n for n in listed)
    card = next(op for op in commit["operations"] if op.path_in_repo == "README.md")
    assert 'model_id = "me/ofa-tiny-demo"' in card.path_or_fileobj.decode()  # the card names the repo it is pushed to
    assert "commit/0" in capsys.readouterr().out


def test_cli_writes_a_card_for_a_training_output(folder, parts, hub_calls, tmp_path, capsys):
    output = shutil.copytree(folder, tmp_path / "run", ignore=shutil.ignore_patterns("README.md"))
    with pytest.raises(SystemExit, match="missing README.md"):
        load_script().main([str(output), "me/run", "--dry-run"])
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_caption_cider": 0.75, "eval_loss": 2.0}))
    args = [str(output), "me/run", "--dry-run", "--write-card", "--results", str(tmp_path / "metrics.json")]
    load_script().main(args)
    card = ModelCard.load(output / "README.md")
    assert [(r.task_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("caption", "cider", 0.75)
    ]
    assert f"| parameters | {parts[0].num_parameters() / 1e6:.1f}M |" in card.text
    assert write_model_card(output, repo_id="me/run") == output / "README.md"
    assert hub_calls == []


def test_hub_files_are_the_repo_never_training_state(folder, tmp_path):
    run = shutil.copytree(folder, tmp_path / "run")
    (run / ".cache").mkdir()
    (run / ".cache" / "lock").write_text("")
    (run / ".hidden.json").write_text("{}")
    (run / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-1" / "config.json").write_text("{}")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"):
        (run / name).write_bytes(b"state")
    for name in ("results.json", "results.md", "curves.png", "adapter_config.json", "merges.txt"):
        (run / name).write_bytes(b"x")
    files = hub_files(run)
    assert files == sorted(files) and all("/" not in name and not name.startswith(".") for name in files)
    assert {"results.json", "results.md", "curves.png", "adapter_config.json", "merges.txt"} <= set(files)
    assert {"configuration_ofa.py", "modeling_ofa.py", "processing_ofa.py", "instruction.py"} <= set(files)
    assert not {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"} & set(files)


def test_saved_code_imports_only_itself(folder):
    """The processor's copy imports the model's configuration relatively (the package imports it by name)."""
    assert "from .configuration_ofa import MODALITIES" in (folder / "instruction.py").read_text()
    for path in folder.glob("*.py"):
        assert "from modeling_ofa" not in path.read_text() and "from processing" not in path.read_text(), path.name
