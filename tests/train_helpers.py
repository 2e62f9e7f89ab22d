"""Tiny labelled data and training configurations for the retraining tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.degrade import DegradeConfig, degrade_folder

# Small network, few images, a high learning rate: a CPU run takes seconds per epoch and learns quickly.
TINY: dict[str, Any] = {
    "preset": "small-224",
    "init": "scratch",
    "optim": {"epochs": 3, "batch_size": 6, "group_chunk": 3, "lr": 1e-3, "lr_step_epochs": 10},
    "num_workers": 2,
}


def degraded_portraits(shared_dir: Path, out: Path, count: int, first: int = 0) -> str:
    """A synthetic-degradation manifest of `count` Congress portraits (blur and noise, 2 levels, 96 px)."""
    sources = out.parent / f"{out.name}-sources"
    sources.mkdir(parents=True)
    for path in sorted((shared_dir / "data" / "portraits" / "congress").glob("*.jpg"))[first : first + count]:
        (sources / path.name).write_bytes(path.read_bytes())
    config = DegradeConfig(input=str(sources), output=str(out), levels=2, kinds=("blur", "noise"), max_size=96)
    return degrade_folder(config, workers=1).manifest


def train_config(
    tmp: Path, tracking_uri: str | None = None, optim: dict | None = None, tracking: dict | None = None, **sections: Any
) -> TrainConfig:
    """TINY with overrides; checkpoints under `tmp/runs`, tracking in `tmp/mlflow.db` unless a URI is given."""
    document = {
        **TINY,
        "optim": {**TINY["optim"], **(optim or {})},
        "storage_path": str(tmp / "runs"),
        "tracking": {"uri": tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}", **(tracking or {})},
        **sections,
    }
    return TrainConfig.from_dict(document)


def write_config(config: TrainConfig, path: Path) -> Path:
    path.write_text(config.to_yaml())
    return path
