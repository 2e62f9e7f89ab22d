"""Turning the bytes of a real photo into an RGB image the model can read.

Real collections hold EXIF-rotated phone photos, palette PNGs with transparency, CMYK JPEGs, 16-bit
TIFFs and greyscale scans; all of them become 8-bit RGB here, upright. Anything that is not a
decodable image raises an `ImageError` subclass whose `status` names the output-row status.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from piqa_model.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from piqa_model.options import DEFAULT_MAX_PIXELS

# `open_image` enforces its own, per-call pixel limit from the header, before any pixel is decoded, and
# names the size in its error; PIL's global bomb check would pre-empt it with a fixed threshold. Open
# untrusted images through `open_image` only.
Image.MAX_IMAGE_PIXELS = None

_BACKGROUND = (255, 255, 255)


def open_image(data: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into an upright 8-bit RGB image.

    Raises ImageDecodeError (not an image, truncated), UnsupportedImageError (an image mode or format
    we cannot convert) or ImageTooLargeError (more than `max_pixels`, checked from the header before
    the pixels are decoded).
    """
    image = data if isinstance(data, Image.Image) else read_header(data)
    check_size(image, max_pixels)
    return decode_upright(image)


def read_header(data: bytes) -> Image.Image:
    """Open `data` lazily: the header is parsed, no pixel is decoded yet (so `Image.draft` can still apply)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        unsupported = _sniff_unsupported_format(data)
        if unsupported:
            raise UnsupportedImageError(f"{unsupported} images are not supported; convert them to JPEG") from None
        raise ImageDecodeError("not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ImageDecodeError(f"unreadable image header: {exc}") from None


def check_size(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image above `max_pixels` or of zero size, from its (header) size alone."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{width}x{height} is above the limit of {max_pixels} pixels")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image has zero size {width}x{height}")


def decode_upright(image: Image.Image) -> Image.Image:
    """Decode the pixels of a lazily opened image, apply its EXIF orientation, convert to 8-bit RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image)
    except OSError as exc:
        raise ImageDecodeError(f"corrupt or truncated image data: {exc}") from None
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None
    return to_rgb(image)


_ISO_BMFF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF"}


def _sniff_unsupported_format(data: bytes) -> str | None:
    """Name a real image format this Pillow build cannot read (HEIC/HEIF/AVIF, JPEG XL), from magic bytes."""
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BMFF_BRANDS:
        return _ISO_BMFF_BRANDS[data[8:12]]
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        if "transparency" not in image.info:
            return image.convert("RGB")
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise UnsupportedImageError(f"unsupported image mode {mode!r}")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 8 bits instead of PIL's clipping conversion."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = array / 257.0
    elif image.mode == "F":
        scaled = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
    else:
        peak = array.max(initial=0.0)
        scaled = array / 257.0 if peak > 255 else array
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_uint8_tensor_chw(image: Image.Image):
    """An RGB PIL image as a contiguous uint8 torch tensor [3, H, W]."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
