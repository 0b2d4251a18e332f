"""Every user path, run as a user runs it: real CLIs and fresh interpreters (`python -c`), real files, no patching.

Each test starts from a folder written the way a training run writes it (model, processor, card, results, plus the
training state a run leaves in `checkpoints/`) and then does what a user of the Hugging Face ecosystem does with it in
a new process: push it (dry run), load it where the package is installed and where it is not, run the card's snippets
as published, run the standard pipeline.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config_kwargs
from PIL import Image
from transformers import Seq2SeqTrainingArguments

from modeling_ofa import OFAConfig, OFAForConditionalGeneration, quantize_dynamic_int8
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task
from trainers.hub import save_hub_folder

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "user/ofa-demo"
WORDS = "a red blue green circle square what does the image describe what color is it yes no"
TASKS = {
    "caption": "[IMAGE:img] what does the image describe? -> [TEXT:cap]",
    "vqa": "[IMAGE:img] [TEXT:question] -> [TEXT:answer,closed_set]",
}
# Files a run leaves beside the model: none of them is part of the Hub repo.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json")
SUBPROCESS_TIMEOUT = 240


def run_python(
    code: str,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    argv: list[str] | None = None,
):
    """`python -c code` (or `python *argv`, a script) in a fresh interpreter, offline, one thread; returns the
    finished process."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": "", **(env or {})}
    return subprocess.run(
        [python, *argv] if argv else [python, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,  # transformers' "run custom code? [y/N]" prompt reads EOF: a refusal
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def check(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"
    )
    return done.stdout


def rows(n: int = 6) -> list[dict]:
    colors = ["red", "blue", "green"]
    return [
        {"img": Image.new("RGB", (40, 30), c), "cap": f"a {c} circle", "question": "what color is it", "answer": c}
        for c in colors * (n // 3)
    ]


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    """A tiny model and the processor training saves with it (`MultiTaskTrainer.processing_class`): it carries each
    task's instruction, closed set and generation settings."""
    tokenizer = train_demo_tokenizer([WORDS] * 20, vocab_size=300, num_codes=16, num_bins=50)
    processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer, max_image_size=32)
    torch.manual_seed(0)
    model = OFAForConditionalGeneration(OFAConfig(**tiny_config_kwargs(vocab_size=len(tokenizer)))).eval()
    tasks = [
        Task("caption", TASKS["caption"], train_dataset=rows(), num_beams=3, max_new_tokens=7),
        Task("vqa", TASKS["vqa"], train_dataset=rows()),
    ]
    args = Seq2SeqTrainingArguments(str(tmp_path_factory.mktemp("trainer")), report_to="none", use_cpu=True)
    trainer = MultiTaskTrainer(model=model, args=args, tasks=tasks, processor=processor)
    return model.eval(), trainer.processing_class


@pytest.fixture(scope="module")
def run_folder(model_and_processor, tmp_path_factory) -> Path:
    """A training run's output folder: the Hub folder, results and a plot, and the run's checkpoints."""
    model, processor = model_and_processor
    folder = save_hub_folder(
        model, processor, tmp_path_factory.mktemp("run") / "demo", results={"caption": {"exact_match": 0.5}}
    )
    (folder / "results.json").write_text(json.dumps([{"task": "caption", "value": 0.5}]))
    (folder / "results.md").write_text("| task | value |\n|---|---|\n| caption | 0.5 |\n")
    Image.new("RGB", (8, 8), "white").save(folder / "curves.png")
    checkpoint = folder / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    for name in TRAINING_STATE:
        (checkpoint / name).write_bytes(b"training state")
    (folder / "training_args.bin").write_bytes(b"a pickle")  # Trainer.save_model writes it beside the model
    return folder


@pytest.fixture(scope="module")
def expected_logits(model_and_processor, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Logits of the in-memory model on one caption row, saved for a fresh process to compare with."""
    model, processor = model_and_processor
    batch = processor("caption", {"img": Image.new("RGB", (40, 30), "red"), "cap": "a red circle"})
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    path = tmp_path_factory.mktemp("expected") / "logits.npy"
    np.save(path, logits)
    return path, logits


@pytest.fixture(scope="module")
def python_without_package(tmp_path_factory) -> str:
    """An interpreter that has torch, transformers and the other dependencies, but not this package.

    A bare virtual environment whose only `.pth` lists this interpreter's site-packages: their packages import, but
    their `.pth` files (the editable install of ofa-hf among them) are not processed.
    """
    venv = tmp_path_factory.mktemp("venv") / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = check(run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv, python=python))
    Path(purelib.strip(), "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = run_python(
        "import importlib.util as u; print(u.find_spec('modeling_ofa'), u.find_spec('processing'))",
        cwd=venv,
        python=python,
    )
    if check(probe).strip() != "None None":
        pytest.skip(f"ofa-hf is importable from the dependencies' site-packages ({probe.stdout.strip()})")
    return str(python)


# ---------------------------------------------------------------------------------------------------------------------
# Push: only the model


def test_push_dry_run_lists_exactly_the_hub_repo(run_folder, tmp_path):
    push = str(ROOT / "scripts" / "push_to_hub.py")
    done = run_python("", cwd=tmp_path, argv=[push, str(run_folder), REPO_ID, "--dry-run"])
    out = check(done)
    listed = json.loads(out[: out.rindex("}") + 1])["files"]
    expected = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "results.json",
        "results.md",
        "curves.png",
    }
    assert expected <= set(listed)
    code = set(listed) - expected
    assert code and all(name.endswith(".py") for name in code)  # the model's and processor's code (auto_map)
    assert {"modeling_ofa.py", "configuration_ofa.py", "processing_ofa.py"} <= code
    assert not set(TRAINING_STATE) & set(listed) and "checkpoints" not in out


# ---------------------------------------------------------------------------------------------------------------------
# Loading: with the package imported, and where it is not installed


def test_folder_loads_in_a_fresh_process_with_the_package(run_folder, expected_logits, tmp_path):
    logits_path, _ = expected_logits
    check(
        run_python(
            f"""
            import numpy as np, torch
            from PIL import Image
            import modeling_ofa, processing
            from transformers import AutoModelForSeq2SeqLM, AutoProcessor
            model = AutoModelForSeq2SeqLM.from_pretrained({str(run_folder)!r}).eval()
            processor = AutoProcessor.from_pretrained({str(run_folder)!r})
            assert type(model).__module__ == "modeling_ofa.modeling_ofa", type(model)  # the package, not the copy
            assert type(processor).__module__ == "processing.processing_ofa", type(processor)
            batch = processor("caption", {{"img": Image.new("RGB", (40, 30), "red"), "cap": "a red circle"}})
            with torch.no_grad():
                logits = model(**batch).logits.numpy()
            np.testing.assert_allclose(logits, np.load({str(logits_path)!r}), rtol=0, atol=1e-5)
            """,
            cwd=tmp_path,
        )
    )


def test_folder_loads_where_the_package_is_not_installed(run_folder, expected_logits, python_without_package, tmp_path):
    logits_path, _ = expected_logits
    out = check(
        run_python(
            f"""
            import numpy as np, torch
            from PIL import Image
            from transformers import AutoModelForSeq2SeqLM, AutoProcessor
            folder = {str(run_folder)!r}
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            print(type(model).__module__, type(processor).__module__, type(processor.image_processor).__name__)
            batch = processor("caption", {{"img": Image.new("RGB", (40, 30), "red"), "cap": "a red circle"}})
            with torch.no_grad():
                logits = model(**batch).logits.numpy()
            np.testing.assert_allclose(logits, np.load({str(logits_path)!r}), rtol=0, atol=1e-5)
            example = processor.encode("vqa", {{"img": Image.new("RGB", (40, 30), "red"), "question": "what color"}})
            closed = [processor.closed_set_logits_processor(processor.closed_sets["vqa"], 0, plan="vqa")]
            generated = model.generate(**processor.collate([example]), logits_processor=closed, max_new_tokens=4)
            candidates = processor.closed_sets["vqa"]
            (answer,) = processor.post_process_generation(generated, "vqa", [example["meta"]], candidates=candidates)
            assert answer["in_set"], answer
            """,
            cwd=tmp_path,
            env={"HF_MODULES_CACHE": str(tmp_path / "modules")},
            python=python_without_package,
        )
    )
    model_module, processor_module, image_processor = out.split()
    assert model_module.startswith("transformers_modules.") and model_module.endswith(".modeling_ofa")
    assert processor_module.endswith(".processing_ofa") and image_processor == "OFAImageProcessor"


def test_standard_pipeline_where_the_package_is_not_installed(run_folder, python_without_package, tmp_path):
    out = check(
        run_python(
            f"""
            from PIL import Image
            from transformers import pipeline
            pipe = pipeline("image-text-to-text", model={str(run_folder)!r}, trust_remote_code=True)
            image = Image.new("RGB", (40, 30), "red")
            (answer,) = pipe(images=image, text="what does the image describe?", max_new_tokens=4)
            print(type(pipe.model).__module__, answer["input_text"])
            """,
            cwd=tmp_path,
            env={"HF_MODULES_CACHE": str(tmp_path / "modules")},
            python=python_without_package,
        )
    )
    module, prompt = out.strip().splitlines()[-1].split(" ", 1)
    assert module.startswith("transformers_modules.") and prompt == "what does the image describe?"


def test_without_package_or_trust_remote_code_loading_refuses_loudly(run_folder, python_without_package, tmp_path):
    """Never a bare tokenizer: transformers refuses the folder's code and says how to allow it."""
    out = check(
        run_python(
            f"""
            from transformers import AutoModelForSeq2SeqLM, AutoProcessor
            for auto in (AutoProcessor, AutoModelForSeq2SeqLM):
                try:
                    loaded = auto.from_pretrained({str(run_folder)!r})
                except ValueError as err:
                    print(auto.__name__, "refused:", "trust_remote_code=True" in str(err))
                else:
                    print(auto.__name__, "returned", type(loaded).__name__)
            """,
            cwd=tmp_path,
            env={"HF_MODULES_CACHE": str(tmp_path / "modules")},
            python=python_without_package,
        )
    )
    # (transformers' "[y/N]" prompt, answered by EOF, precedes each line)
    found = re.findall(r"(Auto\w+) (refused: \w+|returned \w+)", out)
    assert found == [("AutoProcessor", "refused: True"), ("AutoModelForSeq2SeqLM", "refused: True")], out


# ---------------------------------------------------------------------------------------------------------------------
# The card, as published, and the standard pipeline


def test_card_snippets_run_verbatim_once_pushed(run_folder, tmp_path):
    """`push_to_hub.py --dry-run --run-snippets` runs the card's code as published: naming the repo, whose files are
    exactly the upload list (an offline Hub cache), in a fresh interpreter."""
    push = str(ROOT / "scripts" / "push_to_hub.py")
    done = run_python("", cwd=tmp_path, argv=[push, str(run_folder), REPO_ID, "--dry-run", "--run-snippets"])
    out = check(done)
    summary = json.loads(out[: out.rindex("}") + 1])
    assert len(summary["snippet_outputs"]) == 3 and summary["pipeline_tag"] == "image-text-to-text"
    readme = (run_folder / "README.md").read_text()
    assert f'model_id = "your-username/{run_folder.name}"' in readme  # the folder's card, before the push
    assert "your-username" not in "".join(summary["snippet_outputs"])


def test_standard_image_text_to_text_pipeline(run_folder, tmp_path):
    """The card's pipeline_tag works: `pipeline("image-text-to-text")` with images and a prompt, and a prompt alone."""
    out = check(
        run_python(
            f"""
            import json
            import processing
            from PIL import Image
            from transformers import pipeline
            pipe = pipeline("image-text-to-text", model={str(run_folder)!r})
            image = Image.new("RGB", (40, 30), "red")
            one = pipe(images=image, text="what does the image describe?", max_new_tokens=4, return_full_text=False)
            two = pipe(images=[image, image], text=["what color is it?", "a b"], max_new_tokens=4)
            alone = pipe(text="what does the image describe?", max_new_tokens=4, return_full_text=False)
            print(json.dumps([one, two, alone]))
            """,
            cwd=tmp_path,
        )
    )
    one, two, alone = json.loads(out.strip().splitlines()[-1])
    assert [r["input_text"] for r in one] == ["what does the image describe?"]
    assert [r["input_text"] for r in two] == ["what color is it?", "a b"]
    assert all(r["generated_text"].startswith(r["input_text"]) for r in two)  # full text by default, as for any model
    assert len(alone) == 1 and isinstance(alone[0]["generated_text"], str)


# ---------------------------------------------------------------------------------------------------------------------
# int8 and predict.py


def test_int8_model_saves_and_reloads_in_a_fresh_process(model_and_processor, tmp_path):
    model, processor = model_and_processor
    quantized = quantize_dynamic_int8(model)
    quantized.save_pretrained(tmp_path / "int8")
    batch = processor("caption", {"img": Image.new("RGB", (40, 30), "red"), "cap": "a red circle"})
    with torch.no_grad():
        np.save(tmp_path / "int8_logits.npy", quantized(**batch).logits.numpy())
    torch.save(dict(batch), tmp_path / "batch.pt")
    out = check(
        run_python(
            f"""
            import numpy as np, torch
            import modeling_ofa
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "int8")!r})
            print(type(model.lm_head).__module__)
            batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
            with torch.no_grad():
                logits = model(**batch).logits.numpy()
            np.testing.assert_allclose(logits, np.load({str(tmp_path / "int8_logits.npy")!r}), rtol=0, atol=1e-5)
            """,
            cwd=tmp_path,
        )
    )
    assert out.strip().splitlines()[-1] == "torch.ao.nn.quantized.dynamic.modules.linear"


def test_tasks_save_their_generation_defaults(run_folder, tmp_path):
    out = check(
        run_python(
            f"""
            import json
            import processing
            from transformers import AutoProcessor
            print(json.dumps(AutoProcessor.from_pretrained({str(run_folder)!r}).generation_defaults))
            """,
            cwd=tmp_path,
        )
    )
    defaults = json.loads(out.strip().splitlines()[-1])
    assert defaults["caption"]["num_beams"] == 3 and defaults["caption"]["max_new_tokens"] == 7
    assert defaults["vqa"]["num_beams"] == 1  # closed sets decode greedily (OFASys)


def predict(folder: Path, cwd: Path, *flags: str) -> dict:
    image = cwd / "red.png"
    Image.new("RGB", (40, 30), "red").save(image)
    command = [sys.executable, str(ROOT / "scripts" / "predict.py"), str(folder), "--task", "caption"]
    done = subprocess.run(
        [*command, "--image", str(image), *flags],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    return json.loads(check(done))


def test_predict_takes_generation_settings(run_folder, model_and_processor, tmp_path):
    model, processor = model_and_processor
    cached = predict(run_folder, tmp_path, "--num-beams", "2", "--max-new-tokens", "3")
    uncached = predict(run_folder, tmp_path, "--num-beams", "2", "--max-new-tokens", "3", "--no-cache")
    assert cached == uncached  # the key/value cache changes the speed, not the answer
    example = processor.encode("caption", {"img": Image.new("RGB", (40, 30), "red")}, with_targets=False)
    generated = model.generate(**processor.collate([example]), num_beams=2, max_new_tokens=3)
    assert [cached] == processor.post_process_generation(generated, "caption", [example["meta"]])


# ---------------------------------------------------------------------------------------------------------------------
# Your own metrics


def test_user_metrics_callables_evaluate_modules_and_compute_metrics(tmp_path):
    out = check(
        run_python(
            f"""
            import json
            import torch
            from PIL import Image
            from transformers import Seq2SeqTrainingArguments
            from modeling_ofa import OFAConfig, OFAForConditionalGeneration
            from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
            from trainers import MultiTaskTrainer, Task

            colors = ["red", "blue", "green"]
            rows = [{{"img": Image.new("RGB", (32, 32), c), "cap": f"a {{c}} circle", "q": "what color", "a": c}}
                    for c in colors * 2]
            tokenizer = train_demo_tokenizer([{WORDS!r}] * 20, vocab_size=300, num_codes=16, num_bins=50)
            processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer, max_image_size=32)
            torch.manual_seed(0)
            model = OFAForConditionalGeneration(OFAConfig.from_preset(
                "demo", vocab_size=len(tokenizer), encoder_layers=1, decoder_layers=1))

            def answer_words(predictions, references):  # a plain function: logged under its name
                return sum(len(p.split()) for p in predictions) / len(predictions)

            class Agreement:  # what evaluate.load(...) returns: a name and compute(predictions=, references=)
                name = "agreement"
                def compute(self, predictions, references):
                    return {{"agreement": float(sum(p == r for p, r in zip(predictions, references))), "n": 6,
                            "per_example": [p == r for p, r in zip(predictions, references)]}}

            tasks = [
                Task("caption", {TASKS["caption"]!r}, rows, rows, metrics=["exact_match", answer_words, Agreement()],
                     max_new_tokens=4),
                Task("vqa", {TASKS["vqa"]!r}.replace("question", "q").replace("answer", "a"), rows, rows,
                     metrics={{"first_letter": lambda p, r: float(sum(x[:1] == y[:1] for x, y in zip(p, r)))}}),
            ]
            args = Seq2SeqTrainingArguments({str(tmp_path / "run")!r}, max_steps=1, per_device_train_batch_size=2,
                                            report_to="none", use_cpu=True)
            trainer = MultiTaskTrainer(model=model, args=args, tasks=tasks, processor=processor,
                                       compute_metrics=lambda p: {{"references": len(p.label_ids)}})
            print(json.dumps(trainer.evaluate()))
            """,
            cwd=tmp_path,
        )
    )
    metrics = json.loads(out.strip().splitlines()[-1])
    for key in ("caption_exact_match", "caption_answer_words", "caption_agreement", "caption_agreement_n"):
        assert f"eval_{key}" in metrics, sorted(metrics)
    assert "eval_caption_agreement_per_example" not in metrics  # a list is not a score
    assert "eval_vqa_first_letter" in metrics and "eval_vqa_accuracy" not in metrics  # the mapping replaces defaults
    assert metrics["eval_caption_references"] == metrics["eval_vqa_references"] == 6


# ---------------------------------------------------------------------------------------------------------------------
# Per-task adapters under MultiTaskTrainer


ADAPTER_TRAINING = """
import json, sys
import torch
from PIL import Image
from transformers import Seq2SeqTrainingArguments, TrainerCallback
from modeling_ofa import OFAConfig, OFAForConditionalGeneration, TaskAdapters
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task

out = sys.argv[1]
colors = ["red", "blue", "green"]
rows = [{"img": Image.new("RGB", (32, 32), c), "cap": f"a {c} circle", "q": "what color", "a": c} for c in colors * 4]
tokenizer = train_demo_tokenizer(["a red blue green circle what does the image describe what color"] * 20,
                                 vocab_size=300, num_codes=16, num_bins=50)
processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer, max_image_size=32)
torch.manual_seed(0)
model = OFAForConditionalGeneration(OFAConfig.from_preset(
    "demo", vocab_size=len(tokenizer), encoder_layers=1, decoder_layers=1))
model.save_pretrained(f"{out}/base")
adapters = TaskAdapters(model, ["caption", "vqa"], r=4)
tasks = [
    Task("caption", "[IMAGE:img] what does the image describe? -> [TEXT:cap]", rows, rows, max_new_tokens=4),
    Task("vqa", "[IMAGE:img] [TEXT:q] -> [TEXT:a,closed_set]", rows),
]
base = {n: p.detach().clone() for n, p in adapters.model.named_parameters() if not p.requires_grad}

class MovedAdapters(TrainerCallback):  # which task's adapter each optimizer step changed
    def __init__(self):
        self.steps, self.before = [], None
    def snapshot(self):
        return {t: [p.detach().clone() for p in adapters.adapter_parameters(t).values()] for t in adapters.tasks}
    def on_step_begin(self, args, state, control, **kwargs):
        self.before = self.snapshot()
    def on_step_end(self, args, state, control, **kwargs):
        after = self.snapshot()
        changed = [t for t in after if any(not torch.equal(a, b) for a, b in zip(after[t], self.before[t]))]
        self.steps.append(sorted(changed))

moved = MovedAdapters()
args = Seq2SeqTrainingArguments(f"{out}/run", max_steps=6, per_device_train_batch_size=2, learning_rate=5e-3,
                                report_to="none", use_cpu=True, save_strategy="no", seed=1)
trainer = MultiTaskTrainer(model=adapters.model, args=args, tasks=tasks, processor=processor, sampling="uniform",
                           task_adapters=adapters, callbacks=[moved])
trainer.train()
base_moved = [n for n, p in adapters.model.named_parameters() if n in base and not torch.equal(p, base[n])]
adapters.save(f"{out}/adapters")
trainer.processing_class.save_pretrained(f"{out}/adapters")  # it carries the tasks
adapters.model.eval()
batch = trainer.processing_class("caption", {"img": Image.new("RGB", (32, 32), "red"), "cap": "a red circle"})
logits = {}
for task in adapters.tasks:
    adapters.activate(task)
    with torch.no_grad():
        logits[task] = adapters.model(**batch).logits.tolist()
json.dump({"steps": moved.steps, "base_moved": base_moved, "logits": logits}, open(f"{out}/trained.json", "w"))
"""

ADAPTER_RELOAD = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForSeq2SeqLM, AutoProcessor, pipeline
import modeling_ofa, processing
from modeling_ofa import TaskAdapters

out = sys.argv[1]
trained = json.load(open(f"{out}/trained.json"))
processor = AutoProcessor.from_pretrained(f"{out}/adapters")
adapters = TaskAdapters.load(AutoModelForSeq2SeqLM.from_pretrained(f"{out}/base"), f"{out}/adapters")
adapters.model.eval()
batch = processor("caption", {"img": Image.new("RGB", (32, 32), "red"), "cap": "a red circle"})
for task in ("caption", "vqa"):
    adapters.activate(task)  # switch at inference by task name
    with torch.no_grad():
        logits = adapters.model(**batch).logits.numpy()
    np.testing.assert_allclose(logits, np.array(trained["logits"][task]), rtol=0, atol=1e-5)
ofa = pipeline("ofa-instruction", model=adapters.model, processor=processor, task_adapters=adapters)
print(json.dumps([ofa({"img": Image.new("RGB", (32, 32), "red"), "q": "what color"}, instruction="vqa"),
                  adapters.active]))
"""


def test_task_adapters_train_per_batch_save_and_switch_by_task(tmp_path):
    """A user's training script, then a second process that reloads the adapters on the saved base model."""
    (tmp_path / "train.py").write_text(ADAPTER_TRAINING)
    (tmp_path / "reload.py").write_text(ADAPTER_RELOAD)
    check(run_python("", cwd=tmp_path, argv=["train.py", str(tmp_path)]))
    trained = json.loads((tmp_path / "trained.json").read_text())
    assert all(len(step) == 1 for step in trained["steps"]), trained["steps"]  # one task's adapter per step
    assert {task for step in trained["steps"] for task in step} == {"caption", "vqa"}  # every task's adapter trains
    assert trained["base_moved"] == []
    assert not np.allclose(trained["logits"]["caption"], trained["logits"]["vqa"])
    out = check(run_python("", cwd=tmp_path, argv=["reload.py", str(tmp_path)]))
    answer, active = json.loads(out.strip().splitlines()[-1])
    assert answer["label"] in {"red", "blue", "green"} and active == "vqa"


# ---------------------------------------------------------------------------------------------------------------------
# datasets: Audio() columns and streaming, with the default settings

DATASETS_TRAINING = """
import io, json, sys, wave
import datasets
import numpy as np
import torch
from PIL import Image
from transformers import Seq2SeqTrainingArguments
from modeling_ofa import OFAConfig, OFAForConditionalGeneration
from processing import OFAImageProcessor, OFAProcessor, train_demo_tokenizer
from trainers import MultiTaskTrainer, Task

out = sys.argv[1]
paths = []
for i, tone in enumerate((440.0, 880.0, 660.0)):  # PCM WAV files, as a user's recordings
    samples = (0.3 * np.sin(2 * np.pi * tone * np.arange(8000) / 8000) * 32767).astype(np.int16)
    path = f"{out}/clip{i}.wav"
    with wave.open(path, "wb") as f:
        f.setnchannels(1); f.setsampwidth(2); f.setframerate(8000); f.writeframes(samples.tobytes())
    paths.append(path)
words = ["low", "high", "middle"]
speech = datasets.Dataset.from_dict({"audio": paths * 2, "text": words * 2}).cast_column("audio", datasets.Audio())
undecoded = datasets.Dataset.from_dict({"audio": paths, "text": words}).cast_column(
    "audio", datasets.Audio(decode=False))
colors = ["red", "blue", "green"]
images = datasets.Dataset.from_list(
    [{"img": Image.new("RGB", (32, 32), c), "cap": f"a {c} circle"} for c in colors * 2]
).to_iterable_dataset()  # streaming

tokenizer = train_demo_tokenizer(["a red blue green circle what does the image describe low high middle"] * 20,
                                 vocab_size=300, num_codes=16, num_bins=50)
processor = OFAProcessor(OFAImageProcessor(size=32), tokenizer, max_image_size=32)
torch.manual_seed(0)
model = OFAForConditionalGeneration(OFAConfig.from_preset(
    "demo", vocab_size=len(tokenizer), encoder_layers=1, decoder_layers=1))
tasks = [
    Task("asr", "[AUDIO:audio] what is the text corresponding to the voice? -> [TEXT:text]", speech, undecoded,
         metrics=["wer"], max_new_tokens=3),
    Task("caption", "[IMAGE:img] what does the image describe? -> [TEXT:cap]", images),
]
args = Seq2SeqTrainingArguments(f"{out}/run", max_steps=4, per_device_train_batch_size=2, report_to="none",
                                use_cpu=True, save_strategy="no")
trainer = MultiTaskTrainer(model=model, args=args, tasks=tasks, processor=processor)  # default sampling
result = trainer.train()
metrics = trainer.evaluate()
print(json.dumps({"sampling": trainer.sampling, "loss": result.training_loss, "wer": metrics["eval_asr_wer"]}))
"""


def test_audio_columns_and_streaming_train_with_the_defaults(tmp_path):
    """An `Audio()` column (which datasets decodes with torchcodec, not installed here), `Audio(decode=False)` bytes,
    and a streaming task, trained with MultiTaskTrainer's default settings."""
    (tmp_path / "train.py").write_text(DATASETS_TRAINING)
    done = run_python("", cwd=tmp_path, argv=["train.py", str(tmp_path)])
    out = check(done)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["sampling"] == "uniform" and np.isfinite(result["loss"]) and result["wer"] >= 0
    assert "'caption'] stream" in done.stderr  # the adapted default is said, with the reason
