"""Convert an original OFA checkpoint (fairseq `.pt` or the OFA-Sys transformers port) into a transformers folder.

Example:
    python scripts/convert_ofa_checkpoint.py ofa_base.pt ./ofa-base --tokenizer-dir ./ofa-tokenizer
    python scripts/convert_ofa_checkpoint.py ./OFA-base-port ./ofa-base --source hf_port

The output folder loads with `OFAForConditionalGeneration.from_pretrained`. All logic lives in
`modeling_ofa.convert.convert_checkpoint`.
"""

from __future__ import annotations

import argparse
import logging

from modeling_ofa.configuration_ofa import PRESETS
from modeling_ofa.convert import convert_checkpoint


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and convert.

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="fairseq .pt checkpoint, state-dict file (.bin/.pt/.safetensors) or folder")
    parser.add_argument("dst", help="output folder (config.json, model.safetensors, generation_config.json)")
    parser.add_argument("--source", choices=["auto", "fairseq", "hf_port"], default="auto", help="input layout")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="defaults for settings the checkpoint lacks")
    parser.add_argument("--tokenizer-dir", help="folder whose tokenizer files are copied into the output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dst = convert_checkpoint(
        args.src, args.dst, source=args.source, preset=args.preset, tokenizer_dir=args.tokenizer_dir
    )
    print(f"converted {args.src} -> {dst}")


if __name__ == "__main__":
    main()
