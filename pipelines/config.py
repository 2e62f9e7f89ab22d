"""The scoring job's configuration, saved in the run manifest next to the scores it produced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from piqa_model.images import DEFAULT_MAX_PIXELS


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
    detect_size: int = 640
    min_face_size: int = 20  # in detection-preview pixels
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the model in each scoring actor (GPU jobs; a compile per batch shape)
    crop_mode: Literal["five", "center"] | None = None  # None: the bundle's own
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode: Literal["full", "draft"] = "draft"  # draft: JPEGs decoded only as finely as the model needs

    def __post_init__(self) -> None:
        for name in ("prepare_actors", "score_actors"):
            if getattr(self, name) is None:
                continue
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be MIN,MAX with 1 <= MIN <= MAX, got {low},{high}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError("cpus_per_actor must be positive")
        if (self.batch_size is not None and self.batch_size < 1) or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError("gpus_per_actor must not be negative")
        if self.crop_mode not in (None, "five", "center"):
            raise ValueError(f"crop_mode must be 'five' or 'center', got {self.crop_mode!r}")
        if self.decode not in ("full", "draft"):
            raise ValueError(f"decode must be 'full' or 'draft', got {self.decode!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
