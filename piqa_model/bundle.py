"""Model bundles: a directory holding everything needed to score with a trained network.

    <bundle>/config.json        {"model": ModelConfig, "bundle": BundleInfo}
    <bundle>/model.safetensors  the weights (LIQE prompt features included, so they are never recomputed)
    <bundle>/MODEL_CARD.md      what it is, what it was trained on, how good it is

A bundle's id is its name plus a hash of its weights, so scores can always be traced to the exact model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load, save_file

from piqa_model.calibration import ScoreScale, describe_scale
from piqa_model.config import ModelConfig, describe_branches, preset
from piqa_model.errors import WeightsError
from piqa_model.network import DualBranchNet
from piqa_model.registry import download_registered_bundle, is_registry_uri

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
SHIPPED_BUNDLE = Path(__file__).parent / "assets" / "starter"


class UntrainedModelWarning(UserWarning):
    """Scores from this model come from random weights and mean nothing."""


@dataclass(frozen=True)
class BundleInfo:
    name: str
    trained: bool
    description: str = ""
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    score_scale: dict[str, Any] | None = None  # a `ScoreScale`; None: scores are the raw network output

    @property
    def scale(self) -> ScoreScale | None:
        return None if self.score_scale is None else ScoreScale(**self.score_scale)


def save_bundle(net: DualBranchNet, path: str | Path, info: BundleInfo, card: str | None = None) -> Path:
    """Write `net` as a bundle directory at `path` (replaced atomically if it exists)."""
    path = Path(path)
    if net.liqe is not None:
        net.liqe.prompt_features()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        document = {"model": net.config.to_dict(), "bundle": dataclasses.asdict(info)}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        (staging / CARD_FILE).write_text(card or _default_card(net.config, info))
        for written in (staging, *staging.iterdir()):  # mkdtemp makes them owner-only: a bundle is for sharing
            written.chmod(0o755 if written.is_dir() else 0o644)
        if path.exists():  # move the old bundle aside first: readers never see a half-written one
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, retired / path.name)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def bundle_files(path: str | Path) -> dict[str, bytes]:
    """The bytes of a bundle's config and weights, from a local directory, any fsspec URI (s3://...) or the
    MLflow model registry (models:/NAME@ALIAS, models:/NAME/VERSION)."""
    if is_registry_uri(str(path)):
        path = download_registered_bundle(str(path), cache_dir())
    fs, root = fsspec.core.url_to_fs(str(path))
    files = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            files[name] = fs.cat_file(f"{root.rstrip('/')}/{name}")
        except FileNotFoundError:
            raise WeightsError(f"not a model bundle: {path} has no {name}") from None
        except Exception as exc:
            raise WeightsError(f"cannot read bundle {path}: {type(exc).__name__}: {exc}") from None
    return files


def read_bundle(path: str | Path) -> tuple[DualBranchNet, BundleInfo, str]:
    """(network in eval mode, bundle info, bundle id) from a bundle directory."""
    return read_bundle_files(bundle_files(path))


def read_bundle_config(files: dict[str, bytes]) -> tuple[ModelConfig, BundleInfo]:
    """A bundle's model config and info, without building the network."""
    try:
        document = json.loads(files[CONFIG_FILE])
        return ModelConfig.from_dict(document["model"]), BundleInfo(**document["bundle"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"not a valid bundle config: {exc}") from None


def read_bundle_files(files: dict[str, bytes]) -> tuple[DualBranchNet, BundleInfo, str]:
    """`read_bundle` on bytes already in memory (how the pipeline ships a bundle to its workers)."""
    config, info = read_bundle_config(files)
    net = DualBranchNet(config)
    try:
        missing, unexpected = net.load_state_dict(load(files[WEIGHTS_FILE]), strict=False)
    except Exception as exc:
        raise WeightsError(f"cannot load bundle weights: {type(exc).__name__}: {exc}") from None
    if missing or unexpected:
        raise WeightsError(
            f"bundle weights do not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval(), info, bundle_id(files, info)


def bundle_id(files: dict[str, bytes], info: BundleInfo) -> str:
    """The bundle's name and a hash of its weights (and of its score scale: the same weights on another scale give
    other scores), without building the network."""
    digest = hashlib.sha256(files[WEIGHTS_FILE])
    if info.score_scale is not None:
        digest.update(json.dumps(info.score_scale, sort_keys=True).encode())
    return f"{info.name}-{digest.hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(os.environ.get("PIQA_CACHE_DIR", Path.home() / ".cache" / "piqa"))


def default_bundle_path() -> Path:
    """The shipped starter bundle; in a checkout without it, a seeded random (untrained) `small` bundle."""
    if (SHIPPED_BUNDLE / CONFIG_FILE).is_file():
        return SHIPPED_BUNDLE
    path = cache_dir() / "bundles" / "untrained-small"
    if not (path / CONFIG_FILE).is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = DualBranchNet(preset("small"))
        info = BundleInfo(
            name="untrained-small",
            trained=False,
            description="Randomly initialised `small` preset: a placeholder until a trained bundle exists.",
        )
        try:
            save_bundle(net, path, info)
        except OSError:
            if not (path / CONFIG_FILE).is_file():  # else another process wrote the same bundle first
                raise
    return path


def warn_if_untrained(info: BundleInfo) -> None:
    if not info.trained:
        warnings.warn(
            f"model bundle '{info.name}' is UNTRAINED (random weights): its scores mean nothing. "
            "Import the paper's weights with `piqa weights import-dnpiqa` or pass a trained --bundle.",
            UntrainedModelWarning,
            stacklevel=3,
        )


def _default_card(config: ModelConfig, info: BundleInfo) -> str:
    status = "trained" if info.trained else "**UNTRAINED — random weights, scores mean nothing**"
    metrics = "\n".join(f"- {k}: {v}" for k, v in sorted(info.metrics.items())) or "- none recorded"
    return (
        f"# Model card: {info.name}\n\n"
        f"Status: {status}\n\n{info.description}\n\n"
        f"## Architecture\n\nPreset/config name `{config.name}`: {describe_branches(config)}; auxiliary "
        f"branch `{config.aux}`; resize {config.resize}, {config.crop_mode} crop {config.crop}.\n\n"
        f"## Score scale\n\n{describe_scale(info.scale)}.\n\n"
        f"## Source\n\n{info.source or 'not recorded'}\n\n## Metrics\n\n{metrics}\n"
    )
