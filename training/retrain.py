"""The retraining job: data -> feature cache -> Ray Train (DDP) -> bundle -> MLflow run, registry, promotion.

Safe to run on a schedule: the training table's content hash (the data snapshot id) and the
configuration's hash name the job. A finished run with both means nothing changed, and the job returns
at once; an unfinished one (a killed or resubmitted job) resumes from its last checkpoint and goes on
logging into the same MLflow run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.storage import Storage
from piqa_model import BundleInfo, ConfigError, DualBranchNet, PiqaError, preset, save_bundle
from piqa_model.bundle import WEIGHTS_FILE, bundle_files, read_bundle_config, read_bundle_files
from piqa_model.registry import download_registered_bundle, is_registry_uri
from training.config import TrainConfig
from training.evaluate import flat_metrics, group_reports, group_rows, metrics_table, predict_examples, score_array
from training.features import FeatureSpec, load_or_compute
from training.loop import LoopInputs, load_state, train_loop_per_worker
from training.promotion import Decision, decide
from training.sources import LabelledImage, list_manifests, load_manifest, load_piq23
from training.table import Example, build_table, counts, select, snapshot_id, without
from training.tracking import TAG_CONFIG, TAG_SNAPSHOT, Tracker, absolute_tracking_uri


class TrainingError(PiqaError):
    """A training run ended without what the job needs from it (its checkpoint)."""


@dataclass(frozen=True)
class RetrainResult:
    snapshot: str
    run_id: str | None
    skipped: bool
    version: str | None = None
    decision: Decision | None = None
    test: dict[str, float] | None = None

    def line(self) -> str:
        if self.skipped:
            return f"data snapshot {self.snapshot} already trained (run {self.run_id}): nothing new to do"
        srcc = (self.test or {}).get("test/srcc_mean", float("nan"))
        verdict = "promoted to champion" if self.decision and self.decision.promote else "not promoted"
        reason = f" ({self.decision.reason})" if self.decision else ""
        return (
            f"run {self.run_id}: data snapshot {self.snapshot}, test SRCC (mean over groups) {srcc:.4f}; "
            f"registered version {self.version} as candidate, {verdict}{reason}"
        )


def load_sources(config: TrainConfig, storage: Storage) -> tuple[list[list[LabelledImage]], list[str]]:
    """Every configured source's images, and the manifest URIs that were read (recorded with the run)."""
    data = config.data
    sources = []
    if data.piq23 is not None:
        sources.append(load_piq23(data.piq23.root, data.piq23.attribute, data.piq23.split, storage))
    manifests = list(data.manifests)
    for prefix in data.curated:
        manifests.extend(list_manifests(prefix, storage))
    for uri in manifests:
        sources.append(load_manifest(uri, storage=storage))
    return sources, manifests


def config_hash(config: TrainConfig) -> str:
    """What makes two jobs train the same model on the same data (where results are tracked does not). A fresh
    start's architecture is the preset's definition, not only its name: a preset changed by an upgrade trains anew."""
    document = config.to_dict()
    document.pop("tracking")
    if not config.data.weights:  # unset, it leaves the hashes of runs from before the option as they were
        del document["data"]["weights"]
    if config.starts_fresh:
        document["architecture"] = preset(config.preset).to_dict()
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


def initial_bundle(config: TrainConfig) -> tuple[dict[str, bytes], str]:
    """The starting network as bundle bytes: pretrained backbones (`pretrained`, or its old name `hub`), seeded
    random (`scratch`) or a bundle."""
    if is_registry_uri(config.init):  # resolved through this job's registry, not the environment's
        with tempfile.TemporaryDirectory() as cache:
            path = download_registered_bundle(config.init, Path(cache), absolute_tracking_uri(config.tracking.uri))
            return bundle_files(path), f"{config.init} (version {path.name.removeprefix('v')})"
    if not config.starts_fresh:
        return bundle_files(config.init), config.init
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = DualBranchNet(preset(config.preset), pretrained=config.init != "scratch")
    with tempfile.TemporaryDirectory() as directory:
        info = BundleInfo(name=f"{config.preset}-init", trained=False, source=f"{config.init} initialisation")
        path = save_bundle(net, Path(directory) / "init", info)
        return bundle_files(path), f"{config.init}:{config.preset}"


def run_retraining(config: TrainConfig) -> RetrainResult:
    """Train, evaluate, register and (maybe) promote; see the module docs."""
    from pipelines.runtime import ensure_ray

    storage = Storage.from_environment(config.s3_endpoint)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment, config.tracking.model_name)
    sources, manifests = load_sources(config, storage)
    table = build_table(sources, config.data.test_fraction, config.data.val_fraction, config.seed)
    unknown = sorted(set(config.data.weights) - set(counts(table)))
    if unknown:
        raise ConfigError(f"data.weights names {unknown}: not datasets of this run, which are {sorted(counts(table))}")
    snapshot, settings = snapshot_id(table), config_hash(config)
    previous = tracker.finished_run(snapshot, settings)
    if previous is not None:
        return RetrainResult(snapshot, previous, skipped=True)

    ensure_ray(log_to_driver=True)
    init_files, init_source = initial_bundle(config)
    net_config = read_bundle_config(init_files)[0]
    cache_dir = config.data.cache_dir or f"{config.storage_path.rstrip('/')}/feature-cache"
    features, failures = _features(config, net_config.aux == "liqe", init_files, table, cache_dir, storage)
    table = without(table, set(failures))
    run_name = f"retrain-{snapshot}-{settings}"
    run_id = tracker.start_run(run_name, {TAG_SNAPSHOT: snapshot, TAG_CONFIG: settings, "piqa.init": init_source})
    try:
        tracker.log_params(run_id, _flatten(config.to_dict()) | {"data_snapshot": snapshot, "init": init_source})
        tracker.log_json(
            run_id,
            {"snapshot": snapshot, "manifests": manifests, "images": counts(table), "unreadable": failures},
            "data/snapshot.json",
        )
        tracker.log_text(run_id, config.to_yaml(), "config.yaml")
        inputs = LoopInputs(config, init_files, table, features, tracker.uri, run_id)
        state = load_state(_fit(config, inputs, run_name))
        result = _finish(config, tracker, run_id, state, init_files, table, features, snapshot, cache_dir, storage)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    return result


def feature_spec(config: TrainConfig, bundle: dict[str, bytes], uses_aux: bool) -> FeatureSpec:
    """What the cached features of a network's training data depend on: the detector settings and, when the
    head reads LIQE features, the LIQE weights (frozen: training the rest of the network keeps the cache valid)."""
    digest = None
    if uses_aux:
        import torch
        from safetensors.torch import load

        weights = load(bundle[WEIGHTS_FILE])
        hasher = hashlib.sha256()
        for name in sorted(k for k in weights if k.startswith("liqe.")):
            hasher.update(name.encode() + weights[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest = hasher.hexdigest()[:12]
    model = read_bundle_config(bundle)[0]
    return FeatureSpec(config.data.detect_size, config.data.min_face_size, digest, model)


def _features(
    config: TrainConfig,
    uses_aux: bool,
    bundle: dict[str, bytes],
    table: list[Example],
    cache_dir: str,
    storage: Storage,
):
    return load_or_compute(
        sorted({e.uri for e in table}),
        cache_dir,
        feature_spec(config, bundle, uses_aux),
        storage,
        liqe_files=bundle if uses_aux else None,
        actors=config.num_workers,
    )


def _fit(config: TrainConfig, inputs: LoopInputs, run_name: str) -> str:
    """Run (or resume) the Ray Train job; the local directory of its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.runtime import ray_log_level

    storage_path, filesystem = train_storage(config.storage_path, Storage.from_environment(config.s3_endpoint))
    resources = {"CPU": config.cpus_per_worker} | ({"GPU": 1} if config.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"inputs": inputs},
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=logging.getLevelName(ray_log_level())),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} produced no checkpoint; see its Ray Train logs")
    directory = tempfile.mkdtemp(prefix="piqa-train-state-")
    return result.checkpoint.to_directory(directory)


def train_storage(path: str, storage: Storage) -> tuple[str, Any]:
    """Ray Train's (storage_path, storage_filesystem) for `path`: absolute local paths; on an S3-compatible endpoint,
    a pyarrow filesystem that spells it out, with the jobs' attempts per request."""
    if "://" not in path:
        return str(Path(path).resolve()), None
    if not path.startswith("s3://") or not storage.s3_endpoint:
        return path, None
    from urllib.parse import urlparse

    import pyarrow.fs

    parsed = urlparse(storage.s3_endpoint)
    filesystem = pyarrow.fs.S3FileSystem(
        endpoint_override=parsed.netloc,
        scheme=parsed.scheme or "https",
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=storage.attempts),  # the jobs' budget
    )
    return path.removeprefix("s3://"), filesystem


def _finish(
    config: TrainConfig,
    tracker: Tracker,
    run_id: str,
    state: dict[str, Any],
    init_files: dict[str, bytes],
    table: list[Example],
    features: dict,
    snapshot: str,
    cache_dir: str,
    storage: Storage,
) -> RetrainResult:
    """Bundle the best epoch, evaluate it and the champion on the test split, register, gate, log."""
    net = read_bundle_files(init_files)[0]
    net.load_state_dict(state["best"]["model"])
    test = select(table, "test")
    champion = tracker.champion()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        info = BundleInfo(
            name=config.tracking.model_name,
            trained=True,
            description=f"Retrained on data snapshot {snapshot}; best epoch {state['best']['epoch']} on validation.",
            source=f"MLflow run {run_id}",
        )
        candidate_path = save_bundle(net, work / "bundle", info)
        bundles = {"candidate": bundle_files(candidate_path)}
        if champion is not None:
            bundles["champion"] = tracker.bundle_files(champion.version)
        scores = _evaluate_remote(config, bundles, test, cache_dir, storage, features)
        reports = {name: group_reports(test, s) for name, s in scores.items()}
        metrics = {name: flat_metrics(report, "test") for name, report in reports.items()}
        key = f"test/{config.tracking.promotion_metric}"
        decision = decide(
            config.tracking.promotion_metric,
            metrics["candidate"].get(key, float("nan")),
            metrics["champion"].get(key, float("nan")) if champion else None,
            config.tracking.promote_tolerance,
        )
        card = _card(config, snapshot, run_id, state, table, metrics["candidate"], decision)
        save_bundle(net, candidate_path, replace(info, metrics=metrics["candidate"]), card)
        tracker.log_metrics(run_id, {f"final/{k}": v for k, v in metrics["candidate"].items()})
        if champion is not None:
            tracker.log_metrics(run_id, {f"champion/{k}": v for k, v in metrics["champion"].items()})
        _write_reports(work / "reports", reports, test, scores, state["history"])
        tracker.log_artifacts(run_id, work / "reports", "reports")
        tracker.log_artifacts(run_id, candidate_path, "bundle")
        version = tracker.register(run_id, {TAG_SNAPSHOT: snapshot})
        tracker.set_alias("candidate", version)
        if decision.promote:
            tracker.set_alias("champion", version)
        tracker.log_json(run_id, decision.to_dict() | {"version": version}, "promotion.json")
        tracker.set_tags(run_id, {"piqa.promoted": str(decision.promote).lower(), "piqa.decision": decision.reason})
    return RetrainResult(snapshot, run_id, False, version, decision, metrics["candidate"])


def _evaluate_remote(
    config: TrainConfig,
    bundles: dict[str, dict[str, bytes]],
    test: list[Example],
    cache_dir: str,
    storage: Storage,
    features: dict,
) -> dict[str, list[float]]:
    """Test-split scores of each bundle, computed in one Ray task (on a GPU when training used GPUs)."""
    import ray

    scores = {}
    for name, files in bundles.items():
        uses_aux = read_bundle_config(files)[0].aux == "liqe"
        bundle_features = features
        if uses_aux:
            bundle_features, _ = _features(config, True, files, test, cache_dir, storage)
        task = ray.remote(_score_split).options(num_cpus=config.cpus_per_worker, num_gpus=1 if config.use_gpu else 0)
        scores[name] = ray.get(task.remote(files, test, bundle_features, storage, config.effective_precision))
    return scores


def _score_split(
    files: dict[str, bytes], examples: list[Example], features: dict, storage: Storage, precision: str
) -> list[float]:
    import torch

    from training.data import ExampleDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = read_bundle_files(files)[0].to(device)
    dataset = ExampleDataset(examples, features, net.config, storage, train=False)
    return score_array(predict_examples(net, dataset, batch_size=8, precision=precision), len(examples)).tolist()


def _write_reports(directory: Path, reports: dict, test: list[Example], scores: dict, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True)
    for name, report in reports.items():
        rows = group_rows(report)
        if rows:
            with open(directory / f"{name}_test_groups.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    (directory / "history.json").write_text(json.dumps(history, indent=2))
    datasets = sorted({e.dataset for e in test})
    figure, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5 * max(1, len(datasets)), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=False):
        idx = [i for i, e in enumerate(test) if e.dataset == dataset]
        axis.scatter([test[i].label for i in idx], [scores["candidate"][i] for i in idx], s=6)
        axis.set(title=f"{dataset} (test)", xlabel="label", ylabel="predicted score")
    figure.tight_layout()
    figure.savefig(directory / "test_scatter.png", dpi=100)
    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    axis.plot(epochs, [h["train/loss"] for h in history], label="train loss")
    for key in ("val/srcc_mean", "test/srcc_mean"):
        if all(key in h for h in history):
            axis.plot(epochs, [h[key] for h in history], label=key)
    axis.set(xlabel="epoch")
    axis.legend()
    figure.tight_layout()
    figure.savefig(directory / "curves.png", dpi=100)
    plt.close("all")


def _card(
    config: TrainConfig,
    snapshot: str,
    run_id: str,
    state: dict,
    table: list[Example],
    metrics: dict[str, float],
    decision: Decision,
) -> str:
    data = "\n".join(
        f"| {name} | {c['train']} | {c['val']} | {c['test']} |" for name, c in sorted(counts(table).items())
    )
    return (
        f"# Model card: {config.tracking.model_name}\n\n"
        f"Retrained with `piqa train` (MLflow run `{run_id}`, data snapshot `{snapshot}`).\n\n"
        f"## Data\n\n| dataset | train | val | test |\n| --- | --- | --- | --- |\n{data}\n\n"
        f"## Recipe\n\nInit `{config.init}` (preset `{config.preset}`), {config.optim.epochs} epochs, "
        f"batch {config.optim.batch_size}, AdamW lr {config.optim.lr} x{config.optim.lr_gamma} every "
        f"{config.optim.lr_step_epochs} epochs, fidelity loss on within-group pairs, {config.num_workers} "
        f"worker(s){_passes(config.data.weights)}; best epoch on validation: {state['best']['epoch']}.\n\n"
        f"## Test metrics\n\n{metrics_table(metrics, sorted(counts(table)))}\n\n"
        f"## Promotion\n\n{decision.reason}.\n"
    )


def _passes(weights: dict[str, float]) -> str:
    return "".join(f", {weight:g} passes per epoch over {name}" for name, weight in sorted(weights.items()))


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
