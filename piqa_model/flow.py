"""The one per-image flow: preview decode -> batched face detection -> the model's decode -> crops -> record.

`Scorer`, the pipeline's stages, training's feature cache and the benchmarks all run images through
`ImageFlow`, so an image gets the same decode, detection and crops whoever scores it, and fails the same way:
a known image fault (`ImageError`) becomes its status; anything else raised while decoding becomes
`decode_error` naming the exception's type; one image never stops a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from piqa_model.calibration import ScoreScale
from piqa_model.config import ModelConfig
from piqa_model.crops import PreparedImage, prepare
from piqa_model.decode import ModelImage, Preview, open_preview
from piqa_model.errors import ImageError
from piqa_model.faces import FaceDetection, FaceDetector
from piqa_model.liqe import summarise
from piqa_model.options import DEFAULT_DECODE, DEFAULT_MAX_PIXELS, DecodeMode
from piqa_model.record import ScoreRecord

ImageInput = bytes | Image.Image | ImageError  # an encoded image, a decoded one, or why there is none


@dataclass(frozen=True)
class Decoded:
    """One image after decoding and face detection: `image` is None when it failed (`record` says why)."""

    record: ScoreRecord
    image: ModelImage | None = None


class ImageFlow:
    """Decode, detect faces and cut the model's inputs for batches of images (detection runs batched)."""

    def __init__(
        self,
        config: ModelConfig,
        detector: FaceDetector,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode: DecodeMode = DEFAULT_DECODE,
    ) -> None:
        self.config, self.detector, self.max_pixels, self.decode = config, detector, max_pixels, decode

    def decode_and_detect(self, images: Sequence[ImageInput]) -> list[Decoded]:
        """One `Decoded` per input, in order; an `ImageError` given as input is that image's failure."""
        results: list[Decoded] = []
        previews: list[tuple[int, Preview]] = []
        for index, data in enumerate(images):
            try:
                if isinstance(data, ImageError):
                    raise data
                preview = open_preview(data, self.config, self.detector.detect_size, self.max_pixels, self.decode)
            except Exception as exc:
                results.append(Decoded(failure_record(exc)))
                continue
            width, height = preview.original_size
            results.append(Decoded(ScoreRecord("ok", width=width, height=height)))
            previews.append((index, preview))
        detections = self.detector.detect([preview.image for _, preview in previews]) if previews else []
        for (index, preview), detection in zip(previews, detections, strict=True):
            try:
                image = preview.finish(detection)
            except Exception as exc:
                results[index] = Decoded(failure_record(exc))
                continue
            results[index] = Decoded(_with_detection(results[index].record, image.detection), image)
        return results

    def prepare(self, images: Sequence[ImageInput]) -> list[tuple[ScoreRecord, PreparedImage | None]]:
        """(record so far, model inputs or None when the image failed) per input, in order."""
        return [
            (item.record, None if item.image is None else self.inputs(item.image))
            for item in self.decode_and_detect(images)
        ]

    def inputs(self, image: ModelImage) -> PreparedImage:
        return prepare(image.image, image.detection, self.config, image.original_size)


def failure_record(exc: BaseException) -> ScoreRecord:
    """The record of an image that could not be decoded: a known fault's status, else `decode_error`."""
    if isinstance(exc, ImageError):
        return ScoreRecord(exc.status, error=str(exc))
    return ScoreRecord("decode_error", error=f"{type(exc).__name__}: {exc}")


def add_score(record: ScoreRecord, raw_score: float, aux: torch.Tensor | None, scale: ScoreScale | None) -> None:
    """Fill `record` (an ok image's) with its score on the bundle's scale and, with LIQE, its summary."""
    record.score = float(raw_score if scale is None else scale.apply(float(raw_score)))
    if aux is not None:
        summary = summarise(aux.view(1, -1))[0]
        record.liqe_quality, record.liqe_scene, record.liqe_distortion = (
            summary.quality,
            summary.scene,
            summary.distortion,
        )


def _with_detection(record: ScoreRecord, detection: FaceDetection) -> ScoreRecord:
    record.num_faces = detection.num_faces
    record.face_box = list(detection.box) if detection.box is not None else None
    record.face_prob = detection.prob
    return record
