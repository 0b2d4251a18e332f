"""A training run from one config (YAML or JSON): data, tokenizer, processor, model, tasks, training, a Hub folder.

`scripts/train.py` is a thin command line over `run(load_config(path, overrides))`. Config sections:

```yaml
output_dir: outputs/demo
seed: 0
data: {demo: {root: demo_data, seed: 0, scale: 1.0}}    # generated offline by processing.demo_data
tokenizer: {demo: {vocab_size: 1000, num_codes: 16, num_bins: 256}}    # or {path: folder}
processor: {image_size: 64, max_image_size: 64, video_num_frames: 4, motion_config: {num_coords: 2, num_joints: 6}}
model: {preset: demo, overrides: {}}                    # or {checkpoint: folder}, plus upcycling moe_* overrides
sampling: {strategy: temperature, temperature: 2.0}      # MultiTaskTrainer sampling, temperature, mode
tasks:                                                  # default for the demo: every demo task
  - {name: caption, data: demo}                         # or {name, instruction, data: {path: folder saved by datasets}}
training: {max_steps: 1200, per_device_train_batch_size: 16, learning_rate: 1.0e-3}   # Seq2SeqTrainingArguments
```

A task entry takes the `Task` arguments (`instruction`, `weight`, `metrics`, `batch_size`, `candidates`, `num_beams`,
`max_new_tokens`, `column_mapping`); `data: demo` takes its rows, instruction and metric from the demo corpus, and
`data: {path: ...}` loads a `DatasetDict` saved with `save_to_disk` (splits `train`, `validation`, `test`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import TaskResult, bootstrap_interval, plot_curves, results_markdown, results_table

__all__ = ["load_config", "run", "set_override"]


def set_override(config: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` to a nested config; the value is parsed as JSON when it can be (numbers, lists, true)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"override {assignment!r} must look like section.key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {part!r} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML/JSON config (None: the bundled demo config) and apply `key=value` overrides."""
    if path is None:
        path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(text) or {}
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config is a mapping of sections, got {type(config).__name__}")
    unknown = set(config) - {"output_dir", "seed", "data", "tokenizer", "processor", "model", "sampling", "tasks"}
    unknown -= {"training", "evaluation", "hub"}
    if unknown:
        raise ValueError(f"{path}: unknown config sections {sorted(unknown)}")
    for assignment in overrides:
        set_override(config, assignment)
    return config


def _log(message: str) -> None:
    print(f"[ofa-hf] {message}", flush=True)


def _demo_datasets(config: dict[str, Any]) -> dict[str, Any]:
    from processing.demo_data import save_demo_datasets

    demo = dict((config.get("data") or {}).get("demo") or {})
    root = demo.pop("root", "demo_data")
    return save_demo_datasets(root, **demo)


def _tokenizer(config: dict[str, Any], corpus) -> Any:
    section = config.get("tokenizer") or {}
    if "path" in section:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(section["path"])
    from processing import train_demo_tokenizer

    return train_demo_tokenizer(corpus(), **(section.get("demo") or {}))


def _tasks(config: dict[str, Any], demo: dict[str, Any] | None) -> list[tuple[Any, Any, Any]]:
    """(Task, test split, chance baseline) per configured task."""
    from processing import parse_instruction
    from processing.demo_data import DEMO_TASKS, chance_baseline, get_demo_task

    from .task import Task

    entries = config.get("tasks") or [{"name": task.name, "data": "demo"} for task in DEMO_TASKS]
    built = []
    for entry in entries:
        entry = dict(entry)
        name, data = entry.pop("name"), entry.pop("data", "demo")
        chance = None
        if data == "demo":
            if demo is None:
                raise ValueError(f"task {name!r} reads demo data but the config has no data.demo section")
            spec = get_demo_task(name)
            splits = demo[name]
            entry.setdefault("instruction", spec.instruction)
            entry.setdefault("metrics", [spec.metric])
            target = parse_instruction(entry["instruction"]).templates[0].target_slot
            if spec.labels and getattr(target, "closed_set", False):
                entry.setdefault("candidates", list(spec.labels))
            chance = chance_baseline(spec, splits["test"])
        elif isinstance(data, Mapping) and "path" in data:
            from datasets import load_from_disk

            splits = load_from_disk(data["path"])
        else:
            raise ValueError(f"task {name!r}: data must be 'demo' or {{path: folder}}, got {data!r}")
        instruction = entry.pop("instruction")
        task = Task(name, instruction, splits["train"], splits.get("validation"), **entry)
        built.append((task, splits.get("test"), chance))
    return built


def _test_results(trainer: Any, built: Sequence[tuple[Any, Any, Any]]) -> list[TaskResult]:
    """Every task's metrics on its test split (as `MultiTaskTrainer.predict` scores them) with their bootstrap
    intervals over the test examples, beside the chance baseline (NaN when unknown)."""
    from .metrics import METRICS

    results = []
    for task, test, chance in built:
        if test is None:
            continue
        output = trainer.predict(task.name, test)
        predictions, references = task.scored_pairs(output.predictions, output.label_ids)
        baseline = chance if chance is not None else math.nan
        for metric in task.metrics:
            spec = METRICS[metric]
            low, high = bootstrap_interval(spec.fn, predictions, references)  # NaN without references
            value = output.metrics[f"test_{task.name}_{metric}"]
            results.append(
                TaskResult(task.name, metric, value, baseline, spec.higher_is_better, task.instruction, low, high)
            )
    return results


def run(config: dict[str, Any]) -> list[TaskResult]:
    """Run a config end to end; returns the per-task test results (also written into the output folder)."""
    from transformers import Seq2SeqTrainingArguments, set_seed

    import modeling_ofa
    import processing
    from processing.demo_data import demo_text_corpus

    from .hub import save_hub_folder
    from .trainer import MultiTaskTrainer

    started = time.perf_counter()
    config = copy.deepcopy(config)
    output_dir = Path(config.get("output_dir", "outputs/demo"))
    seed = int(config.get("seed", 0))
    set_seed(seed)

    demo = _demo_datasets(config) if (config.get("data") or {}).get("demo") is not None else None
    _log(f"data ready ({time.perf_counter() - started:.0f}s)")
    tokenizer = _tokenizer(config, lambda: demo_text_corpus(demo))
    p = dict(config.get("processor") or {})
    image_processor = processing.OFAImageProcessor(size=p.pop("image_size", 384))
    processor = processing.OFAProcessor(image_processor, tokenizer, **p)

    m = dict(config.get("model") or {})
    overrides = dict(m.get("overrides") or {})
    if "checkpoint" in m:
        model = modeling_ofa.OFAForConditionalGeneration.from_pretrained(m["checkpoint"], **overrides)
    else:
        if processor.motion.feature_size:
            overrides.setdefault("motion_feature_size", processor.motion.feature_size)
        model_config = modeling_ofa.OFAConfig.from_preset(
            m.get("preset", "demo"), vocab_size=len(tokenizer), **overrides
        )
        model = modeling_ofa.OFAForConditionalGeneration(model_config)
    _log(f"model: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters, tokenizer: {len(tokenizer)}")

    built = _tasks(config, demo)
    tasks = [task for task, _, _ in built]
    training = {"output_dir": str(output_dir / "checkpoints"), "report_to": "none", "seed": seed}
    training.update(config.get("training") or {})
    args = Seq2SeqTrainingArguments(**training)
    sampling = dict(config.get("sampling") or {})
    trainer = MultiTaskTrainer(
        model=model,
        args=args,
        tasks=tasks,
        processor=processor,
        sampling=sampling.get("strategy"),
        temperature=float(sampling.get("temperature", 1.0)),
        mode=sampling.get("mode"),
    )
    resume = MultiTaskTrainer.last_complete_checkpoint(args.output_dir)
    if resume:
        _log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    _log(f"trained ({time.perf_counter() - started:.0f}s); evaluating every task on its test split")

    results = _test_results(trainer, built)
    print(results_table(results), flush=True)
    int8 = None
    if (config.get("evaluation") or {}).get("int8"):
        # The int8 accuracy check: the same test splits with dynamically quantized linear layers.
        quantized = modeling_ofa.quantize_dynamic_int8(trainer.model.cpu())
        int8_trainer = MultiTaskTrainer(model=quantized, args=args, tasks=tasks, processor=processor)
        int8 = _test_results(int8_trainer, built)
        print("int8 (dynamic quantization of the linear layers):\n" + results_table(int8), flush=True)

    final = output_dir
    description = (
        "An OFA+ model trained offline by `ofa-hf` on its multi-task demo corpus. Test-split metrics beside the "
        "chance-level score of the same metric (a constant answer or a fixed box):\n\n" + results_markdown(results)
    )
    save_hub_folder(
        trainer.model,
        processor,
        final,
        results={r.task: {r.metric: r.value} for r in results},
        model_name=final.name,
        description=description,
    )
    rows = [r.__dict__ | {"beats_chance": r.beats_chance} for r in results]
    if int8 is not None:
        for row, quantized in zip(rows, int8):
            row["int8_value"] = quantized.value
    (final / "results.json").write_text(json.dumps(rows, indent=2))
    (final / "results.md").write_text(results_markdown(results) + "\n")
    plot_curves(trainer.state.log_history, final / "curves.png", [t.name for t in tasks])
    _log(f"done in {time.perf_counter() - started:.0f}s; Hub-ready folder: {final}")
    return results
