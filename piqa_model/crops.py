"""The model's view of an image: resize the short side, cut five (or one centre) crops, for the whole
image and for the face region; plus the LIQE patches. Everything stays uint8 until the network
normalises it, so prepared inputs are small to ship between processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from piqa_model.config import ModelConfig
from piqa_model.faces import FaceDetection, face_region
from piqa_model.images import to_uint8_tensor_chw
from piqa_model.liqe import cut_patches


@dataclass
class PreparedImage:
    """Model inputs of one image: crops [K, 3, S, S] uint8 and, with LIQE, patches [15, 3, 224, 224]."""

    overall: torch.Tensor
    face: torch.Tensor
    liqe_patches: torch.Tensor | None


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR)


def crop_views(image: Image.Image, config: ModelConfig) -> torch.Tensor:
    """[K, 3, crop, crop] uint8: five crops (4 corners then centre) or the centre one."""
    pixels = to_uint8_tensor_chw(resize_short_side(image, config.resize))
    height, width = pixels.shape[-2:]
    size = config.crop
    top, left = (height - size) // 2, (width - size) // 2
    centre = pixels[:, top : top + size, left : left + size]
    if config.crop_mode == "center":
        return centre.unsqueeze(0).contiguous()
    corners = [
        pixels[:, :size, :size],
        pixels[:, :size, width - size :],
        pixels[:, height - size :, :size],
        pixels[:, height - size :, width - size :],
    ]
    return torch.stack([*corners, centre]).contiguous()


def prepare(image: Image.Image, detection: FaceDetection, config: ModelConfig) -> PreparedImage:
    """Model inputs for one upright RGB image and its face detection."""
    face = image.crop(face_region(detection.box, image.width, image.height, config.face_margin))
    patches = None
    if config.aux == "liqe" and config.liqe is not None:
        patches = cut_patches(to_uint8_tensor_chw(image), config.liqe)
    return PreparedImage(crop_views(image, config), crop_views(face, config), patches)
