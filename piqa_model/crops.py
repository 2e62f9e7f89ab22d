"""The model's view of an image: resize the short side, cut five (or one centre) crops, for the whole
image and for the face region; plus the LIQE patches. Everything stays uint8 until the network
normalises it, so prepared inputs are small to ship between processes.

A `PreparedImage` holds the two resized views rather than their crops: the five crops of a view overlap
and repeat most of its pixels, so the view is the smaller thing to ship; the crops are cut from it where
the network reads them (`cut_crops`: slicing, on any device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from piqa_model.config import ModelConfig
from piqa_model.faces import Box, FaceDetection, face_region
from piqa_model.images import to_uint8_tensor_chw
from piqa_model.liqe import cut_patches
from piqa_model.options import CropMode


@dataclass
class PreparedImage:
    """Model inputs of one image: the whole image's and the face region's views [3, H, W] uint8 (see
    `resized_view`), how to cut their crops, and, with LIQE, patches [15, 3, 224, 224].

    `overall` and `face` are the crops [K, 3, S, S]; `crops(view)` cuts them from a view moved elsewhere
    (a GPU) first.
    """

    overall_view: torch.Tensor
    face_view: torch.Tensor
    crop: int
    crop_mode: CropMode
    liqe_patches: torch.Tensor | None

    @property
    def overall(self) -> torch.Tensor:
        return self.crops(self.overall_view)

    @property
    def face(self) -> torch.Tensor:
        return self.crops(self.face_view)

    def crops(self, view: torch.Tensor) -> torch.Tensor:
        """The crops [K, 3, S, S] of `view`, this image's `overall_view` or `face_view` on any device."""
        return cut_crops(view, self.crop, self.crop_mode)


def resize_short_side(
    image: Image.Image, size: int, box: Box | None = None, extent: tuple[int, int] | None = None
) -> Image.Image:
    """Resize `image` (or its region `box`, in float pixels) so that the short side is `size`.

    `extent` is the region's size in original pixels when `image` is a reduced decode: the output size is
    computed from it, so that it is the same as from a full decode.
    """
    if box is None:
        box = (0.0, 0.0, float(image.width), float(image.height))
    width, height = extent or (box[2] - box[0], box[3] - box[1])
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR, box=box)


def resized_view(
    image: Image.Image, config: ModelConfig, box: Box | None = None, extent: tuple[int, int] | None = None
) -> torch.Tensor:
    """[3, H, W] uint8: `image` or its region `box` resized (see `resize_short_side`), cut down to the
    bounding box of the crops `config.crop_mode` takes: the whole view for five crops, the centre crop alone
    for one. `cut_crops` cuts the same crops from it as from the whole view."""
    pixels = to_uint8_tensor_chw(resize_short_side(image, config.resize, box, extent))
    if config.crop_mode == "center":
        return _centre(pixels, config.crop).contiguous()
    return pixels


def cut_crops(view: torch.Tensor, size: int, crop_mode: CropMode) -> torch.Tensor:
    """[K, 3, size, size] from a view [3, H, W] on any device: five crops (4 corners then centre) or the
    centre one."""
    centre = _centre(view, size)
    if crop_mode == "center":
        return centre.unsqueeze(0).contiguous()
    height, width = view.shape[-2:]
    corners = [
        view[:, :size, :size],
        view[:, :size, width - size :],
        view[:, height - size :, :size],
        view[:, height - size :, width - size :],
    ]
    return torch.stack([*corners, centre])


def _centre(view: torch.Tensor, size: int) -> torch.Tensor:
    height, width = view.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return view[:, top : top + size, left : left + size]


def crop_views(
    image: Image.Image, config: ModelConfig, box: Box | None = None, extent: tuple[int, int] | None = None
) -> torch.Tensor:
    """[K, 3, crop, crop] uint8: the crops (`cut_crops`) of `image` or its region `box` (`resized_view`)."""
    return cut_crops(resized_view(image, config, box, extent), config.crop, config.crop_mode)


def prepare(
    image: Image.Image, detection: FaceDetection, config: ModelConfig, original_size: tuple[int, int] | None = None
) -> PreparedImage:
    """Model inputs for one upright RGB image and its face detection.

    `image` may be a reduced decode of an original of `original_size` (see `piqa_model.decode`); the detection
    is then in original pixels. The face region is computed in original pixels and mapped onto `image`, so the
    views see the same part of the photo as from a full decode.
    """
    width, height = original_size or image.size
    if (width, height) != image.size and config.aux == "liqe":
        raise ValueError("LIQE reads patches at the native resolution: give prepare() a full decode")
    scale_x, scale_y = image.width / width, image.height / height
    left, top, right, bottom = face_region(detection.box, width, height, config.face_margin)
    box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    # Cut the whole pixels around the region, then resample exactly the region: a full decode's integer crop
    # stays the same crop, and a reduced image's fractional region keeps its exact position.
    outer = (
        math.floor(box[0]),
        math.floor(box[1]),
        min(image.width, math.ceil(box[2])),
        min(image.height, math.ceil(box[3])),
    )
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    face = resized_view(image.crop(outer), config, inner, (right - left, bottom - top))
    patches = None
    if config.aux == "liqe" and config.liqe is not None:
        patches = cut_patches(to_uint8_tensor_chw(image), config.liqe)
    overall = resized_view(image, config, extent=(width, height))
    return PreparedImage(overall, face, config.crop, config.crop_mode, patches)
