"""Face detection (MTCNN with facenet-pytorch's weights, `piqa_model.mtcnn`) and the face-crop policy.

Detection runs on a downscaled preview (faces in portraits are large, and MTCNN's cost grows with the
pixel count); boxes are mapped back to full-resolution pixels. DN-PIQA's face branch reads the most
confident face, grown by a margin on every side and clipped to the image; with no face it reads the
whole image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from piqa_model.mtcnn import Mtcnn
from piqa_model.options import DEFAULT_DETECT_SIZE, DEFAULT_MIN_FACE_SIZE

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class FaceDetection:
    """What the detector found in one image: the number of faces, and the most confident one."""

    num_faces: int
    box: Box | None  # (left, top, right, bottom) in original pixels
    prob: float | None

    @classmethod
    def none(cls) -> FaceDetection:
        return cls(0, None, None)


def face_region(box: Box | None, width: int, height: int, margin: int) -> tuple[int, int, int, int]:
    """Integer crop (left, top, right, bottom): `box` grown by `margin` px, clipped; whole image if None."""
    if box is None:
        return 0, 0, width, height
    left, top, right, bottom = box
    region = (
        max(0, int(np.floor(left - margin))),
        max(0, int(np.floor(top - margin))),
        min(width, int(np.ceil(right + margin))),
        min(height, int(np.ceil(bottom + margin))),
    )
    if region[2] - region[0] < 1 or region[3] - region[1] < 1:
        return 0, 0, width, height
    return region


class FaceDetector:
    """MTCNN over previews; images whose previews share a size are detected in one batch."""

    def __init__(
        self,
        detect_size: int = DEFAULT_DETECT_SIZE,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        device: str | torch.device = "cpu",
    ) -> None:
        self.detect_size = detect_size
        self.min_face_size = min_face_size
        self.mtcnn = Mtcnn(min_face_size).to(torch.device(device))

    def _preview(self, image: Image.Image) -> tuple[Image.Image, float]:
        scale = min(1.0, self.detect_size / max(image.size))
        if scale == 1.0:
            return image, 1.0
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR), scale

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[FaceDetection]:
        """One `FaceDetection` per RGB image, in order."""
        previews = [self._preview(image) for image in images]
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (preview, _) in enumerate(previews):
            if min(preview.size) >= self.min_face_size:  # smaller: MTCNN's pyramid is empty, no face
                by_size[preview.size].append(index)
        results: list[FaceDetection] = [FaceDetection.none()] * len(images)
        for indices in by_size.values():
            batch = np.stack([np.asarray(previews[i][0]) for i in indices])
            for i, (image_boxes, image_probs) in zip(indices, self.mtcnn.detect(batch), strict=True):
                results[i] = _most_confident(image_boxes, image_probs, previews[i][1])
        return results


def _most_confident(boxes: np.ndarray, probs: np.ndarray, scale: float) -> FaceDetection:
    if len(boxes) == 0:
        return FaceDetection.none()
    best = int(np.argmax(probs))
    box = tuple(float(v) / scale for v in boxes[best])
    return FaceDetection(len(boxes), box, float(probs[best]))  # type: ignore[arg-type]
