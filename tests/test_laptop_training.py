"""The README's laptop retraining, as written there: degrade the bundled samples, train on configs/laptop.yaml."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from jobs.cli import run
from training.config import TrackingConfig, TrainConfig

LAPTOP_CONFIG = "configs/laptop.yaml"


def readme_commands(repo_root: Path) -> list[list[str]]:
    """The README's laptop recipe: its `piqa data degrade samples/...` and `piqa train --config configs/laptop.yaml`
    lines, without `piqa` and comments."""
    lines = [line.split("#", 1)[0] for line in (repo_root / "README.md").read_text().splitlines()]
    wanted = ("piqa data degrade samples/portraits ", f"piqa train --config {LAPTOP_CONFIG}")
    commands = [shlex.split(line)[1:] for line in lines if line.startswith(wanted)]
    assert [command[:2] for command in commands] == [["data", "degrade"], ["train", "--config"]], commands
    return commands


@pytest.mark.usefixtures("ray_local")
def test_the_readme_laptop_recipe_trains_from_the_repository_alone(repo_root, tmp_path, monkeypatch):
    degrade, train = readme_commands(repo_root)
    shipped = TrainConfig.from_yaml(repo_root / LAPTOP_CONFIG)
    # The embedded defaults: local storage and the local sqlite MLflow, nothing remote.
    assert shipped.tracking == TrackingConfig() and shipped.storage_path == TrainConfig.storage_path
    assert not shipped.use_gpu and shipped.s3_endpoint is None and shipped.data.piq23 is None

    # In a folder of its own (what it writes stays out of the repository), with the repository's samples.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").symlink_to(repo_root / "samples")
    assert run(degrade) == 0
    assert all(Path(manifest).is_file() for manifest in shipped.data.manifests), shipped.data.manifests

    # The shipped config, one epoch instead of its three (a full run: about four minutes on 2 CPU cores).
    short = tmp_path / "laptop-short.yaml"
    short.write_text(f"base: {repo_root / LAPTOP_CONFIG}\noptim:\n  epochs: 1\n")
    assert run([*train[:-1], str(short)]) == 0
    assert list((tmp_path / "train-runs").glob("retrain-*/checkpoint_*/state.pt"))

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias(shipped.tracking.model_name, "champion").version) == "1"
