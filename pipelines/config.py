"""The scoring job's configuration, saved in the run manifest next to the scores it produced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from piqa_model import options
from piqa_model.errors import ConfigError

Runner = Literal["auto", "ray", "in-process"]
"""Where a job runs: on Ray (the cluster of RAY_ADDRESS, or a local one), or in this process. `auto`: in this
process for a small folder of images when no cluster is named and Ray is not already up here
(`pipelines.score.SMALL_JOB_IMAGES`), else on Ray. The stages are the same either way."""


@dataclass(frozen=True)
class ScoreConfig:
    input: str
    output: str
    bundle: str | None = None  # None: the default bundle
    s3_endpoint: str | None = None
    shard_size: int = 1000  # images per virtual shard when the input is a folder of files
    image_column: str = "jpg"
    key_column: str = "key"
    overwrite: bool = False
    batch_size: int | None = None  # images per model forward; None: 32 beside a GPU, 1 on CPUs
    prepare_actors: tuple[int, int] | None = None  # (min, max); None: fill the cluster (pipelines.layout)
    score_actors: tuple[int, int] | None = None
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else CPU
    cpus_per_actor: float | None = None  # None: 1 beside a GPU; without GPUs, one single-threaded actor per core
    detect_size: int = options.DEFAULT_DETECT_SIZE
    min_face_size: int = options.DEFAULT_MIN_FACE_SIZE  # in detection-preview pixels
    precision: options.Precision = options.DEFAULT_PRECISION
    compile: bool = False  # torch.compile the model in each scoring actor (GPU jobs; a compile per batch shape)
    crop_mode: options.CropMode | None = None  # None: the bundle's own
    max_pixels: int = options.DEFAULT_MAX_PIXELS
    max_image_bytes: int = options.DEFAULT_MAX_IMAGE_BYTES  # larger encoded images are read_error rows
    decode: options.DecodeMode = options.DEFAULT_DECODE
    runner: Runner = "auto"

    def __post_init__(self) -> None:
        for name in ("prepare_actors", "score_actors"):
            if getattr(self, name) is None:
                continue
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ConfigError(f"{name} must be MIN,MAX with 1 <= MIN <= MAX, got {low},{high}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ConfigError("cpus_per_actor must be positive")
        if (self.batch_size is not None and self.batch_size < 1) or self.shard_size < 1:
            raise ConfigError("batch_size and shard_size must be at least 1")
        if self.max_image_bytes < 1:
            raise ConfigError(f"max_image_bytes must be at least 1, got {self.max_image_bytes}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError("gpus_per_actor must not be negative")
        options.check_choice("precision", self.precision, options.Precision)
        if self.crop_mode is not None:
            options.check_choice("crop_mode", self.crop_mode, options.CropMode)
        options.check_choice("decode", self.decode, options.DecodeMode)
        options.check_choice("runner", self.runner, Runner)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
