"""RankIQA-style synthetic degradations: clean portraits become labelled, within-photo ranked training data.

Each source photo yields its clean version (level 0) and, for every kind, levels 1..L of growing severity.
The label is the negated level, and the group is the source photo: a level-2 blur is only ever compared
with another version of the same photo, so the ranking loss learns "worse than" without needing the
kinds to be exactly comparable. The levels are still chosen so that level L of every kind is strongly
degraded (face still recognisable) and the same level is roughly equally bad across kinds.

Every row also carries a `label_std` (default 0.5 levels): the spread the pairwise loss assumes around a
label. Versions of one kind are ranked exactly, so the targets should be sharp; half a level still leaves
room for a level-2 blur and a level-2 noise not being exactly equally bad.

Severity parameters are interpolated between a mild (level 1) and a strong (level L) value, geometrically for blur,
noise and JPEG quality (their perceived effect is roughly logarithmic) and linearly for the exposure errors
(already in stops) and the colour cast. The exposure ranges are wide on purpose: on a studio portrait of a dark-
skinned sitter against a white background, +1.5 stops only clips a background that was nearly white already while
the face looks better lit, and 0.75 stops darker looks no worse than the original; a model trained on those levels
learnt "brighter face = better" and ranked overexposure backwards on such photos. From +0.5 to +2.5 stops the face
itself washes out, and from -1 stop the darkening is plain. Blur is given in pixels at a 512-pixel longest side and
scaled with the image, so it looks the same whatever `max_size` is; noise and JPEG act per pixel.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy.ndimage import gaussian_filter

from pipelines.storage import Storage, StorageError
from piqa_model.errors import ConfigError, ImageError
from piqa_model.images import open_image

KINDS = ("blur", "noise", "jpeg", "underexposure", "overexposure", "colour")
MAX_LEVELS = 10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BLUR_REFERENCE_SIZE = 512
"""Blur sigmas are in pixels at this longest side and scale with the image."""


@dataclass(frozen=True)
class Severity:
    """How one kind's parameter runs from level 1 (`mild`) to level L (`strong`)."""

    parameter: str
    mild: float
    strong: float
    geometric: bool
    integer: bool = False

    def values(self, levels: int) -> list[float]:
        """The parameter for levels 1..`levels`; a single level is the strong one."""
        values = []
        for level in range(1, levels + 1):
            t = (level - 1) / (levels - 1) if levels > 1 else 1.0
            if self.geometric:
                value = self.mild * (self.strong / self.mild) ** t
            else:
                value = self.mild + (self.strong - self.mild) * t
            values.append(float(round(value)) if self.integer else round(value, 4))
        return values


SEVERITIES = {
    "blur": Severity("gaussian sigma, pixels at a 512-pixel longest side", 1.0, 6.0, geometric=True),
    "noise": Severity("gaussian noise standard deviation, of 0..255", 5.0, 45.0, geometric=True),
    "jpeg": Severity("JPEG quality (Pillow, 4:2:0)", 40, 6, geometric=True, integer=True),
    "underexposure": Severity("exposure error in stops (linear light, sRGB), darker", 1.0, 4.0, geometric=False),
    "overexposure": Severity("exposure error in stops (linear light, sRGB), brighter, clipped", 0.5, 2.5, False),
    "colour": Severity("colour-cast gain amplitude at constant luma (hue drawn per source)", 0.1, 0.5, False),
}


@dataclass(frozen=True)
class DegradeConfig:
    """What `piqa data degrade` makes: recorded in the output's `degrade.json`."""

    input: str
    output: str
    levels: int = 5
    kinds: tuple[str, ...] = KINDS
    max_size: int = 512
    seed: int = 0
    limit: int | None = None
    s3_endpoint: str | None = None
    label_std: float = 0.5

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise ConfigError(f"unknown degradation kind {', '.join(unknown)}; choose from: {', '.join(KINDS)}")
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"kinds must be one or more distinct names of: {', '.join(KINDS)}")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ConfigError(f"levels must be between 1 and {MAX_LEVELS}, got {self.levels}")
        if self.max_size < 0:
            raise ConfigError(
                f"max size must be 0 (keep full size) or a positive number of pixels, got {self.max_size}"
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.label_std <= 0:
            raise ConfigError(f"label std must be positive, got {self.label_std}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")

    def parameters(self) -> dict[str, dict[str, object]]:
        """Per kind: what its parameter means and its value at levels 1..L."""
        return {
            kind: {"parameter": SEVERITIES[kind].parameter, "values": SEVERITIES[kind].values(self.levels)}
            for kind in self.kinds
        }


@dataclass
class DegradeSummary:
    """What was written; `skipped` holds (uri, reason) of the sources that could not be read."""

    sources: int
    images: int
    manifest: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        skipped = f" ({len(self.skipped)} unreadable, skipped)" if self.skipped else ""
        return f"degraded {self.sources} source photos{skipped} into {self.images} images: {self.manifest}"


def downscale(image: Image.Image, max_size: int) -> Image.Image:
    """Shrink so that the longest side is at most `max_size` (0: unchanged); never enlarges."""
    longest = max(image.size)
    if max_size == 0 or longest <= max_size:
        return image
    scale = max_size / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def degraded_versions(
    image: Image.Image, kinds: tuple[str, ...], levels: int, rng: np.random.Generator
) -> Iterator[tuple[str, int, Image.Image]]:
    """(kind, level, image): the clean image as ("clean", 0), then every kind at levels 1..`levels`.

    `rng` draws the colour-cast hue, then one noise field that every noise level scales, so the noise
    levels differ only in strength; the draws do not depend on which kinds are asked for.
    """
    pixels = np.asarray(image, dtype=np.float32)
    hue = rng.uniform(0.0, 2.0 * math.pi)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) if "noise" in kinds else None
    yield "clean", 0, image
    for kind in kinds:
        for level, value in enumerate(SEVERITIES[kind].values(levels), start=1):
            if kind == "blur":
                sigma = value * max(image.size) / BLUR_REFERENCE_SIZE
                out = _to_image(gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect"))
            elif kind == "noise":
                out = _to_image(pixels + value * noise)
            elif kind == "jpeg":
                out = jpeg_roundtrip(image, int(value))
            elif kind == "underexposure":
                out = _to_image(_exposure(pixels, -value))
            elif kind == "overexposure":
                out = _to_image(_exposure(pixels, value))
            else:
                out = _to_image(_colour_cast(pixels, value, hue))
            yield kind, level, out


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode and decode as a JPEG of `quality` with 4:2:0 chroma subsampling (what cameras and web tools do)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _exposure(pixels: np.ndarray, stops: float) -> np.ndarray:
    """Scale the light by 2**stops in linear sRGB, clip at white (blown highlights), re-encode."""
    linear = _srgb_to_linear(pixels / 255.0) * (2.0**stops)
    return _linear_to_srgb(np.clip(linear, 0.0, 1.0)) * 255.0


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_cast(pixels: np.ndarray, amplitude: float, hue: float) -> np.ndarray:
    """Per-channel gains 1 + a·cos(hue − 120°·c), normalised so luma is kept: a white-balance error."""
    gains = 1.0 + amplitude * np.cos(hue - np.arange(3) * 2.0 * math.pi / 3.0).astype(np.float32)
    return pixels * (gains / float(gains @ _LUMA))


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class _Task:
    index: int
    uri: str
    group: str


def _degrade_source(task: _Task, config: DegradeConfig, storage: Storage) -> list[dict] | str:
    """Write one source's versions; its manifest rows, or why it was skipped."""
    try:
        image = downscale(open_image(storage.read_bytes(task.uri)), config.max_size)
    except (ImageError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    rng = np.random.default_rng(config.seed + task.index)
    rows = []
    for kind, level, version in degraded_versions(image, config.kinds, config.levels, rng):
        uri = posixpath.join("images", task.group, f"{kind}-{level}.png")
        buffer = io.BytesIO()
        version.save(buffer, format="PNG", compress_level=1)
        storage.write_atomic(posixpath.join(config.output, uri), buffer.getvalue())
        rows.append(
            {
                "uri": uri,
                "label": -float(level),
                "label_std": config.label_std,
                "group": task.group,
                "kind": kind,
                "level": level,
            }
        )
    return rows


def list_sources(config: DegradeConfig, storage: Storage) -> list[_Task]:
    """The images under the input folder, recursively, sorted; hidden names and the output folder left out."""
    fs, root = storage.filesystem(config.input)
    root = root.rstrip("/")
    if not fs.isdir(root):
        what = "is not a folder" if fs.exists(root) else "does not exist"
        raise StorageError(f"input {config.input} {what}; give a folder of portraits (jpg/jpeg/png)")
    out_fs, out_root = storage.filesystem(config.output)
    skip_prefix = out_root.rstrip("/") + "/" if out_fs.protocol == fs.protocol else None
    tasks: list[_Task] = []
    groups: dict[str, str] = {}
    for path in sorted(fs.find(root)):
        relative = path[len(root) + 1 :]
        if not relative.lower().endswith(IMAGE_SUFFIXES) or any(p.startswith(".") for p in relative.split("/")):
            continue
        if skip_prefix and path.startswith(skip_prefix):
            continue
        group = posixpath.splitext(relative)[0]
        if group in groups:
            raise StorageError(f"{groups[group]} and {relative} would share the group {group!r}; rename one")
        groups[group] = relative
        tasks.append(_Task(len(tasks), storage.uri(fs, path), group))
        if config.limit is not None and len(tasks) == config.limit:
            break
    if not tasks:
        raise StorageError(f"input {config.input} holds no jpg, jpeg or png images")
    return tasks


def degrade_folder(config: DegradeConfig, workers: int | None = None) -> DegradeSummary:
    """Write every source's versions, then `degrade.json` and `manifest.parquet` (last, so a manifest that
    exists lists only images already written). `workers`: threads (default: one per CPU).

    Threads, not processes: Pillow, NumPy and SciPy release the GIL for the pixel work, and a thread needs
    no fresh interpreter importing the model package (torch) the way a spawned process does.
    """
    storage = Storage.from_environment(config.s3_endpoint)
    tasks = list_sources(config, storage)
    storage.check_writable(config.output)
    with ThreadPoolExecutor(min(workers or os.cpu_count() or 1, len(tasks))) as pool:
        results = pool.map(_degrade_source, tasks, [config] * len(tasks), [storage] * len(tasks))
        return _finish(config, storage, tasks, results)


def _finish(
    config: DegradeConfig, storage: Storage, tasks: list[_Task], results: Iterable[list[dict] | str]
) -> DegradeSummary:
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, str):
            skipped.append((task.uri, result))
        else:
            rows.extend(result)
    if not rows:
        raise StorageError(f"none of the {len(tasks)} images under {config.input} could be read")
    schema = pa.schema(
        [
            ("uri", pa.string()),
            ("label", pa.float64()),
            ("label_std", pa.float64()),
            ("group", pa.string()),
            ("kind", pa.string()),
            ("level", pa.int64()),
        ]
    )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    manifest = posixpath.join(config.output, "manifest.parquet")
    record = {
        "config": asdict(config),
        "parameters": config.parameters(),
        "sources": len(tasks) - len(skipped),
        "skipped": [{"uri": uri, "error": error} for uri, error in skipped],
    }
    storage.write_atomic(posixpath.join(config.output, "degrade.json"), json.dumps(record, indent=2).encode())
    storage.write_atomic(manifest, buffer.getvalue())
    return DegradeSummary(len(tasks) - len(skipped), len(rows), manifest, skipped)
