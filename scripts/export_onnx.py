"""Export an OFA model folder to ONNX (encoders, first decoder call, decoder with past) and check it.

Example:
    python scripts/export_onnx.py ./ofa-demo ./ofa-demo-onnx --encoders text image --validate
    python scripts/export_onnx.py ./ofa-demo ./ofa-demo-onnx --int8-dir ./ofa-demo-onnx-int8 --validate
    python scripts/export_onnx.py ./ofa-demo ./ofa-demo-onnx --demo-data ./demo_data --demo-examples 32

The output folder holds `encoder_<variant>.onnx`, `decoder.onnx`, `decoder_with_past.onnx`, `onnx_manifest.json`,
the model's `config.json` and the folder's processor/tokenizer files; `modeling_ofa.onnx.OnnxOFA` runs it.
`--validate` compares every encoder variant with PyTorch on random inputs of other sizes than the export samples
and prints one JSON object: max abs differences (encoder, logits of each decoder call) and greedy-id equality; with
`--int8-dir`, also the greedy agreement of the int8 graphs.

`--demo-data DIR` checks the export on real inputs: every task of the demo corpus at DIR (`trainers.demo`)
whose instruction the folder's processor carries is encoded with that processor (`--demo-examples` test rows per
task, grouped and constrained by the answer path `processing.answers.AnswerGenerator` as evaluation is: rows of one
template and decoder prefix length together, no labels, the start token and any forced prefix as `decoder_input_ids`).
PyTorch greedy `generate(num_beams=1)` and `OnnxOFA.generate` then decode with the same length budget and, for
closed-set tasks, the same closed-set constraint. Per task the JSON's `demo_tasks` holds `sequence_match` and
`token_agreement` (`greedy_agreement`) and the max abs differences of the first batch (`validate_onnx`: encoder
and every decoder call, teacher-forced on the unconstrained PyTorch greedy tokens). Without `--encoders`, every
encoder variant the demo tasks need is exported; a variant the model cannot export, or that `--encoders` left out,
is reported on the tasks that need it (they fail).

`passed` requires every check to hold (greedy equality and max abs difference below 1e-4 for `--validate`;
`sequence_match == 1.0` and max abs difference below 1e-4 for every demo task). The exit status is 1 when a check
fails. The export logic lives in `modeling_ofa.onnx`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from modeling_ofa import OFAForConditionalGeneration
from modeling_ofa.onnx import (
    DEFAULT_OPSET,
    ENCODER_INPUTS,
    OFAOnnxEncoder,
    OnnxOFA,
    encoder_variant,
    export_onnx,
    quantize_onnx_int8,
    sample_encoder_inputs,
    validate_onnx,
)
from modeling_ofa.quantization import greedy_agreement
from processing import OFAProcessor, Slot
from processing.answers import AnswerGenerator

__all__ = [
    "DemoBatchGroup",
    "DemoTaskInputs",
    "batch_encoder_variant",
    "compare_demo_tasks",
    "copy_processor_files",
    "demo_encoder_variants",
    "exportable_variants",
    "main",
    "prepare_demo_tasks",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
TOLERANCE = 1e-4  # fp32 max abs difference accepted by --validate and --demo-data
DEFAULT_ENCODERS = ("text", "image")
DEMO_BATCH_SIZE = 8
DEMO_MAX_NEW_TOKENS = 32  # the free-text budget of evaluation (`trainers.task.GENERATION_DEFAULTS`)


def copy_processor_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy the model folder's non-weight files that the export did not write (tokenizer, processor configs)."""
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


# ----------------------------------------------------------------------------------------------------------------
# Demo tasks: encoding, encoder variants, comparison
# ----------------------------------------------------------------------------------------------------------------


def batch_encoder_variant(batch: Mapping[str, Any]) -> str:
    """The encoder variant (`"text"`, `"image"`, `"audio"`, ...) a model batch needs, from its keys.

    A modality counts when its first input (`pixel_values`, `audio_features`, ...) is in the batch; text-like inputs
    (TEXT, STRUCT tables, BOX and PHONE tokens) are all `input_ids`, so they need no variant of their own.
    """
    return encoder_variant([m for m, names in ENCODER_INPUTS.items() if m != "text" and names[0] in batch])


def exportable_variants(
    model: OFAForConditionalGeneration, variants: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Split encoder variants into those the model can export and those it cannot (with the reason).

    Args:
        model (`OFAForConditionalGeneration`): The model to export.
        variants (`Sequence[str]`): Encoder variant names.

    Returns:
        `(exportable, refused)`: the exportable variants in the given order, and `{variant: reason}` for the others
        (e.g. an audio variant of a model without `"AUDIO"` in `config.extra_modalities`).
    """
    exportable, refused = [], {}
    for variant in variants:
        try:
            OFAOnnxEncoder(model, variant)  # checks the config; cheap (the wrapper shares the model's modules)
        except ValueError as err:
            refused[variant] = str(err)
        else:
            exportable.append(variant)
    return exportable, refused


@dataclass
class DemoBatchGroup:
    """Generation batches of one task that share a decoder prefix length and a template (so one logits processor).

    Args:
        prefix_length (`int`): Forced decoder tokens after the start token.
        template_index (`int`): The instruction template of these rows.
        max_new_tokens (`int`): Greedy steps: the longest closed-set answer and its `</s>`, else the free budget.
        logits_processor (`LogitsProcessorList`, *optional*): The closed-set constraint, or `None`.
        batches (`list[dict]`): Model inputs (torch tensors), without labels.
    """

    prefix_length: int
    template_index: int
    max_new_tokens: int
    logits_processor: LogitsProcessorList | None
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class DemoTaskInputs:
    """One demo task, encoded for the comparison.

    Args:
        name (`str`): The task name (as in the processor's `task_instructions`).
        instruction (`str`): Its instruction.
        examples (`int`): Test rows encoded.
        closed_set (`bool`): Whether generation is constrained to the task's closed set.
        variant (`str`, *optional*): The encoder variant its batches need (`None` when nothing was encoded).
        groups (`list[DemoBatchGroup]`): The batches, by prefix length and template.
        error (`str`, *optional*): Why the task cannot be compared (e.g. no rows in the corpus).
    """

    name: str
    instruction: str
    examples: int = 0
    closed_set: bool = False
    variant: str | None = None
    groups: list[DemoBatchGroup] = field(default_factory=list)
    error: str | None = None


def prepare_demo_tasks(
    processor: OFAProcessor,
    data_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    num_examples: int = 16,
    batch_size: int = DEMO_BATCH_SIZE,
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
) -> list[DemoTaskInputs]:
    """Encode the first `num_examples` test rows of every demo task the processor knows into generation batches.

    Rows are encoded without targets (`split="test"`), so each example's `decoder_input_ids` is the start token plus
    the instruction's forced decoder prefix, as evaluation generates from; rows of one prefix length and template
    share batches. Closed-set tasks get `processor.closed_set_logits_processor` over the processor's saved closed
    set.

    Args:
        processor (`OFAProcessor`): The trained folder's processor (its `task_instructions` select the tasks).
        data_dir (`str` or `Path`): A demo corpus written by `trainers.demo.save_demo_datasets`.
        tasks (`Sequence[str]`, *optional*): Task names to run (default: every demo task the processor carries).
        num_examples (`int`): Test rows per task.
        batch_size (`int`): Rows per batch.
        max_new_tokens (`int`): Greedy steps of open-ended tasks.

    Returns:
        One `DemoTaskInputs` per task, in the demo's task order; a task without test rows carries an `error`.
    """
    from trainers.demo import DEMO_TASKS, load_demo_datasets  # needs `datasets` (the training extra)

    sizes = {"num_examples": num_examples, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    for label, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    # A demo task runs when the processor carries its instruction (under any name).
    known = {instruction: name for name, instruction in processor.task_instructions.items()}
    available = {known[t.instruction]: t for t in DEMO_TASKS if t.instruction in known}
    if not available:
        raise ValueError(
            f"the processor carries none of the demo instructions (its tasks: {sorted(processor.task_instructions)}); "
            "--demo-data needs a folder trained on the demo corpus"
        )
    if tasks is not None:
        unknown = [name for name in tasks if name not in available]
        if unknown:
            raise ValueError(f"demo tasks {unknown} are not demo tasks of this processor; it has {sorted(available)}")
    selected = [name for name in available if tasks is None or name in tasks]
    corpus = load_demo_datasets(data_dir)
    prepared = []
    for name in selected:
        spec = available[name]
        plan = processor.plan(spec.instruction)
        closed = any(isinstance(t.target_slot, Slot) and t.target_slot.closed_set for t in plan.templates)
        entry = DemoTaskInputs(name=name, instruction=spec.instruction, closed_set=closed)
        prepared.append(entry)
        candidates = processor.closed_sets.get(name, []) if closed else []
        if closed and not candidates:
            entry.error = f"the target is closed_set but the processor saved no closed set for {name!r}"
            continue
        split = corpus[spec.name].get("test") if spec.name in corpus else None
        if split is None or len(split) == 0:
            entry.error = f"the demo corpus at {data_dir} has no test rows for {spec.name!r}"
            continue
        rows = split.select(range(min(num_examples, len(split))))
        # The answer path's grouping and constraint, as evaluation generates: a closed set's longest answer (with its
        # </s>) bounds the steps, the free budget bounds the others.
        answers = AnswerGenerator(
            processor, plan, task=name, candidates=candidates or None, template=None, batch_size=batch_size,
            generate_kwargs={} if closed else {"max_new_tokens": max_new_tokens},
        )  # fmt: skip
        examples = answers.encode(rows, split="test")
        entry.examples = len(rows)
        for group in answers.groups(examples):
            kwargs = answers.call_kwargs(group)
            demo_group = DemoBatchGroup(
                group.prefix_length, group.template_index, kwargs["max_new_tokens"], kwargs.get("logits_processor")
            )
            for start in range(0, len(group.positions), batch_size):
                chunk = [examples[p] for p in group.positions[start : start + batch_size]]
                demo_group.batches.append(dict(processor.collate(chunk)))
            entry.groups.append(demo_group)
        variants = {batch_encoder_variant(b) for g in entry.groups for b in g.batches}
        if len(variants) > 1:  # the demo's tasks have one input signature each; a mixture would need every variant
            entry.error = f"batches of {name!r} need different encoder variants {sorted(variants)}"
        entry.variant = variants.pop()
    return prepared


def demo_encoder_variants(tasks: Sequence[DemoTaskInputs]) -> list[str]:
    """The encoder variants the tasks' batches need, in `ENCODER_INPUTS` order of their first modality."""
    order = list(ENCODER_INPUTS)
    variants = {task.variant for task in tasks if task.variant is not None}
    return sorted(variants, key=lambda v: ([order.index(m) for m in v.split("+")], v))


def compare_demo_tasks(
    model: OFAForConditionalGeneration,
    runner: OnnxOFA,
    tasks: Sequence[DemoTaskInputs],
    *,
    tolerance: float = TOLERANCE,
    refused: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Greedy generation of PyTorch and ONNX on every demo task's batches, and logits differences on its first batch.

    Args:
        model (`OFAForConditionalGeneration`): The exported model.
        runner (`OnnxOFA`): The exported folder.
        tasks (`Sequence[DemoTaskInputs]`): From `prepare_demo_tasks`.
        tolerance (`float`): Max abs difference a task may show.
        refused (`Mapping[str, str]`, *optional*): Variants that could not be exported, with the reason (reported
            on the tasks that need them).

    Returns:
        `{task: result}`. A result has `variant`, `examples`, `batches`, `closed_set`, `max_new_tokens`,
        `sequence_match`, `token_agreement` (generated positions after the start token and prefix, both sequences'
        padding excluded; over several prefix/template groups, the mean weighted by sequences), the first batch's
        `encoder_max_abs_diff`, `logits_max_abs_diff` (over decoder calls) and `max_abs_diff`, `seconds`, and
        `passed` (`sequence_match == 1.0` and `max_abs_diff < tolerance`); or `error` and `passed: False`.
    """
    refused = dict(refused or {})
    pad = runner.manifest["generation"]["pad_token_id"]
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        result: dict[str, Any] = {"variant": task.variant, "examples": task.examples, "closed_set": task.closed_set}
        results[task.name] = result
        error = task.error
        if error is None and task.variant not in runner.encoder_variants:
            reason = refused.get(task.variant, f"the export has only {runner.encoder_variants} (see --encoders)")
            error = f"needs the encoder variant {task.variant!r}, which was not exported: {reason}"
        if error is not None:
            result.update(error=error, passed=False)
            continue
        start = time.perf_counter()
        sequences = matches = agreement = 0.0
        for group in task.groups:
            kwargs: dict[str, Any] = {"max_new_tokens": group.max_new_tokens, "pad_token_id": pad}
            if group.logits_processor is not None:
                kwargs["logits_processor"] = group.logits_processor
            scores = greedy_agreement(model, runner, group.batches, **kwargs)
            sequences += scores["sequences"]
            matches += scores["sequence_match"] * scores["sequences"]
            agreement += scores["token_agreement"] * scores["sequences"]
        first = task.groups[0]
        check = validate_onnx(model, runner, first.batches[0], max_new_tokens=first.max_new_tokens)
        result.update(
            batches=sum(len(g.batches) for g in task.groups),
            max_new_tokens=max(g.max_new_tokens for g in task.groups),
            sequence_match=matches / sequences,
            token_agreement=agreement / sequences,
            encoder_max_abs_diff=check.encoder_max_abs_diff,
            logits_max_abs_diff=max(check.logits_max_abs_diff, default=0.0),
            max_abs_diff=check.max_abs_diff,
            seconds=round(time.perf_counter() - start, 2),
        )
        result["passed"] = result["sequence_match"] == 1.0 and result["max_abs_diff"] < tolerance
    return results


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _random_checks(
    model: OFAForConditionalGeneration,
    runner: OnnxOFA,
    int8_runner: OnnxOFA | None,
    manifest: Mapping[str, Any],
    args: argparse.Namespace,
) -> tuple[bool, dict[str, Any]]:
    ok, checks = True, {}
    # Other batch size, text length, image side (one patch row less) and sequence lengths than the export samples.
    export_side = args.image_size or 16 * min(model.config.image_bucket_size, 4)
    side = max(export_side - 16, 16)
    for variant in manifest["encoders"]:
        inputs = sample_encoder_inputs(
            model.config,
            encoder_variant(variant),
            batch_size=3,
            text_length=11,
            image_size=side,
            num_frames=3,
            sequence_length=17,
        )
        result = validate_onnx(model, runner, inputs, max_new_tokens=args.max_new_tokens)
        check = {
            "encoder_max_abs_diff": result.encoder_max_abs_diff,
            "logits_max_abs_diff": max(result.logits_max_abs_diff),
            "decoder_calls": len(result.logits_max_abs_diff),
            "greedy_equal": result.greedy_equal,
        }
        ok &= result.greedy_equal and result.max_abs_diff < TOLERANCE
        if int8_runner is not None:
            pad = manifest["generation"]["pad_token_id"]
            check["int8_greedy_agreement"] = greedy_agreement(
                model, int8_runner, [inputs], max_new_tokens=args.max_new_tokens, pad_token_id=pad
            )
        checks[variant] = check
    return ok, checks


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, export, optionally quantize, validate and compare on the demo tasks.

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 1 when `--validate` or `--demo-data` finds a difference above tolerance, unequal
        greedy ids or a demo task that could not be compared.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="folder that OFAForConditionalGeneration.from_pretrained loads")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument(
        "--encoders",
        nargs="+",
        help="encoder variants: text, image, image+audio, ... (default: text image, or what the demo tasks need)",
    )
    parser.add_argument("--image-size", type=int, help="image side of the export samples (any size runs later)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--text-only-decoder", action="store_true", help="decoder graphs without code_masks (no image-code targets)"
    )
    parser.add_argument("--int8-dir", help="also write onnxruntime dynamic-int8 graphs to this folder")
    parser.add_argument("--validate", action="store_true", help="compare with PyTorch and print the differences")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="greedy steps compared by --validate")
    parser.add_argument("--demo-data", help="demo corpus folder: compare PyTorch and ONNX on its test rows")
    parser.add_argument("--demo-examples", type=int, default=16, help="test rows per demo task")
    parser.add_argument("--demo-tasks", nargs="+", help="demo tasks to compare (default: all the processor carries)")
    parser.add_argument("--demo-batch-size", type=int, default=DEMO_BATCH_SIZE, help="rows per demo batch")
    parser.add_argument(
        "--demo-max-new-tokens",
        type=int,
        default=DEMO_MAX_NEW_TOKENS,
        help="greedy steps of open-ended demo tasks (closed-set tasks: their longest answer)",
    )
    args = parser.parse_args(argv)

    model_dir, out_dir = Path(args.model_dir), Path(args.out_dir)
    model = OFAForConditionalGeneration.from_pretrained(model_dir).eval()
    demo_tasks: list[DemoTaskInputs] = []
    refused: dict[str, str] = {}
    encoders = list(args.encoders or DEFAULT_ENCODERS)
    if args.demo_data:
        demo_tasks = prepare_demo_tasks(
            OFAProcessor.from_pretrained(model_dir),
            args.demo_data,
            tasks=args.demo_tasks,
            num_examples=args.demo_examples,
            batch_size=args.demo_batch_size,
            max_new_tokens=args.demo_max_new_tokens,
        )
        if args.encoders is None:
            encoders, refused = exportable_variants(model, demo_encoder_variants(demo_tasks))
            if refused:
                print(f"cannot export the encoder variants {refused} that demo tasks need", file=sys.stderr)
            if not encoders:
                raise ValueError(f"none of the encoder variants the demo tasks need can be exported: {refused}")
    manifest = export_onnx(
        model,
        out_dir,
        encoders=encoders,
        with_code_masks=not args.text_only_decoder,
        image_size=args.image_size,
        opset=args.opset,
    )
    copied = copy_processor_files(model_dir, out_dir)
    if args.int8_dir:
        quantize_onnx_int8(out_dir, args.int8_dir)
        copy_processor_files(model_dir, Path(args.int8_dir))
    report: dict[str, Any] = {"out_dir": str(out_dir), "graphs": sorted(p.name for p in out_dir.glob("*.onnx"))}
    report["copied"] = copied
    if not args.validate and not args.demo_data:
        print(json.dumps(report, indent=2))
        return 0

    runner = OnnxOFA(out_dir)
    ok = True
    if args.validate:
        int8_runner = OnnxOFA(args.int8_dir) if args.int8_dir else None
        passed, report["validation"] = _random_checks(model, runner, int8_runner, manifest, args)
        ok &= passed
    if args.demo_data:
        if refused:
            report["demo_unexportable"] = refused
        report["demo_tasks"] = compare_demo_tasks(model, runner, demo_tasks, tolerance=TOLERANCE, refused=refused)
        ok &= all(result["passed"] for result in report["demo_tasks"].values())
    report.update(tolerance=TOLERANCE, passed=ok)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
