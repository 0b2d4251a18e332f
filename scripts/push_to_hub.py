"""Publish a trained OFA output folder (model + processor + model card) to the Hugging Face Hub.

Examples:
    python scripts/push_to_hub.py out/ofa-demo me/ofa-demo --dry-run          # check the folder offline, no upload
    python scripts/push_to_hub.py out/ofa-demo me/ofa-demo --write-card --results results.json --private
    python scripts/push_to_hub.py out/ofa-demo me/ofa-demo --dry-run --run-snippets   # also run the card's code

Only the Hub repo is uploaded: the files `trainers.hub.hub_files` lists (configs, weights, the model's and processor's
code, processor and tokenizer files, the card, results, plots), never training state (`checkpoints/`, optimizer, RNG,
`training_args.bin`). `--dry-run` prints exactly that list under "files". The uploaded card's usage snippets name the
target repo; `--run-snippets` runs them verbatim against an offline Hub cache holding exactly those files.

`--results` is a JSON file of `{task: {metric: value}}` or of Trainer-style flat metrics (`eval_caption_cider`).
`--datasets` is a JSON file of `{task: dataset_id}`. The logic lives in `trainers.hub`; the token comes from
`HF_TOKEN` or `hf auth login`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainers.hub import (
    hub_files,
    push_hub_folder,
    results_from_metrics,
    run_usage_snippets,
    validate_hub_folder,
    write_model_card,
)


def _read_json(path: str | None, what: str) -> Any:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--{what} {path}: {err}") from err


def _results(raw: Any, folder: Path) -> dict[str, dict[str, float]] | None:
    """Nested results as they are; flat Trainer metrics regrouped by the folder's tasks."""
    if raw is not None and not isinstance(raw, dict):
        raise SystemExit(f"--results must hold a JSON object, got {type(raw).__name__}")
    if raw is None or all(isinstance(v, dict) for v in raw.values()):
        return raw
    processor_config = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    return results_from_metrics(raw, processor_config.get("task_instructions") or {})


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, validate the folder and upload it.

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with config.json, model.safetensors, processor files")
    parser.add_argument("repo_id", help="target repo, 'user/name' or 'org/name'")
    parser.add_argument("--dry-run", action="store_true", help="validate the folder and card only; no network")
    parser.add_argument(
        "--run-snippets", action="store_true", help="also run the card's usage code verbatim, offline, as repo_id"
    )
    parser.add_argument("--write-card", action="store_true", help="(re)write README.md from the folder's files")
    parser.add_argument("--results", help="JSON metrics for the card's model-index (with --write-card)")
    parser.add_argument("--datasets", help="JSON {task: dataset_id} for the card (with --write-card)")
    parser.add_argument("--base-model", help="repo id this model was fine-tuned from (with --write-card)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing")
    parser.add_argument("--commit-message", default="Upload OFA model", help="commit message")
    args = parser.parse_args(argv)

    if not args.write_card and (args.results or args.datasets or args.base_model):
        parser.error("--results, --datasets and --base-model only apply with --write-card")
    if args.write_card:
        readme = write_model_card(
            args.folder,
            repo_id=args.repo_id,
            results=_results(_read_json(args.results, "results"), args.folder),
            datasets=_read_json(args.datasets, "datasets"),
            base_model=args.base_model,
        )
        print(f"wrote {readme}")
    try:
        metadata = validate_hub_folder(args.folder)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    summary = {
        "folder": str(args.folder),
        "repo_id": args.repo_id,
        "files": hub_files(args.folder),  # exactly what a push uploads
        "pipeline_tag": metadata.get("pipeline_tag"),
        "tags": metadata.get("tags"),
        "results": sum(len(r["metrics"]) for entry in metadata.get("model-index", []) for r in entry["results"]),
    }
    if args.run_snippets:
        summary["snippet_outputs"] = [out.strip() for out in run_usage_snippets(args.folder, repo_id=args.repo_id)]
    print(json.dumps(summary, indent=2))
    if args.dry_run:
        print("dry run: the folder is valid; nothing was uploaded")
        return
    url = push_hub_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
    )
    print(f"pushed {args.folder} -> {url}")


if __name__ == "__main__":
    main()
