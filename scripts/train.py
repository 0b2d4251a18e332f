"""Train OFA on tasks declared by one-line instructions, from one config file.

    python scripts/train.py                               # the offline seven-modality demo (configs/demo.yaml)
    python scripts/train.py configs/demo.yaml --set training.max_steps=200 --output-dir outputs/short
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml scripts/train.py my_config.yaml
    torchrun --nproc_per_node 2 scripts/train.py my_config.yaml

The config format is documented in `trainers/recipe.py`. `--set section.key=value` overrides any field.
"""

from __future__ import annotations

import argparse

from trainers.recipe import load_config, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML or JSON run config (default: configs/demo.yaml)")
    parser.add_argument("--output-dir", help="overrides output_dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args(argv)
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    results = run(load_config(args.config, overrides))
    failed = [r.task for r in results if not r.beats_chance]
    if failed:
        print(f"tasks not above chance: {failed}")


if __name__ == "__main__":
    main()
