"""`models:/<name>@<alias>` and `models:/<name>/<version>` bundle URIs, resolved through the MLflow model registry.

The registry (MLFLOW_TRACKING_URI, default the local `sqlite:///mlflow.db`) names a version whose files are
a bundle; they are downloaded once per version into the piqa cache and read from there.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from piqa_model.errors import WeightsError

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def is_registry_uri(uri: str) -> bool:
    return str(uri).startswith("models:/")


def download_registered_bundle(uri: str, cache: Path, tracking_uri: str | None = None) -> Path:
    """The local directory holding the bundle a registry URI names (downloaded on first use)."""
    import mlflow
    from mlflow import MlflowClient

    match = _MODEL_URI.match(uri)
    if not match:
        raise WeightsError(f"not a model registry URI: {uri} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    client = MlflowClient(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None)
    name = match["name"]
    try:
        version = match["version"] or client.get_model_version_by_alias(name, match["alias"]).version
        source = client.get_model_version(name, str(version)).source
    except mlflow.exceptions.MlflowException as exc:
        raise WeightsError(f"cannot resolve {uri} in the registry at {client.tracking_uri}: {exc.message}") from None
    target = cache / "registry" / name / f"v{version}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=target.parent))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(staging), tracking_uri=client.tracking_uri
            )
            found = next(staging.rglob("config.json"), None)
            if found is None:
                raise WeightsError(f"{uri} (version {version}, {source}) holds no bundle config.json")
            if not target.exists():
                os.replace(found.parent, target)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"cannot download {uri} (version {version}) from {source}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
