"""The scoring options a user can set, and their defaults, defined once.

`FaceDetector`, `Scorer`, the scoring job's `ScoreConfig`, the `piqa score` flags (their choices and defaults)
and the training configuration all read them from here.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from piqa_model.errors import ConfigError

Precision = Literal["fp32", "bf16"]
"""bf16: the network runs under bfloat16 autocast (GPUs, CPUs with AVX512-BF16/AMX)."""

CropMode = Literal["five", "center"]
"""Crops each branch reads per image: five (four corners and the centre) or the centre one."""

DecodeMode = Literal["full", "draft"]
"""draft: JPEGs decoded only as finely as detection and the model need (`piqa_model.decode`); full: every pixel."""

DEFAULT_PRECISION: Precision = "fp32"
DEFAULT_DECODE: DecodeMode = "draft"

DEFAULT_DETECT_SIZE = 640
"""Longest side of the preview that MTCNN sees."""

DEFAULT_MIN_FACE_SIZE = 20
"""Smallest face MTCNN looks for, in preview pixels (MTCNN's own default). Raising it for collections of
close-up portraits drops the finest pyramid levels and makes detection faster (BENCHMARKS.md, "Face detection")."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Refuse images above 100 megapixels: bigger than any camera photo, typical of decompression bombs."""

DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Refuse an encoded image above 256 MiB (a tar member, a Parquet cell, an image file) as it is read, before its
bytes become a record: a 100 MP camera JPEG is about 50 MB, so only uncompressed scans near `DEFAULT_MAX_PIXELS`
come close, and one hostile cell never travels on to decoding."""


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Raise ConfigError unless `value` is one of the values of the `Literal` type `choices`."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
