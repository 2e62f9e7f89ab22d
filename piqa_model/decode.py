"""Decode at the resolution the model needs.

A 12 MP photo is decoded in full only to be shrunk twice: to a 640-px preview for face detection and to a
448-px short side for the model. JPEG can do most of that shrinking inside the decoder: libjpeg-turbo's scaled
IDCT (PIL's `Image.draft`) decodes at 1/2, 1/4 or 1/8 of the size for a fraction of the cost. So a JPEG is
decoded twice, both times small:

1. the preview, at the coarsest scale whose long side stays at least `detect_size`, for the face detector;
2. the model's image, at the coarsest scale at which both the whole image's short side and the face region's
   short side (the face box grown by the margin: what the face branch reads) stay at least `config.resize`, so
   every model input is still a downscale of real pixels, as from a full decode. The preview is reused when it
   is already that fine.

Boxes and the output sizes stay in original pixels, upright (what a full decode gives); `prepare` maps them
onto the reduced image. Other formats, JPEGs too small to reduce, PIL images and models with the LIQE branch
(whose patches are read at the native resolution) are decoded in full, as `open_image` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from PIL import Image

from piqa_model.config import ModelConfig
from piqa_model.errors import ImageDecodeError
from piqa_model.faces import FaceDetection, face_region
from piqa_model.images import check_size, decode_upright, open_image, read_header
from piqa_model.options import DEFAULT_DECODE, DEFAULT_MAX_PIXELS, DecodeMode

_DCT_SCALES = (8, 4, 2)  # the reductions libjpeg's scaled IDCT offers (as denominators); 1 is a full decode


@dataclass(frozen=True)
class ModelImage:
    """An upright RGB image decoded for the model, and its face detection in original pixels."""

    image: Image.Image
    detection: FaceDetection
    original_size: tuple[int, int]  # (width, height) of the full decode

    @property
    def scale(self) -> float:
        """Width of `image` over the original's (1.0 for a full decode)."""
        return self.image.width / self.original_size[0]


@dataclass(frozen=True)
class Preview:
    """What the face detector reads (`image`, upright RGB at 1/`denominator` of the original), and what
    `finish` needs to decode the image for the model."""

    image: Image.Image
    original_size: tuple[int, int]
    denominator: int = 1
    data: bytes | None = field(default=None, repr=False)  # the encoded image, kept while a reduction may follow
    config: ModelConfig | None = field(default=None, repr=False)

    def finish(self, detection: FaceDetection) -> ModelImage:
        """The model's image for `detection` (found in `image`); may decode the bytes a second time.

        Raises ImageDecodeError if that decode fails.
        """
        if self.data is None or self.config is None:  # a full decode: already what the model reads
            return ModelImage(self.image, detection, self.original_size)
        width, height = self.original_size
        scale_x, scale_y = self.image.width / width, self.image.height / height
        if detection.box is not None:
            left, top, right, bottom = detection.box
            detection = replace(detection, box=(left / scale_x, top / scale_y, right / scale_x, bottom / scale_y))
        region = face_region(detection.box, width, height, self.config.face_margin)
        needed = min(
            _coarsest(min(width, height), self.config.resize),
            _coarsest(min(region[2] - region[0], region[3] - region[1]), self.config.resize),
        )
        if needed >= self.denominator:
            return ModelImage(self.image, detection, self.original_size)
        image, _, _ = _decode(read_header(self.data), needed)
        return ModelImage(image, detection, self.original_size)


def open_preview(
    data: bytes | Image.Image,
    config: ModelConfig,
    detect_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mode: DecodeMode = DEFAULT_DECODE,
) -> Preview:
    """Decode `data` for face detection (see the module's docstring); `mode="full"` decodes in full.

    Raises the `ImageError`s of `open_image`; the pixel limit is checked from the header, before decoding.
    """
    if mode == "full" or isinstance(data, Image.Image) or config.aux == "liqe":
        image = open_image(data, max_pixels)
        return Preview(image, image.size)
    header = read_header(data)
    check_size(header, max_pixels)
    denominator = min(_coarsest(min(header.size), config.resize), _coarsest(max(header.size), detect_size))
    image, denominator, original_size = _decode(header, denominator)
    if denominator == 1:
        return Preview(image, original_size)
    return Preview(image, original_size, denominator, data, config)


def _coarsest(length: int, minimum: int) -> int:
    """The largest DCT denominator that keeps `length` original pixels at least `minimum` pixels long."""
    return next((scale for scale in _DCT_SCALES if length >= minimum * scale), 1)


def _decode(image: Image.Image, denominator: int) -> tuple[Image.Image, int, tuple[int, int]]:
    """Decode a lazily opened image at 1/`denominator` where its format allows (JPEG), else in full.

    Returns the upright RGB image, the denominator it was decoded at and the original's upright size.
    """
    stored = image.size
    if denominator > 1:
        try:
            # Asking for size // denominator makes PIL pick exactly that scale (it takes the largest that fits).
            drafted = image.draft("RGB", (stored[0] // denominator, stored[1] // denominator))
        except Exception as exc:  # an odd JPEG layout: treat as undecodable, like `open_image` would
            raise ImageDecodeError(f"cannot decode image: {exc}") from None
        denominator = 1 if drafted is None else round(stored[0] / drafted[1][2])
    reduced = image.size
    upright = decode_upright(image)
    # EXIF orientations 5-8 swap the axes. A square reduction of a non-square original cannot show it, and
    # need not: its sides differ by less than one reduced pixel.
    original = stored if upright.size == reduced else (stored[1], stored[0])
    return upright, denominator, original
