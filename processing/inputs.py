"""Reading slot values from files (for command lines and notebooks), and drawing predicted boxes.

`load_slot_value(modality, path)` turns a file into what the modality's preprocessor takes: an image file stays a path
(`OFAImageProcessor` opens it), a WAV file becomes `{"array", "sampling_rate"}`, a `.npy` file an array (motion,
video), a JSON file a table or a list. `draw_answer` paints boxes of a grounding or detection answer onto the image.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_answer", "load_slot_value", "read_wav"]


def read_wav(path: str | Path) -> dict[str, Any]:
    """A PCM WAV file -> `{"array": float32 mono in [-1, 1], "sampling_rate": int}` (channels averaged)."""
    with wave.open(str(path), "rb") as f:
        width, channels, rate, frames = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
        raw = f.readframes(frames)
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise ValueError(f"{path}: unsupported WAV sample width of {width} bytes (use 8-, 16- or 32-bit PCM)")
    samples = np.frombuffer(raw, dtype=dtypes[width]).astype(np.float32)
    samples = (samples - 128.0) / 128.0 if width == 1 else samples / float(2 ** (8 * width - 1))
    return {"array": samples.reshape(-1, channels).mean(axis=1), "sampling_rate": rate}


def load_slot_value(modality: str, path: str | Path) -> Any:
    """Read a file for a slot of `modality`; text values are passed as they are, not through this function."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{modality} input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".json":
        return json.loads(path.read_text())
    if modality == "AUDIO":
        if suffix != ".wav":
            raise ValueError(f"AUDIO input {str(path)!r}: give a PCM .wav file or a .npy waveform at 16 kHz")
        return read_wav(path)
    if modality == "VIDEO" and path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
        if not frames:
            raise ValueError(f"VIDEO input {str(path)!r} is a folder without image frames")
        return [str(p) for p in frames]
    return str(path)  # images and video files: the preprocessors open them and name the file in errors


def draw_answer(image: Any, answer: dict[str, Any], color: str = "red") -> Image.Image:
    """The image with the answer's box (`{"box"}`) or objects (`{"objects"}`) drawn on it, labels included."""
    from .image import load_image

    canvas = load_image(image).convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    boxes = [(answer["box"], None)] if answer.get("box") is not None else []
    boxes += [(obj["box"], obj.get("label")) for obj in answer.get("objects", []) if obj.get("box") is not None]
    for box, label in boxes:
        draw.rectangle([float(v) for v in box], outline=color, width=max(1, canvas.width // 100))
        if label:
            draw.text((float(box[0]) + 2, float(box[1]) + 1), label, fill=color)
    return canvas
