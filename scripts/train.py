"""Train OFA on tasks declared by one-line instructions, from one config file.

    python scripts/train.py                               # the offline seven-modality demo (configs/demo.yaml)
    python scripts/train.py configs/demo.yaml --set training.max_steps=200 --output-dir outputs/short
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml scripts/train.py my_config.yaml
    torchrun --nproc_per_node 2 scripts/train.py my_config.yaml

The config format is documented in `trainers/recipe.py`. `--set section.key=value` overrides any field; the config is
checked after the overrides (an unknown key or a value of the wrong type stops the run before it starts).

Exit status: 0 when the run completes; 2 for a config error; 1 when the config sets `evaluation.require_above_chance`
(the demo does) and a task whose chance level is known is not clearly above it. A task on its own data has no chance
level: its metrics are reported without a verdict and do not change the exit status.
"""

from __future__ import annotations

import argparse
import sys

from trainers.recipe import ConfigError, load_config, run
from trainers.report import below_chance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML or JSON run config (default: configs/demo.yaml)")
    parser.add_argument("--output-dir", help="overrides output_dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args(argv)
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        parser.error(str(error))  # exit status 2, before any data, model or process group is set up
    results = run(config)
    if (config.get("evaluation") or {}).get("require_above_chance") and below_chance(results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
