"""RankIQA-style synthetic degradations: clean portraits become labelled, within-photo ranked training data.

Each source photo yields its clean version (level 0) and, for every kind, levels 1..L of growing severity.
The label is the negated severity, and the group is the source photo: a level-2 blur is only ever compared
with another version of the same photo, so the ranking loss learns "worse than" without needing the
kinds to be exactly comparable. Level L of every kind is strongly degraded (face still recognisable) and the
same level is roughly equally bad across kinds.

The generator teaches the fault, not one formula: per photo and kind it draws one *form* of the fault (a Gaussian,
defocus or motion blur; white, signal-dependent or chroma noise; a gain, gamma or black-point exposure error ...),
and per level a severity `s` uniformly inside the level's band, `level - 0.8 <= s <= level - 0.2`, from which every
parameter of the form follows; the label is `-s`. Severities are fractions of the kind's range (mild at s = 0,
strong at s = L): geometric for blur, noise, JPEG quality and resolution (their perceived effect is roughly
logarithmic), linear for exposure (in stops or tone-curve points), contrast and colour. A `mixture` version holds
two other kinds at once (drawn per photo), each at a share of the severity; its label counts the worse one in
full and the other by half.

Every row also carries a `label_std` (default 0.5 levels): the spread the pairwise loss assumes around a label, room
for a level-2 blur and a level-2 noise not being exactly equally bad. Blur is given in pixels at a 512-pixel longest
side and scaled with the image, so it looks the same whatever `max_size` is; noise and JPEG act per pixel.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.storage import Storage, StorageError
from piqa_model.errors import ConfigError, ImageError
from piqa_model.images import open_image

MAX_LEVELS = 10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BLUR_REFERENCE_SIZE = 512
"""Blur sigmas are in pixels at this longest side and scale with the image."""
BAND = (0.2, 0.8)
"""A level-l version's severity is drawn from [l - 0.8, l - 0.2]: levels never overlap."""

Pixels = np.ndarray  # float32 [H, W, 3], 0..255
Fault = Callable[[Pixels, float, np.random.Generator], Pixels]
"""(pixels, strength in (0, 1], the photo's random generator) -> degraded pixels. Strength 1 is level L."""


def _between(mild: float, strong: float, strength: float, geometric: bool) -> float:
    if geometric:
        return mild * (strong / mild) ** strength
    return mild + (strong - mild) * strength


def _scale_blur(pixels: Pixels, sigma: float) -> float:
    return sigma * max(pixels.shape[:2]) / BLUR_REFERENCE_SIZE


def _convolve(pixels: Pixels, kernel: np.ndarray) -> Pixels:
    from scipy.signal import fftconvolve  # scipy where it is used: every `piqa` command imports this module

    kernel = kernel / kernel.sum()
    pad = max(kernel.shape)
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.stack([fftconvolve(padded[..., c], kernel, mode="same") for c in range(3)], axis=-1)
    return out[pad:-pad, pad:-pad].astype(np.float32)


def gaussian_blur(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Out of focus, smoothly: a Gaussian of sigma 0.8 to 6 pixels (at 512 px)."""
    from scipy.ndimage import gaussian_filter

    sigma = _scale_blur(pixels, _between(0.8, 6.0, strength, geometric=True))
    return gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect")


def defocus_blur(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """A lens out of focus: a disc of radius 1.2 to 8 pixels (at 512 px), its rim anti-aliased."""
    radius = _scale_blur(pixels, _between(1.2, 8.0, strength, geometric=True))
    size = int(math.ceil(radius)) + 1
    y, x = np.mgrid[-size : size + 1, -size : size + 1]
    return _convolve(pixels, np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32))


def motion_blur(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Camera shake: a straight streak of 3 to 22 pixels (at 512 px) in a direction drawn per photo."""
    length = _scale_blur(pixels, _between(3.0, 22.0, strength, geometric=True))
    angle = rng.uniform(0.0, math.pi)
    size = int(math.ceil(length / 2)) + 1
    kernel = np.zeros((2 * size + 1, 2 * size + 1), np.float32)
    for t in np.linspace(-length / 2, length / 2, int(length * 8) + 2):  # the line, spread bilinearly
        y, x = size + t * math.sin(angle), size + t * math.cos(angle)
        top, left = int(math.floor(y)), int(math.floor(x))
        dy, dx = y - top, x - left
        kernel[top, left] += (1 - dy) * (1 - dx)
        kernel[top + 1, left] += dy * (1 - dx)
        kernel[top, left + 1] += (1 - dy) * dx
        kernel[top + 1, left + 1] += dy * dx
    return _convolve(pixels, kernel)


def _noise_std(strength: float) -> float:
    return _between(4.0, 40.0, strength, geometric=True)


def white_noise(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Gaussian noise of standard deviation 4 to 40 (of 255), independent per pixel and channel."""
    return pixels + _noise_std(strength) * rng.standard_normal(pixels.shape, dtype=np.float32)


def signal_noise(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Shot noise as a sensor makes it: grows with the light (std at mid-grey = the level's std), plus a floor."""
    std = _noise_std(strength) * np.sqrt(np.maximum(pixels, 1.0) / 128.0) + 1.0
    return pixels + std * rng.standard_normal(pixels.shape, dtype=np.float32)


def chroma_noise(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Blotchy colour noise over luma grain, as a phone's denoiser leaves it at high ISO."""
    from scipy.ndimage import gaussian_filter

    std = _noise_std(strength)
    luma = rng.standard_normal(pixels.shape[:2], dtype=np.float32)[..., None]
    colour = gaussian_filter(rng.standard_normal(pixels.shape, dtype=np.float32), sigma=(1.5, 1.5, 0)) * 2.0
    return pixels + std * (0.6 * luma + 0.8 * colour)


def jpeg_fault(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """JPEG at quality 45 down to 6, chroma subsampling drawn per photo, sometimes saved twice."""
    quality = int(round(_between(45.0, 6.0, strength, geometric=True)))
    subsampling = str(rng.choice(["4:2:0", "4:2:0", "4:2:2", "4:4:4"]))
    image = _to_image(pixels)
    if rng.random() < 0.3:  # re-saved: a copy of a copy
        image = jpeg_roundtrip(image, min(95, quality + int(rng.integers(10, 30))), subsampling)
    return np.asarray(jpeg_roundtrip(image, quality, subsampling), dtype=np.float32)


def _linear(pixels: Pixels) -> np.ndarray:
    return _srgb_to_linear(np.clip(pixels, 0.0, 255.0) / 255.0)


def _srgb(linear: np.ndarray) -> Pixels:
    return _linear_to_srgb(np.clip(linear, 0.0, 1.0)) * 255.0


def dark_gain(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Too little light: linear light scaled down by 0.8 to 4 stops."""
    return _srgb(_linear(pixels) * 2.0 ** -_between(0.8, 4.0, strength, geometric=False))


def dark_gamma(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """A tone curve that sinks the mid-tones (gamma 1.4 to 3.4 on the encoded values)."""
    return 255.0 * (np.clip(pixels, 0.0, 255.0) / 255.0) ** _between(1.4, 3.4, strength, geometric=False)


def crushed_shadows(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Underexposed and clipped at black: a raised black point swallows the shadows, then a darker gain."""
    black = _between(0.05, 0.35, strength, geometric=False)
    lifted = np.clip((np.clip(pixels, 0.0, 255.0) / 255.0 - black) / (1.0 - black), 0.0, 1.0)
    return 255.0 * lifted * _between(0.95, 0.55, strength, geometric=False)


def bright_gain(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Too much light: linear light scaled up by 0.5 to 2.5 stops, clipped at white (blown highlights)."""
    return _srgb(_linear(pixels) * 2.0 ** _between(0.5, 2.5, strength, geometric=False))


def bright_gamma(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """A washed-out tone curve (gamma 0.7 to 0.25): mid-tones and shadows lifted towards white."""
    return 255.0 * (np.clip(pixels, 0.0, 255.0) / 255.0) ** _between(0.7, 0.25, strength, geometric=False)


def clipped_highlights(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """A lowered white point: everything above it blows out to white."""
    white = _between(0.85, 0.4, strength, geometric=False)
    return 255.0 * np.clip(np.clip(pixels, 0.0, 255.0) / 255.0 / white, 0.0, 1.0)


def flat_contrast(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Contrast squeezed towards the image's mean grey (keeps 75 % to 20 % of it)."""
    keep = _between(0.75, 0.2, strength, geometric=False)
    return pixels.mean() + keep * (pixels - pixels.mean())


def haze(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Veiling glare or fog: a bright, slightly tinted veil over the whole frame."""
    veil = rng.uniform(200.0, 245.0) + rng.uniform(-8.0, 8.0, 3)
    amount = _between(0.2, 0.75, strength, geometric=False)
    return (1.0 - amount) * pixels + amount * veil.astype(np.float32)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def colour_cast(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """A white-balance error: per-channel gains 1 + a·cos(hue − 120°·c) at constant luma, hue drawn per photo."""
    amplitude = _between(0.08, 0.5, strength, geometric=False)
    hue = rng.uniform(0.0, 2.0 * math.pi)
    gains = 1.0 + amplitude * np.cos(hue - np.arange(3) * 2.0 * math.pi / 3.0).astype(np.float32)
    return pixels * (gains / float(gains @ _LUMA))


def saturation_fault(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Washed-out or garish colour: saturation scaled to 70 % .. 5 %, or to 1.6x .. 3.5x (drawn per photo)."""
    luma = (pixels @ _LUMA)[..., None]
    if rng.random() < 0.5:
        factor = _between(0.7, 0.05, strength, geometric=False)
    else:
        factor = _between(1.6, 3.5, strength, geometric=False)
    return luma + factor * (pixels - luma)


def low_resolution(pixels: Pixels, strength: float, rng: np.random.Generator) -> Pixels:
    """Down-sampled by 1.5x to 8x and scaled back up, with a resampling filter drawn per photo."""
    factor = _between(1.5, 8.0, strength, geometric=True)
    image = _to_image(pixels)
    small = (max(8, round(image.width / factor)), max(8, round(image.height / factor)))
    filters = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.BOX]
    down = filters[int(rng.integers(1, 4))]
    up = filters[int(rng.integers(0, 3))]
    return np.asarray(image.resize(small, down).resize(image.size, up), dtype=np.float32)


FORMS: dict[str, dict[str, Fault]] = {
    "blur": {"gaussian": gaussian_blur, "defocus": defocus_blur, "motion": motion_blur},
    "noise": {"white": white_noise, "signal-dependent": signal_noise, "chroma": chroma_noise},
    "jpeg": {"jpeg": jpeg_fault},
    "underexposure": {"gain": dark_gain, "gamma": dark_gamma, "crushed-shadows": crushed_shadows},
    "overexposure": {"gain": bright_gain, "gamma": bright_gamma, "clipped-highlights": clipped_highlights},
    "contrast": {"flat": flat_contrast, "haze": haze},
    "colour": {"cast": colour_cast, "saturation": saturation_fault},
    "resolution": {"resample": low_resolution},
}
"""Every kind's forms. The photo's form of a kind is drawn once, so its levels differ only in severity."""
MIXTURE = "mixture"
KINDS = (*FORMS, MIXTURE)


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
        if MIXTURE in self.kinds and len(self.kinds) < 3:
            raise ConfigError("a mixture combines two other kinds: give at least two besides it")
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
        """Per kind: its forms and what each does from level 1 to level L."""
        described = {
            kind: {form: (fault.__doc__ or form).strip() for form, fault in FORMS[kind].items()}
            for kind in self.kinds
            if kind != MIXTURE
        }
        if MIXTURE in self.kinds:
            described[MIXTURE] = {"pair": "two other kinds at once, each at 50-90 % of the severity"}
        return described


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


@dataclass(frozen=True)
class Version:
    """One degraded version of a photo: its kind, level, drawn severity (the label is -severity) and form."""

    kind: str
    level: int
    severity: float
    form: str
    image: Image.Image


def degraded_versions(
    image: Image.Image, kinds: tuple[str, ...], levels: int, rng: np.random.Generator
) -> Iterator[Version]:
    """The clean image (kind "clean", level 0), then every kind at levels 1..`levels`.

    Per kind, `rng` draws the form (and for a mixture its two kinds), and each fault draws its own random choices
    (noise fields, hues, angles) from a generator seeded once per photo and kind, so that every level of a kind
    shares them and differs only in severity. The draws do not depend on which other kinds are asked for.
    """
    pixels = np.asarray(image, dtype=np.float32)
    yield Version("clean", 0, 0.0, "clean", image)
    singles = [kind for kind in KINDS if kind != MIXTURE]
    plan = {kind: str(rng.choice(sorted(FORMS[kind]))) for kind in singles}
    pair = (
        [str(k) for k in rng.choice([k for k in singles if k in kinds], size=2, replace=False)]
        if (MIXTURE in kinds)
        else []
    )
    seeds = {kind: int(rng.integers(2**32)) for kind in KINDS}
    shares = rng.uniform(0.5, 0.9, size=2)
    for kind in kinds:
        for level in range(1, levels + 1):
            severity = level - rng.uniform(*BAND)
            if kind == MIXTURE:
                out = pixels
                for part, share in zip(pair, shares, strict=True):
                    out = _apply(part, plan[part], out, share * severity, levels, seeds[MIXTURE])
                parts = sorted(shares * severity)
                label_severity, form = parts[1] + 0.5 * parts[0], f"{plan[pair[0]]}-{pair[0]}+{plan[pair[1]]}-{pair[1]}"
            else:
                out = _apply(kind, plan[kind], pixels, severity, levels, seeds[kind])
                label_severity, form = severity, plan[kind]
            yield Version(kind, level, round(float(label_severity), 4), form, _to_image(out))


def _apply(kind: str, form: str, pixels: Pixels, severity: float, levels: int, seed: int) -> Pixels:
    """Severity 0 is a kind's mild end and `levels` its strong end."""
    return FORMS[kind][form](pixels, severity / levels, np.random.default_rng(seed))


def degrade_photo(image: Image.Image, kind: str, form: str, strength: float, seed: int = 0) -> Image.Image:
    """One fault of one form at `strength` (0: mild, 1: the strongest level), e.g. for a demo photo."""
    return _to_image(FORMS[kind][form](np.asarray(image, dtype=np.float32), strength, np.random.default_rng(seed)))


def jpeg_roundtrip(image: Image.Image, quality: int, subsampling: str = "4:2:0") -> Image.Image:
    """Encode and decode as a JPEG of `quality` (4:2:0 chroma subsampling, as cameras and web tools do)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


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
    for version in degraded_versions(image, config.kinds, config.levels, rng):
        uri = posixpath.join("images", task.group, f"{version.kind}-{version.level}.png")
        buffer = io.BytesIO()
        version.image.save(buffer, format="PNG", compress_level=1)
        storage.write_atomic(posixpath.join(config.output, uri), buffer.getvalue())
        rows.append(
            {
                "uri": uri,
                "label": -version.severity,
                "label_std": config.label_std,
                "group": task.group,
                "kind": version.kind,
                "level": version.level,
                "form": version.form,
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
            ("form", pa.string()),
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
