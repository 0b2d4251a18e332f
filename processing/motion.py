"""Motion (MOTION slot) preprocessing: joint-position clips to fixed-width feature vectors for a linear adapter.

A clip is an array of shape `(T, J, C)` (T frames, J joints, C = 2 or 3 coordinates) or the flattened `(T, J * C)`.
The steps, in order:

1. Validation: a numeric array of the right rank, at least one frame and one joint, no NaN or inf.
2. Temporal subsampling: keep every `frame_stride`-th frame starting at frame 0. A call's `sample_rate=N` (OFASys's
   motion attribute of that name) then keeps every N-th of those frames, from a phase drawn from `rng` (phase 0
   without one).
3. Cropping, before any statistics, so normalization describes the frames the model sees. A call's `soft_trim=p`
   (OFASys) trims both ends by Poisson margins of mean `p * T / 2` frames each, redrawn until at least `min_length`
   steps are left; `window=True` (OFASys) then crops a window of `min_length..max_length` steps (its length uniform,
   its start uniform). Without `rng` both are deterministic: margins of `p * T / 2` and the centred longest window.
   Otherwise the clip is truncated to `max_length` output steps (`max_length * frames_per_token` frames).
4. Root-relative coordinates (`root_relative=True`): joint 0 is subtracted from every joint in every frame. With
   `keep_root_trajectory=True` (default) joint 0's slot, which would otherwise be all zeros, holds the root's
   displacement from its position in the first kept frame, so the global trajectory is not lost.
5. Scaling: `scale="clip"` divides by the standard deviation of all of the clip's values (a clip whose values are all
   equal is left unscaled); `scale="global"` divides by a fixed `global_std` (e.g. computed over a training set);
   `scale="none"` leaves the values alone. No mean is subtracted beyond step 4.
6. Chunking: `frames_per_token` consecutive frames are concatenated (frame-major: all of frame t, then all of frame
   t + 1, ...) into one vector of size `frames_per_token * J * C`. A last partial chunk is completed by repeating the
   last frame (`drop_remainder=False`, default) or dropped.
7. Minimum length: fewer than `min_length` output steps is an error, or with `pad_to_min_length=True` zero steps
   (masked out) are appended. OFASys's `motion_6d` preprocessor skips clips under 10 frames; it generates motion,
   where a floor matters, whereas an encoder input of any length works, so the default here is `min_length=1`. Pass
   `min_length=10` (with `frames_per_token=1`) for OFASys's behaviour, as an error instead of a silent skip.

The result is `{"motion_features": (T', F) float32, "motion_mask": (T',) int32}` with mask 1 for real steps and 0 for
padding (the Hugging Face attention-mask convention; OFASys's own mask is the opposite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["MotionPreprocessor"]

# Below this the clip is treated as constant (no spread to scale by); dividing by it would only amplify noise.
_MIN_STD = 1e-8
# `soft_trim` redraws its margins until enough frames are left (as OFASys does); past this many draws it keeps the clip.
_MAX_TRIM_DRAWS = 100
_SCALES = ("clip", "global", "none")


class MotionPreprocessor:
    """Turn motion clips into chunked, normalized feature sequences (see the module docstring for the steps).

    Args:
        num_coords (`int`, *optional*, defaults to 3): Coordinates per joint (2 or 3); used to unflatten `(T, J*C)`.
        num_joints (`int`, *optional*): If set, clips must have exactly this many joints.
        root_relative (`bool`, *optional*, defaults to `True`): Subtract joint 0 from every joint in every frame.
        keep_root_trajectory (`bool`, *optional*, defaults to `True`):
            With `root_relative`, store the root's displacement from the first frame in joint 0's slot.
        scale (`str`, *optional*, defaults to `"clip"`): `"clip"`, `"global"` or `"none"`.
        global_std (`float`, *optional*): The divisor for `scale="global"` (required then, must be > 0).
        frame_stride (`int`, *optional*, defaults to 1): Keep every `frame_stride`-th frame.
        frames_per_token (`int`, *optional*, defaults to 1): Frames concatenated into one output step.
        drop_remainder (`bool`, *optional*, defaults to `False`): Drop a last partial chunk instead of completing it.
        max_length (`int`, *optional*): Maximum number of output steps (longer clips are truncated).
        min_length (`int`, *optional*, defaults to 1): Minimum number of output steps.
        pad_to_min_length (`bool`, *optional*, defaults to `False`): Pad short clips instead of rejecting them.
    """

    def __init__(
        self,
        num_coords: int = 3,
        num_joints: int | None = None,
        root_relative: bool = True,
        keep_root_trajectory: bool = True,
        scale: str = "clip",
        global_std: float | None = None,
        frame_stride: int = 1,
        frames_per_token: int = 1,
        drop_remainder: bool = False,
        max_length: int | None = None,
        min_length: int = 1,
        pad_to_min_length: bool = False,
    ):
        if num_coords not in (2, 3):
            raise ValueError(f"num_coords must be 2 or 3, got {num_coords!r}")
        if num_joints is not None and not _is_positive_int(num_joints):
            raise ValueError(f"num_joints must be a positive integer or None, got {num_joints!r}")
        if scale not in _SCALES:
            raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
        if scale == "global" and (global_std is None or not np.isfinite(global_std) or global_std <= 0):
            raise ValueError(f"scale='global' needs a finite global_std > 0, got {global_std!r}")
        for name, value in (("frame_stride", frame_stride), ("frames_per_token", frames_per_token)):
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        _check_lengths(max_length, min_length)
        self.num_coords = num_coords
        self.num_joints = num_joints
        self.root_relative = root_relative
        self.keep_root_trajectory = keep_root_trajectory
        self.scale = scale
        self.global_std = None if global_std is None else float(global_std)
        self.frame_stride = frame_stride
        self.frames_per_token = frames_per_token
        self.drop_remainder = drop_remainder
        self.max_length = max_length
        self.min_length = min_length
        self.pad_to_min_length = pad_to_min_length

    @property
    def feature_size(self) -> int | None:
        """Width `F` of one output step, known when `num_joints` is set (what the model's linear adapter takes)."""
        if self.num_joints is None:
            return None
        return self.num_joints * self.num_coords * self.frames_per_token

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serializable dict (inverse of `from_dict`)."""
        return {
            "num_coords": self.num_coords,
            "num_joints": self.num_joints,
            "root_relative": self.root_relative,
            "keep_root_trajectory": self.keep_root_trajectory,
            "scale": self.scale,
            "global_std": self.global_std,
            "frame_stride": self.frame_stride,
            "frames_per_token": self.frames_per_token,
            "drop_remainder": self.drop_remainder,
            "max_length": self.max_length,
            "min_length": self.min_length,
            "pad_to_min_length": self.pad_to_min_length,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> MotionPreprocessor:
        """Build a preprocessor from `to_dict()` output; unknown keys are an error."""
        unknown = sorted(set(config) - set(cls().to_dict()))
        if unknown:
            raise ValueError(f"Unknown MotionPreprocessor config key(s): {unknown}")
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def __call__(
        self,
        motion: Any,
        *,
        max_length: int | None = None,
        min_length: int | None = None,
        sample_rate: int | None = None,
        soft_trim: float | None = None,
        window: bool = False,
        rng: np.random.Generator | None = None,
        where: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Preprocess one clip.

        Args:
            motion: Array-like (numpy, torch or nested lists) of shape `(T, J, C)` or `(T, J * C)`.
            max_length (`int`, *optional*): Overrides `self.max_length` (output steps) for this call.
            min_length (`int`, *optional*): Overrides `self.min_length` (output steps) for this call.
            sample_rate (`int`, *optional*): Keep every `sample_rate`-th frame (after `frame_stride`), from a random
                phase when `rng` is given, else from frame 0.
            soft_trim (`float`, *optional*): In (0, 1): trim random margins of mean `soft_trim * T / 2` frames from
                both ends, leaving at least `min_length` steps (fixed margins of that mean without `rng`).
            window (`bool`, *optional*, defaults to `False`): Crop a window of `min_length..max_length` steps at a
                random start (the centred `max_length` steps without `rng`), instead of truncating to `max_length`.
            rng (`np.random.Generator`, *optional*): The random stream of the sampling options; `None` makes them
                deterministic (evaluation).
            where (`str`, *optional*): Location for error messages, e.g. `"row 3, column 'motion'"`.

        Returns:
            `dict` with `motion_features` of shape `(T', F)` float32, `F = frames_per_token * J * C`, and
            `motion_mask` of shape `(T',)` int32 (1 = real step, 0 = padding up to `min_length`).
        """
        max_length = self.max_length if max_length is None else max_length
        min_length = self.min_length if min_length is None else min_length
        _check_lengths(max_length, min_length)
        where = where or "motion clip"
        frames = self._as_frames(motion, where)

        frames = frames[:: self.frame_stride]
        frames = self._sample(frames, max_length, min_length, sample_rate, soft_trim, window, rng)

        if self.root_relative:
            root = frames[:, :1, :]
            relative = frames - root
            if self.keep_root_trajectory:
                relative[:, 0, :] = root[:, 0, :] - root[0, 0, :]
            frames = relative
        if self.scale == "clip":
            std = float(frames.std())
            if std > _MIN_STD:
                frames = frames / std
        elif self.scale == "global":
            frames = frames / self.global_std

        num_frames, num_joints, num_coords = frames.shape
        step = self.frames_per_token
        num_steps = num_frames // step if self.drop_remainder else -(-num_frames // step)
        if num_steps == 0:
            raise ValueError(
                f"{where}: {num_frames} frame(s) after frame_stride={self.frame_stride} is fewer than "
                f"frames_per_token={step} and drop_remainder=True, so no step is left"
            )
        if num_steps * step > num_frames:
            # Holding the last pose is the least surprising completion of a partial chunk (zeros would be a jump).
            filler = np.repeat(frames[-1:], num_steps * step - num_frames, axis=0)
            frames = np.concatenate([frames, filler], axis=0)
        features = frames[: num_steps * step].reshape(num_steps, step * num_joints * num_coords)
        mask = np.ones(num_steps, dtype=np.int32)

        if num_steps < min_length:
            if not self.pad_to_min_length:
                raise ValueError(
                    f"{where}: {num_steps} output step(s) ({num_frames} frame(s) after frame_stride="
                    f"{self.frame_stride}, frames_per_token={step}) is fewer than min_length={min_length}"
                )
            features = np.concatenate([features, np.zeros((min_length - num_steps, features.shape[1]))], axis=0)
            mask = np.concatenate([mask, np.zeros(min_length - num_steps, dtype=np.int32)])
        return {"motion_features": features.astype(np.float32), "motion_mask": mask}

    def _sample(
        self,
        frames: np.ndarray,
        max_length: int | None,
        min_length: int,
        sample_rate: int | None,
        soft_trim: float | None,
        window: bool,
        rng: np.random.Generator | None,
    ) -> np.ndarray:
        """Steps 2 (`sample_rate`) and 3 (cropping) on the `(T, J, C)` frames left after `frame_stride`."""
        if sample_rate is not None and not _is_positive_int(sample_rate):
            raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
        if soft_trim is not None and (isinstance(soft_trim, bool) or not 0.0 < soft_trim < 1.0):
            raise ValueError(f"soft_trim must be a number in (0, 1) or None, got {soft_trim!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
        if sample_rate is not None and sample_rate > 1:
            phase = int(rng.integers(sample_rate)) if rng is not None else 0
            frames = frames[phase::sample_rate]
        step = self.frames_per_token
        least = min_length * step  # frames needed for min_length output steps
        most = None if max_length is None else max_length * step
        low, high = 0, len(frames)
        if soft_trim is not None and high > least:
            low, high = _trim_margins(high, least, soft_trim, rng)
        if window:
            span = high - low
            longest = span if most is None else min(most, span)
            shortest = min(least, longest)
            size = int(rng.integers(shortest, longest + 1)) if rng is not None else longest
            start = int(rng.integers(span - size + 1)) if rng is not None else (span - size) // 2
            low, high = low + start, low + start + size
        elif most is not None:
            high = min(high, low + most)
        return frames[low:high]

    def collate(
        self, items: Sequence[Mapping[str, Any]], return_tensors: str | None = None
    ) -> dict[str, np.ndarray | Any]:
        """Pad a list of `__call__` outputs to the longest into `(B, T', F)` features and a `(B, T')` mask.

        Args:
            items: Outputs of `__call__`.
            return_tensors (`str`, *optional*): `"pt"` for torch tensors, `None`/`"np"` for numpy arrays.
        """
        if len(items) == 0:
            raise ValueError("collate needs at least one motion item")
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {return_tensors!r}")
        widths = {np.shape(item["motion_features"])[1] for item in items}
        if len(widths) != 1:
            raise ValueError(f"motion items have different feature sizes {sorted(widths)}; they cannot be batched")
        longest = max(len(item["motion_features"]) for item in items)
        features = np.zeros((len(items), longest, widths.pop()), dtype=np.float32)
        mask = np.zeros((len(items), longest), dtype=np.int32)
        for index, item in enumerate(items):
            length = len(item["motion_features"])
            features[index, :length] = item["motion_features"]
            mask[index, :length] = item["motion_mask"]
        if return_tensors == "pt":
            return {"motion_features": torch.from_numpy(features), "motion_mask": torch.from_numpy(mask)}
        return {"motion_features": features, "motion_mask": mask}

    def _as_frames(self, motion: Any, where: str) -> np.ndarray:
        """Validate one clip and return it as a (T, J, C) float64 array."""
        if isinstance(motion, torch.Tensor):
            motion = motion.detach().cpu().numpy()
        try:
            array = np.asarray(motion)
        except ValueError as err:
            raise ValueError(f"{where}: could not read the motion as an array ({err})") from None
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{where}: motion must be a numeric array, got dtype {array.dtype}")
        array = array.astype(np.float64)

        if array.ndim == 2:
            if array.shape[1] == 0 or array.shape[1] % self.num_coords != 0:
                raise ValueError(
                    f"{where}: a 2-D motion array must be (frames, joints * {self.num_coords}), but its second "
                    f"dimension is {array.shape[1]}"
                )
            array = array.reshape(array.shape[0], array.shape[1] // self.num_coords, self.num_coords)
        elif array.ndim == 3:
            if array.shape[2] != self.num_coords:
                raise ValueError(
                    f"{where}: motion has {array.shape[2]} coordinates per joint (shape {array.shape}) but this "
                    f"preprocessor expects num_coords={self.num_coords}"
                )
        else:
            raise ValueError(
                f"{where}: motion must have shape (frames, joints, coords) or (frames, joints * coords), got "
                f"{array.ndim}-D shape {array.shape}"
            )

        num_frames, num_joints, _ = array.shape
        if num_frames == 0:
            raise ValueError(f"{where}: motion has zero frames")
        if num_joints == 0:
            raise ValueError(f"{where}: motion has zero joints")
        if self.num_joints is not None and num_joints != self.num_joints:
            raise ValueError(f"{where}: motion has {num_joints} joints but num_joints={self.num_joints} is required")
        finite = np.isfinite(array)
        if not finite.all():
            bad_frames = np.flatnonzero(~finite.all(axis=(1, 2)))
            raise ValueError(
                f"{where}: motion contains NaN or inf in {len(bad_frames)} frame(s), the first is frame "
                f"{int(bad_frames[0])}"
            )
        return array


def _trim_margins(num_frames: int, least: int, ratio: float, rng: np.random.Generator | None) -> tuple[int, int]:
    """`(low, high)` of a clip of `num_frames` trimmed at both ends by margins of mean `ratio * num_frames / 2`, keeping
    at least `least` frames: Poisson margins redrawn until enough is left (OFASys's `soft_trim`), or without `rng` the
    mean margins, reduced as far as `least` needs."""
    mean = ratio * num_frames / 2
    if rng is None:
        margin = min(int(mean), (num_frames - least) // 2)
        return margin, num_frames - margin
    for _ in range(_MAX_TRIM_DRAWS):
        low, high = int(rng.poisson(mean)), num_frames - int(rng.poisson(mean))
        if high - low >= least:
            return low, high
    return 0, num_frames


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _check_lengths(max_length: int | None, min_length: int) -> None:
    if max_length is not None and not _is_positive_int(max_length):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    if not _is_positive_int(min_length):
        raise ValueError(f"min_length must be a positive integer, got {min_length!r}")
    if max_length is not None and min_length > max_length:
        raise ValueError(f"min_length ({min_length}) is larger than max_length ({max_length})")
