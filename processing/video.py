"""Video preprocessing for OFA+: sample a fixed number of frames uniformly and process each as an OFA image.

The video adaptor embeds every frame with the image backbone and adds a time embedding, so a video slot is simply
`num_frames` images plus the index each frame came from.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature

from .image import OFAImageProcessor, load_image

__all__ = ["VideoPreprocessor", "sample_frame_indices"]


def _context(where: str | None) -> str:
    return f" ({where})" if where else ""


def sample_frame_indices(num_total: int, num_frames: int) -> np.ndarray:
    """Pick `num_frames` frame indices spread uniformly over a clip of `num_total` frames.

    The indices are `linspace(0, num_total - 1, num_frames)` rounded to the nearest frame (halves round up), so the
    first and last frames are always kept. A clip shorter than `num_frames` repeats frames (nearest neighbour in
    time), so the output length is always `num_frames`. A single requested frame is frame 0.

    Example: 10 frames, 4 wanted -> `[0, 3, 6, 9]`; 3 frames, 8 wanted -> `[0, 0, 1, 1, 1, 1, 2, 2]`.

    Args:
        num_total (`int`):
            Number of frames in the clip (>= 1).
        num_frames (`int`):
            Number of frames to sample (>= 1).
    """
    if num_total < 1:
        raise ValueError(f"Cannot sample frames from a video with {num_total} frames.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    return np.floor(np.linspace(0, num_total - 1, num_frames) + 0.5).astype(np.int64)


def _read_video_frames(path: str, num_frames: int, where: str | None) -> tuple[list[PIL.Image.Image], np.ndarray]:
    """Decode only the sampled frames of a video file with PyAV."""
    try:
        import av
    except ImportError as err:
        raise ImportError(
            f"Reading the video file {path!r} needs PyAV (`pip install av`). Without it, pass decoded frames: a list "
            "of images or a (T, H, W, C) uint8 array."
        ) from err
    if not os.path.exists(path):
        raise ValueError(f"Video file {path!r} does not exist{_context(where)}.")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"Video file {path!r} has no video stream{_context(where)}.")
            stream = container.streams.video[0]
            total = stream.frames
            if total > 0:
                # The frame count is in the header: decode up to the last wanted frame, keep only wanted ones.
                indices = sample_frame_indices(total, num_frames)
                wanted = set(indices.tolist())
                kept: dict[int, PIL.Image.Image] = {}
                for position, frame in enumerate(container.decode(stream)):
                    if position in wanted:
                        kept[position] = frame.to_image()
                    if position >= indices[-1]:
                        break
                if len(kept) == len(wanted):
                    return [kept[i] for i in indices.tolist()], indices
                container.seek(0)
            # No (or a wrong) frame count in the header: decode everything, then sample.
            frames = [frame.to_image() for frame in container.decode(stream)]
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"Cannot read video {path!r}{_context(where)}: {err}") from err
    if not frames:
        raise ValueError(f"Video file {path!r} has zero frames{_context(where)}.")
    indices = sample_frame_indices(len(frames), num_frames)
    return [frames[i] for i in indices.tolist()], indices


class VideoPreprocessor:
    """Turn a video into `num_frames` processed frames for the OFA+ video adaptor.

    Accepts a list/tuple of frames (anything [`load_image`] reads: PIL images, arrays, paths, bytes), a 4-D
    (T, H, W, C) array or tensor, or a video file path (decoded with PyAV when installed). Frames are sampled with
    [`sample_frame_indices`]: uniform over the clip, first and last included, repeated when the clip is short.
    Only the sampled frames of a list are loaded.

    Args:
        num_frames (`int`, *optional*, defaults to 8):
            Frames per video.
        image_processor (`OFAImageProcessor`, *optional*):
            Processes each frame; defaults to `OFAImageProcessor()` (384 x 384, mean = std = 0.5).
    """

    def __init__(self, num_frames: int = 8, image_processor: OFAImageProcessor | None = None):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}.")
        self.num_frames = num_frames
        self.image_processor = image_processor if image_processor is not None else OFAImageProcessor()

    def to_dict(self) -> dict[str, Any]:
        """Serializable config; `VideoPreprocessor.from_dict(p.to_dict())` rebuilds an equal preprocessor."""
        return {"num_frames": self.num_frames, "image_processor": self.image_processor.to_dict()}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> VideoPreprocessor:
        """Rebuild from [`to_dict`] output."""
        unknown = set(config) - {"num_frames", "image_processor"}
        if unknown:
            raise ValueError(f"Unknown VideoPreprocessor config keys {sorted(unknown)}.")
        image_config = dict(config.get("image_processor") or {})
        image_config.pop("image_processor_type", None)
        return cls(num_frames=config.get("num_frames", 8), image_processor=OFAImageProcessor(**image_config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_frames={self.num_frames}, size={dict(self.image_processor.size)})"

    def __call__(self, video: Any, *, where: str | None = None) -> BatchFeature:
        """Sample and process one video.

        Args:
            video:
                Frames (list/tuple), a (T, H, W, C) array/tensor, or a video file path.
            where (`str`, *optional*):
                Where the value comes from, quoted in error messages.

        Returns:
            `BatchFeature` with `pixel_values` (num_frames, 3, S, S) float32 and `frame_indices` (num_frames,) int64,
            the source frame of each output frame.
        """
        if isinstance(video, (str, os.PathLike)):
            frames, indices = _read_video_frames(os.fspath(video), self.num_frames, where)
        elif isinstance(video, (np.ndarray, torch.Tensor)):
            if video.ndim != 4:
                raise ValueError(
                    f"A video array must be 4-D (T, H, W, C), got shape {tuple(video.shape)}{_context(where)}."
                )
            if video.shape[0] == 0:
                raise ValueError(f"Video has zero frames{_context(where)}.")
            indices = sample_frame_indices(video.shape[0], self.num_frames)
            frames = [video[i] for i in indices.tolist()]
        elif isinstance(video, (list, tuple)):
            if not video:
                raise ValueError(f"Video has zero frames{_context(where)}.")
            indices = sample_frame_indices(len(video), self.num_frames)
            frames = [video[i] for i in indices.tolist()]
        elif video is None:
            raise ValueError(f"Video is missing (None){_context(where)}.")
        else:
            raise TypeError(
                f"Cannot read a video from a {type(video).__name__}{_context(where)}; expected a list of frames, "
                "a (T, H, W, C) array or a file path."
            )
        # Load each distinct source frame once (short clips repeat indices), naming the frame in any error.
        loaded: dict[int, PIL.Image.Image] = {}
        for frame, index in zip(frames, indices.tolist()):
            if index not in loaded:
                loaded[index] = load_image(frame, where=", ".join(filter(None, [where, f"frame {index}"])))
        images = [loaded[index] for index in indices.tolist()]
        pixel_values = self.image_processor(images, where=where, return_tensors="pt")["pixel_values"]
        return BatchFeature({"pixel_values": pixel_values, "frame_indices": torch.from_numpy(indices)})
