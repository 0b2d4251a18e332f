"""Does the ResNet stem carry an image's colour and shape? Linear probes on the demo's caption scenes.

    python scripts/probe_image_stem.py demo_data                          # train a fresh stem + a linear classifier
    python scripts/probe_image_stem.py demo_data --frozen outputs/demo    # a trained folder's stem, frozen
    python scripts/probe_image_stem.py demo_data --frozen random          # a randomly initialized stem, frozen

The caption task's answers ("a red circle") are 12 classes, colour x shape. The probe pools the stem's (4 x 4) grid
and classifies with one linear layer, so it measures what the stem's features hold, with no transformer in the way;
comparing its test accuracy with the caption model's exact match tells whether the stem or the encoder-decoder is
what a run has not learned yet. Without `--frozen`, a fresh stem of the demo preset trains with the classifier
(AdamW, the demo's learning rate and batch); with it, the stem is fixed (eval mode) and only the classifier trains,
on standardized pooled features. Prints the test accuracy and the shape-only accuracy. One torch thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_ofa import OFAConfig, OFAForConditionalGeneration


def caption_arrays(root: Path, split: str, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The caption split's images as (N, 3, 64, 64) pixels in [-1, 1] and their caption's class index (N,)."""
    import datasets

    rows = datasets.load_from_disk(str(root / "caption"))[split]
    images = np.stack([np.asarray(row["image"].convert("RGB"), dtype=np.float32) / 255 for row in rows])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (N, H, W, C) -> (N, C, H, W)
    return pixels, torch.tensor([labels.index(row["caption"]) for row in rows])


def accuracies(logits: torch.Tensor, targets: torch.Tensor, labels: list[str]) -> tuple[float, float]:
    """Exact class accuracy and shape-only accuracy (the caption's last word)."""
    pairs = list(zip(logits.argmax(-1).tolist(), targets.tolist()))
    exact = float(np.mean([p == t for p, t in pairs]))
    shape = float(np.mean([labels[p].split()[-1] == labels[t].split()[-1] for p, t in pairs]))
    return exact, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the demo corpus folder (data.demo.root of a run)")
    parser.add_argument("--frozen", help="a trained model folder, or 'random', whose stem stays fixed")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    import datasets

    labels = sorted(set(datasets.load_from_disk(str(args.data / "caption"))["train"]["caption"]))
    train_x, train_y = caption_arrays(args.data, "train", labels)
    test_x, test_y = caption_arrays(args.data, "test", labels)
    if args.frozen in (None, "random"):
        model = OFAForConditionalGeneration(OFAConfig.from_preset("demo", vocab_size=1000))
    else:
        model = OFAForConditionalGeneration.from_pretrained(args.frozen)
    stem = model.model.encoder.embed_images
    started = time.process_time()
    if args.frozen is None:
        head = nn.Linear(stem.out_channels, len(labels))
        optimizer = torch.optim.AdamW([*stem.parameters(), *head.parameters()], lr=args.learning_rate)
        for _ in range(args.steps):
            index = torch.randint(len(train_x), (16,))
            logits = head(stem(train_x[index]).mean((2, 3)))  # (B, C, h, w) -> (B, C) -> (B, classes)
            loss = nn.functional.cross_entropy(logits, train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        stem.eval()
        with torch.no_grad():
            test_logits = head(stem(test_x).mean((2, 3)))
    else:
        stem.eval()
        with torch.no_grad():
            train_f, test_f = stem(train_x).mean((2, 3)), stem(test_x).mean((2, 3))  # (N, C)
        mean, std = train_f.mean(0), train_f.std(0) + 1e-5
        train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
        head = nn.Linear(stem.out_channels, len(labels))
        optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
        for _ in range(1500):  # full-batch: the classifier alone converges
            loss = nn.functional.cross_entropy(head(train_f), train_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            test_logits = head(test_f)
    exact, shape = accuracies(test_logits, test_y, labels)
    source = "fresh stem, trained" if args.frozen is None else f"frozen stem of {args.frozen}"
    print(
        f"{source}: test accuracy {exact:.2f} (shape {shape:.2f}) over {len(labels)} classes, "
        f"{time.process_time() - started:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
