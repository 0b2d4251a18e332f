"""Export an OFA model folder to ONNX (encoders, first decoder call, decoder with past) and check it.

Example:
    python scripts/export_onnx.py ./ofa-demo ./ofa-demo-onnx --encoders text image --validate
    python scripts/export_onnx.py ./ofa-demo ./ofa-demo-onnx --int8-dir ./ofa-demo-onnx-int8 --validate

The output folder holds `encoder_<variant>.onnx`, `decoder.onnx`, `decoder_with_past.onnx`, `onnx_manifest.json`,
the model's `config.json` and the folder's processor/tokenizer files; `modeling_ofa.onnx.OnnxOFA` runs it.
`--validate` compares every encoder variant with PyTorch on random inputs of other sizes than the export samples
and prints one JSON object: max abs differences (encoder, logits of each decoder call) and greedy-id equality; with
`--int8-dir`, also the greedy agreement of the int8 graphs. The exit status is 1 when a check fails.
All logic lives in `modeling_ofa.onnx`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from modeling_ofa import OFAForConditionalGeneration
from modeling_ofa.onnx import (
    DEFAULT_OPSET,
    OnnxOFA,
    encoder_variant,
    export_onnx,
    quantize_onnx_int8,
    sample_encoder_inputs,
    validate_onnx,
)
from modeling_ofa.quantization import greedy_agreement

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
TOLERANCE = 1e-4  # fp32 max abs difference accepted by --validate


def copy_processor_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy the model folder's non-weight files that the export did not write (tokenizer, processor configs)."""
    copied = []
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, export, optionally quantize and validate.

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 1 when `--validate` finds a difference above tolerance or unequal greedy ids.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="folder that OFAForConditionalGeneration.from_pretrained loads")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument(
        "--encoders", nargs="+", default=["text", "image"], help="encoder variants: text, image, image+audio, ..."
    )
    parser.add_argument("--image-size", type=int, help="image side of the export samples (any size runs later)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--text-only-decoder", action="store_true", help="decoder graphs without code_masks (no image-code targets)"
    )
    parser.add_argument("--int8-dir", help="also write onnxruntime dynamic-int8 graphs to this folder")
    parser.add_argument("--validate", action="store_true", help="compare with PyTorch and print the differences")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="greedy steps compared by --validate")
    args = parser.parse_args(argv)

    model_dir, out_dir = Path(args.model_dir), Path(args.out_dir)
    model = OFAForConditionalGeneration.from_pretrained(model_dir).eval()
    manifest = export_onnx(
        model,
        out_dir,
        encoders=args.encoders,
        with_code_masks=not args.text_only_decoder,
        image_size=args.image_size,
        opset=args.opset,
    )
    copied = copy_processor_files(model_dir, out_dir)
    if args.int8_dir:
        quantize_onnx_int8(out_dir, args.int8_dir)
        copy_processor_files(model_dir, Path(args.int8_dir))
    report: dict = {"out_dir": str(out_dir), "graphs": sorted(p.name for p in out_dir.glob("*.onnx"))}
    report["copied"] = copied
    if not args.validate:
        print(json.dumps(report, indent=2))
        return 0

    runner = OnnxOFA(out_dir)
    int8_runner = OnnxOFA(args.int8_dir) if args.int8_dir else None
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
    report.update(validation=checks, tolerance=TOLERANCE, passed=ok)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
