"""Image preprocessing for OFA: load anything image-like, resize to S x S (bicubic), scale to [-1, 1].

This is the transform OFA's finetuning datasets apply: `RandomResize([S], max_size=S)` sets the shorter side to S and
caps the longer side at S, so every image becomes S x S and the aspect ratio is not kept. Pixels are then normalized
with mean = std = 0.5. `OFAImageProcessor` is a transformers `PilBackend` image processor (the torchvision-free
backend) configured by class attributes, as SigLIP's is; what it adds is `load_image` (paths, bytes, `datasets` dicts,
with errors that say where the value came from) and the original `(height, width)` of each image, so that predicted
boxes can be mapped back to the original pixels.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageFile
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

__all__ = ["OFAImageProcessor", "load_image"]

# Errors Pillow raises on unreadable, truncated or hostile files (SyntaxError comes from some plugin parsers).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError, EOFError)


def _context(where: str | None) -> str:
    return f" ({where})" if where else ""


# Pixel modes that `convert("RGB")` clips to 0..255 (16/32-bit integers, 32-bit floats): almost every pixel would
# become white or black. There is no one right scaling for them (a depth map, a scan, a mask), so they are refused.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _to_rgb(image: PIL.Image.Image, name: str, where: str | None, *, copy: bool = False) -> PIL.Image.Image:
    """`image` in RGB (a new image when `copy`, e.g. of a file about to be closed), or an error for wide modes."""
    if image.mode in _WIDE_MODES:
        raise ValueError(
            f"Image{name} has PIL mode {image.mode!r} (16/32-bit or float pixels){_context(where)}, which converting "
            "to RGB would clip to white or black; scale it to 8 bits first (mode 'L' or 'RGB')"
        )
    return image if image.mode == "RGB" and not copy else image.convert("RGB")


def _open_and_decode(source: str | io.BytesIO, name: str, where: str | None) -> PIL.Image.Image:
    if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
        raise ValueError(f"Cannot read image {name}{_context(where)}: the image bytes are empty")
    if isinstance(source, str) and not source:
        # Older Pillow (10.0) does not open an empty path but fails on it with an AttributeError.
        raise ValueError(f"Cannot read image{_context(where)}: the path is empty")
    try:
        with PIL.Image.open(source) as opened:
            # load() forces the full decode now, so a truncated file fails here and not deep inside a collator.
            opened.load()
            return _to_rgb(opened, f" {name}", where, copy=True)
    except FileNotFoundError as err:
        raise ValueError(f"Image file {name} does not exist{_context(where)}.") from err
    except PIL.UnidentifiedImageError as err:
        # Pillow's message names the stream object (`<_io.BytesIO object at 0x...>`), which tells the user nothing.
        start = source.getvalue()[:8] if isinstance(source, io.BytesIO) else None
        what = f" (it starts with {start!r})" if start is not None else ""
        raise ValueError(f"Cannot read image {name}{_context(where)}: not an image format Pillow knows{what}") from err
    except _DECODE_ERRORS as err:
        raise ValueError(f"Cannot read image {name}{_context(where)}: {err}") from err


def _array_to_pil(array: np.ndarray, where: str | None, channels_first: bool | None) -> PIL.Image.Image:
    """Convert an HWC / CHW / HW array (uint8 0..255, or float 0..1) into an RGB PIL image."""
    if array.ndim == 3:
        if channels_first is None:
            # Channels-last is what PIL, datasets and video decoders produce, so it wins when both are plausible.
            channels_first = array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4)
        if channels_first:
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"Image array of shape {array.shape} has no 1/3/4-channel axis{_context(where)}.")
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(f"Image array must be 2-D (H, W) or 3-D (H, W, C), got shape {array.shape}{_context(where)}.")
    if array.size == 0:
        raise ValueError(f"Image array of shape {array.shape} is empty{_context(where)}.")

    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"Float image arrays must hold values in [0, 1]; got range [{array.min()}, {array.max()}]"
                f"{_context(where)}. Pass uint8 for 0..255 data."
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"Integer image arrays must hold values in 0..255; got range [{array.min()}, {array.max()}]"
                f"{_context(where)}."
            )
        array = array.astype(np.uint8) * (255 if array.dtype == np.bool_ else 1)
    else:
        raise TypeError(f"Unsupported image array dtype {array.dtype}{_context(where)}.")
    return PIL.Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def load_image(
    image: Any, where: str | None = None, input_data_format: str | ChannelDimension | None = None
) -> PIL.Image.Image:
    """Load one image-like value as an RGB PIL image.

    Args:
        image:
            A `PIL.Image.Image`; a `numpy` array or `torch` tensor, (H, W), (H, W, C) or (C, H, W), uint8 in 0..255 or
            float in [0, 1] (rounded to 8 bits, as if saved as an image file); a file path (`str` / `os.PathLike`);
            encoded bytes; or a dict `{"bytes": ..., "path": ...}` as `datasets.Image(decode=False)` yields.
            Grayscale, palette and RGBA images are converted to RGB (alpha dropped, as OFA does).
        where (`str`, *optional*):
            Where the value comes from, e.g. `"row 7, column 'img'"`; quoted in error messages.
        input_data_format (`str` or `ChannelDimension`, *optional*):
            Channel layout of 3-D arrays, `"channels_first"` or `"channels_last"`; inferred when not given.

    Raises:
        `ValueError`: unreadable, truncated or missing files (the message names the file), bad arrays.
        `TypeError`: values of any other type.
    """
    if isinstance(image, PIL.Image.Image):
        name = f" {image.filename!r}" if isinstance(image, PIL.ImageFile.ImageFile) and image.filename else ""
        try:
            # Images opened lazily (e.g. by `datasets`) decode here; a truncated file must fail with context.
            image.load()
        except _DECODE_ERRORS as err:
            raise ValueError(f"Cannot decode PIL image{name}{_context(where)}: {err}") from err
        return _to_rgb(image, name, where)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        channels_first = None if input_data_format is None else ChannelDimension(input_data_format) == "channels_first"
        return _array_to_pil(image, where, channels_first)
    if isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        if name.startswith(("http://", "https://")):
            raise ValueError(f"Image {name!r}{_context(where)} is a URL; download it first (URLs are not fetched).")
        return _open_and_decode(name, repr(name), where)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open_and_decode(io.BytesIO(bytes(image)), f"<{len(image)} bytes>", where)
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data is not None:
            label = repr(path) if path else f"<{len(data)} bytes>"
            return _open_and_decode(io.BytesIO(bytes(data)), label, where)
        if path is not None:
            return load_image(path, where)
        raise ValueError(f"Image dict has neither 'bytes' nor 'path'{_context(where)}: keys {sorted(image)}.")
    if image is None:
        raise ValueError(f"Image is missing (None){_context(where)}.")
    raise TypeError(
        f"Cannot load an image from a {type(image).__name__}{_context(where)}; expected a PIL image, an array, "
        "a path, bytes or a {'bytes', 'path'} dict."
    )


def _is_single_image(images: Any) -> bool:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return images.ndim in (2, 3)
    return not isinstance(images, (list, tuple))


class OFAImageProcessor(PilBackend):
    r"""
    Image processor for OFA: resize to a fixed `size` with bicubic resampling (aspect ratio not kept), rescale to
    [0, 1], normalize with mean = std = 0.5 to [-1, 1].

    Accepts one image or a list of images; each may be a PIL image, an array/tensor (HWC, CHW or HW; uint8 or float
    in [0, 1]), a path, encoded bytes, or a `{"bytes", "path"}` dict (see [`load_image`]). A 4-D array is a batch.

    Args:
        size (`int` or `dict[str, int]`, *optional*, defaults to 384):
            Output side S (images become S x S), or `{"height": H, "width": W}`.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`):
            Resampling filter.
        do_resize, do_rescale, do_normalize (`bool`, *optional*, default to `True`):
            Switch the three steps.
        rescale_factor (`float`, *optional*, defaults to 1/255):
            Rescale multiplier.
        image_mean, image_std (`float` or `list[float]`, *optional*, default to 0.5):
            Normalization constants.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            `"pt"` (also used for `None`) or `"np"`.

    Call arguments beyond these: `where` (`str`) names the data source in error messages.

    Returns a `BatchFeature` with `pixel_values` (B, 3, H, W) float32 and `original_sizes` (B, 2) int64 as
    (height, width) of each input before resizing.
    """

    resample = PILImageResampling.BICUBIC
    size = {"height": 384, "width": 384}
    do_resize = True
    do_rescale = True
    do_normalize = True
    # OFA normalizes with mean = std = 0.5 (to [-1, 1]), which is transformers' "ImageNet standard" pair.
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    do_convert_rgb = True
    return_tensors = "pt"

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        super().__init__(**kwargs)
        # Refuse options OFA has no use for when the processor is built, not at the first call.
        self._validate_preprocess_kwargs(**{key: getattr(self, key) for key in self._valid_kwargs_names})

    def _validate_preprocess_kwargs(
        self,
        size: SizeDict | None = None,
        do_center_crop: bool | None = None,
        do_pad: bool | None = None,
        do_convert_rgb: bool | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> None:
        super()._validate_preprocess_kwargs(size=size, do_center_crop=do_center_crop, **kwargs)
        if size is not None and not (size.height and size.width):
            raise ValueError(f"OFAImageProcessor resizes to a fixed height and width; got size={dict(size)}.")
        turned_on = [name for name, value in {"do_center_crop": do_center_crop, "do_pad": do_pad}.items() if value]
        if turned_on:
            raise ValueError(f"OFAImageProcessor does not support {turned_on}; OFA only resizes and normalizes.")
        if do_convert_rgb is False:
            raise ValueError("OFAImageProcessor always converts to RGB (the ResNet stem takes 3 channels).")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")

    def preprocess(self, images: Any, *args: Any, where: str | None = None, **kwargs: Unpack[ImagesKwargs]):
        """Preprocess one image or a batch of images; `where` names the data source in error messages."""
        return super().preprocess(images, *args, image_like_kwargs={"where": where}, **kwargs)

    def process_image(
        self,
        image: Any,
        where: str | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Turn one raw input into this backend's working format, a (3, H, W) uint8 array."""
        # `load_image` reads every input kind OFA accepts and already converts to RGB.
        rgb = load_image(image, where=where, input_data_format=input_data_format)
        return super().process_image(rgb, do_convert_rgb=False)

    def _prepare_image_like_inputs(
        self, images: Any, *args: Any, where: str | None = None, **kwargs: Any
    ) -> list[np.ndarray]:
        # The base class would fetch URL strings and accept only decoded images; OFA reads paths, bytes and
        # `datasets` dicts too, and names the failing item of a batch in the error.
        items = [images] if _is_single_image(images) else list(images)
        if not items:
            raise ValueError(f"OFAImageProcessor got no images{_context(where)}.")
        wheres = (
            [where] if len(items) == 1 else [", ".join(filter(None, [where, f"image {i}"])) for i in range(len(items))]
        )
        return [self.process_image(item, *args, where=at, **kwargs) for item, at in zip(items, wheres)]

    def _preprocess(self, images: list[np.ndarray], return_tensors: str | None, **kwargs: Any) -> BatchFeature:
        # The images arrive as loaded, before any resize: their sizes are what boxes are mapped back to.
        original_sizes = np.array([image.shape[-2:] for image in images], dtype=np.int64)  # (B, 2) as (H, W)
        pixel_values = super()._preprocess(images, return_tensors=None, **kwargs)["pixel_values"]
        shapes = {image.shape[-2:] for image in pixel_values}
        if len(shapes) > 1:
            raise ValueError(f"Cannot batch images of different sizes {sorted(shapes)} with do_resize=False.")
        data = {"pixel_values": np.stack(pixel_values), "original_sizes": original_sizes}  # (B, 3, H, W), (B, 2)
        return BatchFeature(data=data, tensor_type=return_tensors or "pt")
