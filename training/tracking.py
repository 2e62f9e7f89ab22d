"""MLflow: one run per training job, the bundle as an artifact, registry versions and aliases.

A registered version's source is the run's `bundle/` artifact folder (our bundle format, not an MLflow
flavour), so `models:/<name>@champion` downloads exactly the files `piqa score --bundle` reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piqa_model.errors import PiqaError

BUNDLE_ARTIFACT = "bundle"
TAG_RUN = "piqa.train_run"
TAG_SNAPSHOT = "piqa.data_snapshot"
TAG_CONFIG = "piqa.config_hash"


class TrackingError(PiqaError):
    """The MLflow tracking server or registry cannot be used."""


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` made absolute, so Ray workers (other working directories) reach the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


@dataclass(frozen=True)
class Champion:
    version: str
    source: str


class Tracker:
    """The few MLflow operations a retraining job needs, with errors a user can act on."""

    def __init__(self, uri: str, experiment: str, model_name: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.uri = absolute_tracking_uri(uri)
        self.model_name = model_name
        self.client = MlflowClient(self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(f"cannot use MLflow at {uri}: {exc.message.splitlines()[0]}") from None
        except Exception as exc:
            raise TrackingError(f"cannot reach MLflow at {uri}: {type(exc).__name__}: {exc}") from None

    def finished_run(self, snapshot: str, config_hash: str) -> str | None:
        """The id of a finished run that trained on this data snapshot with this configuration, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_SNAPSHOT}` = '{snapshot}' and tags.`{TAG_CONFIG}` = '{config_hash}' "
            "and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        """The unfinished run of this training job (a resubmission goes on logging into it), or a new one."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_RUN}` = '{run_name}' and attributes.status != 'FINISHED'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={TAG_RUN: run_name, **tags})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(entries), 500):
            self.client.log_batch(run_id, metrics=entries[start : start + 500])

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_json(self, run_id: str, document: Any, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(document, indent=2, sort_keys=True, default=str), artifact_file)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def register(self, run_id: str, tags: dict[str, str]) -> str:
        """A new version of the model from the run's bundle; returns its version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name, description="DN-PIQA portrait quality bundles (piqa_model format)."
            )
        version = self.client.create_model_version(
            self.model_name, source=f"runs:/{run_id}/{BUNDLE_ARTIFACT}", run_id=run_id, tags=tags
        )
        return str(version.version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def bundle_files(self, version: str) -> dict[str, bytes]:
        """The bundle files of a registered version, read through this tracker's registry."""
        import tempfile

        from piqa_model.bundle import bundle_files
        from piqa_model.registry import download_registered_bundle

        with tempfile.TemporaryDirectory() as cache:
            uri = f"models:/{self.model_name}/{version}"
            return bundle_files(download_registered_bundle(uri, Path(cache), self.uri))

    def champion(self) -> Champion | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.model_name, "champion")
        except MlflowException:
            return None
        return Champion(str(version.version), f"models:/{self.model_name}/{version.version}")
