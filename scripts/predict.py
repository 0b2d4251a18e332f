"""Ask a trained OFA folder one question: an instruction (or a saved task name) plus its inputs.

    python scripts/predict.py outputs/demo --task caption --image shapes.png
    python scripts/predict.py outputs/demo --task grounding --image shapes.png --text "red circle" --save-png box.png
    python scripts/predict.py outputs/demo --instruction "[AUDIO:audio] what is the text corresponding to the voice? \
        -> [TEXT:text]" --audio digits.wav
    python scripts/predict.py outputs/demo --task text_to_image --text "a red circle and a blue square" \
        --output picture.json

Generation: `--num-beams`, `--max-new-tokens` and `--no-cache` (no key/value cache); unset, a saved task's own settings
apply (`processor.generation_defaults`, saved by training).

Inputs fill the instruction's encoder slots by modality (`--image`, `--audio`, `--video`, `--motion`, `--table`,
`--text`), or by column with `--input column=value` (a value that names an existing file is read as a file). Prints
the typed answer as JSON (and writes it to `--output`); boxes are drawn onto a PNG (`--save-png`). A generated image
(an `[IMAGE:col,preprocess=image_vqgan]` target) is saved as a PNG next to the JSON (`picture.png` for
`--output picture.json`, `generated.png` in the current folder without it; `--save-png` names it), its other candidates
as `<name>_candidate<k>.png` (`--num-candidates`, ranked by `--clip FOLDER` when given); the JSON names the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def save_images(answer: dict[str, Any], png: Path) -> dict[str, Any]:
    """Save a generated image answer's best picture at `png` and its other candidates beside it; returns the answer
    with file names instead of pictures (what the JSON shows)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    answer["image"].save(png)
    shown = {"image": str(png), "codes": answer["codes"], "candidates": []}
    for rank, candidate in enumerate(answer.get("candidates", [])):
        path = png if rank == 0 else png.with_name(f"{png.stem}_candidate{rank}.png")
        if rank:
            candidate["image"].save(path)
        shown["candidates"].append({"image": str(path), "score": candidate["score"], "codes": candidate["codes"]})
    return shown


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
    parser.add_argument("--save-png", help="draw predicted boxes onto the image (or save a generated image) here")
    parser.add_argument("--output", help="also write the answer as JSON to this file (generated images beside it)")
    parser.add_argument("--num-candidates", type=int, help="images sampled per input (default: the task's setting)")
    parser.add_argument("--clip", help="a local CLIPModel folder that ranks the generated candidates")
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
    if args.num_candidates is not None:
        generate["num_return_sequences"] = args.num_candidates
    answer = ofa(row, instruction=instruction, candidates=args.candidates, clip=args.clip, **generate)
    if "image" in answer:  # a picture is not JSON: saved as a PNG, named in the JSON
        output = Path(args.output) if args.output else None
        png = (
            Path(args.save_png) if args.save_png else (output.with_suffix(".png") if output else Path("generated.png"))
        )
        answer = save_images(answer, png)
        print(f"generated image saved as {png}", file=sys.stderr)
    text = json.dumps(answer, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    if args.save_png and ("box" in answer or "objects" in answer):
        image_column = next(s.column for s in plan.templates[0].data_slots if s.modality == "IMAGE")
        draw_answer(row[image_column], answer).save(args.save_png)
        print(f"boxes drawn on {args.save_png}", file=sys.stderr)


if __name__ == "__main__":
    main()
