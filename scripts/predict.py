"""Ask a trained OFA folder one question: an instruction (or a saved task name) plus its inputs.

    python scripts/predict.py outputs/demo --task caption --image shapes.png
    python scripts/predict.py outputs/demo --task grounding --image shapes.png --text "red circle" --save-png box.png
    python scripts/predict.py outputs/demo --instruction "[AUDIO:audio] what is the text corresponding to the voice? \
        -> [TEXT:text]" --audio digits.wav

Generation: `--num-beams`, `--max-new-tokens` and `--no-cache` (no key/value cache); unset, a saved task's own settings
apply (`processor.generation_defaults`, saved by training).

Inputs fill the instruction's encoder slots by modality (`--image`, `--audio`, `--video`, `--motion`, `--table`,
`--text`), or by column with `--input column=value` (a value that names an existing file is read as a file). Prints
the typed answer as JSON; boxes are drawn onto a PNG (`--save-png`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import pipeline

import modeling_ofa  # noqa: F401  (registers OFA with the Auto classes)
from processing.inputs import draw_answer, load_slot_value

MODALITY_FLAGS = {"image": "IMAGE", "audio": "AUDIO", "video": "VIDEO", "motion": "MOTION", "table": "STRUCT"}


def build_row(plan, args: argparse.Namespace) -> dict:
    """Fill the encoder slots of the plan's first template from the command line."""
    template = plan.templates[0]
    row = {}
    for item in args.input:
        column, _, value = item.partition("=")
        row[column] = value
    texts = list(args.text)
    for slot in template.data_slots:
        if not slot.is_source or slot.column in row:
            continue
        flag = next((f for f, m in MODALITY_FLAGS.items() if m == slot.modality), None)
        if flag is not None and getattr(args, flag) is not None:
            row[slot.column] = load_slot_value(slot.modality, getattr(args, flag))
        elif slot.modality in ("TEXT", "CATEGORY", "PHONE") and texts:
            row[slot.column] = texts.pop(0)
        else:
            sys.exit(f"no input for the {slot.modality} slot {slot.column!r}; give it with --input {slot.column}=...")
    for slot in template.data_slots:  # --input values naming files are read as files
        value = row.get(slot.column)
        if slot.is_source and slot.modality in MODALITY_FLAGS.values() and isinstance(value, str):
            if Path(value).exists():
                row[slot.column] = load_slot_value(slot.modality, value)
    return row


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, answer the instruction and print the answer as JSON.

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a folder written by scripts/train.py (or any OFA model + processor)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="a task saved in the processor (see its task_instructions)")
    what.add_argument("--instruction", help="an OFASys instruction, e.g. '[IMAGE:img] what ...? -> [TEXT:cap]'")
    for flag, modality in MODALITY_FLAGS.items():
        parser.add_argument(f"--{flag}", help=f"file for the {modality} slot")
    parser.add_argument("--text", action="append", default=[], help="value of the next TEXT slot (repeatable)")
    parser.add_argument("--input", action="append", default=[], help="column=value for any slot (repeatable)")
    parser.add_argument("--candidates", nargs="+", help="closed set of answers (default: the task's saved one)")
    parser.add_argument("--num-beams", type=int, help="beam width (default: the task's saved setting, else greedy)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the task's setting)")
    parser.add_argument("--no-cache", action="store_true", help="generate without the key/value cache (slower)")
    parser.add_argument("--save-png", help="draw predicted boxes onto the image and save it here")
    args = parser.parse_args(argv)

    ofa = pipeline("ofa-instruction", model=args.model_dir)
    instruction = args.instruction or args.task
    plan = ofa.processor.plan(instruction)
    row = build_row(plan, args)
    # Only what was given: the rest comes from the task's saved generation defaults (processor_config.json).
    generate = {
        key: value
        for key, value in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens))
        if value is not None
    }
    if args.no_cache:
        generate["use_cache"] = False
    answer = ofa(row, instruction=instruction, candidates=args.candidates, **generate)
    print(json.dumps(answer, indent=2))
    if args.save_png and ("box" in answer or "objects" in answer):
        image_column = next(s.column for s in plan.templates[0].data_slots if s.modality == "IMAGE")
        draw_answer(row[image_column], answer).save(args.save_png)
        print(f"boxes drawn on {args.save_png}", file=sys.stderr)


if __name__ == "__main__":
    main()
