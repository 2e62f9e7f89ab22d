"""Retraining: a 2-worker Ray Train run on tiny data, resume after a killed job, MLflow server, registry, gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from processes import kill_driver_when
from train_helpers import degraded_portraits, train_config, write_config

from training.loop import load_state
from training.retrain import run_retraining
from training.sources import load_piq23


def checkpoints(storage: Path) -> list[Path]:
    return sorted(storage.glob("retrain-*/checkpoint_*/state.pt"))


def registered_checkpoints(storage: Path) -> list[Path]:
    """Checkpoints that Ray Train's controller has registered (its snapshot beside them): the ones a restarted
    worker group or a resubmitted job resumes from. A checkpoint on disk may not be one yet: on a busy machine the
    controller lagged two epochs behind, and a worker killed then restarted from scratch; a driver killed while
    the controller copied a checkpoint leaves a partial directory that nothing resumes from."""
    registered = []
    for snapshot in storage.glob("retrain-*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # being rewritten: ask again
            continue
        registered += [snapshot.parent / result["checkpoint_dir_name"] for result in results]
    return sorted(registered)


@pytest.mark.usefixtures("ray_local")
def test_two_worker_training_lowers_the_loss_and_checkpoints(tiny_data, tmp_path):
    sources = {"manifests": [tiny_data["manifest"]], "piq23": {"root": tiny_data["piq23"]}}
    config = train_config(tmp_path, optim={"epochs": 8}, data=sources)
    result = run_retraining(config)

    saved = checkpoints(tmp_path / "runs")
    assert len(saved) == 2, saved  # num_to_keep=2 of 8 epochs
    state = load_state(str(saved[-1].parent))
    losses = [h["train/loss"] for h in state["history"]]
    assert [h["epoch"] for h in state["history"]] == list(range(8))
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert state["resumed_at"] == []

    from mlflow import MlflowClient

    # PIQ23's official device split is its test split; the synthetic set holds out whole source photos.
    client = MlflowClient(config.tracking.uri)
    snapshot = json.loads(
        Path(client.download_artifacts(result.run_id, "data/snapshot.json", str(tmp_path))).read_text()
    )
    official_test = [i for i in load_piq23(tiny_data["piq23"]) if i.split == "test"]
    assert snapshot["images"]["piq23-overall"]["test"] == len(official_test) > 0
    assert snapshot["images"]["synthetic"]["test"] > 0
    assert "test/synthetic/srcc_mean" in result.test
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(8))
    assert result.decision.promote and result.version == "1"


@pytest.mark.usefixtures("ray_local")
def test_killed_worker_restarts_from_the_last_checkpoint(tiny_data, tmp_path):
    epochs = 8  # room for the controller to register a checkpoint well before the last epoch
    config = train_config(tmp_path, optim={"epochs": epochs}, data={"manifests": [tiny_data["manifest"]]})
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.time() + 300
        while not registered_checkpoints(tmp_path / "runs") and time.time() < deadline:
            time.sleep(0.2)
        for process in psutil.Process().children(recursive=True):  # this test's Ray cluster only
            if "RayTrainWorker" in " ".join(process.cmdline()):
                process.kill()
                killed.append(process.pid)
                return

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    result = run_retraining(config)
    killer.join(timeout=10)

    assert killed, "no training worker was found to kill"
    state = load_state(str(checkpoints(tmp_path / "runs")[-1].parent))
    assert [h["epoch"] for h in state["history"]] == list(range(epochs))
    assert len(state["resumed_at"]) == 1 and 1 <= state["resumed_at"][0] < epochs, state["resumed_at"]
    assert result.version == "1"


def test_killed_job_resumes_from_its_last_checkpoint(tiny_data, tmp_path, repo_root):
    epochs = 6  # a registered checkpoint well before the last epoch, even with the controller two epochs behind
    config = train_config(tmp_path, optim={"epochs": epochs}, data={"manifests": [tiny_data["manifest"]]})
    path = write_config(config, tmp_path / "train.yaml")
    command = [sys.executable, "-m", "jobs.retrain", "--config", str(path)]
    env = dict(os.environ, RAY_ADDRESS="local")

    def registered() -> bool:  # the checkpoint a resubmission resumes from
        return bool(registered_checkpoints(tmp_path / "runs"))

    kill_driver_when(command, repo_root, env, registered, 300, "a registered checkpoint")
    killed_at = load_state(str(registered_checkpoints(tmp_path / "runs")[-1]))["epoch"]
    assert killed_at < epochs, "the kill should land mid-run"

    rerun = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    state = load_state(str(checkpoints(tmp_path / "runs")[-1].parent))
    assert [h["epoch"] for h in state["history"]] == list(range(epochs))
    assert len(state["resumed_at"]) == 1 and 1 <= state["resumed_at"][0] < epochs, state["resumed_at"]

    from mlflow import MlflowClient

    client = MlflowClient(config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the resubmitted job logged into the same run


@pytest.mark.usefixtures("ray_local")
def test_mlflow_server_registry_promotion_and_periodic_runs(shared_dir, tiny_data, tmp_path, mlflow_server, repo_root):
    from mlflow import MlflowClient

    curated = tmp_path / "curated"
    curated.mkdir()
    first = Path(tiny_data["manifest"])
    (curated / "batch-1.parquet").write_bytes(first.read_bytes())
    # Relative uris resolve against the manifest's folder: keep the images where the manifest points.
    (curated / "images").symlink_to(first.parent / "images")
    names = {"model_name": "server-test", "experiment": "server-test"}  # the server is shared by the session
    config = train_config(tmp_path, tracking_uri=mlflow_server, tracking=names, data={"curated": [str(curated)]})

    promoted = run_retraining(config)
    client = MlflowClient(mlflow_server)
    run = client.get_run(promoted.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.epochs"] == "3" and run.data.tags["piqa.data_snapshot"] == promoted.snapshot
    assert len(client.get_metric_history(promoted.run_id, "val/srcc_mean")) == 3
    artifacts = {a.path for a in client.list_artifacts(promoted.run_id)}
    assert {"bundle", "reports", "promotion.json", "config.yaml", "data"} <= artifacts
    assert client.get_model_version_by_alias("server-test", "champion").version == "1"
    assert client.get_model_version_by_alias("server-test", "candidate").version == "1"

    unchanged = run_retraining(config)
    assert unchanged.skipped and unchanged.run_id == promoted.run_id

    # New labelled data arrives under the prefix: a new snapshot trains; this gate demands a large gain.
    second = degraded_portraits(shared_dir, tmp_path / "batch-2", count=6, first=20)
    (curated / "batch-2").mkdir()
    (curated / "batch-2" / "batch-2.parquet").write_bytes(Path(second).read_bytes())
    (curated / "batch-2" / "images").symlink_to(Path(second).parent / "images")
    strict_gate = {**names, "promote_tolerance": -1.5}
    # One epoch: no candidate can gain 1.5 SRCC, so the gate refuses whatever the training reached.
    strict = train_config(
        tmp_path, mlflow_server, optim={"epochs": 1}, tracking=strict_gate, data={"curated": [str(curated)]}
    )
    refused = run_retraining(strict)
    assert refused.snapshot != promoted.snapshot and not refused.skipped
    assert not refused.decision.promote and refused.decision.champion is not None
    assert client.get_model_version_by_alias("server-test", "champion").version == "1"
    assert client.get_model_version_by_alias("server-test", "candidate").version == "2"
    assert client.get_run(refused.run_id).data.tags["piqa.promoted"] == "false"

    # The champion resolves through the registry for scoring.
    scored = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "predict", "--json", "--bundle", "models:/server-test@champion"]
        + [str(p) for p in sorted((shared_dir / "data" / "portraits" / "london").glob("*.jpg"))[:2]],
        cwd=repo_root,
        env=dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server, PIQA_CACHE_DIR=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert '"trained": true' in scored.stdout and '"model": "server-test-' in scored.stdout


@pytest.mark.usefixtures("ray_local")
def test_liqe_features_are_computed_once_and_cached(tiny_data, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.storage import Storage
    from training.features import cache_uri, load_or_compute
    from training.retrain import feature_spec, initial_bundle

    config = train_config(tmp_path, optim={"epochs": 1}, data={"manifests": [tiny_data["manifest"]]})
    config = config.replace(preset="small-liqe")  # the LIQE branch (a tiny CLIP) feeds the head
    result = run_retraining(config)
    assert result.version == "1"

    [cache] = (tmp_path / "runs" / "feature-cache").glob("features-*.parquet")
    rows = pq.read_table(cache).to_pylist()
    assert len(rows) == 40 and all(row["error"] is None and len(row["aux"]) == 495 for row in rows)

    spec = feature_spec(config, initial_bundle(config)[0], uses_aux=True)
    assert cache_uri(str(tmp_path / "runs" / "feature-cache"), spec) == str(cache)
    written = cache.stat().st_mtime_ns
    features, errors = load_or_compute([r["uri"] for r in rows], str(cache.parent), spec, Storage())
    assert cache.stat().st_mtime_ns == written and not errors  # all cached: nothing recomputed
    assert all(f.aux.shape == (495,) for f in features.values())
