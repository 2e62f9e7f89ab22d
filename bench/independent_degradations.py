"""Degradations written apart from `training/degrade.py`, for judging a model on faults it was not trained to see.

The starter model learns from `piqa data degrade`; measured only on that generator's output it would be graded by
its own teacher. These seven faults, four levels each, use other formulas and other libraries' filters (Pillow's
blur, enhancers and resampling; Poisson shot noise; a box motion kernel): the kinds a user meets (blur, motion
blur, noise, JPEG, darkening, over-exposure, low resolution), in forms the training generator does not make.
Nothing in training reads this module.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy.ndimage import uniform_filter1d

LEVELS = 4


def _blur(image: Image.Image, level: int) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=[1.0, 2.0, 3.5, 6.0][level - 1] * max(image.size) / 768))


def _motion(image: Image.Image, level: int) -> Image.Image:
    length = max(2, round([5, 10, 18, 30][level - 1] * max(image.size) / 768))
    pixels = np.asarray(image, dtype=np.float32)
    return _image(uniform_filter1d(pixels, size=length, axis=1 if level % 2 else 0, mode="nearest"))


def _noise(image: Image.Image, level: int) -> Image.Image:
    photons = [4.0, 1.5, 0.6, 0.25][level - 1]  # photons per grey level: std 6, 9, 15, 23 at mid-grey
    pixels = np.asarray(image, dtype=np.float64)
    rng = np.random.default_rng(level)
    return _image(rng.poisson(pixels * photons) / photons)


def _jpeg(image: Image.Image, level: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=[30, 15, 8, 4][level - 1])
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _dark(image: Image.Image, level: int) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance([0.6, 0.4, 0.25, 0.12][level - 1])


def _bright(image: Image.Image, level: int) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance([1.4, 1.8, 2.4, 3.2][level - 1])


def _low_resolution(image: Image.Image, level: int) -> Image.Image:
    factor = [2, 3, 5, 8][level - 1]
    small = image.resize((max(8, image.width // factor), max(8, image.height // factor)), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BICUBIC)


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


FAULTS = {
    "blur": _blur,
    "motion-blur": _motion,
    "noise": _noise,
    "jpeg": _jpeg,
    "darkening": _dark,
    "over-exposure": _bright,
    "low-resolution": _low_resolution,
}


def series(image: Image.Image) -> dict[str, list[Image.Image]]:
    """Per fault: the clean image, then levels 1..4 (each worse than the one before)."""
    return {name: [image] + [fault(image, level) for level in range(1, LEVELS + 1)] for name, fault in FAULTS.items()}
