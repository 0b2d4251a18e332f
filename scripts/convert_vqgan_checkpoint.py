"""Convert an original taming-transformers VQGAN (OFA's image tokenizer) into an `OFAVQGANModel` folder.

    python scripts/convert_vqgan_checkpoint.py --checkpoint vqgan/last.ckpt --config vqgan/model.yaml --output out/

Prints a JSON summary (parameter count, dropped training-only keys, seconds). Loading runs no code from the
checkpoint; every tensor except the training loss (`loss.*`) must be placed, or the conversion fails naming the keys.
"""

from __future__ import annotations

import argparse
import json
import sys

from modeling_ofa.convert_vqgan import convert_vqgan_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the original Lightning checkpoint (last.ckpt)")
    parser.add_argument("--config", required=True, help="its taming model.yaml")
    parser.add_argument("--output", required=True, help="folder to save the converted model in")
    args = parser.parse_args(argv)
    _, summary = convert_vqgan_checkpoint(args.checkpoint, args.config, args.output)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
