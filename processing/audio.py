"""Audio preprocessing for OFA: waveforms to Kaldi-style log-mel filterbank frames.

OFASys feeds speech to the encoder as 80-bin log-mel filterbank ("fbank") frames computed the Kaldi way (25 ms
povey window, 10 ms hop, pre-emphasis 0.97, DC removal, 512-point FFT, Kaldi mel scale from 20 Hz to Nyquist, log
power floored at float32 epsilon, waveform on the 16-bit integer scale), followed by the feature transforms of its
S2T data config. That config lives on OFASys's object store and is not in the public repository; the fairseq
speech-to-text recipes it comes from apply utterance-level cepstral mean and variance normalization (CMVN) at both
train and eval time (plus SpecAugment at train time, which is an augmentation and not done here). So utterance CMVN
is on by default (`do_normalize=True`) and can be switched off. This is the recipe of transformers'
`Speech2TextFeatureExtractor`, which `OFAAudioFeatureExtractor` extends: frame sizes and mel range read from its
config, the waveform kept in float64 up to the fbank, and the clips decoded, mixed down to mono and resampled first.

Inputs may be 1-D float arrays (numpy, torch, or lists of floats) in [-1, 1], the decoded dicts that
`datasets.Audio` yields (`{"array": ..., "sampling_rate": ...}`), the undecoded ones of `Audio(decode=False)`
(`{"bytes": ..., "path": ...}`, decoded here by `decode_audio`: soundfile when it is installed, else the standard
library's `wave` for PCM WAV, so no torchcodec is needed), or a decoder object with `get_all_samples()` (what
`datasets.Audio` returns where torchcodec is installed). `undecoded_audio` makes a dataset's `Audio` columns yield
`{"bytes", "path"}` (what `Task` does to its datasets). A single 2-D array is one multi-channel clip, not a
batch: its shorter axis is taken as channels and mixed down to mono by averaging. Batches are lists. Clips at another
sampling rate are resampled to `sampling_rate` (polyphase `scipy.signal.resample_poly` when scipy is importable,
otherwise linear interpolation; both give `ceil(n * target / source)` samples), or rejected when `resample=False`.
"""

from __future__ import annotations

import functools
import io
import math
import os
import wave
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from transformers.audio_utils import mel_filter_bank, optimal_fft_length, spectrogram, window_function
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.speech_to_text import Speech2TextFeatureExtractor
from transformers.utils import PaddingStrategy, TensorType, is_torch_tensor, logging

__all__ = ["OFAAudioFeatureExtractor", "decode_audio", "resample_waveform", "undecoded_audio"]

logger = logging.get_logger(__name__)

# Kaldi floors the mel energies at float32 epsilon before the log; matching it keeps silent frames comparable.
_KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)
# Kaldi and OFASys (`load_waveform(normalization=False)`) compute fbank on the 16-bit integer scale.
_INT16_SCALE = 2.0**15
# fairseq's utterance CMVN floors the variance at 1e-10, i.e. the standard deviation at 1e-5.
_CMVN_STD_FLOOR = 1e-5
# A 2-D clip whose shorter axis exceeds this is more likely a mistake (e.g. a batch as one array) than audio channels.
_MAX_CHANNELS = 16


def decode_audio(source: bytes | str | os.PathLike, where: str = "audio") -> dict[str, Any]:
    """Encoded audio (file bytes or a path) -> `{"array": float32 mono in [-1, 1], "sampling_rate": int}`.

    Uses soundfile (libsndfile: WAV, FLAC, OGG, MP3) when it is importable, else the standard library's `wave` (PCM
    WAV only; other formats are an error that names soundfile).
    """
    try:
        import soundfile
    except ImportError:
        soundfile = None
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    if isinstance(handle, str) and not os.path.isfile(handle):
        raise ValueError(
            f"{where}: the audio file {handle!r} does not exist (an audio dict holds 'array' and 'sampling_rate', or "
            "the 'bytes' or 'path' of an audio file)"
        )
    if soundfile is not None:
        try:
            samples, rate = soundfile.read(handle, dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise ValueError(f"{where}: could not decode the audio ({err})") from err
        return {"array": samples.mean(axis=1), "sampling_rate": int(rate)}
    try:
        with wave.open(handle, "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as err:
        raise ValueError(
            f"{where}: not a PCM WAV file ({err}); other formats (FLAC, MP3, OGG) decode with `pip install soundfile`"
        ) from err
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise ValueError(f"{where}: unsupported WAV sample width of {width} bytes (use 8-, 16- or 32-bit PCM)")
    samples = np.frombuffer(raw, dtype=dtypes[width]).astype(np.float32)
    samples = (samples - 128.0) / 128.0 if width == 1 else samples / float(2 ** (8 * width - 1))
    return {"array": samples.reshape(-1, channels).mean(axis=1), "sampling_rate": int(rate)}


def undecoded_audio(dataset: Any, columns: Iterable[str]) -> Any:
    """`dataset` with its `datasets.Audio` columns among `columns` cast to `Audio(decode=False)`.

    `datasets` decodes `Audio()` columns with torchcodec, which needs FFmpeg and is not a dependency here; undecoded,
    rows hold `{"bytes", "path"}`, which `OFAAudioFeatureExtractor` decodes itself (`decode_audio`). Datasets without
    `features` (lists, streams of unknown schema) are returned as they are.
    """
    features = getattr(dataset, "features", None)
    if not isinstance(features, Mapping):
        return dataset
    for column in columns:
        feature = features.get(column)
        if type(feature).__name__ == "Audio" and getattr(feature, "decode", False):
            dataset = dataset.cast_column(column, type(feature)(sampling_rate=feature.sampling_rate, decode=False))
            logger.info(f"column {column!r}: audio is decoded by OFAAudioFeatureExtractor (Audio(decode=False))")
    return dataset


@functools.cache
def _scipy_resample_poly() -> Callable[..., np.ndarray] | None:
    """Return `scipy.signal.resample_poly` if scipy is importable, else None (scipy is optional)."""
    try:
        from scipy.signal import resample_poly
    except ImportError:
        return None
    return resample_poly


def resample_waveform(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """Resample a mono waveform to another sampling rate.

    Uses `scipy.signal.resample_poly` (anti-aliased polyphase filtering) when scipy is importable. Without scipy it
    falls back to linear interpolation, which is exact for the sample positions it keeps but does not low-pass filter
    before downsampling. Both paths return `ceil(len(waveform) * target / orig)` samples.

    Args:
        waveform (`np.ndarray` of shape `(num_samples,)`): The mono waveform.
        orig_sampling_rate (`int`): Its sampling rate in Hz.
        target_sampling_rate (`int`): The wanted sampling rate in Hz.

    Returns:
        `np.ndarray` of shape `(ceil(num_samples * target / orig),)`, float64.
    """
    if waveform.ndim != 1:
        raise ValueError(f"resample_waveform expects a 1-D waveform, got shape {tuple(waveform.shape)}")
    for name, rate in (("orig_sampling_rate", orig_sampling_rate), ("target_sampling_rate", target_sampling_rate)):
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    waveform = waveform.astype(np.float64, copy=False)
    if orig_sampling_rate == target_sampling_rate:
        return waveform
    divisor = math.gcd(orig_sampling_rate, target_sampling_rate)
    up, down = target_sampling_rate // divisor, orig_sampling_rate // divisor
    num_out = -(-len(waveform) * up // down)
    resample_poly = _scipy_resample_poly()
    if resample_poly is not None:
        return np.asarray(resample_poly(waveform, up, down), dtype=np.float64)[:num_out]
    positions = np.arange(num_out, dtype=np.float64) * (orig_sampling_rate / target_sampling_rate)
    return np.interp(positions, np.arange(len(waveform), dtype=np.float64), waveform)


def _where_for(where: str | Sequence[str] | None, index: int, batch_size: int) -> str:
    """Build the location prefix of an error message for batch item `index`."""
    if where is None:
        return f"batch item {index}"
    if isinstance(where, str):
        return where if batch_size == 1 else f"{where}, batch item {index}"
    return where[index]


def _as_sampling_rate(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Real) or value <= 0 or float(value) != int(value):
        raise ValueError(f"{what} must be a positive integer number of Hz, got {value!r}")
    return int(value)


def _alias(name: str) -> property:
    """A property that reads and writes the attribute `name`."""
    return property(lambda self: getattr(self, name), lambda self, value: setattr(self, name, value), doc=name)


class OFAAudioFeatureExtractor(Speech2TextFeatureExtractor):
    r"""Constructs an OFA audio feature extractor: `Speech2TextFeatureExtractor`'s Kaldi fbank and utterance CMVN,
    plus decoding, mono down-mixing and resampling of the clips, and errors that say which clip is wrong.

    Each clip becomes `num_frames = 1 + (num_samples - win_length) // hop_length` frames of `feature_size` log-mel
    energies (Kaldi's `snip_edges=True` framing: no frame hangs over the end). A clip shorter than one window is an
    error, as is an empty clip or one containing NaN or inf.

    Args:
        feature_size (`int`, *optional*, defaults to 80):
            Number of mel bins per frame.
        sampling_rate (`int`, *optional*, defaults to 16000):
            The sampling rate (Hz) the features are computed at; other rates are resampled to it.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used for padded frames (0 is the utterance mean after CMVN).
        win_length (`int`, *optional*, defaults to 400):
            Analysis window in samples (25 ms at 16 kHz).
        hop_length (`int`, *optional*, defaults to 160):
            Hop between frames in samples (10 ms at 16 kHz).
        n_fft (`int`, *optional*):
            FFT size. Defaults to the next power of two of `win_length` (512), as Kaldi's `round_to_power_of_two`.
        preemphasis (`float`, *optional*, defaults to 0.97):
            Pre-emphasis coefficient (Kaldi default).
        dither (`float`, *optional*, defaults to 0.0):
            Standard deviation of Gaussian noise added to each frame on the 16-bit scale. Kaldi's default is 1.0,
            torchaudio's is 0.0; 0.0 keeps the features deterministic.
        min_frequency (`float`, *optional*, defaults to 20.0):
            Lower edge of the first mel filter in Hz (Kaldi default).
        max_frequency (`float`, *optional*):
            Upper edge of the last mel filter in Hz. Defaults to Nyquist (`sampling_rate / 2`).
        do_normalize (`bool`, *optional*, defaults to `True`):
            Apply utterance-level CMVN: subtract each bin's mean over the clip's frames.
        normalize_variance (`bool`, *optional*, defaults to `True`):
            With `do_normalize`, also divide each bin by its standard deviation over the clip (floored at 1e-5).
        normalize_means (`bool`, *optional*, defaults to `True`):
            With `do_normalize`, subtract each bin's mean (Speech2Text's switch; `False` only scales).
        resample (`bool`, *optional*, defaults to `True`):
            Resample clips whose sampling rate differs from `sampling_rate`; if `False` such clips are an error.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Whether `__call__` returns an `attention_mask` (1 for real frames, 0 for padding).
    """

    model_input_names = ["input_features", "attention_mask"]
    # Speech2Text's names for three OFA settings (its `__init__` and `normalize` use them); a config stores OFA's.
    num_mel_bins = _alias("feature_size")
    do_ceptral_normalize = _alias("do_normalize")
    normalize_vars = _alias("normalize_variance")

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        win_length: int = 400,
        hop_length: int = 160,
        n_fft: int | None = None,
        preemphasis: float = 0.97,
        dither: float = 0.0,
        min_frequency: float = 20.0,
        max_frequency: float | None = None,
        do_normalize: bool = True,
        normalize_variance: bool = True,
        resample: bool = True,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        if win_length <= 0 or hop_length <= 0:
            raise ValueError(f"win_length and hop_length must be positive, got {win_length} and {hop_length}")
        n_fft = optimal_fft_length(win_length) if n_fft is None else n_fft
        if n_fft < win_length:
            raise ValueError(f"n_fft ({n_fft}) must be at least win_length ({win_length})")
        max_frequency = sampling_rate / 2 if max_frequency is None else max_frequency
        if not 0 <= min_frequency < max_frequency <= sampling_rate / 2:
            raise ValueError(
                f"Need 0 <= min_frequency < max_frequency <= sampling_rate / 2, got min_frequency={min_frequency}, "
                f"max_frequency={max_frequency}, sampling_rate={sampling_rate}"
            )
        # Speech2Text's names are views of OFA's settings (`_alias`): read the OFA names, which a config stores.
        for alias in ("num_mel_bins", "do_ceptral_normalize", "normalize_vars"):
            kwargs.pop(alias, None)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            num_mel_bins=feature_size,
            padding_value=padding_value,
            dither=dither,
            do_ceptral_normalize=do_normalize,
            normalize_vars=normalize_variance,
            **kwargs,
        )
        # Speech2Text always returns the mask; OFA's config can switch it off.
        self.return_attention_mask = return_attention_mask
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.preemphasis = preemphasis
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency
        self.resample = resample
        # `mel_filters` and `window` are the two names FeatureExtractionMixin.to_dict leaves out of the saved config.
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=feature_size,
            min_frequency=min_frequency,
            max_frequency=max_frequency,
            sampling_rate=sampling_rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
        self.window = window_function(win_length, "povey", periodic=False)

    def num_frames(self, num_samples: int) -> int:
        """Number of fbank frames for a clip of `num_samples` samples (0 when shorter than one window)."""
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length

    def _extract_fbank_features(self, waveform: np.ndarray) -> np.ndarray:
        """Kaldi-style log-mel fbank of one mono waveform in [-1, 1]; returns (num_frames, feature_size) float64.

        Speech2Text's own version fixes the frame sizes and switches to torchaudio when that is installed; this one
        reads the configured window, hop, FFT size and mel range, and gives the same features with or without it.
        """
        return spectrogram(
            waveform.astype(np.float64) * _INT16_SCALE,
            self.window,
            frame_length=self.win_length,
            hop_length=self.hop_length,
            fft_length=self.n_fft,
            power=2.0,
            center=False,
            dither=self.dither,
            preemphasis=self.preemphasis,
            mel_filters=self.mel_filters,
            mel_floor=_KALDI_LOG_FLOOR,
            log_mel="log",
            remove_dc_offset=True,
            dtype=np.float64,
        ).T

    @staticmethod
    def utterance_cmvn(
        x: np.ndarray,
        input_length: int,
        normalize_means: bool | None = True,
        normalize_vars: bool | None = True,
        padding_value: float = 0.0,
    ) -> np.ndarray:
        """Speech2Text's utterance CMVN over the first `input_length` frames, with fairseq's floor on the standard
        deviation, so that a constant bin (e.g. a silent clip) becomes 0 and not NaN."""
        x = x.astype(np.float64)
        if normalize_means:
            x = x - x[:input_length].mean(axis=0)
        if normalize_vars:
            x = x / np.maximum(x[:input_length].std(axis=0), _CMVN_STD_FLOOR)
        x[input_length:] = padding_value
        return x.astype(np.float32)

    def _to_mono_waveform(self, clip: Any, sampling_rate: int | None, resample: bool, where: str) -> np.ndarray:
        """Validate one clip and return it as a 1-D float64 waveform at `self.sampling_rate`."""
        clip_rate = sampling_rate
        if callable(getattr(clip, "get_all_samples", None)):  # a torchcodec AudioDecoder (datasets' Audio())
            decoded = clip.get_all_samples()
            clip = {"array": decoded.data.mean(dim=0), "sampling_rate": int(decoded.sample_rate)}
        elif isinstance(clip, Mapping) and "array" not in clip and ("bytes" in clip or "path" in clip):
            source = clip.get("bytes") or clip.get("path")  # Audio(decode=False): the encoded file, or its path
            if source is None:
                raise ValueError(f"{where}: an undecoded audio dict has neither bytes nor a path")
            clip = decode_audio(source, where)
        if isinstance(clip, Mapping):
            if "array" not in clip:
                raise ValueError(
                    f"{where}: an audio dict needs an 'array' key (as `datasets.Audio` decodes to), got keys "
                    f"{sorted(map(str, clip))}"
                )
            if clip.get("sampling_rate") is not None:
                clip_rate = _as_sampling_rate(clip["sampling_rate"], f"{where}: 'sampling_rate'")
                if sampling_rate is not None and clip_rate != sampling_rate:
                    raise ValueError(
                        f"{where}: the audio dict says sampling_rate={clip_rate} but sampling_rate={sampling_rate} "
                        "was passed to the feature extractor"
                    )
            clip = clip["array"]

        if is_torch_tensor(clip):
            clip = clip.detach().cpu().numpy()
        if isinstance(clip, (list, tuple)):
            try:
                array = np.asarray(clip, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: could not read the audio list as a float array ({err})") from None
        elif isinstance(clip, np.ndarray):
            array = clip
        else:
            raise TypeError(
                f"{where}: audio must be a 1-D float array (numpy, torch or list) or a dict with 'array' and "
                f"'sampling_rate', got {type(clip).__name__}"
            )

        if array.dtype == np.int16:
            array = array / _INT16_SCALE
        elif array.dtype.kind != "f":
            raise TypeError(f"{where}: audio samples must be floats in [-1, 1] (or int16 PCM), got dtype {array.dtype}")
        array = array.astype(np.float64, copy=False)

        if array.ndim == 2:
            channel_axis = int(np.argmin(array.shape))
            if array.shape[channel_axis] > _MAX_CHANNELS:
                raise ValueError(
                    f"{where}: a 2-D audio array is read as one multi-channel clip, but shape {array.shape} has no "
                    f"axis of at most {_MAX_CHANNELS} channels; pass a batch as a list of 1-D arrays"
                )
            # Averaging the channels is the plain mono downmix (sox `channels 1`, as OFASys uses, does the same).
            array = array.mean(axis=channel_axis)
        elif array.ndim != 1:
            raise ValueError(f"{where}: audio must be 1-D (mono) or 2-D (multi-channel), got shape {array.shape}")

        if array.size == 0:
            raise ValueError(f"{where}: audio is empty (0 samples)")
        finite = np.isfinite(array)
        if not finite.all():
            first_bad = int(np.argmin(finite))
            raise ValueError(
                f"{where}: audio contains {int((~finite).sum())} NaN or inf sample(s), the first at index {first_bad}"
            )

        if clip_rate is None:
            logger.warning_once(
                f"No sampling_rate was given with the audio; assuming {self.sampling_rate} Hz. Pass `sampling_rate` "
                "to avoid silently wrong features."
            )
            clip_rate = self.sampling_rate
        if clip_rate != self.sampling_rate:
            if not resample:
                raise ValueError(
                    f"{where}: audio is sampled at {clip_rate} Hz but the feature extractor expects "
                    f"{self.sampling_rate} Hz and resample=False"
                )
            array = resample_waveform(array, clip_rate, self.sampling_rate)

        if array.size < self.win_length:
            raise ValueError(
                f"{where}: audio has {array.size} samples at {self.sampling_rate} Hz, fewer than the "
                f"{self.win_length} of one analysis window ({1000 * self.win_length / self.sampling_rate:g} ms)"
            )
        return array

    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        *,
        padding: bool | str | PaddingStrategy = "longest",
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        resample: bool | None = None,
        where: str | Sequence[str] | None = None,
    ) -> BatchFeature:
        """Compute padded log-mel filterbank features for one clip or a batch of clips.

        Args:
            raw_speech:
                One clip or a list of clips. A clip is a 1-D float array (numpy, torch, or a list of floats), a 2-D
                multi-channel array (mixed down to mono), an int16 PCM array, or a `datasets.Audio` dict
                `{"array": ..., "sampling_rate": ...}`. A bare 2-D array is one multi-channel clip, never a batch.
            sampling_rate (`int`, *optional*):
                Sampling rate of clips given as plain arrays. A dict's own `sampling_rate` wins; a conflicting value
                here is an error. If neither is given, `self.sampling_rate` is assumed (with a warning).
            padding (`bool`, `str` or `PaddingStrategy`, *optional*, defaults to `"longest"`):
                `"longest"`/`True` pads to the longest clip, `"max_length"` pads to `max_length`, `False` returns a
                list of unpadded arrays.
            max_length (`int`, *optional*):
                Maximum number of frames; longer clips are truncated (before CMVN, so the statistics describe the
                frames kept).
            pad_to_multiple_of (`int`, *optional*):
                Round the padded length up to a multiple of this.
            return_attention_mask (`bool`, *optional*):
                Overrides `self.return_attention_mask`.
            return_tensors (`str` or `TensorType`, *optional*):
                `"pt"` or `"np"`; default numpy arrays.
            resample (`bool`, *optional*):
                Overrides `self.resample` for this call.
            where (`str` or sequence of `str`, *optional*):
                Location used in error messages, e.g. `"row 3, column 'wav'"`, or one such string per clip.

        Returns:
            `BatchFeature` with `input_features` of shape `(batch, frames, feature_size)` float32 and, unless
            disabled, `attention_mask` of shape `(batch, frames)`.
        """
        clips = self._as_clip_list(raw_speech)
        if not isinstance(where, (str, type(None))) and len(where) != len(clips):
            raise ValueError(f"`where` has {len(where)} entries for {len(clips)} audio clip(s)")
        if max_length is not None and (isinstance(max_length, bool) or max_length <= 0):
            raise ValueError(f"max_length must be a positive number of frames, got {max_length!r}")
        if sampling_rate is not None:
            sampling_rate = _as_sampling_rate(sampling_rate, "sampling_rate")
        resample = self.resample if resample is None else resample

        waveforms = []
        for index, clip in enumerate(clips):
            waveform = self._to_mono_waveform(clip, sampling_rate, resample, _where_for(where, index, len(clips)))
            if max_length is not None:
                # Cut the waveform to what `max_length` frames need, so truncation also saves the FFT work.
                waveform = waveform[: self.win_length + (max_length - 1) * self.hop_length]
            waveforms.append(waveform)

        features = [self._extract_fbank_features(waveform) for waveform in waveforms]
        if self.do_ceptral_normalize:
            # Each clip over its own frames, before padding (which would cast to float32 first).
            features = self.normalize(features)
        features = [feature.astype(np.float32, copy=False) for feature in features]

        with_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        if padding is False or padding == PaddingStrategy.DO_NOT_PAD:
            data: dict[str, Any] = {"input_features": features}
            if with_mask:
                data["attention_mask"] = [np.ones(len(feature), dtype=np.int32) for feature in features]
            return BatchFeature(data, tensor_type=return_tensors)
        return self.pad(
            BatchFeature({"input_features": features}),
            padding=padding,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=with_mask,
            return_tensors=return_tensors or "np",
        )

    @staticmethod
    def _as_clip_list(raw_speech: Any) -> list[Any]:
        """Split the `raw_speech` argument into a list of clips (see `__call__` for what counts as one clip)."""
        if isinstance(raw_speech, Mapping) or isinstance(raw_speech, np.ndarray) or is_torch_tensor(raw_speech):
            return [raw_speech]
        if isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("No audio given: raw_speech is an empty list")
            if isinstance(raw_speech[0], (Real, np.number)):
                return [raw_speech]
            return list(raw_speech)
        raise TypeError(
            "raw_speech must be an audio array, a dict with 'array' and 'sampling_rate', or a list of those; got "
            f"{type(raw_speech).__name__}"
        )
